"""Serves the API with uvicorn inside the process's own event loop, stopped by our signals."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import structlog
import uvicorn

from pipeline.api.app import close_streams, create_api
from pipeline.app import App
from pipeline.listeners import CannotListen

log = structlog.get_logger("tocsin.api")


class _Server(uvicorn.Server):
    """A uvicorn server that leaves SIGTERM/SIGINT to the runner (it sets should_exit)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    """The API listening on API_ADDR:API_PORT until stop(); in-flight requests finish."""

    def __init__(self, app: App) -> None:
        settings = app.settings
        self._api = create_api(app)
        config = uvicorn.Config(
            self._api,
            host=settings.api_addr,
            port=settings.api_port,
            log_config=None,  # our logging: JSON lines, scrubbed
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(settings.shutdown_grace.total_seconds()),
            server_header=False,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """http://host:port actually bound (the port is known once started)."""
        sockets = [s for server in self._server.servers for s in server.sockets]
        host, port = sockets[0].getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def start(self) -> None:
        """Binds and starts serving; raises OSError when the address is taken."""
        self._task = asyncio.create_task(self._serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # re-raises why it could not start
                raise OSError("the API stopped before it started")
            await asyncio.sleep(0.01)
        log.info("api_serving", url=self.url)

    async def _serve(self) -> None:
        try:
            await self._server.serve()
        except SystemExit:  # uvicorn's answer to a failed bind
            config = self._server.config
            raise CannotListen.on(
                "the API", config.host, config.port, "API_ADDR, API_PORT"
            ) from None

    async def stop(self) -> None:
        """Stops taking connections and waits for requests in flight (streams end at once)."""
        self._server.should_exit = True
        # Open event streams never finish by themselves; uvicorn would wait SHUTDOWN_GRACE.
        await close_streams(self._api)
        if self._task is not None:
            await self._task
