"""The producer expands alerts into notifications: preferences, quiet hours, idempotency."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, update
from sqlmodel import col

from channels.errors import Reason
from pipeline.alerts import resolve_alert
from pipeline.app import App
from pipeline.clock import ManualClock
from pipeline.config import Settings
from pipeline.models import Alert, AlertRecipient, Notification, State
from pipeline.preferences import RecipientView
from pipeline.producer import (
    Candidate,
    apply_alert_state,
    apply_content_check,
    apply_quiet_hours,
    expand,
)
from pipeline.quiet_hours import QuietHours
from tests.support.channels import pinned
from tests.support.pipeline import (
    START,
    add_alert,
    add_user,
    cycle,
    open_app,
    produced,
    rows,
    sample,
)


async def test_every_recipient_gets_each_enabled_channel(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        await add_user(app, "alice", email="alice@example.com")
        await add_user(app, "carol", channels="system")
        await add_alert(app, ["alice", "carol"])
        report = await app.producer().run()
        found = await rows(app)
    assert report.alerts == 1 and report.created == 6
    assert {k: n.state for k, n in found.items()} == {
        ("alice", "system"): State.PENDING,
        ("alice", "email"): State.PENDING,
        ("alice", "wecom"): State.PENDING,
        ("carol", "system"): State.PENDING,
        ("carol", "email"): State.SUPPRESSED,
        ("carol", "wecom"): State.SUPPRESSED,
    }
    assert found[("carol", "email")].last_reason == Reason.OPTED_OUT


async def test_a_recipient_without_an_address_is_suppressed_as_no_contact(
    db_settings: Settings,
) -> None:
    async with open_app(db_settings) as app:
        await add_user(app, "dave")
        await add_alert(app, ["dave"])
        await app.producer().run()
        found = await rows(app)
        created = sample(
            app.metrics.registry, "tocsin_notifications_created_total", channel="email"
        )
        suppressed = sample(
            app.metrics.registry,
            "tocsin_notifications_suppressed_total",
            channel="email",
            reason="no_contact",
        )
    assert found[("dave", "email")].state == State.SUPPRESSED
    assert found[("dave", "email")].last_reason == Reason.NO_CONTACT
    assert found[("dave", "wecom")].state == State.PENDING  # the group robot needs no address
    assert (created, suppressed) == (1, 1)


async def test_quiet_hours_defer_push_channels_to_the_window_end(db_settings: Settings) -> None:
    # START is 12:00 in Shanghai; the window 11:00-13:30 ends at 05:30 UTC.
    async with open_app(db_settings) as app:
        await add_user(
            app, "alice", email="a@example.com", timezone="Asia/Shanghai", quiet_hours="11:00-13:30"
        )
        await add_alert(app, ["alice"])
        report = await app.producer().run()
        found = await rows(app)
        deferred = sample(
            app.metrics.registry, "tocsin_notifications_deferred_total", channel="email"
        )
    end = datetime(2026, 11, 23, 5, 30, tzinfo=UTC)
    assert report.deferred == 2 and deferred == 1
    assert found[("alice", "email")].not_before == end and found[("alice", "email")].deferred
    assert found[("alice", "wecom")].not_before == end
    # The in-app inbox is never deferred.
    assert found[("alice", "system")].not_before == START
    assert not found[("alice", "system")].deferred


async def test_critical_alerts_bypass_quiet_hours(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        await add_user(
            app, "alice", email="a@example.com", timezone="Asia/Shanghai", quiet_hours="11:00-13:30"
        )
        await add_alert(app, ["alice"], severity="critical")
        await app.producer().run()
        found = await rows(app)
    assert all(n.not_before == START and not n.deferred for n in found.values())


async def test_outside_quiet_hours_nothing_is_deferred(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        await add_user(
            app, "alice", email="a@example.com", timezone="Asia/Shanghai", quiet_hours="22:00-07:00"
        )
        await add_alert(app, ["alice"])
        await app.producer().run()
        found = await rows(app)
    assert all(n.not_before == START for n in found.values())


async def test_running_twice_creates_nothing_new(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        await add_user(app, "alice", email="a@example.com")
        await add_alert(app, ["alice"])
        first = await app.producer().run()
        second = await app.producer().run()
        async with app.sessions() as session:
            count = (await session.execute(select(func.count()).select_from(Notification))).scalar()
            processed = (await session.execute(select(col(Alert.processed_at)))).scalar()
    assert (first.created, second.created, second.alerts, count) == (3, 0, 0, 3)
    assert processed == START


async def test_reprocessing_an_alert_hits_the_unique_key_not_a_duplicate(
    db_settings: Settings,
) -> None:
    async with open_app(db_settings) as app:
        await produced(app, email="a@example.com")
        async with app.sessions() as session, session.begin():
            await session.execute(update(Alert).values(processed_at=None))
        again = await app.producer().run()
        found = await rows(app)
        created = sample(
            app.metrics.registry, "tocsin_notifications_created_total", channel="email"
        )
    assert (again.alerts, again.created, again.duplicates) == (1, 0, 3)
    assert len(found) == 3 and created == 1


async def test_two_producers_at_once_create_each_notification_once(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        for i in range(20):
            await add_user(app, f"user{i}", email=f"user{i}@example.com")
        for _ in range(30):
            await add_alert(app, [f"user{i}" for i in range(20)])
        first, second = app.producer(), app.producer()
        reports = await asyncio.gather(first.run(), second.run())
        async with app.sessions() as session:
            count = (await session.execute(select(func.count()).select_from(Notification))).scalar()
    assert count == 30 * 20 * 3
    assert sum(r.created for r in reports) == count
    assert sum(r.alerts for r in reports) == 30


async def test_batches_until_no_alert_is_left(db_settings: Settings) -> None:
    settings = db_settings.model_copy(update={"producer_batch_size": 7})
    async with open_app(settings) as app:
        await add_user(app, "alice", channels="system")
        for _ in range(23):
            await add_alert(app, ["alice"])
        report = await app.producer().run()
    assert (report.alerts, report.created) == (23, 69)


async def test_an_alert_resolved_before_production_notifies_no_one(db_settings: Settings) -> None:
    clock = ManualClock(START)
    async with open_app(db_settings, clock) as app:
        await add_user(app, "alice", email="a@example.com")
        alert = await add_alert(app, ["alice"])
        await resolve_alert(app.sessions, clock, alert.id or 0)
        await app.producer().run()
        found = await rows(app)
    assert {n.state for n in found.values()} == {State.SUPPRESSED}
    assert {n.last_reason for n in found.values()} == {Reason.ALERT_RESOLVED}


async def test_the_producer_records_its_run_in_metrics(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        await app.producer().run()
        registry = app.metrics.registry
        assert sample(registry, "tocsin_producer_runs_total", outcome="success") == 1
        assert sample(registry, "tocsin_producer_last_success_timestamp_seconds") == (
            START.timestamp()
        )


async def test_a_replica_skips_the_slot_while_another_holds_the_lock(
    postgres_settings: Settings,
) -> None:
    from sqlalchemy import func as sql_func

    from pipeline.producer import PRODUCER_LOCK_KEY

    async with open_app(postgres_settings) as app:
        await add_user(app, "alice", channels="system")
        await add_alert(app, ["alice"])
        async with app.sessions() as other_replica:
            await other_replica.execute(select(sql_func.pg_advisory_lock(PRODUCER_LOCK_KEY)))
            skipped = await app.producer().run()
            await other_replica.execute(select(sql_func.pg_advisory_unlock(PRODUCER_LOCK_KEY)))
        ran = await app.producer().run()
    assert (skipped.alerts, skipped.created) == (0, 0)
    assert (ran.alerts, ran.created) == (1, 3)


# content: a row written straight into the database is checked like input


CONTENT_TABLE: list[tuple[str, str, Reason | None]] = [
    ("Disk full", "Usage 97%\n\tand rising\r\n", None),
    ("<@all> [login](http://evil.example)", "**markup is data, not a problem here**", None),
    ("Disk\x00full", "fine", Reason.INVALID_CONTENT),
    ("Disk full", "fine\x00", Reason.INVALID_CONTENT),
    ("Disk\nfull", "fine", Reason.INVALID_CONTENT),
    ("Disk\tfull", "fine", Reason.INVALID_CONTENT),
    ("Disk full", "clear \x1b[2J", Reason.INVALID_CONTENT),
    ("Disk full", "c1 \x9b", Reason.INVALID_CONTENT),
    ("Disk \ufffe", "fine", Reason.INVALID_CONTENT),
]
ALICE = RecipientView(1, "alice", {}, frozenset({"system", "email"}), None)


@pytest.mark.parametrize(("title", "body", "reason"), CONTENT_TABLE)
def test_content_check_suppresses_every_candidate_of_a_refused_alert(
    title: str, body: str, reason: Reason | None
) -> None:
    alert = Alert(id=1, title=title, body=body, severity="warning", created_at=START)
    fine = Alert(id=2, title="fine", body="fine", severity="warning", created_at=START)
    every = {"system", "email"}
    candidates = expand(alert, [ALICE], ["system", "email"], every) + expand(
        fine, [ALICE], ["system"], every
    )
    checked = apply_content_check(candidates)
    state = State.SUPPRESSED if reason else State.PENDING
    assert [(c.alert.id, c.channel, c.state, c.reason) for c in checked] == [
        (1, "system", state, reason),
        (1, "email", state, reason),
        (2, "system", State.PENDING, None),
    ]


def test_an_opt_in_channel_is_expanded_only_for_those_who_chose_it() -> None:
    alert = Alert(id=1, title="t", body="b", severity="warning", created_at=START)
    bob = RecipientView(2, "bob", {}, frozenset({"system", "pager"}), None)
    candidates = expand(alert, [ALICE, bob], ["system", "email", "pager"], {"system", "email"})
    assert [(c.recipient.username, c.channel) for c in candidates] == [
        ("alice", "system"),
        ("alice", "email"),  # on by default: a row, suppressed if alice turned it off
        ("bob", "system"),
        ("bob", "email"),
        ("bob", "pager"),  # opt-in: bob chose it, alice did not and gets no row
    ]


def test_content_check_keeps_an_earlier_reason() -> None:
    alert = Alert(id=1, title="a\x00", body="b", severity="warning", created_at=START)
    earlier = Candidate(alert, ALICE, "system", State.SUPPRESSED, reason=Reason.OPTED_OUT)
    assert apply_content_check([earlier]) == [earlier]


def test_alert_state_suppresses_only_the_candidates_of_a_dead_alert() -> None:
    now = START
    live = Alert(id=1, title="t", body="b", severity="warning", created_at=START)
    resolved = Alert(id=2, title="t", body="b", severity="warning", created_at=START)
    resolved.resolved_at = START
    expired = Alert(id=3, title="t", body="b", severity="warning", created_at=START)
    expired.expires_at = START
    earlier = Candidate(resolved, ALICE, "email", State.SUPPRESSED, reason=Reason.OPTED_OUT)
    candidates = [
        *expand(live, [ALICE], ["system"], {"system"}),
        *expand(resolved, [ALICE], ["system"], {"system"}),
        earlier,
        *expand(expired, [ALICE], ["system"], {"system"}),
    ]
    assert [(c.alert.id, c.state, c.reason) for c in apply_alert_state(candidates, now)] == [
        (1, State.PENDING, None),
        (2, State.SUPPRESSED, Reason.ALERT_RESOLVED),
        (2, State.SUPPRESSED, Reason.OPTED_OUT),  # the earlier reason stays
        (3, State.SUPPRESSED, Reason.ALERT_EXPIRED),
    ]


def test_each_quiet_window_gets_its_own_release_in_one_pass() -> None:
    # START is 12:00 in Shanghai and 05:00 in Berlin: the same hours, two answers; a window
    # equal to an earlier one (worked out once) gives the same answer.
    alert = Alert(id=1, title="t", body="b", severity="warning", created_at=START)
    shanghai = QuietHours.parse("11:00-13:30", "Asia/Shanghai")
    berlin = QuietHours.parse("11:00-13:30", "Europe/Berlin")
    again = QuietHours.parse("11:00-13:30", "Asia/Shanghai")
    people = [
        RecipientView(i, f"u{i}", {}, frozenset({"email"}), window)
        for i, window in enumerate([shanghai, berlin, again, None])
    ]
    deferred = apply_quiet_hours(
        expand(alert, people, ["email"], {"email"}), pinned().classes, START
    )
    end = datetime(2026, 11, 23, 5, 30, tzinfo=UTC)
    assert [(c.not_before, c.deferred) for c in deferred] == [
        (end, True),
        (None, False),
        (end, True),
        (None, False),
    ]


async def insert_raw_alert(app: App, username: str, title: str, body: str) -> None:
    """Writes an alert around create_alert's validation, as a careless script would."""
    recipient_id = (await add_user(app, username, email=f"{username}@example.com")).id
    async with app.sessions() as session, session.begin():
        alert = Alert(title=title, body=body, severity="critical", created_at=START)
        session.add(alert)
        await session.flush()
        session.add(AlertRecipient(alert_id=alert.id or 0, recipient_id=recipient_id))


async def test_a_row_with_a_nul_in_its_title_is_suppressed_as_invalid_content(
    sqlite_settings: Settings,
) -> None:
    # SQLite stores the NUL; PostgreSQL refuses NUL in text outright (the case below).
    async with open_app(sqlite_settings) as app:
        await insert_raw_alert(app, "alice", "Disk\x00full", "details")
        report = await app.producer().run()
        found = await rows(app)
        suppressed = sample(
            app.metrics.registry,
            "tocsin_notifications_suppressed_total",
            channel="wecom",
            reason="invalid_content",
        )
    assert (report.created, report.suppressed) == (3, 3)
    assert {(n.state, n.last_reason) for n in found.values()} == {
        (State.SUPPRESSED, Reason.INVALID_CONTENT)
    }
    assert suppressed == 1


async def test_a_row_with_an_escape_in_its_body_is_suppressed_as_invalid_content(
    db_settings: Settings,
) -> None:
    async with open_app(db_settings) as app:
        await insert_raw_alert(app, "alice", "Disk full", "output:\x1b[2J\x1b[31mgone")
        await app.producer().run()
        found = await rows(app)
    assert {(n.state, n.last_reason) for n in found.values()} == {
        (State.SUPPRESSED, Reason.INVALID_CONTENT)
    }


async def test_content_is_checked_again_at_send_time(sqlite_settings: Settings) -> None:
    async with open_app(sqlite_settings) as app:
        alert = await produced(app, channels="system")
        async with app.sessions() as session, session.begin():
            await session.execute(
                update(Alert).where(col(Alert.id) == alert.id).values(body="now\x00with a NUL")
            )
        await cycle(app)
        found = await rows(app)
    assert (found[("alice", "system")].state, found[("alice", "system")].last_reason) == (
        State.SUPPRESSED,
        Reason.INVALID_CONTENT,
    )


async def test_a_fallback_channel_is_held_back_while_the_channel_it_backs_up_is_tried(
    db_settings: Settings,
) -> None:
    # alice will be tried on WeCom, so her e-mail waits for WeCom to die; bob turned WeCom
    # off, so he gets e-mail at once; carol turned e-mail off, and her row still says so.
    channels = pinned(fallbacks={"wecom": "email"})
    async with open_app(db_settings, channels=channels) as app:
        await add_user(app, "alice", email="alice@example.com")
        await add_user(app, "bob", email="bob@example.com", channels="email,system")
        await add_user(app, "carol", channels="wecom,system")
        await add_alert(app, ["alice", "bob", "carol"])
        report = await app.producer().run()
        found = {k: (n.state, n.last_reason) for k, n in (await rows(app)).items()}
    assert ("alice", "email") not in found
    assert found[("alice", "wecom")] == (State.PENDING, None)
    assert found[("bob", "email")] == (State.PENDING, None)
    assert found[("bob", "wecom")] == (State.SUPPRESSED, Reason.OPTED_OUT)
    assert found[("carol", "email")] == (State.SUPPRESSED, Reason.OPTED_OUT)
    assert report.created == 8
