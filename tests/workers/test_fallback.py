"""A notification that dies falls back to other channels: real workers, SMTP and WeCom servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry

from channels.errors import Reason
from pipeline.clock import ManualClock
from pipeline.config import Settings
from pipeline.models import Notification, State
from tests.support.channels import pinned
from tests.support.pipeline import START, add_alert, add_user, cycle, open_app, rows, sample
from tests.support.smtp_server import SmtpSink
from tests.support.wecom_server import WeComRobot

ALICE = {"email": "alice@example.com", "wecom_userid": "alice"}


def fallbacks(registry: CollectorRegistry, channel: str = "wecom", to: str = "email") -> float:
    """The value of tocsin_channel_fallbacks_total{channel, to}."""
    return sample(registry, "tocsin_channel_fallbacks_total", channel=channel, to=to)


async def test_a_robot_that_is_gone_falls_back_to_email(
    db_settings: Settings, smtp_server: SmtpSink, wecom_server: WeComRobot
) -> None:
    wecom_server.remove_key("k1")  # kicked out of its group: errcode 93000 from now on
    channels = pinned(smtp_server, wecom_server, fallbacks={"wecom": "email"})
    async with open_app(db_settings, channels=channels) as app:
        await add_user(app, "alice", **ALICE)
        await add_alert(app, ["alice"])
        await app.producer().run()
        # E-mail is WeCom's fallback: held in reserve while WeCom is to be tried.
        assert set(await rows(app)) == {("alice", "system"), ("alice", "wecom")}
        await cycle(app)  # the robot answers 93000: the WeCom row dies and falls back
        await cycle(app)  # the relay publishes the fallback row like any due row
        found = await rows(app)
        registry = app.metrics.registry
        counted = fallbacks(registry)
        dead = sample(
            registry, "tocsin_dead_lettered_total", channel="wecom", reason=Reason.WECOM_93000
        )
    wecom, email = found[("alice", "wecom")], found[("alice", "email")]
    assert (wecom.state, wecom.last_reason, wecom.fallback_of) == (
        State.DEAD,
        Reason.WECOM_93000,
        None,
    )
    assert (email.state, email.fallback_of, email.attempts) == (State.SENT, wecom.id, 1)
    assert [m["To"] for m in smtp_server.messages] == ["alice@example.com"]
    assert (counted, dead) == (1, 1)
    assert wecom_server.received == {}


async def test_retries_exhausted_fall_back_too(
    db_settings: Settings, smtp_server: SmtpSink, wecom_server: WeComRobot
) -> None:
    clock = ManualClock(START)
    wecom_server.http_status(503)  # transient, every time
    channels = pinned(smtp_server, wecom_server, fallbacks={"wecom": "email"})
    async with open_app(db_settings, clock, channels) as app:
        await add_user(app, "alice", **ALICE)
        await add_alert(app, ["alice"])
        await app.producer().run()
        for minutes in (0, 5, 15, 30, 60):  # RETRY_SCHEDULE: the fifth failure is the last
            clock.advance(timedelta(minutes=minutes))
            await cycle(app)
        await cycle(app)
        found = await rows(app)
        counted = fallbacks(app.metrics.registry)
    wecom, email = found[("alice", "wecom")], found[("alice", "email")]
    assert (wecom.state, wecom.attempts, wecom.last_reason) == (State.DEAD, 5, Reason.HTTP_5XX)
    assert (email.state, email.fallback_of) == (State.SENT, wecom.id)
    assert len(smtp_server.messages) == 1
    assert counted == 1


async def test_a_fallback_that_dies_falls_back_no_further(
    db_settings: Settings, smtp_server: SmtpSink, wecom_server: WeComRobot
) -> None:
    wecom_server.remove_key("k1")
    smtp_server.respond_with(550, "no such user")
    before = pinned(smtp_server, wecom_server, fallbacks={"wecom": "email"})
    async with open_app(db_settings, channels=before) as app:
        await add_user(app, "alice", channels="wecom,email", **ALICE)
        await add_alert(app, ["alice"])
        await app.producer().run()
        await cycle(app)
    # Restarted with e-mail now falling back to the webhook, which alice has no row on yet:
    # the e-mail row is a fallback, so its death creates nothing.
    after = pinned(smtp_server, wecom_server, fallbacks={"email": "webhook"})
    async with open_app(db_settings, channels=after) as app:
        await cycle(app)
        await cycle(app)
        found = await rows(app)
        counted = fallbacks(app.metrics.registry, "email", "webhook")
    assert set(found) == {("alice", "system"), ("alice", "wecom"), ("alice", "email")}
    email = found[("alice", "email")]
    assert (email.state, email.last_reason, email.fallback_of) == (
        State.DEAD,
        Reason.SMTP_5XX,
        found[("alice", "wecom")].id,
    )
    assert counted == 0


async def test_no_fallback_to_a_channel_the_recipient_turned_off(
    db_settings: Settings, smtp_server: SmtpSink, wecom_server: WeComRobot
) -> None:
    wecom_server.remove_key("k1")
    channels = pinned(smtp_server, wecom_server, fallbacks={"wecom": "email"})
    async with open_app(db_settings, channels=channels) as app:
        await add_user(app, "alice", channels="wecom", **ALICE)
        await add_alert(app, ["alice"])
        await app.producer().run()
        await cycle(app)
        await cycle(app)
        found = await rows(app)
        counted = fallbacks(app.metrics.registry)
    # The producer's row says why there is no e-mail; the death adds no second one.
    email = found[("alice", "email")]
    assert (email.state, email.last_reason, email.fallback_of) == (
        State.SUPPRESSED,
        Reason.OPTED_OUT,
        None,
    )
    assert found[("alice", "wecom")].state == State.DEAD
    assert smtp_server.messages == []
    assert counted == 0


async def test_a_recipient_who_turned_the_fallback_off_since_gets_a_suppressed_row(
    db_settings: Settings, smtp_server: SmtpSink, wecom_server: WeComRobot
) -> None:
    wecom_server.remove_key("k1")
    channels = pinned(smtp_server, wecom_server, fallbacks={"wecom": "email"})
    async with open_app(db_settings, channels=channels) as app:
        await add_user(app, "alice", channels="wecom,email", **ALICE)
        await add_alert(app, ["alice"])
        await app.producer().run()
        await add_user(app, "alice", channels="wecom")  # e-mail off after production
        await cycle(app)
        await cycle(app)
        found = await rows(app)
        registry = app.metrics.registry
        counted = fallbacks(registry)
        suppressed = sample(
            registry, "tocsin_notifications_suppressed_total", channel="email", reason="opted_out"
        )
    email = found[("alice", "email")]
    assert (email.state, email.last_reason, email.fallback_of) == (
        State.SUPPRESSED,
        Reason.OPTED_OUT,
        found[("alice", "wecom")].id,
    )
    assert smtp_server.messages == []
    assert (counted, suppressed) == (0, 1)


async def _fallback_during_quiet_hours(
    settings: Settings, robot: WeComRobot, smtp: SmtpSink, severity: str
) -> tuple[ManualClock, Notification]:
    # START is 12:00 in Shanghai: the alert goes out before the window 13:00-15:00 opens, and
    # the robot fails inside it.
    clock = ManualClock(START)
    robot.remove_key("k1")
    channels = pinned(smtp, robot, fallbacks={"wecom": "email"})
    async with open_app(settings, clock, channels) as app:
        await add_user(app, "alice", timezone="Asia/Shanghai", quiet_hours="13:00-15:00", **ALICE)
        await add_alert(app, ["alice"], severity=severity)
        await app.producer().run()
        clock.advance(timedelta(minutes=90))
        await cycle(app)
        return clock, (await rows(app))[("alice", "email")]


async def test_a_fallback_waits_out_the_recipients_quiet_hours(
    db_settings: Settings, smtp_server: SmtpSink, wecom_server: WeComRobot
) -> None:
    _, email = await _fallback_during_quiet_hours(db_settings, wecom_server, smtp_server, "warning")
    end = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)  # 15:00 in Shanghai
    assert (email.state, email.not_before, email.deferred) == (State.PENDING, end, True)
    assert email.fallback_of is not None
    assert smtp_server.messages == []


async def test_a_critical_fallback_ignores_quiet_hours(
    sqlite_settings: Settings, smtp_server: SmtpSink, wecom_server: WeComRobot
) -> None:
    clock, email = await _fallback_during_quiet_hours(
        sqlite_settings, wecom_server, smtp_server, "critical"
    )
    assert (email.state, email.not_before, email.deferred) == (State.PENDING, clock.now(), False)
