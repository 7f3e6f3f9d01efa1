"""Benchmarks the WeCom robot budget shared by worker processes, and one alert to many people.

Against a loopback robot that allows LIMIT posts per key in any window (WeCom's 20 a minute;
--window scales the window down so a run takes seconds, the same for the robot and for
WECOM_RATE_LIMIT), on PostgreSQL and a broker, with one `tocsin producer` (it runs the relay)
and W `tocsin worker --channel wecom` processes:

1. **Budget:** A alerts with one recipient each (A posts) over K robot keys (a pool), with 1
   and 4 worker processes. Printed per key: posts per window on average from the first post
   to the last, and the most the robot saw in any window, beside the ceiling (LIMIT per key
   per window). The most must never pass the ceiling, and the robot must never answer 45009.
2. **Fan-out:** one alert to R recipients (each with a WeCom userid) sharing one robot: how
   many posts it took, whether every recipient was mentioned once, and the time from the
   alert's creation to the post carrying the last mention.

    .venv/bin/python -m benchmarks.wecom_budget [--window 60] [--broker redis] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import IO

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import col

from benchmarks.brokers import (
    BROKERS,
    TOCSIN,
    env_for,
    fresh_database,
    purge_queues,
    settings_for,
    stop_processes,
)
from pipeline.config import Settings
from pipeline.db import upgrade
from pipeline.models import (
    Alert,
    AlertRecipient,
    Notification,
    NotificationSettings,
    Recipient,
    RecipientContact,
    State,
)
from tests.support.wecom_server import WeComRobot, mentions

LIMIT = 20
TERMINAL = [State.SENT.value, State.DEAD.value, State.SUPPRESSED.value]


@dataclass(frozen=True)
class BudgetRun:
    """Posts through a pool of keys by W worker processes, as the robot saw them."""

    workers: int
    keys: int
    posts: int
    sent: int
    per_window_by_key: list[float]
    most_in_a_window_by_key: list[int]
    refused_45009: int
    ceiling_per_key: int = LIMIT


@dataclass(frozen=True)
class FanOutRun:
    """One alert to many recipients over one robot."""

    recipients: int
    posts: int
    sent: int
    everyone_mentioned_once: bool
    seconds_to_last_mention: float


async def seed(database_url: str, alerts: int, recipients_per_alert: int, userids: bool) -> None:
    """Alerts, each to its own recipients who get WeCom only (with a userid when asked)."""
    engine = create_async_engine(database_url)
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            total = alerts * recipients_per_alert
            people = [
                {"username": f"p{i:06d}", "created_at": now, "updated_at": now}
                for i in range(total)
            ]
            ids = list(
                (await conn.execute(insert(Recipient).returning(col(Recipient.id)), people))
                .scalars()
                .all()
            )
            settings = [
                {"recipient_id": r, "channels": "wecom", "timezone": "UTC", "updated_at": now}
                for r in ids
            ]
            await conn.execute(insert(NotificationSettings), settings)
            if userids:
                contacts = [
                    {"recipient_id": r, "kind": "wecom_userid", "address": f"wx{i:06d}"}
                    for i, r in enumerate(ids)
                ]
                await conn.execute(insert(RecipientContact), contacts)
            rows = [
                {"title": f"alert {i}", "body": "Disk almost full.", "severity": "warning",
                 "created_at": now}
                for i in range(alerts)
            ]  # fmt: skip
            alert_ids = list(
                (await conn.execute(insert(Alert).returning(col(Alert.id)), rows)).scalars().all()
            )
            pairs = [
                {"alert_id": alert_ids[i // recipients_per_alert], "recipient_id": r}
                for i, r in enumerate(ids)
            ]
            await conn.execute(insert(AlertRecipient), pairs)
    finally:
        await engine.dispose()


async def run_processes(
    settings: Settings, robot: WeComRobot, keys: Sequence[str], workers: int, rows: int
) -> int:
    """Runs one producer and W wecom workers until `rows` rows are terminal; returns SENT."""
    env = {k: v for k, v in env_for(settings, 0).items() if not k.startswith("EMAIL_")} | {
        "WECOM_ENABLED": "true",
        "WECOM_WEBHOOK_URL": ",".join(robot.webhook_url(key) for key in keys),
        "WECOM_ALLOWED_HOSTS": robot.allow_entry,
        "WECOM_RATE_LIMIT": f"{LIMIT}/{robot.window:g}s",
        "RETRY_JITTER": "0",
    }
    commands = [["producer"]] + [["worker", "--channel", "wecom"]] * workers
    logs = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally
    processes = [
        await asyncio.create_subprocess_exec(
            TOCSIN, *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=logs
        )
        for command in commands
    ]
    engine = create_async_engine(settings.database_url.get_secret_value())
    try:
        while True:
            async with engine.connect() as conn:
                found = await conn.execute(
                    select(col(Notification.state), func.count())
                    .where(col(Notification.channel) == "wecom")
                    .group_by(col(Notification.state))
                )
                states = Counter({state: count for state, count in found})
            if sum(states[s] for s in TERMINAL) >= rows:
                if states[State.SENT.value] < rows:
                    print(f"not all sent: {dict(states)}", file=sys.stderr)
                return states[State.SENT.value]
            _fail_if_one_exited(processes, logs)
            await asyncio.sleep(0.5)
    finally:
        await stop_processes(processes)
        await engine.dispose()
        logs.close()


def _fail_if_one_exited(processes: list[asyncio.subprocess.Process], logs: IO[bytes]) -> None:
    for process in processes:
        if process.returncode is not None:
            logs.seek(0)
            told = logs.read().decode(errors="replace")[-2000:]
            raise SystemExit(f"a tocsin process exited with {process.returncode}:\n{told}")


async def budget_run(
    broker: str, window: float, workers: int, keys: int, windows: int
) -> BudgetRun:
    """A run of `windows` windows' worth of posts over a pool of `keys` keys."""
    names = [f"key{n}" for n in range(1, keys + 1)]
    posts = LIMIT * keys * windows
    async with (
        WeComRobot(keys=names, rate_per_minute=LIMIT, window=window) as robot,
        fresh_database() as database_url,
    ):
        settings = settings_for(database_url, BROKERS[broker])
        await asyncio.to_thread(upgrade, settings)
        await purge_queues(settings)
        await seed(database_url, posts, 1, userids=False)
        sent = await run_processes(settings, robot, names, workers, posts)
    per_window = []
    for name in names:
        times = robot.arrivals.get(name, [])
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        # Posts after the first window's burst, per window: the steady rate.
        per_window.append((len(times) - LIMIT) / span * window if span else 0.0)
    return BudgetRun(
        workers=workers,
        keys=keys,
        posts=sum(len(robot.arrivals.get(n, [])) for n in names),
        sent=sent,
        per_window_by_key=[round(rate, 1) for rate in per_window],
        most_in_a_window_by_key=[robot.most_in_any_window(n) for n in names],
        refused_45009=robot.too_fast,
    )


async def fan_out_run(broker: str, window: float, recipients: int, workers: int) -> FanOutRun:
    """One alert to `recipients` people on one robot."""
    async with (
        WeComRobot(keys=["key1"], rate_per_minute=LIMIT, window=window) as robot,
        fresh_database() as database_url,
    ):
        settings = settings_for(database_url, BROKERS[broker])
        await asyncio.to_thread(upgrade, settings)
        await purge_queues(settings)
        started = time.monotonic()
        await seed(database_url, 1, recipients, userids=True)
        sent = await run_processes(settings, robot, ["key1"], workers, recipients)
    bodies = robot.received.get("key1", [])
    mentioned = Counter(m for body in bodies for m in mentions(body["markdown"]["content"]))
    arrivals = robot.arrivals.get("key1", [started])
    return FanOutRun(
        recipients=recipients,
        posts=len(bodies),
        sent=sent,
        everyone_mentioned_once=len(mentioned) == recipients and set(mentioned.values()) == {1},
        seconds_to_last_mention=round(arrivals[-1] - started, 2),
    )


async def run(args: argparse.Namespace) -> dict[str, object]:
    """Every budget run, then the fan-out."""
    budget = [
        await budget_run(args.broker, args.window, workers, keys, args.windows)
        for workers, keys in ((1, 1), (4, 1), (4, 2))
    ]
    fan_out = await fan_out_run(args.broker, args.window, args.recipients, 4)
    return {
        "broker": args.broker,
        "limit": f"{LIMIT} posts per key per {args.window:g}s",
        "budget": [asdict(r) for r in budget],
        "fan_out": asdict(fan_out),
    }


def as_text(report: dict[str, object]) -> str:
    """The report as lines for a person."""
    lines = [f"WeCom budget on PostgreSQL + {report['broker']}, {report['limit']}"]
    lines.append("workers keys  posts   sent  per window by key (ceiling)  most in a window  45009")
    for r in report["budget"]:  # type: ignore[attr-defined]
        lines.append(
            f"{r['workers']:>7} {r['keys']:>4} {r['posts']:>6} {r['sent']:>6}  "
            f"{r['per_window_by_key']!s:>20} ({r['ceiling_per_key']})  "
            f"{r['most_in_a_window_by_key']!s:>16}  {r['refused_45009']:>5}"
        )
    f = report["fan_out"]
    lines.append(
        f"one alert to {f['recipients']} recipients over one robot: {f['posts']} posts, "  # type: ignore[index]
        f"everyone mentioned once: {f['everyone_mentioned_once']}, "  # type: ignore[index]
        f"last mention after {f['seconds_to_last_mention']} s"  # type: ignore[index]
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=6.0, help="seconds (WeCom: 60)")
    parser.add_argument("--windows", type=int, default=4, help="windows' worth of posts per run")
    parser.add_argument("--broker", choices=sorted(BROKERS), default="redis")
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmark and prints its report."""
    args = parse_args(argv)
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=2) if args.json else as_text(report))


if __name__ == "__main__":
    main()
