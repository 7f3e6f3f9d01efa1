"""The HTTP API under test: a real uvicorn server on loopback and a real httpx client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from pipeline.api.server import ApiServer
from pipeline.app import App
from pipeline.channel_set import ChannelSet
from pipeline.clock import Clock
from pipeline.config import Settings
from pipeline.tokens import Scope, create_token
from tests.support.pipeline import open_app


@dataclass
class Api:
    """A running API: its App, its URL, and one token per scope."""

    app: App
    url: str
    tokens: dict[str, str]

    def client(self, scope: str | None = "admin", **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client for the API holding the token of scope (None: no token)."""
        headers = {"Authorization": f"Bearer {self.tokens[scope]}"} if scope else {}
        return httpx.AsyncClient(
            base_url=self.url, headers=headers, trust_env=False, timeout=30.0, **kwargs
        )


@asynccontextmanager
async def running_api(
    settings: Settings, clock: Clock | None = None, channels: ChannelSet | None = None
) -> AsyncIterator[Api]:
    """Serves the API for settings on a free loopback port, with tokens for every scope."""
    settings = settings.model_copy(update={"api_port": 0, "api_addr": "127.0.0.1"})
    async with open_app(settings, clock, channels) as app:
        tokens = {}
        for scope in Scope:
            _, token = await create_token(app.sessions, app.clock, f"test-{scope}", [scope])
            tokens[scope.value] = token
        server = ApiServer(app)
        await server.start()
        try:
            yield Api(app, server.url, tokens)
        finally:
            await server.stop()


@pytest.fixture
async def api(sqlite_settings: Settings) -> AsyncIterator[Api]:
    """The API on a fresh SQLite database (in-process queue, a manual clock at START)."""
    async with running_api(sqlite_settings) as served:
        yield served
