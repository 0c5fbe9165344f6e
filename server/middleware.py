"""ASGI middleware around every route: an `x-request-id` on every response, and the request-body limit.

`RequestContext` takes the client's `x-request-id` when it is a short printable token (else makes one),
stores it in `scope["state"]` for the handlers, and adds it to every response, streamed ones included.
Bodies larger than `max_body_bytes` are answered with 413 before a handler sees them: at once from the
`Content-Length` header, or as soon as a chunked body passes the limit.
"""

from __future__ import annotations

import re
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import PayloadTooLarge, error_response

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestContext:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await self._too_large(scope, receive, send_with_id)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:  # FastAPI passes HTTPExceptions from body parsing on
                    raise HTTPException(413, f"the request body exceeds {self.max_body_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send_with_id)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = PayloadTooLarge(f"the request body exceeds {self.max_body_bytes} bytes", code="body_too_large")
        await error_response(err)(scope, receive, send)
