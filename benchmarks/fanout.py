"""Benchmarks the producer's fan-out into PostgreSQL beside asyncpg executemany (its ceiling).

For each shape (A alerts × R recipients × 3 channels, half the recipients with WeCom turned
off, so deliverable and SUPPRESSED rows alternate as in real traffic), a fresh database gets
the alerts and recipients; one `app.producer().run()` pass is timed. The ceiling, measured in
the same run on the same server: asyncpg `executemany` INSERT of as many rows of the same
shape into the same table of a fresh database.

    PYTHONPATH=. .venv/bin/python -m benchmarks.fanout [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from benchmarks.brokers import fresh_database, settings_for
from benchmarks.embedded import build_channels, seed_alerts, seed_recipients
from benchmarks.results import Shape
from pipeline.app import App
from pipeline.db import upgrade

SHAPES = ((20, 1000), (2000, 10), (1, 10000))
ROBOT = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=bench"


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


async def producer_rate(alerts: int, recipients: int) -> tuple[int, float]:
    """Rows one producer pass created, and rows per second."""
    async with seeded(alerts, recipients, "fanout") as (app, _):
        async with app.sessions() as session, session.begin():
            await session.execute(
                text(
                    "UPDATE notification_settings SET channels = 'system,email'"
                    " WHERE recipient_id % 2 = 0"
                )
            )
        started = time.perf_counter()
        report = await app.producer().run()
        return report.created, report.created / (time.perf_counter() - started)


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


async def run() -> list[dict[str, object]]:
    """Every shape: the producer's rate beside the ceiling."""
    results: list[dict[str, object]] = []
    for alerts, recipients in SHAPES:
        created, rate = await producer_rate(alerts, recipients)
        ceiling = await executemany_rate(alerts, recipients)
        results.append(
            {
                "alerts": alerts,
                "recipients": recipients,
                "rows": created,
                "producer_rows_per_s": round(rate),
                "executemany_rows_per_s": round(ceiling),
                "share_of_ceiling": round(rate / ceiling, 2),
            }
        )
    return results


def main(argv: list[str] | None = None) -> None:
    """Runs every shape and prints the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = asyncio.run(run())
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("alerts  recipients    rows  producer rows/s  executemany rows/s  share")
    for r in results:
        print(
            f"{r['alerts']:>6} {r['recipients']:>11} {r['rows']:>7} "
            f"{r['producer_rows_per_s']:>16,} {r['executemany_rows_per_s']:>19,} "
            f"{r['share_of_ceiling']:>6}"
        )


if __name__ == "__main__":
    main()
