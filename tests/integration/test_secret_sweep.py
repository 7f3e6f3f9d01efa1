"""The secret sweep: the whole CLI end to end at DEBUG, a secret planted in every secret setting.

Every output a person or a program can see is searched for every planted value, as it is and
percent-encoded: stdout and stderr of each command, the database (the SQLite file with its
WAL, or every PostgreSQL table), and `/metrics` of a running `tocsin run`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pydantic import AliasChoices, BaseModel
from sqlalchemy import MetaData, select
from sqlalchemy.ext.asyncio import create_async_engine

from channels.registry import CHANNELS
from pipeline.config import Settings
from tests.integration.cli import Cli, Result, Server, base_env
from tests.support.redis_server import RedisServer
from tests.support.secrets import assert_no_secret
from tests.support.smtp_server import SmtpSink
from tests.support.waiting import eventually
from tests.support.wecom_app_server import AGENT_ID, CORP_ID, WeComApp
from tests.support.wecom_server import WeComRobot

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.timeout(300)]

DB_PASSWORD = "Sweep-Db@pw:1a/2b"
QUEUE_PASSWORD = "Sweep-Queue-3c4d"
SMTP_PASSWORD = "Sweep-Smtp-5e6f"
GLOBAL_KEY = "Sweep-GlobalKey-7a8b"
USER_KEY = "Sweep-UserKey-9c0d"
APP_SECRET = "Sweep-AppSecret-1e2f"
WEBHOOK_SECRET = "Sweep-WebhookSecret-3a4b"
WEBHOOK_URL = "https://hooks.example/in/Sweep-WebhookPath-5c6d"
SETTING_SECRETS = (
    WEBHOOK_URL,
    DB_PASSWORD,
    QUEUE_PASSWORD,
    SMTP_PASSWORD,
    GLOBAL_KEY,
    APP_SECRET,
    WEBHOOK_SECRET,
)


def every_form(*secrets: str) -> list[str]:
    return [form for s in secrets for form in dict.fromkeys((s, quote(s, safe="")))]


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/tocsin.db"
    # PostgreSQL here trusts local connections: the planted password is sent and ignored.
    url: str = request.getfixturevalue("postgres_url")
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{quote(DB_PASSWORD, safe='')}@{host}"


class Sweep:
    """Runs commands, keeping everything they printed."""

    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.outputs: list[str] = []

    async def ok(self, *args: str) -> Result:
        result = await self.cli.ok(*args, timeout=120)
        self.outputs += [result.stdout, result.stderr]
        return result

    async def json(self, *args: str) -> Any:
        return (await self.ok(*args, "--json")).json()


def sqlite_files_text(directory: Path) -> str:
    files = sorted(directory.glob("tocsin.db*"))
    assert files
    return "\n".join(f.read_bytes().decode("utf-8", "replace") for f in files)


async def database_text(url: str, tmp_path: Path) -> str:
    """Everything stored: the SQLite files' bytes, or every row of every PostgreSQL table."""
    if url.startswith("sqlite"):
        return sqlite_files_text(tmp_path)
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            metadata = MetaData()
            await connection.run_sync(metadata.reflect)
            dumped = []
            for table in metadata.sorted_tables:
                rows = (await connection.execute(select(table))).all()
                dumped += [f"{table.name}: {tuple(row)!r}" for row in rows]
    finally:
        await engine.dispose()
    assert any(line.startswith("notifications:") for line in dumped)
    return "\n".join(dumped)


async def scrape_metrics(env: dict[str, str], cwd: Path) -> tuple[str, str]:
    """Starts `tocsin run` on a free port, returns (/metrics, its stderr) and stops it."""
    server = await Server.start("run", env={**env, "METRICS_PORT": "0"}, cwd=cwd)
    try:

        async def serving() -> str | None:
            assert server.running, server.stderr[-2000:]
            for line in server.lines:
                if '"metrics_serving"' in line:
                    return str(json.loads(line)["url"])
            return None

        url = await eventually(serving, timeout=60)
        async with httpx.AsyncClient(trust_env=False) as client:
            metrics = (await client.get(httpx.URL(url).join("/metrics"))).text
    finally:
        code = await server.stop(timeout=60)
    assert code == 0, server.stderr[-2000:]
    assert "tocsin_notifications_created_total" in metrics
    return metrics, server.stderr


async def test_no_planted_secret_reaches_any_output(
    database_url: str, tmp_path: Path, wecom_server: WeComRobot
) -> None:
    redis = RedisServer(tmp_path, password=QUEUE_PASSWORD)
    await redis.start()
    wecom_server.add_key(GLOBAL_KEY)
    wecom_server.add_key(USER_KEY)
    async with (
        SmtpSink(username="tocsin", password=SMTP_PASSWORD) as smtp,
        WeComApp(APP_SECRET, users=["alice"]) as app_api,
    ):
        env = base_env(
            tmp_path,
            DATABASE_URL=database_url,
            QUEUE_URL=redis.url,
            LOG_LEVEL="DEBUG",
            LOG_FORMAT="json",
            RELAY_INTERVAL="0.2s",
            EMAIL_ENABLED="true",
            EMAIL_SMTP_SERVER=smtp.host,
            EMAIL_SMTP_PORT=str(smtp.port),
            EMAIL_SECURITY="none",
            EMAIL_USERNAME="tocsin",
            EMAIL_PASSWORD=SMTP_PASSWORD,
            EMAIL_ALLOW_PLAINTEXT_AUTH="true",
            WECOM_ENABLED="true",
            WECOM_WEBHOOK_URL=wecom_server.webhook_url(GLOBAL_KEY),
            WECOM_APP_ENABLED="true",
            WECOM_APP_CORP_ID=CORP_ID,
            WECOM_APP_AGENT_ID=str(AGENT_ID),
            WECOM_APP_SECRET=APP_SECRET,
            WECOM_APP_API_BASE=app_api.base_url,
            WECOM_ALLOWED_HOSTS=f"{wecom_server.allow_entry},{app_api.base_url}",
            # Set but off: still secrets that config must mask.
            WEBHOOK_SECRET=WEBHOOK_SECRET,
            WEBHOOK_URL=WEBHOOK_URL,
            WEBHOOK_ALLOWED_HOSTS="hooks.example",
            RETRY_SCHEDULE="1s",
        )
        try:
            sweep = Sweep(Cli(env, tmp_path))
            await run_everything(sweep, smtp, wecom_server)
            metrics, served = await scrape_metrics(env, tmp_path)
        finally:
            await redis.crash()
        stored = await database_text(database_url, tmp_path)

    # The secrets were really in use: a login, posts to both keys, deliveries over the queue.
    assert smtp.logins and smtp.messages
    assert app_api.token_fetches and app_api.received, "the app secret was never used"
    assert wecom_server.received.get(GLOBAL_KEY) and wecom_server.received.get(USER_KEY) is not None
    debug = [text for text in sweep.outputs if '"level": "debug"' in text]
    assert debug, "no DEBUG line at all: the sweep would prove nothing"
    assert_no_secret([*sweep.outputs, served, metrics], *every_form(*SETTING_SECRETS, USER_KEY))
    # A recipient's own robot key is stored (in its own column) to be used; settings never are.
    assert_no_secret(stored, *every_form(*SETTING_SECRETS))


async def run_everything(sweep: Sweep, smtp: SmtpSink, robot: WeComRobot) -> None:
    await sweep.ok("db", "upgrade")
    await sweep.ok("config")
    await sweep.json("config")
    await sweep.ok(
        "users", "upsert", "alice", "--email", "alice@example.com", "--wecom-userid", "alice",
        "--channels", "system,email,wecom,wecom_app",
    )  # fmt: skip
    await sweep.ok(
        "users", "upsert", "bob", "--email", "bob@example.com",
        "--wecom-webhook", robot.webhook_url(USER_KEY),
    )  # fmt: skip
    await sweep.ok("users", "list")
    users = await sweep.json("users", "list")
    assert {u["username"] for u in users} == {"alice", "bob"}
    await sweep.json("alerts", "create", "--title", "Disk full", "--recipient", "alice",
                     "--recipient", "bob", "--severity", "critical")  # fmt: skip
    # Failures put provider answers and SMTP replies into last_error and the attempt log.
    robot.fail_with(93000, times=1, key=USER_KEY)
    smtp.respond_with(550, "5.1.1 mailbox unavailable", times=1)
    await sweep.json("run", "--drain")
    listed = await sweep.json("notifications", "list")
    for row in listed:
        await sweep.json("notifications", "show", str(row["id"]))
        await sweep.ok("notifications", "show", str(row["id"]))
    dead = await sweep.json("dlq", "list")
    assert dead, "the scripted failures should have left dead letters"
    for row in dead:
        await sweep.ok("dlq", "show", str(row["id"]))
    await sweep.ok("dlq", "list")
    await sweep.json("dlq", "replay", "--all", "--yes", "--rate", "100/s")
    await sweep.json("run", "--drain")
    await sweep.json("queues")
    await sweep.ok("queues")
    await sweep.json("metrics")
    await sweep.ok("jobs", "list")
    await sweep.json("audit")
    await sweep.ok("inbox", "alice")


def test_the_sweep_knows_every_secret_setting() -> None:
    """A new secret setting must be planted here too: the sweep lists what it covers."""
    covered = {
        "DATABASE_URL", "QUEUE_URL", "EMAIL_PASSWORD", "WECOM_WEBHOOK_URL", "WECOM_APP_SECRET",
        "WEBHOOK_SECRET", "WEBHOOK_URL",
    }  # fmt: skip
    models: list[type[BaseModel]] = [Settings, *(c.settings_class for c in CHANNELS)]
    secret_fields = {
        _env_name(field, name)
        for model in models
        for name, field in model.model_fields.items()
        if field.annotation is not None and "Secret" in str(field.annotation)
    }
    assert secret_fields <= covered, secret_fields - covered


def _env_name(field: Any, name: str) -> str:
    alias = field.validation_alias
    return str(alias.choices[0]) if isinstance(alias, AliasChoices) else name.upper()
