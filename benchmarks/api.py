"""Benchmarks alert ingest over HTTP (POST /api/v1/alerts) beside GET /healthz, the ceiling.

A real `tocsin run` process serves the API on loopback (the embedded default: SQLite and
memory://, and the same on a scratch PostgreSQL database); httpx clients in this process post
alerts at 1, 8 and 32 concurrent clients. Run from the repository root:

    .venv/bin/python -m benchmarks.api [--targets sqlite,postgresql] [--requests 1000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

CLIENTS = (1, 8, 32)
PG_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
INGEST = "POST /api/v1/alerts"
HEALTH = "GET /healthz"


@dataclass
class Level:
    """One endpoint at one concurrency: requests done, wall time, latencies in seconds."""

    target: str
    endpoint: str
    clients: int
    requests: int
    seconds: float
    failures: int
    latencies: list[float] = field(repr=False)

    @property
    def rate(self) -> float:
        """Successful requests per second."""
        return (self.requests - self.failures) / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        """The p-th percentile latency in milliseconds (nearest rank)."""
        ordered = sorted(self.latencies)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))] * 1000

    def summary(self) -> dict[str, Any]:
        """The level as one JSON-ready row."""
        row = asdict(self)
        del row["latencies"]
        return row | {
            "per_second": round(self.rate, 1),
            "p50_ms": round(self.percentile(50), 2),
            "p99_ms": round(self.percentile(99), 2),
        }


# --- the server -----------------------------------------------------------------------------


def _tocsin() -> str:
    found = shutil.which("tocsin", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("the tocsin command is not installed in this environment")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _cli(env: dict[str, str], cwd: Path, *args: str) -> str:
    """Runs one tocsin command to completion; returns its stdout or fails loudly."""
    process = await asyncio.create_subprocess_exec(
        _tocsin(), *args, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"tocsin {' '.join(args)} failed: {err.decode()[-2000:]}")
    return out.decode()


@dataclass
class Served:
    """A tocsin process serving the API, with an ingest token and the recipients to address."""

    url: str
    token: str
    recipients: list[str]


@asynccontextmanager
async def serving(database_url: str, recipients: int, command: str) -> AsyncIterator[Served]:
    """Migrates the database, adds users and a token, and runs `tocsin <command>` on it."""
    with tempfile.TemporaryDirectory(prefix="tocsin-api-bench-") as name:
        cwd = Path(name)
        port = _free_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": name,
            "DATABASE_URL": database_url.replace("{tmp}", name),
            "QUEUE_URL": "memory://",
            "API_ADDR": "127.0.0.1",
            "API_PORT": str(port),
            "METRICS_PORT": "-1",
            "LOG_LEVEL": "WARNING",
        }
        await _cli(env, cwd, "db", "upgrade")
        names = [f"bench{i:03d}" for i in range(recipients)]
        for username in names:
            # Inbox only: e-mail and WeCom are not configured on this machine.
            await _cli(env, cwd, "users", "upsert", username, "--channels", "system")
        created = await _cli(env, cwd, "tokens", "create", "bench", "--scope", "ingest", "--json")
        token = json.loads(created)["token"]
        process = await asyncio.create_subprocess_exec(
            _tocsin(), command, env=env, cwd=cwd,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            await _wait_until_up(url, process)
            yield Served(url, token, names)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def _wait_until_up(url: str, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                stderr = await process.stderr.read() if process.stderr else b""
                raise RuntimeError(f"the server exited: {stderr.decode()[-2000:]}")
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the server did not become ready within 60 s")


@asynccontextmanager
async def scratch_postgres(admin_url: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one run, dropped afterwards (as the tests make them)."""
    name = f"tocsin_bench_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


# --- the clients ----------------------------------------------------------------------------


Request = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


def ingest_request(served: Served, run: str) -> Request:
    """Posts one warning alert to every recipient, with its own Idempotency-Key."""

    def send(client: httpx.AsyncClient, number: int) -> Awaitable[httpx.Response]:
        body = {
            "title": f"Disk 95% on db-{number}",
            "body": f"Volume /data on db-{number} is 95% full.",
            "severity": "warning",
            "recipients": served.recipients,
        }
        key = {"Idempotency-Key": f"{run}-{number}"}
        return client.post("/api/v1/alerts", json=body, headers=key)

    return send


def health_request(client: httpx.AsyncClient, _number: int) -> Awaitable[httpx.Response]:
    """The trivial endpoint of the same server."""
    return client.get("/healthz")


async def measure(
    served: Served, target: str, endpoint: str, send: Request, clients: int, args: Any
) -> Level:
    """Runs `clients` loops of sequential requests until the count or the time is used up."""
    headers = {"Authorization": f"Bearer {served.token}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    latencies: list[float] = []
    failures = 0
    issued = 0
    async with httpx.AsyncClient(
        base_url=served.url, headers=headers, limits=limits, trust_env=False, timeout=60
    ) as client:
        for number in range(min(clients, 4)):  # warm the connections and the server's caches
            await send(client, -1 - number)
        started = time.perf_counter()
        deadline = started + args.seconds

        async def loop() -> None:
            nonlocal issued, failures
            while issued < args.requests and time.perf_counter() < deadline:
                number = issued
                issued += 1
                began = time.perf_counter()
                answer = await send(client, number)
                latencies.append(time.perf_counter() - began)
                failures += answer.status_code >= 300

        await asyncio.gather(*(loop() for _ in range(clients)))
        seconds = time.perf_counter() - started
    return Level(target, endpoint, clients, len(latencies), seconds, failures, latencies)


async def run_target(target: str, database_url: str, args: Any) -> list[Level]:
    """Measures ingest and the ceiling at each concurrency on one database."""
    levels = []
    async with serving(database_url, args.recipients, args.command) as served:
        for clients in CLIENTS:
            ceiling = await measure(served, target, HEALTH, health_request, clients, args)
            run = f"{target}-{clients}-{uuid.uuid4().hex[:8]}"
            ingest = await measure(
                served, target, INGEST, ingest_request(served, run), clients, args
            )
            levels += [ingest, ceiling]
    return levels


async def run(args: Any) -> list[Level]:
    """Every target in turn (never at once: they would share the cores)."""
    levels: list[Level] = []
    for target in args.targets.split(","):
        if target == "sqlite":
            levels += await run_target(target, "sqlite+aiosqlite:///{tmp}/bench.db", args)
        elif target == "postgresql":
            async with scratch_postgres(args.postgres) as url:
                levels += await run_target(target, url, args)
        else:
            raise SystemExit(f"unknown target {target!r}: sqlite or postgresql")
    return levels


# --- output ---------------------------------------------------------------------------------


def as_table(levels: list[Level]) -> str:
    """One row per target, endpoint and concurrency; ingest held against the ceiling."""
    header = (
        f"{'database':<11} {'endpoint':<19} {'clients':>7} {'requests':>8} {'failed':>6} "
        f"{'per s':>8} {'p50 ms':>8} {'p99 ms':>8} {'of ceiling':>10}"
    )
    lines = [header, "-" * len(header)]
    ceilings = {(lv.target, lv.clients): lv.rate for lv in levels if lv.endpoint == HEALTH}
    for lv in levels:
        ratio = ""
        if lv.endpoint == INGEST and ceilings.get((lv.target, lv.clients)):
            ratio = f"{lv.rate / ceilings[(lv.target, lv.clients)]:.0%}"
        lines.append(
            f"{lv.target:<11} {lv.endpoint:<19} {lv.clients:>7} {lv.requests:>8} "
            f"{lv.failures:>6} {lv.rate:>8.1f} {lv.percentile(50):>8.2f} "
            f"{lv.percentile(99):>8.2f} {ratio:>10}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.api", description=__doc__)
    parser.add_argument("--targets", default="sqlite,postgresql", help="sqlite,postgresql")
    parser.add_argument("--requests", type=int, default=1000, help="at most, per level")
    parser.add_argument("--seconds", type=float, default=20.0, help="at most, per level")
    parser.add_argument("--recipients", type=int, default=3, help="users each alert names")
    parser.add_argument(
        "--command", choices=("run", "api"), default="run",
        help="serve with `tocsin run` (API, producer, relay, workers) or `tocsin api` alone",
    )  # fmt: skip
    parser.add_argument("--postgres", default=PG_ADMIN_URL, help="admin URL (scratch db made)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    levels = asyncio.run(run(args))
    if args.json:
        print(json.dumps([lv.summary() for lv in levels], indent=2))
        return
    print(
        f"tocsin {args.command} on loopback, {args.recipients} recipients per alert "
        f"(inbox only), one Idempotency-Key per alert, python {sys.version.split()[0]}"
    )
    print(as_table(levels))


if __name__ == "__main__":
    main()
