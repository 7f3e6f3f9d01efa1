"""A database that hangs or is missing fails a command quickly, with the real reason on one line."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.integration.cli import Cli, base_env
from tests.integration.test_cli import assert_one_line_error
from tests.support.proxy import FaultProxy
from tests.support.services import PG_HOST, PG_PORT, PG_USER, require_service

pytestmark = pytest.mark.postgres
CONNECT_TIMEOUT = 2.0


def postgres(database: str, host: str = PG_HOST, port: int = PG_PORT) -> str:
    return f"postgresql+asyncpg://{PG_USER}@{host}:{port}/{database}"


async def test_a_database_that_never_answers_fails_within_the_timeout(tmp_path: Path) -> None:
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    async with FaultProxy(PG_HOST, PG_PORT) as proxy:
        proxy.blackhole()  # accepts TCP, never answers
        env = base_env(
            tmp_path,
            DATABASE_URL=postgres("test", proxy.host, proxy.port),
            DB_CONNECT_TIMEOUT=f"{CONNECT_TIMEOUT:g}s",
        )
        started = time.monotonic()
        result = await Cli(env, tmp_path)("notifications", "list", timeout=60)
        elapsed = time.monotonic() - started
    assert_one_line_error(result, "did not answer", "DB_CONNECT_TIMEOUT")
    assert result.code == 1
    # Far below asyncpg's own 60 s; generous for a busy machine.
    assert elapsed < 45, elapsed


async def test_a_missing_database_says_so(tmp_path: Path) -> None:
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    name = f"tocsin_missing_{uuid.uuid4().hex[:8]}"
    env = base_env(tmp_path, DATABASE_URL=postgres(name))
    result = await Cli(env, tmp_path)("users", "list")
    assert_one_line_error(result, f'database "{name}" does not exist')
    assert "no Tocsin tables" not in result.stderr
