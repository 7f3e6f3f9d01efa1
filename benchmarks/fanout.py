"""Benchmarks the producer's fan-out into PostgreSQL beside asyncpg executemany (its ceiling).

For each shape (A alerts × R recipients × 3 channels, half the recipients with WeCom turned
off, so deliverable and SUPPRESSED rows alternate as in real traffic, and a quarter in quiet
hours, so their e-mail and WeCom rows are deferred), a fresh database gets the alerts and
recipients; one `app.producer().run()` pass is timed. The ceiling, measured in the same run on
the same server: asyncpg `executemany` INSERT of as many rows of the same shape into the same
table of a fresh database.

Then the ingest of one alert to 1,000 recipients through the HTTP API (POST /api/v1/alerts
stores and expands it before answering), served by uvicorn in this process as `tocsin api`
serves it: the median of a few posts, beside a one-recipient post on the same server and
asyncpg executemany of the rows the alert makes (its recipients and notifications).

    PYTHONPATH=. .venv/bin/python -m benchmarks.fanout [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg  # type: ignore[import-untyped]
import httpx
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from benchmarks.brokers import fresh_database, settings_for
from benchmarks.embedded import build_channels, seed_alerts, seed_recipients
from benchmarks.results import Shape
from pipeline.app import App
from pipeline.db import upgrade
from pipeline.runner import serve_api
from pipeline.tokens import Scope, create_token

SHAPES = ((20, 1000), (2000, 10), (1, 10000))
ROBOT = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=bench"
QUIET_ZONE = "Asia/Shanghai"
# The API ingest figure: posts of one alert to this many recipients, the median taken.
INGEST_RECIPIENTS = 1000
INGEST_POSTS = 5


@dataclass(frozen=True)
class Seeded:
    """Where the shape was seeded, and the ids of its alerts and recipients."""

    url: str
    alert_ids: list[int]
    recipient_ids: list[int]


@asynccontextmanager
async def seeded(alerts: int, recipients: int, tag: str) -> AsyncIterator[tuple[App, Seeded]]:
    """A fresh migrated database with the shape's alerts and recipients, and an app on it."""
    async with fresh_database() as url:
        settings = settings_for(url, "memory://")
        await asyncio.to_thread(upgrade, settings)
        app = App.create(
            settings, channels=build_channels(2525, ROBOT), registry=CollectorRegistry()
        )
        try:
            shape = Shape(recipients, alerts)
            ids = await seed_recipients(app, shape)
            alert_ids = await seed_alerts(app, shape, ids, tag)
            yield app, Seeded(url, alert_ids, ids)
        finally:
            await app.aclose()


def quiet_window(now: datetime) -> tuple[str, str]:
    """A quiet-hours window around now on the QUIET_ZONE wall clock (an hour either side)."""
    local = now.astimezone(ZoneInfo(QUIET_ZONE))
    return f"{local - timedelta(hours=1):%H:%M}", f"{local + timedelta(hours=1):%H:%M}"


async def producer_rate(alerts: int, recipients: int) -> tuple[int, int, float]:
    """Rows one producer pass created, how many it deferred, and rows per second."""
    async with seeded(alerts, recipients, "fanout") as (app, _):
        start, end = quiet_window(app.clock.now())
        async with app.sessions() as session, session.begin():
            await session.execute(
                text(
                    "UPDATE notification_settings SET channels = 'system,email'"
                    " WHERE recipient_id % 2 = 0"
                )
            )
            await session.execute(
                text(
                    "UPDATE notification_settings SET timezone = :zone, quiet_start = :start,"
                    " quiet_end = :end WHERE recipient_id % 4 = 1"
                ),
                {"zone": QUIET_ZONE, "start": start, "end": end},
            )
        started = time.perf_counter()
        report = await app.producer().run()
        seconds = time.perf_counter() - started
        return report.created, report.deferred, report.created / seconds


async def executemany_rate(alerts: int, recipients: int) -> float:
    """asyncpg executemany of the same number of notification rows, rows per second."""
    async with seeded(alerts, recipients, "ceiling") as (_, seed):
        now = datetime.now(UTC)
        rows = [
            (a, r, channel, "SUPPRESSED" if off else "PENDING", now,
             "opted_out" if off else None, now, now)
            for a in seed.alert_ids
            for r in seed.recipient_ids
            for channel in ("system", "email", "wecom")
            for off in [channel == "wecom" and r % 2 == 0]
        ]  # fmt: skip
        connection = await asyncpg.connect(seed.url.replace("postgresql+asyncpg", "postgresql"))
        try:
            started = time.perf_counter()
            async with connection.transaction():
                await connection.executemany(
                    "INSERT INTO notifications (alert_id, recipient_id, channel, state, attempts,"
                    " not_before, deferred, last_reason, created_at, updated_at)"
                    " VALUES ($1, $2, $3, $4, 0, $5, false, $6, $7, $8)",
                    rows,
                )
            return len(rows) / (time.perf_counter() - started)
        finally:
            await connection.close()


async def ingest_latency() -> dict[str, object]:
    """Seconds for POST /api/v1/alerts of one alert to INGEST_RECIPIENTS recipients (median),
    beside a one-recipient post and executemany of the big alert's rows."""
    async with fresh_database() as url:
        settings = settings_for(url, "memory://").model_copy(update={"api_port": 0})
        await asyncio.to_thread(upgrade, settings)
        app = App.create(
            settings, channels=build_channels(2525, ROBOT), registry=CollectorRegistry()
        )
        try:
            await seed_recipients(app, Shape(INGEST_RECIPIENTS, 1))
            _, token = await create_token(app.sessions, app.clock, "bench", [Scope.INGEST])
            server = await serve_api(app)
            assert server is not None
            try:
                big, one = await _post_alerts(server.url, token)
            finally:
                await server.stop()
        finally:
            await app.aclose()
        ceiling = await _executemany_alert(url, INGEST_RECIPIENTS)
    return {
        "recipients": INGEST_RECIPIENTS,
        "posts": INGEST_POSTS,
        "ingest_ms": round(big * 1000, 1),
        "one_recipient_ms": round(one * 1000, 1),
        "executemany_ms": round(ceiling * 1000, 1),
    }


async def _post_alerts(url: str, token: str) -> tuple[float, float]:
    """Median seconds of a post to every seeded recipient, and of a post to one."""
    names = [f"bench{i:05d}" for i in range(INGEST_RECIPIENTS)]
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=url, headers=headers, trust_env=False, timeout=60
    ) as client:

        async def post(number: int, recipients: list[str]) -> float:
            body = {
                "title": f"Disk 95% on db-{number}",
                "body": f"Volume /data on db-{number} is 95% full.",
                "severity": "warning",
                "recipients": recipients,
            }
            began = time.perf_counter()
            answer = await client.post("/api/v1/alerts", json=body)
            seconds = time.perf_counter() - began
            if answer.status_code != 202:
                raise RuntimeError(f"ingest answered {answer.status_code}: {answer.text[:500]}")
            return seconds

        await post(-1, names[:1])  # warm the connection and the server's caches
        one = [await post(i, names[:1]) for i in range(INGEST_POSTS)]
        big = [await post(INGEST_POSTS + i, names) for i in range(INGEST_POSTS)]
    return statistics.median(big), statistics.median(one)


async def _executemany_alert(url: str, recipients: int) -> float:
    """Median seconds for asyncpg to store one alert's rows: the alert, its recipients and
    three notifications each, in one transaction."""
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        ids = [row[0] for row in await connection.fetch("SELECT id FROM recipients ORDER BY id")]
        ids = ids[:recipients]
        now = datetime.now(UTC)
        times = []
        for _ in range(INGEST_POSTS):
            started = time.perf_counter()
            async with connection.transaction():
                alert = await connection.fetchval(
                    "INSERT INTO alerts (title, body, severity, created_at, mention_all)"
                    " VALUES ('ceiling', 'ceiling', 'warning', $1, false) RETURNING id",
                    now,
                )
                await connection.executemany(
                    "INSERT INTO alert_recipients (alert_id, recipient_id) VALUES ($1, $2)",
                    [(alert, r) for r in ids],
                )
                await connection.executemany(
                    "INSERT INTO notifications (alert_id, recipient_id, channel, state, attempts,"
                    " not_before, deferred, created_at, updated_at)"
                    " VALUES ($1, $2, $3, 'PENDING', 0, $4, false, $4, $4)",
                    [(alert, r, c, now) for r in ids for c in ("system", "email", "wecom")],
                )
            times.append(time.perf_counter() - started)
        return statistics.median(times)
    finally:
        await connection.close()


async def run(repeat: int = 1) -> dict[str, object]:
    """Every shape: the producer's rate beside the ceiling (medians of `repeat` runs, the two
    taking turns); then the API ingest figure."""
    shapes: list[dict[str, object]] = []
    for alerts, recipients in SHAPES:
        rates, ceilings = [], []
        for _ in range(repeat):
            created, deferred, rate = await producer_rate(alerts, recipients)
            rates.append(rate)
            ceilings.append(await executemany_rate(alerts, recipients))
        rate, ceiling = statistics.median(rates), statistics.median(ceilings)
        shapes.append(
            {
                "alerts": alerts,
                "recipients": recipients,
                "rows": created,
                "deferred": deferred,
                "producer_rows_per_s": round(rate),
                "executemany_rows_per_s": round(ceiling),
                "share_of_ceiling": round(rate / ceiling, 2),
            }
        )
    return {"shapes": shapes, "ingest": await ingest_latency()}


def main(argv: list[str] | None = None) -> None:
    """Runs every shape and prints the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="runs per shape (medians)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = asyncio.run(run(args.repeat))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("alerts  recipients    rows  deferred  producer rows/s  executemany rows/s  share")
    shapes: list[dict[str, Any]] = results["shapes"]
    for r in shapes:
        print(
            f"{r['alerts']:>6} {r['recipients']:>11} {r['rows']:>7} {r['deferred']:>9} "
            f"{r['producer_rows_per_s']:>16,} {r['executemany_rows_per_s']:>19,} "
            f"{r['share_of_ceiling']:>6}"
        )
    ingest: dict[str, Any] = results["ingest"]
    print(
        f"\nPOST /api/v1/alerts, one alert to {ingest['recipients']:,} recipients "
        f"(median of {ingest['posts']}): {ingest['ingest_ms']:,} ms; to one recipient: "
        f"{ingest['one_recipient_ms']:,} ms; executemany of its rows: "
        f"{ingest['executemany_ms']:,} ms"
    )


if __name__ == "__main__":
    main()
