"""Fixtures for the real services: migrated SQLite and PostgreSQL databases, Redis, RabbitMQ.

A server that is down skips its tests locally and fails them when `CI` is set, so a CI run
can never pass by skipping everything (dramatiq's rule).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from pipeline.config import Settings
from pipeline.db import SessionFactory, create_engine, upgrade
from pipeline.db import session_factory as make_session_factory
from tests.support.ports import free_port

T = TypeVar("T")

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
# Any database that always exists; CREATE/DROP DATABASE cannot run inside the target.
PG_ADMIN_DB = "postgres"
PG_ADMIN_URL = f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_ADMIN_DB}"
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379


def _redis_dbs() -> tuple[int, int]:
    # Two of Redis's 16 databases per pytest-xdist worker (gw0, gw1, ...), counting down from
    # 15, so no test ever flushes db 0: one for the tests, one for the fault suite.
    # TOCSIN_TEST_REDIS_OFFSET shifts them, so two checkouts can run their suites side by side.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    index += int(os.environ.get("TOCSIN_TEST_REDIS_OFFSET", "0"))
    if index > 6:
        raise RuntimeError("at most 7 pytest-xdist workers: each takes two Redis databases")
    return 15 - 2 * index, 14 - 2 * index


REDIS_DB, FAULT_REDIS_DB = _redis_dbs()
AMQP_HOST = "127.0.0.1"
AMQP_PORT = 5672


def in_ci() -> bool:
    """True when the CI environment variable is set to anything non-empty."""
    return bool(os.environ.get("CI"))


def require_service(name: str, host: str, port: int, timeout: float = 1.0) -> None:
    """Skips the test when host:port does not accept TCP connections, or fails it in CI."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        message = f"{name} is not reachable at {host}:{port} ({exc})"
    if in_ci():
        pytest.fail(f"{message}; CI is set, so a missing service is an error", pytrace=False)
    pytest.skip(message)


def run_in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Calls fn(*args) on a fresh thread and returns its result (for asyncio.run users)."""
    # Alembic's env.py and the admin helpers call asyncio.run, which must not run on a
    # thread whose event loop pytest-asyncio owns; a fresh thread has no loop at all.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args).result()


def migrated(settings: Settings) -> Settings:
    """Upgrades the settings' database to head and returns the settings."""
    run_in_thread(upgrade, settings)
    return settings


def settings_for(database_url: str) -> Settings:
    # _env_file=None: a developer's .env must not leak into the tests.
    return Settings(
        _env_file=None,
        database_url=database_url,
        queue_url="memory://",
        metrics_port=-1,
        # Retries fall due exactly on the schedule, so tests can step a manual clock to them.
        retry_jitter=0.0,
    )


# --- databases -----------------------------------------------------------------------


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    """Settings for a fresh, migrated SQLite file in tmp_path (in-process queue, no /metrics)."""
    return migrated(settings_for(f"sqlite+aiosqlite:///{tmp_path}/tocsin.db"))


async def _pg_admin(*statements: str) -> None:
    # CREATE/DROP DATABASE cannot run in a transaction, hence AUTOCOMMIT.
    admin = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with admin.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await admin.dispose()


def _run_pg_admin(*statements: str) -> None:
    run_in_thread(asyncio.run, _pg_admin(*statements))


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database, dropped after the test."""
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    name = f"tocsin_test_{uuid.uuid4().hex[:12]}"
    _run_pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        # A test that leaked a connection must not make the drop fail or hang.
        _run_pg_admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE datname = '{name}' AND pid <> pg_backend_pid()",
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        )


@pytest.fixture
def postgres_settings(postgres_url: str) -> Settings:
    """Settings for a fresh, migrated PostgreSQL database (in-process queue, no /metrics)."""
    return migrated(settings_for(postgres_url))


@pytest.fixture(params=["sqlite", "postgres"], ids=["sqlite", "postgres"])
def db_settings(request: pytest.FixtureRequest) -> Settings:
    """Migrated settings on SQLite, then on PostgreSQL: a test using it runs on both."""
    settings: Settings = request.getfixturevalue(f"{request.param}_settings")
    return settings


@pytest.fixture
async def engine(db_settings: Settings) -> AsyncIterator[AsyncEngine]:
    """The application's engine on db_settings, disposed after the test."""
    created = create_engine(db_settings)
    try:
        yield created
    finally:
        await created.dispose()


@pytest.fixture
def session_factory(engine: AsyncEngine) -> SessionFactory:
    """The application's session factory on db_settings (SQLite and PostgreSQL)."""
    return make_session_factory(engine)


# --- brokers ---------------------------------------------------------------------------


@contextmanager
def flushed_redis(db: int) -> Iterator[str]:
    """Yields the URL of a Redis database, flushed before and after."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
        yield url
        client.flushdb()
    finally:
        client.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """URL of Redis database 15, flushed before and after the test."""
    with flushed_redis(REDIS_DB) as url:
        yield url


def _rabbitmqctl(*args: str) -> bool:
    executable = shutil.which("rabbitmqctl")
    if executable is None:
        return False
    try:
        result = subprocess.run(
            [executable, "-q", *args], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@pytest.fixture(scope="session")
def amqp_vhost() -> Iterator[str]:
    """A RabbitMQ vhost for this test session: a fresh one via rabbitmqctl, else "/"."""
    require_service("RabbitMQ", AMQP_HOST, AMQP_PORT)
    name = f"tocsin-test-{uuid.uuid4().hex[:8]}"
    if not (
        _rabbitmqctl("add_vhost", name)
        and _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    ):
        # No rabbitmqctl (or no rights to use it): share the default vhost.
        _rabbitmqctl("delete_vhost", name)
        yield "/"
        return
    try:
        yield name
    finally:
        _rabbitmqctl("delete_vhost", name)


async def delete_topology(url: str) -> None:
    """Deletes Tocsin's queues and exchange in the vhost of url."""
    import aio_pika

    from channels.registry import CHANNELS
    from pipeline.queues import names

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        queues = [names.queue_name(c.name) for c in CHANNELS]
        for name in (*queues, names.DEAD_LETTER_QUEUE):
            await channel.queue_delete(name)
        await channel.exchange_delete(names.DEAD_LETTER_EXCHANGE)
    finally:
        await connection.close()


@pytest.fixture
async def amqp_url(amqp_vhost: str) -> str:
    """URL of the session's vhost with Tocsin's topology deleted: each test declares afresh.

    Queue arguments such as x-delivery-limit cannot change on a live queue, and tests use
    different limits, so leftovers from an earlier test would be refused.
    """
    require_service("RabbitMQ", AMQP_HOST, AMQP_PORT)
    url = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{quote(amqp_vhost, safe='')}"
    await delete_topology(url)
    return url


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connections to it are refused."""
    return free_port()
