"""6,000 notifications through one producer and two worker processes: every row SENT once."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select
from sqlmodel import col

from pipeline.models import DeliveryAttempt
from tests.integration.faults.harness import Cluster

# One volume run at a time, on a pytest-xdist worker of its own beside the fault group
# (scripts/test.sh): at most two clusters share the PostgreSQL that allows 100 connections.
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.xdist_group("volume")]

# x 2 channels (system, email) = 6,000 notifications: volume enough for many claims, leases and
# batches on both brokers, small enough to share CI's two cores with the parallel suite.
USERS, ALERTS = 100, 30


@pytest.mark.timeout(600)
async def test_thousands_of_notifications_each_sent_exactly_once(cluster: Cluster) -> None:
    await cluster.seed(USERS, ALERTS)
    procs = await asyncio.gather(
        cluster.spawn_producer(),
        # A delivery log line per send costs the workers CPU this run wants for sending.
        *(
            cluster.spawn_worker(f"worker-{i}", concurrency=16, LOG_LEVEL="WARNING")
            for i in range(2)
        ),
    )
    await cluster.settle(timeout=480)  # generous: CI's cores are shared with the other tests
    settled = cluster.elapsed()
    metrics = await procs[0].scrape()
    codes = {p.name: await p.terminate() for p in procs}
    verdict = await cluster.judge()
    async with cluster.engine.connect() as conn:
        by_worker = dict(
            list(
                await conn.execute(
                    select(col(DeliveryAttempt.worker), func.count()).group_by(
                        col(DeliveryAttempt.worker)
                    )
                )
            )
        )
    print(
        f"\n[{cluster.broker}] clean {2 * USERS * ALERTS}: {verdict}; attempts per worker"
        f" {sorted(by_worker.values())}; settled after {settled:.1f}s, all stopped after"
        f" {cluster.elapsed():.1f}s"
    )

    assert verdict.ok, verdict
    assert verdict.sent == 2 * USERS * ALERTS, verdict
    assert verdict.duplicated == 0, verdict
    assert codes == {"producer": 0, "worker-0": 0, "worker-1": 0}, await cluster.report()
    # The relay published each row once, and again only for a lease that ran out (on a
    # crowded machine one may: the row is then claimed once all the same).
    republished = metrics["tocsin_relay_lease_expired_total"]
    assert metrics["tocsin_relay_published_total"] == 2 * USERS * ALERTS + republished, metrics
    # One attempt per row, and both workers took part.
    assert sum(by_worker.values()) == 2 * USERS * ALERTS, by_worker
    assert len(by_worker) == 2, by_worker
