"""Benchmarks the embedded default (SQLite file + memory:// queue) end to end, with ceilings.

Run from the repository root:

    .venv/bin/python -m benchmarks.embedded --notifications 3000 [--json] [--loop uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr
from sqlalchemy import func, insert, select
from sqlmodel import col

from benchmarks import ceilings
from benchmarks.results import Figure, Results, Shape, as_json, as_text
from benchmarks.servers import UNLIMITED, ServerProcess
from channels.email import EmailSecurity, EmailSettings
from channels.registry import CHANNELS
from channels.wecom import WeComSettings
from pipeline.app import App
from pipeline.budget import RateLimit
from pipeline.channel_set import ChannelSet
from pipeline.config import Settings
from pipeline.db import upgrade
from pipeline.logs import configure_logging
from pipeline.models import (
    Alert,
    AlertRecipient,
    Notification,
    NotificationSettings,
    Recipient,
    RecipientContact,
)

T = TypeVar("T")

RATE_NOTE = (
    "throughput run: WeComSettings(rate_limit=10**9/60s) takes the product's shared per-key "
    "WeCom budget (default 20/60s) out of the way, and the WeCom robot's per-key limit is "
    "raised to 10**9; real WeCom allows 20 messages per minute per robot key. One alert's "
    "recipients share a robot post, so WeCom rows/s counts rows, not posts"
)


# --- setup -------------------------------------------------------------------------------


def build_channels(smtp_port: int, webhook_url: str | None = None) -> ChannelSet:
    """Every channel on (WeCom with a webhook URL), pointed at the loopback servers, the WeCom
    limiter out of the way."""
    defaults = {channel.name: channel.settings_class(_env_file=None) for channel in CHANNELS}
    return ChannelSet(
        CHANNELS,
        defaults
        | {
            "email": EmailSettings(
                _env_file=None,
                enabled=True,
                smtp_server="127.0.0.1",
                smtp_port=smtp_port,
                security=EmailSecurity.NONE,
            ),
            "wecom": WeComSettings(
                _env_file=None,
                enabled=webhook_url is not None,
                webhook_url=SecretStr(webhook_url or ""),
                allowed_hosts=(webhook_url or "qyapi.weixin.qq.com").split("/cgi-bin", 1)[0],
                rate_limit=RateLimit(UNLIMITED, timedelta(minutes=1)),
            ),
        },
    )


def build_settings(tmp: Path, args: argparse.Namespace) -> Settings:
    """Returns the embedded default pointed at the loopback servers, tuned for throughput."""
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp}/bench.db",
        queue_url="memory://",
        # The relay publishes everything before a worker runs: the queue must hold it all.
        memory_queue_size=max(10_000, args.notifications * 2),
        metrics_port=-1,
        log_level="WARNING",
        retry_jitter=0,
        **({"worker_concurrency": args.concurrency} if args.concurrency else {}),
    )


async def seed_recipients(app: App, shape: Shape) -> list[int]:
    """Inserts the recipients, each reachable on every channel, in one transaction."""
    now = app.clock.now()
    rows = [
        {
            "username": f"bench{i:05d}",
            "created_at": now,
            "updated_at": now,
        }
        for i in range(shape.recipients)
    ]
    async with app.sessions() as session, session.begin():
        await session.execute(insert(Recipient), rows)
        found = (await session.execute(select(col(Recipient.id)))).scalars()
        ids = [rid for rid in found if rid is not None]
        await session.execute(
            insert(RecipientContact),
            [
                {"recipient_id": rid, "kind": kind, "address": address}
                for i, rid in enumerate(ids)
                for kind, address in (
                    ("email", f"bench{i:05d}@example.test"),
                    ("wecom_userid", f"bench{i:05d}"),
                )
            ],
        )
        await session.execute(
            insert(NotificationSettings),
            [
                {
                    "recipient_id": rid,
                    "channels": ",".join(shape.channels),
                    "timezone": "UTC",
                    "updated_at": now,
                }
                for rid in ids
            ],
        )
    return ids


async def seed_alerts(app: App, shape: Shape, recipient_ids: list[int], tag: str) -> list[int]:
    """Inserts A unprocessed alerts addressed to every recipient; returns their ids."""
    now = app.clock.now()
    async with app.sessions() as session, session.begin():
        ids: list[int] = []
        for i in range(shape.alerts):
            result = await session.execute(
                insert(Alert)
                .values(
                    title=f"{tag} alert {i}: disk almost full",
                    body=f"Volume /data on host-{i} is 93% full.\nCleanup needed within the hour.",
                    severity="warning",
                    created_at=now,
                )
                .returning(Alert.__table__.c.id)  # type: ignore[attr-defined]
            )
            ids.append(result.scalar_one())
        await session.execute(
            insert(AlertRecipient),
            [{"alert_id": a, "recipient_id": r} for a in ids for r in recipient_ids],
        )
    return ids


async def states_of(app: App, alert_ids: list[int], channel: str | None = None) -> dict[str, int]:
    """Counts the notifications of these alerts by state (for one channel, or all)."""
    statement = (
        select(col(Notification.state), func.count())
        .where(col(Notification.alert_id).in_(alert_ids))
        .group_by(col(Notification.state))
    )
    if channel is not None:
        statement = statement.where(col(Notification.channel) == channel)
    async with app.sessions() as session:
        return {state: count for state, count in await session.execute(statement)}


# --- timing --------------------------------------------------------------------------------


class Profiler:
    """Writes one cProfile file per timed step into a directory, when one is given."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def step(self, key: str) -> Iterator[None]:
        """Profiles the body into DIR/key.prof (does nothing without a directory)."""
        if self.directory is None:
            yield
            return
        profile = cProfile.Profile()
        profile.enable()
        try:
            yield
        finally:
            profile.disable()
            profile.dump_stats(str(self.directory / f"{key}.prof"))


async def timed(profiler: Profiler, key: str, work: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    """Runs work once and returns its result and wall-clock seconds."""
    with profiler.step(key):
        started = time.perf_counter()
        result = await work()
        seconds = time.perf_counter() - started
    return result, seconds


async def relay_all(app: App) -> int:
    """Ticks the relay until a tick publishes nothing; returns how many rows it published."""
    relay = app.relay()
    published = 0
    while (report := await relay.tick()).published:
        published += report.published
    return published


# --- the run ------------------------------------------------------------------------------


async def produce_and_relay(
    app: App, results: Results, profiler: Profiler, ids: list[int], tag: str
) -> list[int]:
    """Seeds one pass of alerts, then times the producer and the relay over them."""
    shape = results.shape
    alert_ids = await seed_alerts(app, shape, ids, tag)
    report, seconds = await timed(profiler, f"{tag}_producer", app.producer().run)
    if report.created != shape.total:
        raise RuntimeError(f"producer created {report.created} of {shape.total}")
    results.figures.append(
        Figure(f"{tag}_producer", f"producer rows/s ({tag})", report.created, seconds)
    )
    published, seconds = await timed(profiler, f"{tag}_relay", lambda: relay_all(app))
    results.figures.append(
        Figure(f"{tag}_relay", f"relay publish rows/s ({tag})", published, seconds)
    )
    return alert_ids


async def deliver(
    app: App, results: Results, profiler: Profiler, alert_ids: list[int], channel: str | None
) -> None:
    """Times one worker burst over one channel's queue (or all channels') and checks outcomes."""
    key = f"deliver_{channel or 'all'}"
    worker = app.worker([channel] if channel else None)
    recorded, seconds = await timed(profiler, key, worker.run_until_idle)
    states = await states_of(app, alert_ids, channel)
    label = f"{channel or 'all channels'} deliveries/s"
    figure = Figure(key, label, states.get("SENT", 0), seconds, states)
    if recorded != sum(states.values()):
        figure.states["recorded_by_worker"] = recorded
    results.figures.append(figure)


async def measure_ceilings(app: App, results: Results, tmp: Path, count: int) -> None:
    """Measures the pieces alone, with the same servers, after the pipeline is done."""
    email = app.channels.settings["email"]
    wecom = app.channels.settings["wecom"]
    assert isinstance(email, EmailSettings) and isinstance(wecom, WeComSettings)
    host, port = email.smtp_server, email.smtp_port
    results.ceilings.append(await ceilings.smtp(host, port, count, connections=1))
    results.ceilings.append(await ceilings.smtp(host, port, count, connections=email.pool_size))
    url = wecom.webhook_url.get_secret_value()
    results.ceilings.append(await ceilings.http(url, count, concurrency=8))
    results.ceilings.extend(await ceilings.sqlite(str(tmp / "ceiling.db"), count))


async def run_pipeline(app: App, results: Results, args: argparse.Namespace, tmp: Path) -> None:
    """Pass 1 delivers channel by channel; pass 2 delivers all channels at once."""
    profiler = Profiler(Path(args.profile_dir) if args.profile_dir else None)
    await asyncio.to_thread(upgrade, app.settings)
    await app.queue.connect()
    recipient_ids = await seed_recipients(app, results.shape)
    first = await produce_and_relay(app, results, profiler, recipient_ids, "pass1")
    for channel in results.shape.channels:
        await deliver(app, results, profiler, first, channel)
    second = await produce_and_relay(app, results, profiler, recipient_ids, "pass2")
    await deliver(app, results, profiler, second, None)
    if not args.skip_ceilings:
        await measure_ceilings(app, results, tmp, args.ceiling_count)


async def run(args: argparse.Namespace, smtp: ServerProcess, wecom: ServerProcess) -> Results:
    """Runs the whole benchmark against servers already started; returns what it measured."""
    shape = Shape.for_total(args.notifications, args.recipients)
    with tempfile.TemporaryDirectory(prefix="tocsin-bench-") as name:
        tmp = Path(name)
        settings = build_settings(tmp, args)
        channels = build_channels(smtp.port, wecom.webhook_url)
        app = App.create(settings, channels=channels)
        results = Results(shape, setup_of(settings, channels, args))
        try:
            await run_pipeline(app, results, args, tmp)
        finally:
            await app.aclose()
    return results


def revision() -> str:
    """Returns the checked-out commit, marked dirty when product code has local changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "pipeline", "workers", "channels"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' (product code modified)' if dirty else ''}"


def setup_of(settings: Settings, channels: ChannelSet, args: argparse.Namespace) -> dict[str, Any]:
    """Describes the configuration the figures were measured with."""
    email = channels.settings["email"]
    wecom = channels.settings["wecom"]
    assert isinstance(email, EmailSettings) and isinstance(wecom, WeComSettings)
    return {
        "revision": revision(),
        "database": "SQLite file in a temp dir (WAL, synchronous=NORMAL)",
        "queue": "memory://",
        "metrics_port": settings.metrics_port,
        "event_loop": args.loop,
        "python": sys.version.split()[0],
        "worker_concurrency": settings.worker_concurrency,
        "worker_batch_size": settings.worker_batch_size,
        "producer_batch_size": settings.producer_batch_size,
        "relay_batch_size": settings.relay_batch_size,
        "email_pool_size": email.pool_size,
        "wecom_concurrency": wecom.concurrency,
        "wecom_rate_limit": str(wecom.rate_limit),
        "servers": "aiosmtpd SmtpSink and WeComRobot, each in its own process on 127.0.0.1",
        "note": RATE_NOTE,
    }


# --- entry point ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embedded", description=__doc__)
    parser.add_argument("--notifications", type=int, default=3000, help="N (rounded to A x R x 3)")
    parser.add_argument("--recipients", type=int, default=100, help="R, at most (default 100)")
    parser.add_argument("--ceiling-count", type=int, default=2000, help="operations per ceiling")
    parser.add_argument("--skip-ceilings", action="store_true")
    parser.add_argument("--concurrency", type=int, default=None, help="WORKER_CONCURRENCY")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop (the tocsin CLI uses asyncio.run; the ceilings doc used uvloop)",
    )
    parser.add_argument("--profile-dir", help="write one cProfile file per timed step here")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging("WARNING")
    use_uvloop = args.loop == "uvloop"
    smtp = ServerProcess.start("smtp", use_uvloop=use_uvloop)
    wecom = ServerProcess.start("wecom", use_uvloop=use_uvloop)
    try:
        if use_uvloop:
            import uvloop

            results = uvloop.run(run(args, smtp, wecom))
        else:
            results = asyncio.run(run(args, smtp, wecom))
    finally:
        servers = {"smtp": smtp.stop(), "wecom": wecom.stop()}
    results.servers = servers
    print(json.dumps(as_json(results), indent=2) if args.json else as_text(results))


if __name__ == "__main__":
    main()
