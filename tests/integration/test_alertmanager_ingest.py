"""A real Alertmanager posts to a real `tocsin run`: the team group is notified, repeats create
nothing, and the resolution suppresses what quiet hours still hold.

Alertmanager (Debian's prometheus-alertmanager) sends to Tocsin's ingest URL with an ingest
token; Tocsin runs on SQLite with e-mail to the loopback SMTP sink and WeCom to the loopback
robot. alice and bob are the db-oncall group; alice is inside her quiet hours, bob is not.
Every wait is bounded generously and only what holds at any speed is asserted.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml

from tests.integration.cli import Cli, Server
from tests.monitoring.test_live_alerting import Daemon, daemon
from tests.monitoring.tools import require_tool
from tests.support.ports import free_port
from tests.support.smtp_server import SmtpSink
from tests.support.waiting import eventually
from tests.support.wecom_server import WeComRobot, mentions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

START_TIMEOUT = 90.0
DELIVERY_TIMEOUT = 90.0
ALICE_ZONE = "Asia/Shanghai"
INGEST_PATH = "/api/v1/integrations/alertmanager"


def quiet_window_around_now(zone: str) -> str:
    """A quiet-hours window from an hour ago to three hours on, in zone's wall clock."""
    now = datetime.now(ZoneInfo(zone))
    return f"{now - timedelta(hours=1):%H:%M}-{now + timedelta(hours=3):%H:%M}"


def alertmanager_config(url: str, token: str) -> dict[str, Any]:
    """Every alert to Tocsin's ingest URL with the bearer token, flushed and repeated quickly."""
    return {
        "route": {
            "receiver": "tocsin",
            "group_by": ["alertname"],
            "group_wait": "1s",
            "group_interval": "2s",
            "repeat_interval": "2s",
        },
        "receivers": [
            {
                "name": "tocsin",
                "webhook_configs": [
                    {
                        "url": url,
                        "send_resolved": True,
                        "max_alerts": 0,
                        "http_config": {"authorization": {"credentials": token}},
                    }
                ],
            }
        ],
    }


@asynccontextmanager
async def alertmanager(
    home: Path, url: str, token: str, client: httpx.AsyncClient
) -> AsyncIterator[Daemon]:
    """A real Alertmanager whose one receiver is Tocsin's ingest endpoint."""
    binary = require_tool("prometheus-alertmanager", "alertmanager")
    config = home / "alertmanager.yml"
    config.write_text(yaml.safe_dump(alertmanager_config(url, token)), encoding="utf-8")
    config.chmod(0o600)  # it holds the token
    port = free_port()
    async with daemon(
        binary,
        f"--config.file={config}",
        f"--storage.path={home / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        port=port,
        log=home / "alertmanager.log",
        client=client,
    ) as running:
        yield running


async def seed(cli: Cli) -> str:
    """Migrates, adds alice (quiet now) and bob to db-oncall; returns an ingest token."""
    await cli.ok("db", "upgrade")
    await cli.ok(
        "users", "upsert", "alice", "--email", "alice@example.com", "--wecom-userid", "alice",
        "--timezone", ALICE_ZONE, "--quiet-hours", quiet_window_around_now(ALICE_ZONE),
        "--channels", "email,wecom",
    )  # fmt: skip
    await cli.ok(
        "users", "upsert", "bob", "--email", "bob@example.com", "--wecom-userid", "bob",
        "--channels", "email,wecom",
    )  # fmt: skip
    group = await cli.json("groups", "upsert", "db-oncall", "--member", "alice", "--member", "bob")
    assert group["members"] == ["alice", "bob"]
    token: str = (await cli.json("tokens", "create", "am", "--scope", "ingest"))["token"]
    return token


async def start_tocsin(cli: Cli, stack: AsyncExitStack) -> tuple[Server, str]:
    """Starts `tocsin run` with the API on a free port; returns it and the API's URL."""
    env = {**cli.env, "API_PORT": "0", "RELAY_INTERVAL": "0.2s", "LOG_FORMAT": "json"}
    server = await Server.start("run", env=env, cwd=cli.cwd)
    stack.push_async_callback(server.kill)

    async def serving() -> str | None:
        assert server.running, f"tocsin run exited early:\n{server.stderr[-3000:]}"
        for line in list(server.lines):
            if '"api_serving"' in line:
                url: str = json.loads(line)["url"]
                return url
        return None

    return server, await eventually(serving, timeout=START_TIMEOUT, interval=0.25)


def ingest_logs(server: Server) -> list[dict[str, Any]]:
    """Tocsin's log line for each webhook notification it took in."""
    return [json.loads(line) for line in list(server.lines) if '"alertmanager_ingest"' in line]


def fire(starts: datetime, ends: datetime | None = None) -> list[dict[str, Any]]:
    """The alert posted to Alertmanager's API; with ends in the past it is resolved."""
    alert: dict[str, Any] = {
        "labels": {"alertname": "DiskFull", "severity": "warning", "team": "db-oncall"},
        "annotations": {"summary": "Disk full on db-2", "description": "98% used"},
        "startsAt": starts.isoformat(),
        "generatorURL": "http://prometheus.test/graph",
    }
    if ends is not None:
        alert["endsAt"] = ends.isoformat()
    return [alert]


async def notifications_of(cli: Cli, alert_id: int) -> dict[tuple[str, str], dict[str, Any]]:
    rows = await cli.json("notifications", "list", "--alert", str(alert_id))
    return {(row["recipient"], row["channel"]): row for row in rows}


async def test_alertmanager_notifies_the_team_and_resolves_what_quiet_hours_hold(
    tmp_path: Path, cli: Cli, smtp_server: SmtpSink, wecom_server: WeComRobot
) -> None:
    require_tool("prometheus-alertmanager", "alertmanager")
    token = await seed(cli)
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=10, trust_env=False))
        server, api_url = await start_tocsin(cli, stack)
        manager = await stack.enter_async_context(
            alertmanager(tmp_path, api_url + INGEST_PATH, token, client)
        )
        starts = datetime.now(UTC) - timedelta(minutes=1)
        posted = await client.post(f"{manager.url}/api/v2/alerts", json=fire(starts))
        assert posted.status_code == 200, posted.text

        # bob, outside quiet hours, gets the e-mail and the WeCom post.
        async def bob_notified() -> bool:
            assert server.running, server.stderr[-3000:]
            mailed = any("bob@example.com" in rcpts for _, rcpts in smtp_server.envelopes)
            posts = wecom_server.received.get("k1", [])
            mentioned = any("bob" in mentions(p["markdown"]["content"]) for p in posts)
            return mailed and mentioned

        await eventually(bob_notified, timeout=DELIVERY_TIMEOUT, interval=0.5)
        assert not any("alice@example.com" in rcpts for _, rcpts in smtp_server.envelopes)

        # Alertmanager repeats the group (repeat_interval 2s): Tocsin stores nothing new.
        async def repeated() -> bool:
            return any(log["repeated"] >= 1 for log in ingest_logs(server))

        await eventually(repeated, timeout=DELIVERY_TIMEOUT, interval=0.5)
        alerts = await cli.json("alerts", "list")
        assert len(alerts) == 1, alerts
        alert_id = alerts[0]["id"]
        assert sum(log["created"] for log in ingest_logs(server)) == 1
        held = await notifications_of(cli, alert_id)
        for channel in ("email", "wecom"):
            assert held[("alice", channel)]["state"] == "PENDING", held
            assert held[("alice", channel)]["deferred"], held

        # Resolved in Alertmanager: its resolved notification suppresses alice's held rows.
        resolved = fire(starts, ends=datetime.now(UTC) - timedelta(seconds=1))
        posted = await client.post(f"{manager.url}/api/v2/alerts", json=resolved)
        assert posted.status_code == 200, posted.text

        async def suppressed() -> dict[tuple[str, str], dict[str, Any]] | None:
            rows = await notifications_of(cli, alert_id)
            alice = [rows[("alice", channel)] for channel in ("email", "wecom")]
            done = all(
                (row["state"], row["reason"]) == ("SUPPRESSED", "alert_resolved") for row in alice
            )
            return rows if done else None

        rows = await eventually(suppressed, timeout=DELIVERY_TIMEOUT, interval=1.0)
        assert {rows[("bob", channel)]["state"] for channel in ("email", "wecom")} <= {
            "SENDING",
            "SENT",
        }, rows
        assert any(log["resolved"] == 1 for log in ingest_logs(server))
        assert len(await cli.json("alerts", "list")) == 1
        assert not any("alice@example.com" in rcpts for _, rcpts in smtp_server.envelopes)
        code = await server.stop(timeout=60)
        assert code == 0, server.stderr[-3000:]
