"""Replay and purge have brakes: a selection, --yes for everything, a pace, and an audit record."""

from __future__ import annotations

import getpass
import time
from pathlib import Path

from tests.integration.cli import Cli, Server
from tests.integration.test_cli import assert_one_line_error, words
from tests.support.smtp_server import SmtpSink
from tests.support.waiting import eventually

DEAD = 10
RATE = 5.0  # per second
RELAY_INTERVAL = 0.2  # seconds
# The replay stamps due times from the wall clock, the sink from the monotonic one.
CLOCK_SLACK = 0.05


async def dead_letters(cli: Cli, smtp: SmtpSink, count: int = DEAD) -> list[int]:
    """Makes count e-mail dead letters (550) and returns their ids."""
    await cli.ok("db", "upgrade")
    await cli.ok(*words("users upsert erin --email erin@example.com --channels email"))
    for number in range(count):
        await cli.ok("alerts", "create", "--title", f"Disk {number}", "--recipient", "erin")
    smtp.respond_with(550, "5.1.1 mailbox unavailable")
    await cli.ok("run", "--drain")
    smtp.reset()
    dead = await cli.json("dlq", "list")
    assert len(dead) == count
    return sorted(d["id"] for d in dead)


async def test_unbounded_replay_and_purge_are_refused_without_yes(
    cli: Cli, smtp_server: SmtpSink
) -> None:
    await dead_letters(cli, smtp_server, count=2)
    for verb in ("replay", "purge"):
        nothing = await cli("dlq", verb)
        assert_one_line_error(nothing, "--id", "--all --yes")
        assert nothing.code == 2
        everything = await cli("dlq", verb, "--all")  # no terminal to ask on
        assert_one_line_error(everything, "--yes")
        assert everything.code == 2
        assert "?" not in everything.stdout  # no prompt written where JSON would go
    assert len(await cli.json("dlq", "list")) == 2
    assert await cli.json("audit") == []


async def test_a_filtered_purge_needs_no_yes_and_is_audited(
    cli: Cli, smtp_server: SmtpSink
) -> None:
    ids = await dead_letters(cli, smtp_server, count=2)
    purged = await cli.json("dlq", "purge", "--channel", "email", "--reason", "smtp_5xx")
    assert purged["ids"] == ids
    (record,) = await cli.json("audit")
    assert (record["action"], record["count"], record["ids"]) == ("purge", 2, ids)
    assert record["selection"] == {"channel": "email", "reason": "smtp_5xx"}
    assert record["actor"] == f"os:{getpass.getuser()}"
    table = await cli.ok("audit")
    assert "purge" in table.stdout


async def test_replay_all_yes_is_audited_and_paced_at_the_smtp_server(
    cli: Cli, smtp_server: SmtpSink, tmp_path: Path
) -> None:
    ids = await dead_letters(cli, smtp_server)
    bad_rate = await cli("dlq", "replay", "--all", "--yes", "--rate", "fast")
    assert_one_line_error(bad_rate, "--rate")

    # The pipeline runs while the replay is made, as it would in production.
    env = {**cli.env, "RELAY_INTERVAL": f"{RELAY_INTERVAL}s", "METRICS_PORT": "-1"}
    server = await Server.start("run", env=env, cwd=tmp_path)
    try:
        started = time.monotonic()
        replayed = await cli.json("dlq", "replay", "--all", "--yes", "--rate", f"{RATE:g}/s")
        assert replayed["ids"] == ids

        async def all_sent() -> bool:
            return len(smtp_server.messages) >= DEAD

        await eventually(all_sent, timeout=90)
    finally:
        await server.stop()
    (record,) = await cli.json("audit")
    assert (record["action"], record["count"], record["ids"]) == ("replay", DEAD, ids)
    assert record["selection"] == {"all": True, "rate": f"{RATE:g}/s"}
    assert len(smtp_server.messages) == DEAD
    assert len({m["Message-ID"] for m in smtp_server.messages}) == DEAD
    # Row k falls due k/RATE after the replay began and is never sent before it: the k-th
    # message to arrive cannot come sooner, however fast or slow the machine is.
    arrived = sorted(at - started for at in smtp_server.received_at)
    early = [(k, round(at, 3)) for k, at in enumerate(arrived) if at < k / RATE - CLOCK_SLACK]
    assert not early, early
