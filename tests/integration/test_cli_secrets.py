"""URL passwords through the real `tocsin` script: config printouts, DEBUG logs, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from pipeline.config import Settings
from tests.integration.cli import Cli, Result, Server, base_env
from tests.support.secrets import assert_no_secret
from tests.support.services import AMQP_HOST, AMQP_PORT, require_service
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

DB_PASSWORD = "Planted-Db@pw:7f/3e"  # raw `@`, `:` and `/`, percent-encoded in the URL
QUEUE_PASSWORD = "Planted-Queue@9a1b"  # written raw: the userinfo ends at the LAST `@`
AMQP_PASSWORD = "Planted-Amqp-2c4d"
USER_KEY = "Planted-UserKey-5e6f"


def every_form(*passwords: str) -> list[str]:
    """Each password as it is and percent-encoded."""
    return [form for p in passwords for form in (p, quote(p, safe=""))]


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a stderr dump (tracebacks would be inside them, never loose)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def with_password(url: str, password: str) -> str:
    """Returns url (postgresql+asyncpg://user@host/db) with password added to its userinfo."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{quote(password, safe='')}@{host}"


async def test_config_shows_urls_with_the_password_masked_and_the_host_visible(
    tmp_path: Path,
) -> None:
    database = f"postgresql+asyncpg://tocsin:{quote(DB_PASSWORD, safe='')}@db.internal:5432/alerts"
    queue = f"redis://:{QUEUE_PASSWORD}@cache.internal:6379/2"
    cli = Cli(base_env(tmp_path, DATABASE_URL=database, QUEUE_URL=queue, COLUMNS="250"), tmp_path)

    as_json = await cli.ok("config", "--json")
    table = await cli.ok("config")
    seed_env = {k: v for k, v in cli.env.items() if k != "QUEUE_URL"} | {"REDIS_URL": queue}
    seed_name = await Cli(seed_env, tmp_path).ok("config", "--json")

    shown = as_json.json()
    assert shown["DATABASE_URL"] == "postgresql+asyncpg://tocsin:***@db.internal:5432/alerts"
    assert shown["QUEUE_URL"] == "redis://:***@cache.internal:6379/2"
    assert seed_name.json()["QUEUE_URL"] == "redis://:***@cache.internal:6379/2"
    assert "tocsin:***@db.internal:5432/alerts" in table.stdout
    assert "redis://:***@cache.internal:6379/2" in table.stdout
    outputs = [r.stdout + r.stderr for r in (as_json, table, seed_name)]
    assert_no_secret(outputs, *every_form(DB_PASSWORD, QUEUE_PASSWORD))


@pytest.mark.postgres
async def test_a_debug_run_on_postgres_logs_library_lines_and_never_a_secret(
    postgres_settings: Settings, tmp_path: Path
) -> None:
    """Library DEBUG lines appear; the URL password and a stored webhook key never do."""
    database = with_password(postgres_settings.database_url.get_secret_value(), DB_PASSWORD)
    env = base_env(tmp_path, DATABASE_URL=database, LOG_LEVEL="debug", RELAY_INTERVAL="0.2s")
    cli = Cli(env, tmp_path)
    upgraded = await cli.ok("db", "upgrade")
    assert ":***@127.0.0.1:5432/" in upgraded.stdout
    # The key is stored in the database, so no redactor knows it: rows must not be logged.
    webhook = f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={USER_KEY}"
    await cli.ok(
        "users", "upsert", "dora", "--email", "dora@example.com", "--wecom-webhook", webhook
    )
    await cli.ok("alerts", "create", "--title", "Disk full", "--recipient", "dora")

    server = await Server.start("run", env=env, cwd=tmp_path)
    try:
        await eventually(lambda: _logged(server, "delivery"), timeout=90)
    finally:
        code = await server.stop()
    assert code == 0, server.stderr[-2000:]
    lines = json_lines(server.stderr)
    library_debug = [
        line
        for line in lines
        if line["level"] == "debug" and str(line.get("logger")).startswith("sqlalchemy.")
    ]
    assert library_debug, server.stderr[-2000:]
    statements = [line for line in lines if str(line.get("logger")).startswith("sqlalchemy.engine")]
    assert any("SELECT" in line["event"] for line in statements), statements[:3]
    assert not any(line["event"].startswith("Row ") for line in statements)
    assert_no_secret([upgraded.stdout, server.stderr], *every_form(DB_PASSWORD), USER_KEY)


async def _logged(server: Server, event: str) -> bool:
    assert server.running, f"tocsin run exited early:\n{server.stderr[-2000:]}"
    return any(line.get("event") == event for line in json_lines(server.stderr))


async def test_unreachable_services_fail_without_the_password(
    tmp_path: Path, closed_port: int
) -> None:
    database = (
        f"postgresql+asyncpg://tocsin:{quote(DB_PASSWORD, safe='')}@127.0.0.1:{closed_port}/x"
    )
    cli = Cli(base_env(tmp_path, DB_CONNECT_TIMEOUT="2s", BROKER_TIMEOUT="2s"), tmp_path)
    results: list[Result] = [
        await cli.with_env(DATABASE_URL=database)("users", "list"),
        await cli.with_env(QUEUE_URL=f"redis://:{QUEUE_PASSWORD}@127.0.0.1:{closed_port}/0")(
            "queues"
        ),
        await cli.with_env(QUEUE_URL=f"amqp://u:{QUEUE_PASSWORD}@127.0.0.1:{closed_port}/")(
            "queues"
        ),
    ]
    for result in results:
        assert result.code != 0, str(result)
        # The last line is the one-line error (a library may have logged the failure before).
        assert result.error_lines[-1].startswith("error: "), str(result)
        assert "Traceback" not in result.stderr
    assert_no_secret(
        [r.stdout + r.stderr for r in results], *every_form(DB_PASSWORD, QUEUE_PASSWORD)
    )


@pytest.mark.rabbitmq
async def test_a_refused_amqp_login_at_debug_never_shows_the_password(tmp_path: Path) -> None:
    require_service("RabbitMQ", AMQP_HOST, AMQP_PORT)
    queue = f"amqp://guest:{AMQP_PASSWORD}@{AMQP_HOST}:{AMQP_PORT}/"
    env = base_env(tmp_path, QUEUE_URL=queue, LOG_LEVEL="DEBUG", BROKER_TIMEOUT="3s")
    result = await Cli(env, tmp_path)("worker", "--burst")
    assert result.code != 0, str(result)
    assert "queue unavailable" in result.stderr
    loggers = {str(line.get("logger")) for line in json_lines(result.stderr)}
    assert any(name.startswith(("aio_pika", "aiormq")) for name in loggers), loggers
    assert_no_secret([result.stdout, result.stderr], *every_form(AMQP_PASSWORD))
