"""Bounds on what a client may send: body size and how slowly it may arrive."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.api.problems import MEDIA_TYPE


class BodyLimits:
    """ASGI middleware: 413 past max_bytes, 408 when a body chunk takes longer than timeout.

    overrides maps (method, path) to its own bound, for the few bulk operations that need more.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        timeout: float,
        overrides: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.overrides = dict(overrides or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.overrides.get((scope["method"], scope["path"]), self.max_bytes)
        if _declared_over(scope, max_bytes):
            await _refuse(send, 413, f"the body is larger than {max_bytes} bytes")
            return
        body = _BoundedBody(receive, max_bytes, self.timeout)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, body.receive, tracking_send)
        except _Refused as refused:
            if not started:
                await _refuse(send, refused.status, refused.detail)


class _BoundedBody:
    """receive() that refuses a body past max_bytes or slower than timeout per chunk."""

    def __init__(self, receive: Receive, max_bytes: int, timeout: float) -> None:
        self._receive = receive
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._received = 0
        self._done = False

    async def receive(self) -> Message:
        """Returns the client's next message, within the bounds while the body arrives."""
        if self._done:
            # Only the disconnect is left to come: a stream (SSE) waits for it unbounded.
            return await self._receive()
        try:
            message = await asyncio.wait_for(self._receive(), self._timeout)
        except TimeoutError:
            raise _Refused(408, f"the body did not arrive within {self._timeout:g} s") from None
        if message["type"] == "http.request":
            self._done = not message.get("more_body", False)
            self._received += len(message.get("body", b""))
            if self._received > self._max_bytes:
                raise _Refused(413, f"the body is larger than {self._max_bytes} bytes")
        return message


def _declared_over(scope: Scope, max_bytes: int) -> bool:
    """True when the Content-Length header is malformed or above max_bytes."""
    declared = dict(scope.get("headers") or []).get(b"content-length")
    return declared is not None and (not declared.isdigit() or int(declared) > max_bytes)


class _Refused(HTTPException):
    """Raised from receive(): an HTTPException, so the app answers it as a problem."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail)
        self.status = status


async def _refuse(send: Send, status: int, detail: str) -> None:
    title = {408: "Request Timeout", 413: "Content Too Large"}[status]
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})
