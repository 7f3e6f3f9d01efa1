"""Benchmarks horizontally scaled workers on PostgreSQL with RabbitMQ and Redis.

For each broker and each worker count (1, 2, 4 processes), a fresh PostgreSQL database gets
N notifications (system + e-mail to a loopback SMTP sink in its own process); one
`tocsin producer` and W `tocsin worker` processes deliver them. Deliveries/s is measured from
the first to the last `sent_at`, so process start-up is not counted. The same run measures the
queue adapter's own publish+consume rate, for comparison.

    .venv/bin/python -m benchmarks.brokers --notifications 6000 [--brokers amqp,redis] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import col

from benchmarks.embedded import build_channels, seed_alerts, seed_recipients
from benchmarks.results import Shape
from benchmarks.servers import ServerProcess
from channels.registry import CHANNEL_NAMES
from pipeline.app import App
from pipeline.config import Settings
from pipeline.db import upgrade
from pipeline.logs import configure_logging
from pipeline.models import Notification, State
from pipeline.queues import open_queue
from pipeline.queues.base import encode_message

PG_ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
BROKERS = {"amqp": "amqp://guest:guest@127.0.0.1:5672/", "redis": "redis://127.0.0.1:6379/12"}
TOCSIN = str(Path(sys.executable).with_name("tocsin"))


@dataclass(frozen=True)
class Run:
    """One end-to-end run: broker, worker processes, and what it delivered how fast."""

    broker: str
    workers: int
    notifications: int
    sent: int
    seconds: float
    outcomes: dict[str, int]

    @property
    def rate(self) -> float:
        """Deliveries per second between the first and the last send."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """Creates a scratch PostgreSQL database and drops it afterwards."""
    name = f"tocsin_bench_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


def settings_for(database_url: str, queue_url: str) -> Settings:
    """Returns the settings every process of a run shares."""
    return Settings(
        _env_file=None,
        database_url=database_url,
        queue_url=queue_url,
        metrics_port=-1,
        log_level="WARNING",
        relay_interval="0.2s",
    )


def env_for(settings: Settings, smtp_port: int) -> dict[str, str]:
    """Returns the environment that gives a child process these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMAIL_", "WECOM_"))}
    env |= {
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "QUEUE_URL": settings.queue_url.get_secret_value(),
        "METRICS_PORT": "-1",
        "LOG_LEVEL": "WARNING",
        "RELAY_INTERVAL": "0.2s",
        "EMAIL_ENABLED": "true",
        "EMAIL_SMTP_SERVER": "127.0.0.1",
        "EMAIL_SMTP_PORT": str(smtp_port),
        "EMAIL_SECURITY": "none",
    }
    return env


async def purge_queues(settings: Settings) -> None:
    """Empties the broker's channel queues so a run starts clean."""
    queue = open_queue(settings, CHANNEL_NAMES)
    await queue.connect()
    try:
        while await queue.receive("system", 1000, 0.2) or await queue.receive("email", 1000, 0.2):
            pass
    finally:
        await queue.close()


async def delivered(app: App) -> tuple[int, int, float]:
    """Returns (rows not yet terminal, SENT rows, seconds from the first to the last send)."""
    async with app.sessions() as session:
        open_rows = await session.scalar(
            select(func.count()).where(
                col(Notification.state).not_in([s.value for s in State if s.terminal])
            )
        )
        sent, first, last = (
            await session.execute(
                select(
                    func.count(), func.min(Notification.sent_at), func.max(Notification.sent_at)
                ).where(col(Notification.state) == State.SENT.value)
            )
        ).one()
    span = (last - first).total_seconds() if first and last else 0.0
    return int(open_rows or 0), int(sent or 0), span


async def one_run(broker: str, workers: int, shape: Shape, smtp_port: int) -> Run:
    """Seeds a fresh database and times producer + W workers delivering it."""
    async with fresh_database() as database_url:
        settings = settings_for(database_url, BROKERS[broker])
        await asyncio.to_thread(upgrade, settings)
        await purge_queues(settings)
        channels = build_channels(smtp_port)
        app = App.create(settings, channels=channels, registry=CollectorRegistry())
        try:
            ids = await seed_recipients(app, shape)
            await seed_alerts(app, shape, ids, f"{broker}-{workers}")
            processes = await start_processes(settings, smtp_port, workers)
            try:
                _, sent, span = await wait_until_terminal(app, shape.total)
            finally:
                await stop_processes(processes)
            outcomes = await outcomes_of(app)
        finally:
            await app.aclose()
    return Run(broker, workers, shape.total, sent, span, outcomes)


async def outcomes_of(app: App) -> dict[str, int]:
    """Counts rows by "state/reason", so a run that did not send everything says why."""
    async with app.sessions() as session:
        rows = await session.execute(
            select(col(Notification.state), col(Notification.last_reason), func.count()).group_by(
                col(Notification.state), col(Notification.last_reason)
            )
        )
        return {f"{state}/{reason or '-'}": count for state, reason, count in rows}


async def start_processes(
    settings: Settings, smtp_port: int, workers: int
) -> list[asyncio.subprocess.Process]:
    """Starts one producer and W worker processes."""
    env = env_for(settings, smtp_port)
    commands = [["producer"]] + [["worker", "--channel", "system", "--channel", "email"]] * workers
    return [
        await asyncio.create_subprocess_exec(
            TOCSIN,
            *command,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for command in commands
    ]


async def wait_until_terminal(app: App, total: int, timeout: float = 600) -> tuple[int, int, float]:
    """Polls until `total` rows were sent and none is left open; returns the last reading."""
    deadline = time.monotonic() + timeout
    while True:
        open_rows, sent, span = await delivered(app)
        if (sent >= total and open_rows == 0) or time.monotonic() > deadline:
            return open_rows, sent, span
        await asyncio.sleep(0.5)


async def stop_processes(processes: list[asyncio.subprocess.Process]) -> None:
    """SIGTERMs every process and waits for it (SIGKILL after 30 s)."""
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


async def adapter_rate(broker: str, count: int) -> float:
    """Measures the queue adapter alone: publish `count` messages, then receive and ack them."""
    settings = Settings(_env_file=None, queue_url=BROKERS[broker], metrics_port=-1)
    queue = open_queue(settings, CHANNEL_NAMES)
    await queue.connect()
    try:
        await purge_queues(settings)
        bodies = [encode_message(i) for i in range(count)]
        started = time.perf_counter()
        for start in range(0, count, 500):
            await queue.publish("system", bodies[start : start + 500])
        received = 0
        while received < count:
            batch = await queue.receive("system", 256, 2.0)
            if not batch:
                break
            for message in batch:
                await message.ack()
            received += len(batch)
        return received / (time.perf_counter() - started)
    finally:
        await queue.close()


async def run(args: argparse.Namespace) -> dict[str, object]:
    """Runs every broker × worker-count combination and the adapter rates."""
    shape = Shape.for_total(args.notifications, args.recipients)
    shape = Shape(
        shape.recipients, round(args.notifications / (2 * shape.recipients)), ("system", "email")
    )
    smtp = ServerProcess.start("smtp")
    runs: list[Run] = []
    adapters: dict[str, float] = {}
    try:
        for broker in args.brokers:
            adapters[broker] = await adapter_rate(broker, args.adapter_count)
            for workers in args.workers:
                runs.append(await one_run(broker, workers, shape, smtp.port))
                print(_line(runs[-1], adapters[broker]), file=sys.stderr, flush=True)
    finally:
        smtp.stop()
    return {
        "shape": asdict(shape),
        "runs": [asdict(r) | {"rate": r.rate} for r in runs],
        "adapter_publish_consume_per_second": adapters,
    }


def _line(run: Run, adapter: float) -> str:
    ratio = run.rate / adapter if adapter else 0.0
    return (
        f"{run.broker:<6} {run.workers} worker(s)  {run.sent:>6}/{run.notifications} sent  "
        f"{run.seconds:7.2f} s  {run.rate:8.1f} deliveries/s  "
        f"(adapter publish+consume {adapter:8.1f}/s, ratio {ratio:.3f})  {run.outcomes}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notifications", type=int, default=6000)
    parser.add_argument("--recipients", type=int, default=100)
    parser.add_argument("--brokers", type=lambda s: s.split(","), default=["amqp", "redis"])
    parser.add_argument(
        "--workers", type=lambda s: [int(w) for w in s.split(",")], default=[1, 2, 4]
    )
    parser.add_argument("--adapter-count", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmark and prints the table (or JSON)."""
    args = parse_args(argv)
    configure_logging("WARNING")
    document = asyncio.run(run(args))
    if args.json:
        print(json.dumps(document, indent=2))
        return
    print(f"shape: {document['shape']}")
    for row in document["runs"]:  # type: ignore[attr-defined]
        print(
            f"{row['broker']:<6} workers={row['workers']}  sent={row['sent']}  "
            f"{row['rate']:.1f} deliveries/s"
        )
    print(f"queue adapter publish+consume: {document['adapter_publish_consume_per_second']}")


if __name__ == "__main__":
    main()
