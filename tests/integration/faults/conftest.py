"""Fixtures of the fault suite: a broker per test (amqp:// or redis://) and a Cluster on it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pipeline.config import Settings
from tests.integration.faults.harness import Cluster, no_orphans
from tests.support.redis_server import RedisServer
from tests.support.services import FAULT_REDIS_DB, flushed_redis


@pytest.fixture
def fault_redis_url() -> Iterator[str]:
    """URL of the fault suite's Redis database (not the other tests'), flushed around the test."""
    with flushed_redis(FAULT_REDIS_DB) as url:
        yield url


@pytest.fixture
def fault_amqp_url(amqp_url: str) -> str:
    """The session's RabbitMQ vhost; amqp_url has already deleted Tocsin's topology."""
    return amqp_url


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server of this test's own, which it may crash and restart."""
    server = RedisServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.crash()


@pytest.fixture(params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest) -> str:
    """The broker under test; a test using it runs on both."""
    return str(request.param)


@pytest.fixture
def queue_url(broker: str, request: pytest.FixtureRequest) -> str:
    """The broker's URL for this test (its queues empty)."""
    return str(request.getfixturevalue(f"fault_{broker}_url"))


@pytest.fixture
async def cluster(
    postgres_settings: Settings, queue_url: str, tmp_path: Path
) -> AsyncIterator[Cluster]:
    """A cluster on a fresh migrated PostgreSQL database and the broker; processes reaped after."""
    started = time.monotonic()
    async with Cluster(
        database_url=postgres_settings.database_url.get_secret_value(),
        queue_url=queue_url,
        tmp_path=tmp_path,
    ) as created:
        yield created
    print(f"[{created.broker}] wall time {time.monotonic() - started:.1f}s")


@pytest.fixture(autouse=True)
def _no_orphan_processes() -> Iterator[None]:
    yield
    left = no_orphans()
    assert not left, f"tocsin processes outlived the test: {left}"
