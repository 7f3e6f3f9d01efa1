"""A loopback HTTP listener that answers every request like a happy WeCom robot and counts it."""

from __future__ import annotations

from types import TracebackType

from aiohttp import web

from tests.support.http_server import serve


class CatchAll:
    """Listens on one address (any path, any method) and records what reached it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.requests: list[str] = []
        self._runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        """http://host:port, the host bracketed when it is IPv6."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def _any(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.method} {request.path_qs} Host={request.host}")
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def __aenter__(self) -> CatchAll:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner, self.port = await serve(app, self.host)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
