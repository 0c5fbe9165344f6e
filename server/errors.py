"""The one place where exceptions become HTTP statuses and OpenAI error bodies.

`to_api_error` maps anything raised while serving to an `ApiError` (status, OpenAI `type`, `param`,
`code`, extra headers); `error_response` renders it as `{"error": {message, type, param, code}}`, and
stream generators send the same body as a `data:` line once streaming has begun. Request-validation
errors, which FastAPI would answer with 422, are 400s here; a field the schema does not declare is
`unsupported: <field>`. Unexpected exceptions are logged with their traceback and answered with a 500
that names no internals.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine_client import DeadlineExceeded as EngineDeadline
from .engine_client import EngineClosed, QueueFull
from .protocol import ErrorInfo, ErrorResponse

logger = logging.getLogger("inkwell.server")


class ApiError(Exception):
    status = 500
    type = "server_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.headers = message, param, code, headers or {}


class BadRequest(ApiError):
    status, type = 400, "invalid_request_error"


class Unauthorized(ApiError):
    status, type = 401, "authentication_error"


class NotFound(ApiError):
    status, type = 404, "not_found_error"


class PayloadTooLarge(ApiError):
    status, type = 413, "invalid_request_error"


class Overloaded(ApiError):
    status, type = 429, "rate_limit_error"


class Unavailable(ApiError):
    status, type = 503, "service_unavailable"


class DeadlineExceeded(ApiError):
    status, type = 504, "timeout_error"


class ClientClosed(ApiError):
    """The client went away before a non-streaming answer was ready (nginx's 499; nobody reads it)."""

    status, type = 499, "client_closed_request"


# pydantic's type errors, and the JSON type each one expected
EXPECTED = {"int_type": "an integer", "float_type": "a number", "string_type": "a string",
            "bool_type": "a boolean", "list_type": "an array", "dict_type": "an object",
            "model_type": "an object", "model_attributes_type": "an object"}


def _json_type(value: object) -> str:
    """The JSON type of a parsed value, in OpenAI's words."""
    if value is None:
        return "null"
    names = [(bool, "a boolean"), (int, "an integer"), (float, "a decimal number"), (str, "a string"),
             (list, "an array"), (dict, "an object")]
    return next((name for kind, name in names if isinstance(value, kind)), type(value).__name__)


def _param(err: dict) -> str | None:
    """An error's location as OpenAI writes a parameter (`messages[0].content`), less the body and the
    branch names pydantic puts in the locations of union members (`str`, `list[int]`)."""
    out = ""
    for part in err.get("loc", ()):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "body" and "[" not in part and part not in ("str", "int", "float", "bool"):
            out += f".{part}" if out else part
    return out or None


def _top_field(param: str | None) -> str:
    """The top-level request field of a parameter path (`messages` of `messages[0].content`)."""
    return re.split(r"[.\[]", param or "")[0]


def _validation_error(errors: list[dict]) -> BadRequest:
    """One 400 for a failed validation: an undeclared field is `unsupported: <field>`; a JSON value of the
    wrong type is `Invalid type for '<param>': expected ..., but got ... instead.` (OpenAI's words); anything
    else is `<param>: <pydantic's message>`. Of several errors the first field's is reported, and of a
    union's members (`stop`: a string or an array of strings) the one that got furthest."""
    head, param = errors[0], _param(errors[0])
    if param is None and head.get("type") in ("json_invalid", "missing", *EXPECTED):
        return BadRequest(f"the body must be a JSON object ({head.get('msg')})", code="invalid_json")
    field = _top_field(param)
    same = [e for e in errors if _top_field(_param(e)) == field]
    best = max(same, key=lambda e: (len(_param(e) or ""), e.get("type") not in EXPECTED))
    param = _param(best)
    if best.get("type") == "extra_forbidden":
        return BadRequest(f"unsupported: {param}", param=param, code="unsupported_field")
    if best.get("type") in EXPECTED:
        expected = list(dict.fromkeys(EXPECTED[e["type"]] for e in same
                                      if e["type"] in EXPECTED and _param(e) == param))
        wanted = expected[0] if len(expected) == 1 else "one of " + " or ".join(expected)
        return BadRequest(f"Invalid type for '{param}': expected {wanted}, but got "
                          f"{_json_type(best.get('input'))} instead.", param=param, code="invalid_type")
    message = str(best.get("msg", "invalid value")).removeprefix("Value error, ")
    return BadRequest(f"{param}: {message}" if param else message, param=param, code="invalid_value")


def to_api_error(exc: BaseException) -> ApiError:
    """Map any exception raised while serving a request to its `ApiError`."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RequestValidationError):
        return _validation_error(list(exc.errors()))
    if isinstance(exc, ValidationError):
        return _validation_error(exc.errors())
    if isinstance(exc, QueueFull):
        return Overloaded(f"the request queue is full ({exc}); retry later", code="queue_full",
                          headers={"Retry-After": "1"})
    if isinstance(exc, EngineDeadline):
        return DeadlineExceeded(f"the request passed its deadline ({exc})", code="request_timeout")
    if isinstance(exc, EngineClosed):
        return Unavailable(f"the engine shut down ({exc})", code="engine_closed")
    if isinstance(exc, StarletteHTTPException):
        kind = {404: NotFound, 405: BadRequest, 413: PayloadTooLarge}.get(exc.status_code, BadRequest)
        err = kind(str(exc.detail), code="http_error")
        err.status = exc.status_code
        return err
    if isinstance(exc, ValueError):  # parameter validation at the engine/sampler boundary
        return BadRequest(str(exc), code="invalid_value")
    logger.error("unhandled error while serving a request", exc_info=exc)
    return ApiError("internal server error", code="internal_error")


# every status the server answers with an error body, as /openapi.json documents it (DESIGN section 8)
STATUS_DOCS = {
    400: "Bad input: invalid JSON, a value of the wrong type or out of range, an unsupported field, "
         "parameters that cannot work together, or prompt + canvas beyond the model's context length",
    401: "Missing or wrong API key (`Authorization: Bearer KEY`)",
    404: "The model is not served here",
    413: "The request body is too large",
    429: "The request queue is full; retry after `Retry-After` seconds",
    500: "An internal error (its details are only in the server's log)",
    503: "The models are loading, failed to load, or the server is shutting down",
    504: "The request passed its deadline (`--request-timeout`)",
}


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI `responses` entries for these statuses, each an `ErrorResponse`."""
    return {status: {"model": ErrorResponse, "description": STATUS_DOCS[status]} for status in statuses}


def error_body(err: ApiError) -> dict:
    info = ErrorInfo(message=err.message, type=err.type, param=err.param, code=err.code)
    return ErrorResponse(error=info).model_dump()


def error_response(exc: BaseException) -> JSONResponse:
    err = to_api_error(exc)
    return JSONResponse(error_body(err), status_code=err.status, headers=err.headers)


def install(app: FastAPI) -> None:
    """Route every exception an endpoint raises through `error_response`."""

    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    for kind in (ApiError, RequestValidationError, StarletteHTTPException, QueueFull, EngineDeadline,
                 ValueError, Exception):
        app.add_exception_handler(kind, handle)
