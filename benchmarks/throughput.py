"""The delivery path end to end: rates, CPU per 1,000 by process, RSS and release latency.

For each broker, channel (e-mail to a loopback SMTP sink, or the in-app inbox) and worker
count, a fresh PostgreSQL database, one `tocsin producer` (the relay) and W `tocsin worker`
processes, all on their defaults (LOG_LEVEL info, RELAY_INTERVAL 2 s, WORKER_CONCURRENCY 16).
A warm-up batch is delivered first; then N due notifications are written as PENDING rows and
timed until every one is SENT. Read from `/proc` over that stretch: CPU seconds per 1,000
deliveries of the workers, the relay, PostgreSQL (the run database's backends and the
server's own processes) and the broker, and the workers' peak RSS. The same run measures the
ceilings: the queue adapter's publish+consume rate and aiosmtplib over a pool of connections
to the same sink.

Release latency: R rows due at one instant (quiet hours ending) on the inbox channel, from
`not_before` to `sent_at`, p50 and p99.

    .venv/bin/python -m benchmarks.throughput [--notifications 5000] [--brokers amqp,redis]
        [--channels email,system] [--workers 1,2] [--release 1000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from benchmarks import ceilings
from benchmarks.brokers import (
    BROKERS,
    TOCSIN,
    adapter_rate,
    fresh_database,
    purge_queues,
    settings_for,
    stop_processes,
)
from benchmarks.servers import ServerProcess
from pipeline.db import upgrade
from pipeline.logs import configure_logging

RECIPIENTS = 100
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BROKER_PROCESS = {"amqp": "beam.smp", "redis": "redis-server"}


# --- /proc ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pids_named(name: str) -> list[int]:
    """Processes whose command name is `name`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def postgres_pids(database: str) -> list[int]:
    """The server's own processes and the backends connected to this database."""
    pids = []
    for pid in pids_named("postgres"):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
        except OSError:
            continue
        backend = "127.0.0.1(" in title or "[local]" in title
        if not backend or f" {database} " in title:
            pids.append(pid)
    return pids


@dataclass
class CpuMeter:
    """CPU seconds per role, read before and after the timed stretch."""

    roles: dict[str, list[int]]
    start: dict[str, float] = field(default_factory=dict)

    def read(self) -> dict[str, float]:
        return {role: sum(cpu_seconds(p) for p in pids) for role, pids in self.roles.items()}

    def begin(self) -> None:
        self.start = self.read()

    def spent(self) -> dict[str, float]:
        end = self.read()
        return {role: end[role] - self.start.get(role, 0.0) for role in end}


# --- seeding -------------------------------------------------------------------------------


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def seed_people(conn: asyncpg.Connection, count: int) -> list[int]:
    """Recipients with an e-mail address each; returns their ids."""
    now = datetime.now(UTC)
    ids: list[int] = [
        row["id"]
        for row in await conn.fetch(
            "INSERT INTO recipients (username, created_at, updated_at)"
            " SELECT 'bench' || g, $1, $1 FROM generate_series(1, $2) g RETURNING id",
            now,
            count,
        )
    ]
    await conn.executemany(
        "INSERT INTO recipient_contacts (recipient_id, kind, address) VALUES ($1, 'email', $2)",
        [(rid, f"bench{rid}@example.test") for rid in ids],
    )
    return ids


async def seed_due(
    conn: asyncpg.Connection, recipients: list[int], channel: str, count: int, due: datetime
) -> list[int]:
    """`count` PENDING rows on `channel` due at `due`, one alert per len(recipients) rows."""
    now = datetime.now(UTC)
    alerts = -(-count // len(recipients))
    alert_ids = [
        row["id"]
        for row in await conn.fetch(
            "INSERT INTO alerts (title, body, severity, created_at, processed_at, mention_all)"
            " SELECT 'alert ' || g || ': disk almost full',"
            " 'Volume /data on host-' || g || E' is 93% full.\\nCleanup needed within the hour.',"
            " 'warning', $1, $1, false FROM generate_series(1, $2) g RETURNING id",
            now,
            alerts,
        )
    ]
    pairs = [(a, r) for a in alert_ids for r in recipients][:count]
    rows = await conn.fetch(
        "INSERT INTO notifications (alert_id, recipient_id, channel, state, attempts, not_before,"
        " deferred, created_at, updated_at)"
        " SELECT a, r, $3, 'PENDING', 0, $4, false, $5, $5"
        " FROM unnest($1::int[], $2::int[]) AS t(a, r) RETURNING id",
        [a for a, _ in pairs],
        [r for _, r in pairs],
        channel,
        due,
        now,
    )
    return [row["id"] for row in rows]


async def wait_sent(conn: asyncpg.Connection, ids: list[int], timeout: float = 900) -> None:
    """Waits until every row is terminal (SENT, DEAD or SUPPRESSED)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = await conn.fetchval(
            "SELECT count(*) FROM notifications WHERE id = ANY($1::int[])"
            " AND state NOT IN ('SENT', 'DEAD', 'SUPPRESSED')",
            ids,
        )
        if left == 0:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{len(ids)} rows not delivered within {timeout:g}s")


async def sent_times(conn: asyncpg.Connection, ids: list[int]) -> list[tuple[datetime, datetime]]:
    """(not_before, sent_at) of the SENT rows among ids."""
    rows = await conn.fetch(
        "SELECT not_before, sent_at FROM notifications WHERE id = ANY($1::int[])"
        " AND state = 'SENT'",
        ids,
    )
    return [(row["not_before"], row["sent_at"]) for row in rows]


# --- processes -----------------------------------------------------------------------------


def env_for(
    database_url: str, broker: str, smtp_port: int, concurrency: int | None
) -> dict[str, str]:
    """Defaults, pointed at this run's database, broker and sink."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMAIL_", "WECOM_", "WORKER_"))}
    env |= {
        "DATABASE_URL": database_url,
        "QUEUE_URL": BROKERS[broker],
        "METRICS_PORT": "-1",
        "EMAIL_ENABLED": "true",
        "EMAIL_SMTP_SERVER": "127.0.0.1",
        "EMAIL_SMTP_PORT": str(smtp_port),
        "EMAIL_SECURITY": "none",
    }
    if concurrency is not None:
        env["WORKER_CONCURRENCY"] = str(concurrency)
    return env


async def start(env: dict[str, str], *command: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        TOCSIN,
        *command,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


# --- runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One broker × channel × worker-count run."""

    broker: str
    channel: str
    workers: int
    concurrency: int | None
    delivered: int
    seconds: float
    cpu: dict[str, float]
    worker_rss_mb: float
    # Claims (database transactions) the timed rows took: rows per claim is the batch size.
    claims: int
    release_p50: float | None = None
    release_p99: float | None = None

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    def per_thousand(self, role: str) -> float:
        return 1000 * self.cpu.get(role, 0.0) / self.delivered if self.delivered else 0.0


async def one_run(
    broker: str,
    channel: str,
    workers: int,
    count: int,
    smtp_port: int,
    concurrency: int | None = None,
    release: int = 0,
) -> Run:
    """Delivers `count` due rows with W workers; with `release`, also times a release."""
    async with fresh_database() as url:
        settings = settings_for(url, BROKERS[broker])
        await asyncio.to_thread(upgrade, settings)
        await purge_queues(settings)
        conn = await asyncpg.connect(plain(url))
        env = env_for(url, broker, smtp_port, concurrency)
        relay = await start(env, "producer")
        crew = [await start(env, "worker", "--channel", channel) for _ in range(workers)]
        try:
            people = await seed_people(conn, RECIPIENTS)
            await wait_sent(conn, await seed_due(conn, people, channel, 200, datetime.now(UTC)))
            database = url.rsplit("/", 1)[1]
            meter = CpuMeter(
                {
                    "worker": [p.pid for p in crew],
                    "relay": [relay.pid],
                    "postgresql": postgres_pids(database),
                    "broker": pids_named(BROKER_PROCESS[broker]),
                }
            )
            meter.begin()
            ids = await seed_due(conn, people, channel, count, datetime.now(UTC))
            await wait_sent(conn, ids)
            cpu = meter.spent()
            times = sorted(sent for _, sent in await sent_times(conn, ids))
            seconds = (times[-1] - times[0]).total_seconds() * len(times) / max(1, len(times) - 1)
            p50 = p99 = None
            if release:
                p50, p99 = await release_latency(conn, people, channel, release)
            rss = max(peak_rss_mb(p.pid) for p in crew)
            claims = await conn.fetchval(
                "SELECT count(DISTINCT claim_token) FROM delivery_attempts"
                " WHERE notification_id = ANY($1::int[])",
                ids,
            )
        finally:
            await stop_processes([relay, *crew])
            await conn.close()
    return Run(
        broker, channel, workers, concurrency, len(times), seconds, cpu, rss, claims, p50, p99
    )


async def release_latency(
    conn: asyncpg.Connection, people: list[int], channel: str, count: int
) -> tuple[float, float]:
    """Rows due together a few seconds from now: p50 and p99 of not_before -> sent_at."""
    due = datetime.now(UTC) + timedelta(seconds=3)
    ids = await seed_due(conn, people, channel, count, due)
    await wait_sent(conn, ids)
    lags = sorted((sent - due).total_seconds() for due, sent in await sent_times(conn, ids))
    return statistics.median(lags), lags[min(len(lags) - 1, round(0.99 * len(lags)))]


async def smtp_ceiling(port: int, count: int) -> float:
    ceiling = await ceilings.smtp("127.0.0.1", port, count, connections=4)
    return ceiling.rate


async def run(args: argparse.Namespace) -> dict[str, object]:
    sink = ServerProcess.start("smtp")
    runs: list[Run] = []
    adapters: dict[str, float] = {}
    try:
        smtp = await smtp_ceiling(sink.port, args.ceiling_count)
        print(f"aiosmtplib pool of 4, same sink: {smtp:,.0f} e-mails/s", file=sys.stderr)
        for broker in args.brokers:
            adapters[broker] = await adapter_rate(broker, args.ceiling_count)
            print(f"{broker} publish+consume: {adapters[broker]:,.0f}/s", file=sys.stderr)
            for channel in args.channels:
                for workers in args.workers:
                    release = args.release if channel == "system" and workers == 1 else 0
                    runs.append(
                        await one_run(
                            broker, channel, workers, args.notifications, sink.port, None, release
                        )
                    )
                    print(line(runs[-1]), file=sys.stderr, flush=True)
        if args.rss_concurrency:
            runs.append(
                await one_run(
                    args.brokers[0], "email", 1, args.notifications, sink.port, args.rss_concurrency
                )
            )
            print(line(runs[-1]), file=sys.stderr, flush=True)
    finally:
        sink.stop()
    return {
        "notifications": args.notifications,
        "ceilings": {"smtp_pool_4_per_second": smtp, "adapter_per_second": adapters},
        "runs": [
            asdict(r) | {"rate": r.rate, "cpu_per_1000": {k: r.per_thousand(k) for k in r.cpu}}
            for r in runs
        ],
    }


def line(run: Run) -> str:
    cpu = "  ".join(f"{role} {run.per_thousand(role):.2f}" for role in run.cpu)
    total = sum(run.per_thousand(role) for role in run.cpu)
    release = (
        f"  release p50 {run.release_p50:.2f}s p99 {run.release_p99:.2f}s"
        if run.release_p99 is not None
        else ""
    )
    concurrency = f" c={run.concurrency}" if run.concurrency else ""
    return (
        f"{run.broker:<5} {run.channel:<6} {run.workers}w{concurrency}  {run.rate:7.0f}/s  "
        f"CPU s/1000: {cpu}  total {total:.2f}  RSS {run.worker_rss_mb:.0f} MB  "
        f"{run.delivered / max(1, run.claims):.1f} rows/claim{release}"
    )


def table(document: dict[str, object]) -> Iterable[str]:
    ceilings_ = document["ceilings"]
    yield f"ceilings: {json.dumps(ceilings_)}"
    yield (
        "| broker | channel | workers | deliveries/s | worker | relay | PostgreSQL | broker"
        " | total CPU s/1000 | worker RSS | release p50/p99 |"
    )
    yield "|---|---|---|---|---|---|---|---|---|---|---|"
    for row in document["runs"]:  # type: ignore[attr-defined]
        per = row["cpu_per_1000"]
        release = (
            f"{row['release_p50']:.2f} / {row['release_p99']:.2f} s"
            if row["release_p99"] is not None
            else ""
        )
        workers = f"{row['workers']}" + (f" (c={row['concurrency']})" if row["concurrency"] else "")
        yield (
            f"| {row['broker']} | {row['channel']} | {workers} | {row['rate']:,.0f}"
            f" | {per['worker']:.2f} | {per['relay']:.2f} | {per['postgresql']:.2f}"
            f" | {per['broker']:.2f} | {sum(per.values()):.2f} | {row['worker_rss_mb']:.0f} MB"
            f" | {release} |"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notifications", type=int, default=5000)
    parser.add_argument("--brokers", type=lambda s: s.split(","), default=["amqp", "redis"])
    parser.add_argument("--channels", type=lambda s: s.split(","), default=["email", "system"])
    parser.add_argument("--workers", type=lambda s: [int(w) for w in s.split(",")], default=[1, 2])
    parser.add_argument("--release", type=int, default=1000, help="rows due at once (0: skip)")
    parser.add_argument(
        "--rss-concurrency",
        type=int,
        default=64,
        help="an e-mail run at this concurrency (0: skip)",
    )
    parser.add_argument("--ceiling-count", type=int, default=5000)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging("WARNING")
    document = asyncio.run(run(args))
    if args.json:
        print(json.dumps(document, indent=2, default=str))
        return
    for text in table(document):
        print(text)


if __name__ == "__main__":
    main()
