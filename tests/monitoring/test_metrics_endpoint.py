"""`tocsin run` serves /metrics with every series pre-created and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.cli import Cli, Server, base_env, channel_env, record_alert
from tests.support.ports import free_port
from tests.support.smtp_server import SmtpSink
from tests.support.waiting import eventually
from tests.support.wecom_server import WeComRobot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

JOB = "send_alert_notifications"
ATTEMPTS = "tocsin_delivery_attempts_total"
# Both deliveries recorded: the scrape to judge comes after the last of them, at any speed.
SENT_LINES = tuple(
    f'{ATTEMPTS}{{channel="{channel}",outcome="sent",reason="none"}} 1.0'
    for channel in ("system", "email")
)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# Series nothing touches in this test: exposed at 0 from the start, never missing.
PRE_CREATED_AT_ZERO: list[tuple[str, dict[str, str]]] = [
    (ATTEMPTS, {"channel": "email", "outcome": "permanent", "reason": "smtp_5xx"}),
    (ATTEMPTS, {"channel": "email", "outcome": "transient", "reason": "smtp_4xx"}),
    (ATTEMPTS, {"channel": "wecom", "outcome": "transient", "reason": "wecom_6000"}),
    (ATTEMPTS, {"channel": "wecom", "outcome": "rate_limited", "reason": "wecom_45009"}),
    (ATTEMPTS, {"channel": "wecom", "outcome": "sent", "reason": "none"}),
    ("tocsin_dead_lettered_total", {"channel": "wecom", "reason": "wecom_93000"}),
    ("tocsin_retries_scheduled_total", {"channel": "email", "reason": "smtp_4xx"}),
    ("tocsin_dead_letters_replayed_total", {"channel": "email"}),
    ("tocsin_notifications_suppressed_total", {"channel": "email", "reason": "no_contact"}),
    ("scheduler_job_failed_total", {"job": JOB}),
]
# Series that must exist at once (their value depends on how fast the first pass is).
PRE_CREATED: list[tuple[str, dict[str, str]]] = [
    ("scheduler_job_success_total", {"job": JOB}),
    ("tocsin_notifications_created_total", {"channel": "system"}),
    ("tocsin_notifications_created_total", {"channel": "email"}),
    (ATTEMPTS, {"channel": "system", "outcome": "sent", "reason": "none"}),
    (ATTEMPTS, {"channel": "email", "outcome": "sent", "reason": "none"}),
]
# After the start-up producer pass has delivered bob's alert on system and email.
AFTER_DELIVERY: list[tuple[str, dict[str, str], float]] = [
    ("scheduler_job_success_total", {"job": JOB}, 1.0),
    ("scheduler_job_failed_total", {"job": JOB}, 0.0),
    ("tocsin_producer_alerts_processed_total", {}, 1.0),
    ("tocsin_notifications_created_total", {"channel": "system"}, 1.0),
    ("tocsin_notifications_created_total", {"channel": "email"}, 1.0),
    ("tocsin_notifications_created_total", {"channel": "wecom"}, 1.0),
    ("tocsin_notifications_suppressed_total", {"channel": "wecom", "reason": "opted_out"}, 1.0),
    (ATTEMPTS, {"channel": "system", "outcome": "sent", "reason": "none"}, 1.0),
    (ATTEMPTS, {"channel": "email", "outcome": "sent", "reason": "none"}, 1.0),
    (ATTEMPTS, {"channel": "wecom", "outcome": "sent", "reason": "none"}, 0.0),
    ("tocsin_relay_published_total", {"channel": "email"}, 1.0),
    ("tocsin_delivery_latency_seconds_count", {"channel": "email"}, 1.0),
]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, keyed by name and label set."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, labels: dict[str, str]) -> float | None:
    """The value of one series, or None when it is not exposed."""
    return found.get((name, frozenset(labels.items())))


async def scrape(client: httpx.AsyncClient, url: str) -> str | None:
    """The /metrics text, or None while the server does not answer yet."""
    try:
        response = await client.get(url)
    except httpx.TransportError:
        return None
    return response.text if response.status_code == 200 else None


def json_log(lines: list[str]) -> list[dict[str, Any]]:
    """Parses every non-blank stderr line as one JSON log object, failing on any other line."""
    events = []
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"stderr line is not a JSON object: {line!r}")
        assert isinstance(record, dict), line
        assert {"event", "level", "timestamp"} <= record.keys(), record
        events.append(record)
    return events


async def test_run_serves_metrics_counts_deliveries_and_exits_cleanly_on_sigterm(
    tmp_path: Path, smtp_server: SmtpSink, wecom_server: WeComRobot
) -> None:
    """Pre-created series at 0, the start-up producer pass delivers, SIGTERM exits 0."""
    port = free_port()
    env = base_env(
        tmp_path,
        **channel_env(smtp_server, wecom_server),
        METRICS_PORT=str(port),
        METRICS_ADDR="127.0.0.1",
        RELAY_INTERVAL="0.2s",
        LOG_LEVEL="INFO",
        LOG_FORMAT="json",
    )
    cli = Cli(env, tmp_path)
    await cli.ok("db", "upgrade")
    await cli.ok(
        "users", "upsert", "bob", "--email", "bob@example.com", "--channels", "system,email"
    )
    # Recorded before `run` starts, around the CLI (which would expand it at once): the
    # producer is hourly, and also runs once at start-up; that pass expands it.
    record_alert(tmp_path, "Queue depth high", "bob")

    url = f"http://127.0.0.1:{port}/metrics"
    server = await Server.start("run", env=env, cwd=tmp_path)
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:

            async def answered() -> str | None:
                assert server.running, f"tocsin run exited early:\n{server.stderr[-3000:]}"
                return await scrape(client, url)

            async def delivered() -> str | None:
                text = await answered()
                done = text is not None and all(line in text for line in SENT_LINES)
                return text if done else None

            first = await eventually(answered, timeout=60)
            final = samples(await eventually(delivered, timeout=90))
    finally:
        code = await server.stop(timeout=30)
    assert code == 0, f"exit {code}:\n{server.stderr[-3000:]}"

    assert f'{ATTEMPTS}{{channel="email"' in first
    assert "tocsin_notifications_created_total" in first
    early = samples(first)
    for name, labels in PRE_CREATED_AT_ZERO:
        assert value(early, name, labels) == 0.0, (name, labels)
        assert value(final, name, labels) == 0.0, (name, labels)
    for name, labels in PRE_CREATED:
        assert value(early, name, labels) is not None, (name, labels)
    got = [(name, labels, value(final, name, labels)) for name, labels, _ in AFTER_DELIVERY]
    assert got == AFTER_DELIVERY

    (mail,) = smtp_server.messages
    assert (mail["To"], mail["Subject"]) == ("bob@example.com", "[WARNING] Queue depth high")
    assert wecom_server.received == {}

    events = json_log(server.lines)
    names = [e["event"] for e in events]
    for expected in ("metrics_serving", "job_run_success", "shutdown_requested", "stopped"):
        assert expected in names, names
    deliveries = [e for e in events if e["event"] == "delivery"]
    assert sorted(e["channel"] for e in deliveries) == ["email", "system"], deliveries
    for entry in deliveries:
        assert (entry["outcome"], entry["state"], entry["attempt"]) == ("sent", "SENT", 1), entry
        assert isinstance(entry["id"], int) and entry["duration_ms"] >= 0, entry
