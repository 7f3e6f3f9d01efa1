"""Worker processes killed, stopped and terminated mid-run: nothing lost, duplicates bounded."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select
from sqlmodel import col

from pipeline.models import DeliveryAttempt, Notification
from tests.integration.faults.harness import Cluster, Verdict

# One fault test at a time, all on one pytest-xdist worker (scripts/test.sh): each runs a
# producer and several workers against the PostgreSQL that allows 100 connections.
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.xdist_group("faults")]


@pytest.mark.timeout(150)
async def test_sigkill_a_worker_repeatedly_loses_nothing(cluster: Cluster) -> None:
    # Leases short enough for the killed worker's rows to come back within the test.
    cluster.env_defaults.update(
        SEND_LEASE="5s", QUEUE_LEASE="8s", SEND_TIMEOUT="2s", REDIS_CLAIM_IDLE="4s"
    )
    concurrency, kills = 8, 3
    await cluster.seed(20, 40)  # 1,600 notifications
    cluster.sink.data_delay = 0.02  # sends are in flight when the kill lands
    steady, victim, producer = await asyncio.gather(
        cluster.spawn_worker("steady", concurrency=concurrency),
        cluster.spawn_worker("victim-0", concurrency=concurrency),
        cluster.spawn_producer(),
    )
    await cluster.wait_ready(steady, victim, producer)
    for kill in range(kills):
        if kill:
            # A fresh wave once the new victim listens: on a fast machine the steady worker
            # could otherwise deliver everything left while the victim starts, and it would
            # never be busy.
            await cluster.wait_ready(victim)
            await cluster.seed(20, 20, tag=f"wave{kill}")
            await cluster.produce()
        # Kill only once the victim has delivered something since it (re)started.
        await cluster.wait_for(
            lambda v=victim: v.count("delivery") >= 30, timeout=60, what=f"{victim.name} busy"
        )
        victim.send(signal.SIGKILL)
        await victim.server.process.wait()
        victim = await cluster.spawn_worker(f"victim-{kill + 1}", concurrency=concurrency)
    await cluster.settle(timeout=90)
    verdict = await cluster.judge()
    print(f"\n[{cluster.broker}] {kills} x SIGKILL: {verdict} in {cluster.elapsed():.1f}s")

    assert verdict.ok, verdict
    assert verdict.sent == verdict.intended, verdict
    # At-least-once: only sends in flight at a kill may repeat; a worker holds at most two
    # batches per channel (one sending, one being claimed/recorded), of `concurrency` here.
    bound = kills * 2 * concurrency
    for channel, duplicated in verdict.duplicated_by_channel.items():
        assert duplicated <= bound, f"{channel}: {duplicated} > {bound}: {verdict}"


@pytest.mark.timeout(120)
async def test_sigterm_a_worker_under_load_finishes_in_flight_sends(cluster: Cluster) -> None:
    # Default leases (2m / 10m): a row the terminated worker abandoned would not come back
    # within the test, so settle() would fail instead of hiding it.
    await cluster.seed(20, 25)  # 1,000 notifications
    cluster.sink.data_delay = 0.03
    leaving, staying, producer = await asyncio.gather(
        cluster.spawn_worker("leaving", concurrency=8),
        cluster.spawn_worker("staying", concurrency=8),
        cluster.spawn_producer(),
    )
    await cluster.wait_ready(leaving, staying, producer)
    await cluster.wait_for(lambda: cluster.sink.in_data >= 4, timeout=30, what="sends in flight")
    await cluster.wait_for(lambda: leaving.count("delivery") >= 100, timeout=60, what="load")
    code = await leaving.terminate()
    await cluster.settle(timeout=60)
    verdict = await cluster.judge()
    print(f"\n[{cluster.broker}] SIGTERM under load: {verdict} in {cluster.elapsed():.1f}s")

    assert code == 0, leaving.tail(40)
    events = [e["event"] for e in leaving.events()]
    draining = events.index("worker_draining")
    finished_after = events[draining:].count("delivery")
    print(f"deliveries recorded after SIGTERM: {finished_after}")
    assert finished_after > 0, "no send was in flight at SIGTERM"
    assert "worker_drain_deadline" not in events, leaving.tail(40)
    assert verdict.ok, verdict
    assert verdict.sent == verdict.intended, verdict
    assert verdict.duplicated == 0, verdict


@dataclass
class Stall:
    """What the SIGSTOP scenario left behind."""

    verdict: Verdict
    late: list[dict[str, Any]]
    rows: list[Any]
    attempts: list[Any]
    # Claimed sends the stalled worker gave up after SIGCONT because their lease had run out.
    abandoned: int


async def stall_a_worker_past_its_lease(cluster: Cluster, concurrency: int = 4) -> Stall:
    """SIGSTOPs a worker with sends in flight, lets another finish everything, then SIGCONTs it.

    The stalled worker's in-flight sends are answered 451 while it is stopped, so its late
    results are failures: applied, they would put rows another worker already SENT back to
    PENDING. It also holds a second claimed batch waiting for a send slot (its window is twice
    its concurrency).
    """
    cluster.env_defaults.update(
        SEND_LEASE="5s", QUEUE_LEASE="4s", SEND_TIMEOUT="2.5s", REDIS_CLAIM_IDLE="5s"
    )
    await cluster.seed(10, 20, channels=("email",))  # 200 e-mails
    cluster.sink.data_delay = 1.5
    stalled = await cluster.spawn_worker("stalled", channels=("email",), concurrency=concurrency)
    await cluster.wait_ready(stalled)
    await cluster.spawn_producer()
    await cluster.wait_for(
        lambda: cluster.sink.in_data >= concurrency, timeout=30, what="the sends in flight"
    )
    stalled.send(signal.SIGSTOP)
    cluster.sink.respond_with(451, "4.3.0 try again later", times=None)
    await cluster.wait_for(lambda: cluster.sink.in_data == 0, timeout=60, what="451 answers")
    cluster.sink.reset()  # fast and accepting again
    rescuer = await cluster.spawn_worker("rescuer", channels=("email",), concurrency=8)
    await cluster.settle(timeout=60)
    stalled.send(signal.SIGCONT)
    # Its in-flight sends now come back with their (late) answers and are discarded.
    await cluster.wait_for(
        lambda: stalled.count("delivery") >= concurrency, timeout=20, what="the late results"
    )
    await asyncio.sleep(1.0)  # whatever else it still does after resuming
    for proc in (stalled, rescuer):
        assert await proc.terminate() == 0, proc.tail(40)
    verdict = await cluster.judge()
    late = [e for e in stalled.events("delivery") if e["state"] == "discarded_late_result"]
    print(
        f"\n[{cluster.broker}] SIGSTOP past the lease: {verdict}; late results discarded:"
        f" {len(late)} ({sorted(e['outcome'] for e in late)}) in {cluster.elapsed():.1f}s"
    )
    async with cluster.engine.connect() as conn:
        rows = list(
            await conn.execute(
                select(
                    col(Notification.id), col(Notification.attempts), col(Notification.last_reason)
                ).where(col(Notification.channel) == "email")
            )
        )
        attempts = list(
            await conn.execute(
                select(col(DeliveryAttempt.notification_id), col(DeliveryAttempt.outcome))
            )
        )
    abandoned = sum(e["count"] for e in stalled.events("sends_abandoned"))
    return Stall(verdict, late, rows, attempts, abandoned)


@pytest.mark.timeout(120)
async def test_sigstop_past_the_lease_sends_nothing_late_and_overwrites_nothing(
    cluster: Cluster,
) -> None:
    concurrency = 4
    stall = await stall_a_worker_past_its_lease(cluster, concurrency)
    verdict = stall.verdict

    assert verdict.ok, verdict
    assert verdict.sent == verdict.intended == 200, verdict
    # No late result overwrote a row: each was SENT on its first recorded attempt.
    assert [r for r in stall.rows if r.attempts != 1 or r.last_reason is not None] == []
    failed_late = [e for e in stall.late if e["outcome"] == "transient"]
    assert len(failed_late) >= concurrency, stall.late
    for event in failed_late:
        outcomes = sorted(o for i, o in stall.attempts if i == event["id"])
        assert outcomes == ["sent", "transient"], (event, outcomes)
    # The batch it had claimed but not started is given up, not sent after SIGCONT.
    assert verdict.duplicated == 0, verdict
    assert stall.abandoned >= 1, "the stalled worker held no second batch"
