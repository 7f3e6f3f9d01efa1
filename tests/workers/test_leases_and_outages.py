"""A worker stalled past its lease sends nothing late; a database outage costs no message."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import ClassVar

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import text

from channels.base import Channel, ChannelContext, ChannelSettings, Delivery
from channels.errors import Reason
from pipeline.app import App
from pipeline.clock import ManualClock
from pipeline.config import Settings
from pipeline.db import database_unavailable
from pipeline.models import InboxMessage, Notification, State
from pipeline.secret_url import SecretUrl
from pipeline.validation import InputError
from tests.support.pipeline import (
    START,
    add_alert,
    add_user,
    attempt_one,
    attempts_of,
    open_app,
    rows,
    sample,
)
from tests.support.proxy import FaultProxy
from tests.support.waiting import eventually
from workers.claim import claim, new_token
from workers.record import record
from workers.worker import WorkerConfig


async def queued_inbox_rows(app: App, *names: str) -> dict[str, Notification]:
    """Creates users of the inbox channel only and one alert for them; returns their QUEUED rows."""
    for name in names:
        await add_user(app, name, channels="system")
    await add_alert(app, list(names))
    await app.producer().run()
    await app.relay().tick()
    return {user: n for (user, channel), n in (await rows(app)).items() if channel == "system"}


class _Stalling(Channel[ChannelSettings]):
    """Its first send takes three minutes of manual-clock time: a stall past the lease."""

    name = "system"
    settings_class = ChannelSettings
    reasons: ClassVar[tuple[Reason, ...]] = ()

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.sent: list[int] = []

    @classmethod
    def from_settings(cls, settings: ChannelSettings, context: ChannelContext) -> _Stalling:
        raise NotImplementedError("built by the test")

    def render(self, delivery: Delivery) -> Delivery:
        return delivery

    async def send(self, payload: Delivery) -> None:
        if not self.sent:
            self.clock.advance(timedelta(minutes=3))
        self.sent.append(payload.notification_id)


async def test_a_send_whose_lease_ran_out_is_given_up_and_sent_once_later(
    db_settings: Settings,
) -> None:
    clock = ManualClock(START)
    async with open_app(db_settings, clock) as app:
        ids = sorted(n.id or 0 for n in (await queued_inbox_rows(app, "alice", "bob")).values())
        stalling = _Stalling(clock)
        worker = app.worker(["system"], concurrency=1)
        worker._channels = {"system": stalling}
        # One claim for both; with one send at a time the second starts after the stall.
        await worker.deliver("system", ids)
        held = {n.id: n.state for n in (await rows(app)).values() if n.channel == "system"}
        abandoned = sample(
            app.metrics.registry, "tocsin_worker_sends_abandoned_total", channel="system"
        )
        # The relay takes the abandoned row back once its lease has expired.
        assert (await app.relay().tick()).lease_expired == 1
        await worker.run_until_idle()
        final = await rows(app)
    assert held == {ids[0]: State.SENT, ids[1]: State.SENDING}
    assert abandoned == 1
    assert stalling.sent == ids  # each once: the second only after the relay re-published it
    assert {(n.state, n.attempts) for n in final.values() if n.channel == "system"} == {
        (State.SENT, 1)
    }


async def test_a_claim_retried_with_its_token_takes_the_same_rows(db_settings: Settings) -> None:
    clock = ManualClock(START)
    async with open_app(db_settings, clock) as app:
        row = (await queued_inbox_rows(app, "alice"))["alice"]
        token, lease = new_token(), timedelta(minutes=2)
        first = await claim(app.sessions, [row.id or 0], clock.now(), lease, token, app.channels)
        again = await claim(app.sessions, [row.id or 0], clock.now(), lease, token, app.channels)
        other = await claim(
            app.sessions, [row.id or 0], clock.now(), lease, new_token(), app.channels
        )
    assert [d.notification_id for d in first.deliveries] == [row.id]
    assert [d.notification_id for d in again.deliveries] == [row.id]
    assert (other.deliveries, other.stale) == ([], {row.id})


async def test_recording_a_batch_again_stores_it_once(db_settings: Settings) -> None:
    # What a worker does when the connection dropped during its record's commit: record again.
    clock = ManualClock(START)
    async with open_app(db_settings, clock) as app:
        row = (await queued_inbox_rows(app, "alice"))["alice"]
        token = new_token()
        claimed = await claim(
            app.sessions, [row.id or 0], clock.now(), timedelta(minutes=2), token, app.channels
        )
        inbox = app.worker(["system"])._channels["system"]
        [result] = [await attempt_one(inbox, d, clock, 5.0, app.redact) for d in claimed.deliveries]
        first = await record(app.sessions, [result], token, app.policy, clock.now(), "w")
        again = await record(app.sessions, [result], token, app.policy, clock.now(), "w")
        stored = await attempts_of(app, row.id or 0)
        final = (await rows(app))[("alice", "system")]
    assert [r.applied for r in first] == [r.applied for r in again] == [True]
    assert [(a.attempt, a.outcome, a.claim_token) for a in stored] == [(1, "sent", token)]
    assert (final.state, final.attempts) == (State.SENT, 1)


def test_a_lease_shorter_than_two_send_timeouts_is_refused() -> None:
    with pytest.raises(InputError, match=r"SEND_LEASE \(50s\) must be at least twice SEND_TIMEOUT"):
        WorkerConfig(name="w", send_lease=timedelta(seconds=50), send_timeout=timedelta(seconds=30))


@pytest.mark.postgres
async def test_an_unreachable_database_is_told_from_a_bad_statement(
    postgres_url: str, closed_port: int
) -> None:
    unreachable = create_async_engine(
        f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port}/test", poolclass=NullPool
    )
    with pytest.raises(Exception) as refused:
        async with unreachable.connect():
            pass
    reachable = create_async_engine(postgres_url, poolclass=NullPool)
    try:
        async with reachable.connect() as connection:
            await connection.execute(text("CREATE TABLE t (id int PRIMARY KEY)"))
            await connection.execute(text("INSERT INTO t VALUES (1)"))
            with pytest.raises(IntegrityError) as duplicate:
                await connection.execute(text("INSERT INTO t VALUES (1)"))
    finally:
        await reachable.dispose()
    assert database_unavailable(refused.value)
    assert not database_unavailable(duplicate.value)
    assert not database_unavailable(ValueError("not a database error"))


@pytest.mark.postgres
async def test_a_database_outage_holds_the_batch_until_the_database_is_back(
    postgres_settings: Settings,
) -> None:
    database_url = postgres_settings.database_url.get_secret_value()
    async with FaultProxy.to(database_url) as proxy:
        # model_copy does not validate: the URL goes in as the SecretUrl the field holds.
        settings = postgres_settings.model_copy(
            update={"database_url": SecretUrl(proxy.route(database_url))}
        )
        async with open_app(settings) as app:
            await queued_inbox_rows(app, "alice")
            proxy.refuse()  # PostgreSQL restarting: connections reset, new ones refused
            delivering = asyncio.create_task(app.worker(["system"]).run_until_idle())
            retries = await eventually(
                lambda: _retries(app.metrics.registry, "claim"), timeout=30, interval=0.05
            )
            [during] = await app.queue.stats(["system"])
            proxy.pass_through()
            assert await asyncio.wait_for(delivering, 60) == 1
            [after] = await app.queue.stats(["system"])
            row = (await rows(app))[("alice", "system")]
            async with app.sessions() as session:
                inbox = list((await session.execute(select(InboxMessage))).scalars())
    assert retries >= 1
    # Held, not handed back: a requeue would count against the broker's delivery limit.
    assert (during.depth, during.in_flight) == (0, 1)
    assert (after.depth, after.in_flight) == (0, 0)
    assert (row.state, row.attempts) == (State.SENT, 1)
    assert [m.recipient_id for m in inbox] == [row.recipient_id]


async def _retries(registry: CollectorRegistry, stage: str) -> float:
    return sample(registry, "tocsin_worker_database_retries_total", channel="system", stage=stage)
