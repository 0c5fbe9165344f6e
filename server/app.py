"""The FastAPI app, its routes, and `serve`, which runs it under uvicorn with Inkwell's own SIGTERM drain.

Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`, `GET /health`,
`GET /metrics`, the schema at `/openapi.json` with its pages `/docs` and `/redoc`, and the canvas page at
`/` with its files under `/static` (package data in `static/`). Every route but `/`, `/static` and `/health`
requires the API key when one is configured (`Authorization: Bearer KEY`, compared in constant time, never
logged). CORS is off unless origins are given.

Shutdown: uvicorn's own signal handling would stop accepting connections, and sse-starlette's automatic
drain would cut open streams. `DrainingServer` replaces uvicorn's `handle_exit`: the first SIGTERM/SIGINT
only moves the state to draining (new requests get 503 while the port stays open), and uvicorn's
`on_tick` lets the server exit once every open generation is done or `drain_timeout` has passed; a second
signal exits at once. The process then exits 0. If a model fails to load, the server exits 1 after
logging why (until then `/health` says 503 with the reason).
"""

from __future__ import annotations

import hmac
import logging
import signal
from pathlib import Path

import torch
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from sse_starlette.sse import AppStatus

from . import errors
from .errors import Unauthorized, Unavailable, error_responses
from .metrics import CONTENT_TYPE
from .middleware import RequestContext
from .protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)
from .serving import ChatServing, CompletionServing
from .settings import ServerSettings
from .state import ServerState

logger = logging.getLogger("inkwell.server")

STATIC = Path(__file__).parent / "static"  # the canvas page: plain HTML, CSS and JavaScript modules


def create_app(settings: ServerSettings, engine_factory) -> FastAPI:
    state = ServerState(settings, engine_factory)
    # FastAPI's own schema and docs routes would skip the key check: the API router serves them instead
    app = FastAPI(title="Inkwell", version="0.1.0", lifespan=_lifespan(state), openapi_url=None,
                  docs_url=None, redoc_url=None)
    app.state.inkwell = state
    errors.install(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(RequestContext, max_body_bytes=settings.max_body_bytes)
    app.include_router(_api_router(state, settings.api_key))
    app.include_router(_public_router(state))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.openapi = _without_422(app.openapi)
    return app


def _without_422(openapi):
    """FastAPI documents a 422 for every route with a body; validation errors are 400s here (documented
    per route with `error_responses`), so the schema drops the 422 and its two component schemas."""

    def schema() -> dict:
        out = openapi()  # built once and cached by FastAPI: stripping it again changes nothing
        for operations in out["paths"].values():
            for operation in operations.values():
                operation["responses"].pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            out.get("components", {}).get("schemas", {}).pop(name, None)
        return out

    return schema


def _completion_responses(model: type) -> dict:
    """What a completion route answers: the response object, or with `stream: true` the events; errors."""
    ok = {"model": model, "description": "The completion; with `stream: true`, Server-Sent Events of chunks "
          "ending with `data: [DONE]` (an error after the first event is one `data: {\"error\": ...}` "
          "line before it)", "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    return {200: ok} | error_responses(400, 404, 413, 429, 500, 503, 504)


def _lifespan(state: ServerState):
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        state.start_loading()
        yield
        state.shutdown()

    return lifespan


def _key_check(api_key: str | None):
    expected = api_key.encode() if api_key else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)
        if not ok:
            raise Unauthorized("missing or invalid API key (send 'Authorization: Bearer <key>')",
                               code="invalid_api_key")

    return check


def _api_router(state: ServerState, api_key: str | None) -> APIRouter:
    router = APIRouter(dependencies=[Depends(_key_check(api_key))],
                       responses=error_responses(401) if api_key else None)
    chat, completion = ChatServing(state), CompletionServing(state)

    @router.post("/v1/chat/completions", responses=_completion_responses(ChatCompletionResponse))
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await chat.create(body, request)

    @router.post("/v1/completions", responses=_completion_responses(CompletionResponse))
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await completion.create(body, request)

    @router.get("/v1/models", responses=error_responses(503))
    async def models() -> ModelList:
        state.require_ready()
        return ModelList(data=[ModelCard(id=m.name, created=m.created, root=m.source,
                                         max_model_len=m.max_length, quantization=m.quantization)
                               for m in state.models.values()])

    @router.get("/metrics", response_class=PlainTextResponse)  # Prometheus' text format
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @router.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @router.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Inkwell API")

    @router.get("/redoc", include_in_schema=False)
    async def redoc() -> Response:
        return get_redoc_html(openapi_url="/openapi.json", title="Inkwell API")

    return router


def _public_router(state: ServerState) -> APIRouter:
    router = APIRouter()

    @router.get("/health", responses=error_responses(503))
    async def health() -> Response:
        try:
            state.require_ready()
        except Unavailable as err:
            return errors.error_response(err)
        return JSONResponse({"status": "ok", "models": sorted(state.models)})

    @router.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return router


class DrainingServer(uvicorn.Server):
    """uvicorn with Inkwell's drain: the first signal drains, the exit waits for open generations."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame) -> None:  # called in the main thread by signal.signal
        if self.state.phase == "draining":
            logger.warning("second signal %s: exiting now", signal.Signals(sig).name)
            self.should_exit = self.force_exit = True
        else:
            self.state.begin_drain()

    async def on_tick(self, counter: int) -> bool:
        if self.state.drained() or self.state.phase == "failed":
            self.should_exit = True
        return await super().on_tick(counter)


def serve(settings: ServerSettings, engine_factory) -> int:
    """Run the server until it is drained; 0 on a clean exit."""
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    AppStatus.disable_automatic_graceful_drain()  # our drain, not sse-starlette's (DESIGN section 8)
    app = create_app(settings, engine_factory)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=5, lifespan="on")
    server = DrainingServer(config, app.state.inkwell)
    server.run()
    return 0 if server.started and server.state.phase != "failed" else 1
