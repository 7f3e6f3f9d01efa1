"""The relay publishes due rows, re-publishes lost ones, and loses nothing when publishing fails."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from pipeline.clock import ManualClock, SystemClock
from pipeline.config import DispatchFallback, Settings
from pipeline.models import Notification, State
from pipeline.notifications import NotificationFilter, list_notifications
from pipeline.queues.base import QueueUnavailable, decode_message
from pipeline.queues.memory import MemoryQueue
from tests.support.pipeline import START, add_alert, add_user, open_app, produced, rows, sample
from tests.support.waiting import eventually


async def test_publishes_due_rows_and_leaves_deferred_ones(db_settings: Settings) -> None:
    clock = ManualClock(START)
    async with open_app(db_settings, clock) as app:
        await add_user(
            app, "alice", email="a@example.com", timezone="Asia/Shanghai", quiet_hours="11:00-13:30"
        )
        await add_alert(app, ["alice"])
        await app.producer().run()
        report = await app.relay().tick()
        found = await rows(app)
        stats = {s.channel: s.depth for s in await app.queue.stats(["system", "email", "wecom"])}
        # At the window's end the deferred rows are released, without the hourly producer.
        clock.advance(timedelta(hours=1, minutes=30))
        later = await app.relay().tick()
        published = sample(app.metrics.registry, "tocsin_relay_published_total", channel="email")
    assert report.due == 1 and found[("alice", "system")].state == State.QUEUED
    assert found[("alice", "email")].state == State.PENDING
    assert stats == {"system": 1, "email": 0, "wecom": 0}
    assert later.due == 2 and published == 1


async def test_rows_whose_lease_expired_are_published_again(db_settings: Settings) -> None:
    clock = ManualClock(START)
    async with open_app(db_settings, clock) as app:
        await produced(app, channels="system")
        await app.relay().tick()
        assert (await app.relay().tick()).published == 0  # still leased
        clock.advance(db_settings.queue_lease + timedelta(seconds=1))
        report = await app.relay().tick()
        expired = sample(app.metrics.registry, "tocsin_relay_lease_expired_total", channel="system")
        depth = (await app.queue.stats(["system"]))[0].depth
    assert (report.lease_expired, expired, depth) == (1, 1, 2)


class _DownQueue(MemoryQueue):
    async def publish(self, channel: str, bodies: Sequence[bytes]) -> None:
        raise QueueUnavailable("broker down")


async def test_a_failed_publish_puts_rows_back_to_pending(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        await produced(app, channels="system")
        app.queue = _DownQueue()
        report = await app.relay().tick()
        found = await rows(app)
        failures = sample(
            app.metrics.registry, "tocsin_relay_publish_failures_total", channel="system"
        )
        broker_up = sample(app.metrics.registry, "tocsin_broker_up")
    assert (report.due, report.failed) == (0, 1)
    assert found[("alice", "system")].state == State.PENDING
    assert (failures, broker_up) == (1, 0)


async def test_with_inline_fallback_the_relay_delivers_while_the_broker_is_down(
    db_settings: Settings,
) -> None:
    settings = db_settings.model_copy(update={"dispatch_fallback": DispatchFallback.INLINE})
    async with open_app(settings) as app:
        await produced(app, channels="system")
        app.queue = _DownQueue()
        report = await app.relay().tick()
        found = await rows(app)
        inline = sample(
            app.metrics.registry, "tocsin_relay_inline_dispatch_total", channel="system"
        )
    assert report.failed == 0
    assert found[("alice", "system")].state == State.SENT
    assert inline == 1


async def test_publishes_in_batches_until_nothing_is_due(db_settings: Settings) -> None:
    settings = db_settings.model_copy(update={"relay_batch_size": 4})
    async with open_app(settings) as app:
        await add_user(app, "alice", channels="system")
        for _ in range(10):
            await add_alert(app, ["alice"])
        await app.producer().run()
        report = await app.relay().tick()
        assert isinstance(app.queue, MemoryQueue)
        messages = await app.queue.receive("system", 100, 0)
        listed = await list_notifications(app.sessions, NotificationFilter(channel="system"))
        expected = [n.id for n in listed]
    assert report.due == 10
    assert sorted(decode_message(m.body) for m in messages) == sorted(expected)


async def test_a_row_is_published_when_it_falls_due_not_an_interval_later(
    db_settings: Settings,
) -> None:
    """With RELAY_INTERVAL an hour, a row due in a second is still published within the wait.

    Quiet windows end and retries fall due at an instant; the relay wakes for it.
    """
    settings = db_settings.model_copy(update={"relay_interval": timedelta(hours=1)})
    async with open_app(settings, SystemClock()) as app:
        await produced(app, channels="system")
        async with app.sessions() as session, session.begin():
            await session.execute(
                update(Notification).values(not_before=datetime.now(UTC) + timedelta(seconds=1))
            )
        stop = asyncio.Event()
        relay = asyncio.create_task(app.relay().run(stop))

        async def queued_system() -> int:
            return (await app.queue.stats(["system"]))[0].depth

        try:
            depth = await eventually(queued_system, timeout=60)
        finally:
            stop.set()
            await relay
        found = await rows(app)
    assert depth == 1 and found[("alice", "system")].state == State.QUEUED
