"""Two producers at once create and publish each row once; poison messages go to dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aio_pika
import pytest
import redis.asyncio
from sqlalchemy import func, select

from pipeline.models import Notification
from pipeline.queues import names
from tests.integration.faults.harness import Cluster

# One fault test at a time, all on one pytest-xdist worker (scripts/test.sh): each runs a
# producer and several workers against the PostgreSQL that allows 100 connections.
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.xdist_group("faults")]


@pytest.mark.parametrize("broker", ["redis"], indirect=True)  # the relays race in the database
@pytest.mark.timeout(120)
async def test_two_producers_at_once_create_and_publish_each_row_once(cluster: Cluster) -> None:
    users, alerts = 20, 25
    await cluster.seed(users, alerts)
    *producers, worker = await asyncio.gather(
        cluster.spawn_producer("producer-0"),
        cluster.spawn_producer("producer-1"),
        cluster.spawn_worker(concurrency=16),
    )
    await cluster.settle(timeout=60)
    metrics = [await p.scrape() for p in producers]
    for proc in (*producers, worker):
        assert await proc.terminate() == 0, proc.tail(40)
    verdict = await cluster.judge()
    published = sum(m["tocsin_relay_published_total"] for m in metrics)
    print(
        f"\n[{cluster.broker}] two producers: {verdict}; published per relay"
        f" {[m['tocsin_relay_published_total'] for m in metrics]}, passes"
        f" {[(p.count('producer_pass'), p.count('producer_skipped')) for p in producers]}"
        f" in {cluster.elapsed():.1f}s"
    )

    expected = users * alerts * 2
    assert verdict.ok, verdict
    assert verdict.sent == verdict.intended == expected, verdict
    assert verdict.duplicated == 0, verdict
    # One row per (alert, recipient, channel): e-mail, system and the opted-out WeCom.
    async with cluster.engine.connect() as conn:
        rows = (await conn.execute(select(func.count()).select_from(Notification))).scalar_one()
    assert rows == users * alerts * 3
    # Each row published once, by one relay or the other; no lease had to expire.
    assert published == expected, metrics
    assert sum(m["tocsin_relay_lease_expired_total"] for m in metrics) == 0, metrics
    assert sum(m["tocsin_producer_alerts_processed_total"] for m in metrics) == alerts, metrics


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
@pytest.mark.timeout(60)
async def test_a_producer_pass_leaves_the_lock_free_for_the_next(cluster: Cluster) -> None:
    await cluster.seed(2, 2, tag="first")
    producer = await cluster.spawn_producer()
    await cluster.wait_for(lambda: producer.count("producer_pass"), timeout=30, what="its pass")
    holders = await cluster.sql(
        "SELECT a.state FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
        " WHERE l.locktype = 'advisory'"
    )
    await cluster.seed(2, 3, tag="second")
    report = await cluster.produce()
    print(f"\n[{cluster.broker}] advisory lock holders after the pass: {holders}; {report}")
    assert await producer.terminate() == 0
    assert holders == []
    assert report["alerts"] == 3, report


# --- poison ----------------------------------------------------------------------------------

POISON = (b"not JSON at all {", b'{"id": 987654321}')


async def publish_raw(cluster: Cluster, channel: str, bodies: Sequence[bytes]) -> None:
    """Publishes bodies straight onto a channel's queue, bypassing the relay."""
    if cluster.broker == "redis":
        client = redis.asyncio.Redis.from_url(cluster.broker_url)
        try:
            for body in bodies:
                await client.xadd(names.stream_key(channel), {b"m": body})
        finally:
            await client.aclose()
        return
    connection = await aio_pika.connect(cluster.broker_url)
    try:
        amqp = await connection.channel(publisher_confirms=True)
        for body in bodies:
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await amqp.default_exchange.publish(message, routing_key=names.queue_name(channel))
    finally:
        await connection.close()


async def dead_letters(cluster: Cluster, channel: str) -> int:
    """How many messages the broker holds in its dead letters for a channel."""
    if cluster.broker == "redis":
        client = redis.asyncio.Redis.from_url(cluster.broker_url)
        try:
            return int(await client.xlen(names.dead_stream_key(channel)))
        finally:
            await client.aclose()
    connection = await aio_pika.connect(cluster.broker_url)
    try:
        amqp = await connection.channel()
        queue = await amqp.declare_queue(names.DEAD_LETTER_QUEUE, passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await connection.close()


@pytest.mark.timeout(90)
async def test_poison_messages_are_dead_lettered_and_the_worker_goes_on(cluster: Cluster) -> None:
    worker = await cluster.spawn_worker(concurrency=4)
    await cluster.wait_ready(worker)
    await publish_raw(cluster, "email", POISON)
    await cluster.wait_for(
        lambda: _at_least(dead_letters(cluster, "email"), len(POISON)),
        timeout=30,
        what="the poison messages in the broker's dead letters",
    )
    await cluster.seed(5, 20)  # 200 notifications after the poison
    producer = await cluster.spawn_producer()
    await cluster.settle(timeout=60)
    worker_metrics = await worker.scrape()
    for proc in (worker, producer):
        assert await proc.terminate() == 0, proc.tail(40)
    verdict = await cluster.judge()
    dead = await dead_letters(cluster, "email")
    print(
        f"\n[{cluster.broker}] poison: {verdict}; broker dead letters {dead},"
        f" poison counted {worker_metrics['tocsin_poison_messages_total']:.0f}"
        f" in {cluster.elapsed():.1f}s"
    )

    assert verdict.ok, verdict
    assert verdict.sent == verdict.intended == 200, verdict
    assert verdict.duplicated == 0, verdict
    assert dead == len(POISON)
    assert worker_metrics["tocsin_poison_messages_total"] == len(POISON)
    assert [e["event"] for e in worker.events("poison_message")] == ["poison_message"] * 2


async def _at_least(count: object, wanted: int) -> bool:
    assert asyncio.iscoroutine(count)
    return int(await count) >= wanted
