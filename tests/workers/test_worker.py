"""Workers deliver over loopback servers; retries, rate limits and duplicates follow the rows."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import ClassVar

from sqlalchemy import select

from channels.base import Channel, ChannelContext, ChannelSettings, Delivery
from channels.errors import Reason
from pipeline.clock import ManualClock
from pipeline.config import Settings
from pipeline.models import InboxMessage, Outcome, State
from pipeline.queues.base import encode_message
from pipeline.queues.memory import MemoryQueue
from tests.support.channels import pinned
from tests.support.pipeline import (
    START,
    add_alert,
    add_user,
    attempt_one,
    attempts_of,
    cycle,
    open_app,
    produced,
    rows,
    sample,
)
from tests.support.smtp_server import SmtpSink
from tests.support.wecom_server import WeComRobot, mentions
from workers.claim import claim, new_token
from workers.record import record


async def test_delivers_over_email_wecom_and_the_inbox(
    db_settings: Settings, smtp_server: SmtpSink, wecom_server: WeComRobot
) -> None:
    async with open_app(db_settings, channels=pinned(smtp_server, wecom_server)) as app:
        await produced(app, email="alice@example.com", wecom_userid="alice")
        assert await cycle(app) == 3
        found = await rows(app)
        async with app.sessions() as session:
            inbox = list((await session.execute(select(InboxMessage))).scalars())
        registry = app.metrics.registry
        sent = {
            c: sample(
                registry, "tocsin_delivery_attempts_total", channel=c, outcome="sent", reason="none"
            )
            for c in ("system", "email", "wecom")
        }
    assert {n.state for n in found.values()} == {State.SENT}
    assert all(n.attempts == 1 and n.sent_at == START for n in found.values())
    assert [m["To"] for m in smtp_server.messages] == ["alice@example.com"]
    assert "<@alice>" in wecom_server.received["k1"][0]["markdown"]["content"]
    assert [(m.title, m.read_at) for m in inbox] == [("Disk 95% on db-1", None)]
    assert sent == {"system": 1, "email": 1, "wecom": 1}


async def test_transient_failures_follow_the_schedule_then_die(
    db_settings: Settings, smtp_server: SmtpSink
) -> None:
    clock = ManualClock(START)
    smtp_server.respond_with(421, "try later")
    async with open_app(db_settings, clock, pinned(smtp_server)) as app:
        await produced(app, email="alice@example.com", channels="email")
        seen = []
        for minutes in (0, 5, 15, 30, 60):
            clock.advance(timedelta(minutes=minutes))
            # Nothing is due a second before the scheduled time.
            assert await cycle(app) == 1, f"nothing delivered at +{minutes}m"
            row = (await rows(app))[("alice", "email")]
            seen.append((row.state, row.attempts, row.not_before - clock.now()))
            clock.advance(timedelta(minutes=0))
            assert await cycle(app) == 0
        notification_id = row.id or 0
        attempts = await attempts_of(app, notification_id)
        dead = sample(
            app.metrics.registry, "tocsin_dead_lettered_total", channel="email", reason="smtp_4xx"
        )
    assert seen == [
        (State.PENDING, 1, timedelta(minutes=5)),
        (State.PENDING, 2, timedelta(minutes=15)),
        (State.PENDING, 3, timedelta(minutes=30)),
        (State.PENDING, 4, timedelta(minutes=60)),
        (State.DEAD, 5, seen[-1][2]),
    ]
    assert row.last_reason == Reason.SMTP_4XX and "gave up after 5 attempts" in (
        row.last_error or ""
    )
    assert [a.attempt for a in attempts] == [1, 2, 3, 4, 5]
    assert {a.outcome for a in attempts} == {Outcome.TRANSIENT}
    assert dead == 1


async def test_a_permanent_failure_is_dead_at_once(
    db_settings: Settings, smtp_server: SmtpSink
) -> None:
    smtp_server.respond_with(550, "no such user")
    async with open_app(db_settings, channels=pinned(smtp_server)) as app:
        await produced(app, email="alice@example.com", channels="email")
        await cycle(app)
        row = (await rows(app))[("alice", "email")]
    assert (row.state, row.attempts, row.last_reason) == (State.DEAD, 1, Reason.SMTP_5XX)


async def test_rate_limited_waits_without_spending_an_attempt(
    db_settings: Settings, wecom_server: WeComRobot
) -> None:
    clock = ManualClock(START)
    wecom_server.fail_with(45009, times=2)
    async with open_app(db_settings, clock, pinned(robot=wecom_server)) as app:
        await produced(app, channels="wecom")
        await cycle(app)
        first = (await rows(app))[("alice", "wecom")]
        clock.advance(timedelta(seconds=59))
        assert await cycle(app) == 0  # the cool-down is not over
        clock.advance(timedelta(seconds=1))
        await cycle(app)
        clock.advance(timedelta(seconds=60))
        await cycle(app)
        last = (await rows(app))[("alice", "wecom")]
        waits = sample(app.metrics.registry, "tocsin_rate_limit_waits_total", channel="wecom")
    assert (first.state, first.attempts, first.last_reason) == (
        State.PENDING,
        0,
        Reason.WECOM_45009,
    )
    assert first.not_before == START + timedelta(seconds=60)
    assert (last.state, last.attempts) == (State.SENT, 1)
    assert waits == 2


async def test_a_duplicate_queue_message_delivers_once(
    db_settings: Settings, smtp_server: SmtpSink
) -> None:
    async with open_app(db_settings, channels=pinned(smtp_server)) as app:
        await produced(app, email="alice@example.com", channels="email")
        await app.relay().tick()
        row = (await rows(app))[("alice", "email")]
        await app.queue.publish("email", [encode_message(row.id or 0)] * 2)
        await app.worker().run_until_idle()
        # A message that arrives after the row was sent is dropped too.
        await app.queue.publish("email", [encode_message(row.id or 0)])
        await app.worker().run_until_idle()
        row = (await rows(app))[("alice", "email")]
    assert len(smtp_server.messages) == 1
    assert (row.state, row.attempts) == (State.SENT, 1)


async def test_poison_messages_are_dead_lettered_and_work_goes_on(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        await produced(app, channels="system")
        await app.queue.publish("system", [b"not json", b'{"id": "x"}', encode_message(999_999)])
        await cycle(app)
        row = (await rows(app))[("alice", "system")]
        poison = sample(app.metrics.registry, "tocsin_poison_messages_total", channel="system")
        assert isinstance(app.queue, MemoryQueue)
        dead_letters = app.queue.dead_letters["system"]
    assert row.state == State.SENT
    assert poison == 3
    assert sorted(dead_letters) == sorted([b"not json", b'{"id": "x"}', encode_message(999_999)])


async def test_a_late_result_does_not_overwrite_a_completed_row(db_settings: Settings) -> None:
    clock = ManualClock(START)
    async with open_app(db_settings, clock) as app:
        await produced(app, channels="system")
        await app.relay().tick()
        row = (await rows(app))[("alice", "system")]
        stalled = await claim(
            app.sessions,
            [row.id or 0],
            clock.now(),
            timedelta(minutes=2),
            new_token(),
            app.channels,
        )
        assert [d.notification_id for d in stalled.deliveries] == [row.id]
        # The stalled worker's lease runs out; the relay hands the row to another worker.
        clock.advance(timedelta(minutes=3))
        report = await app.relay().tick()
        assert report.lease_expired == 1
        assert await app.worker().run_until_idle() == 1
        channel = app.worker(["system"])._channels["system"]
        late = await attempt_one(channel, stalled.deliveries[0], clock, 5.0, app.redact)
        recorded = await record(
            app.sessions, [late], stalled.token, app.policy, clock.now(), "stalled"
        )
        final = (await rows(app))[("alice", "system")]
    assert [r.applied for r in recorded] == [False]
    assert (final.state, final.attempts) == (State.SENT, 1)


async def test_preferences_and_alert_state_are_checked_again_at_send_time(
    db_settings: Settings, smtp_server: SmtpSink
) -> None:
    async with open_app(db_settings, channels=pinned(smtp_server)) as app:
        await produced(app, email="alice@example.com", channels="email,system")
        await add_user(app, "alice", channels="system")  # opted out of e-mail since
        await cycle(app)
        found = await rows(app)
    assert found[("alice", "email")].state == State.SUPPRESSED
    assert found[("alice", "email")].last_reason == Reason.OPTED_OUT
    assert found[("alice", "system")].state == State.SENT
    assert smtp_server.messages == []


class _Exploding(Channel[ChannelSettings]):
    name = "system"
    settings_class = ChannelSettings
    reasons: ClassVar[tuple[Reason, ...]] = ()

    @classmethod
    def from_settings(cls, settings: ChannelSettings, context: ChannelContext) -> _Exploding:
        return cls()

    def render(self, delivery: Delivery) -> Delivery:
        return delivery

    async def send(self, payload: Delivery) -> None:
        raise RuntimeError("bug in a channel")


async def test_a_crashing_channel_costs_an_attempt_not_the_worker(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        await produced(app, channels="system")
        await app.relay().tick()
        worker = app.worker(["system"])
        worker._channels = {"system": _Exploding()}
        assert await worker.run_until_idle() == 1
        row = (await rows(app))[("alice", "system")]
    assert (row.state, row.attempts, row.last_reason) == (
        State.PENDING,
        1,
        Reason.INTERNAL_ERROR,
    )


async def test_graceful_stop_finishes_sends_in_flight(
    sqlite_settings: Settings, wecom_server: WeComRobot
) -> None:
    wecom_server.delay(0.5)
    channels = pinned(robot=wecom_server)
    async with open_app(sqlite_settings, channels=channels) as app:
        # Five alerts, so five posts (one alert's recipients on one robot share a post).
        for i in range(5):
            await add_user(app, f"u{i}", channels="wecom")
            await add_alert(app, [f"u{i}"], title=f"alert {i}")
        await app.producer().run()
        await app.relay().tick()
        stop = asyncio.Event()
        worker = app.worker(["wecom"])
        running = asyncio.create_task(worker.run(stop))
        while wecom_server.requests < 5:  # noqa: ASYNC110 - the server has no event to await
            await asyncio.sleep(0.01)
        stop.set()  # every send is in flight now
        await asyncio.wait_for(running, 10)
        found = await rows(app)
    assert [n.state for (_, c), n in found.items() if c == "wecom"] == [State.SENT] * 5
    assert sum(len(v) for v in wecom_server.received.values()) == 5


async def test_one_alert_to_thirty_people_on_one_robot_is_one_post(
    db_settings: Settings, wecom_server: WeComRobot
) -> None:
    async with open_app(db_settings, channels=pinned(robot=wecom_server)) as app:
        names = [f"u{i:02d}" for i in range(30)]
        for name in names:
            await add_user(app, name, channels="wecom", wecom_userid=f"wx-{name}")
        # Someone with their own robot gets their own post.
        wecom_server.add_key("own")
        await add_user(
            app, "own", channels="wecom", wecom_userid="wx-own",
            wecom_webhook=wecom_server.webhook_url("own"),
        )  # fmt: skip
        await add_alert(app, [*names, "own"])
        await app.producer().run()
        await app.relay().tick()
        # One message is enough: its claim takes the alert's siblings along.
        assert await app.worker(["wecom"]).run_until_idle() == 31
        found = await rows(app)
        attempts = [await attempts_of(app, found[(name, "wecom")].id or 0) for name in names]
    [post] = wecom_server.received["k1"]
    assert mentions(post["markdown"]["content"]) == [f"wx-{name}" for name in names]
    [own] = wecom_server.received["own"]
    assert mentions(own["markdown"]["content"]) == ["wx-own"]
    assert {found[(name, "wecom")].state for name in [*names, "own"]} == {State.SENT}
    # Each row records the shared outcome as its own attempt.
    assert [[(a.outcome, a.attempt) for a in rows_of] for rows_of in attempts] == [
        [("sent", 1)]
    ] * 30
