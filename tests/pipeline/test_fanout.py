"""A producer batch is written in portions: every row once, every stage applied in each."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, func, select, update
from sqlmodel import col

from channels.errors import Reason
from pipeline.app import App
from pipeline.config import Settings
from pipeline.fanout import portions
from pipeline.models import Alert, Notification, Recipient, State
from pipeline.preferences import RecipientView, load_views
from pipeline.producer import Producer
from pipeline.recipients import RecipientInput, upsert_recipients
from tests.support.pipeline import START, add_alert, add_user, open_app, rows, sample

CHANNELS = ("system", "email", "wecom")


def small_producer(app: App, rows_per_statement: int) -> Producer:
    """The app's producer, with portions of rows_per_statement rows (a few recipients)."""
    return Producer(
        app.sessions,
        app.clock,
        app.metrics,
        app.channels,
        app.settings.producer_batch_size,
        app.settings.dedup_window,
        rows_per_statement=rows_per_statement,
    )


def view(rid: int) -> RecipientView:
    return RecipientView(rid, f"user{rid}", {}, frozenset(CHANNELS), None)


@pytest.mark.parametrize(
    ("sizes", "size", "expected"),
    [
        # recipients per alert, recipients per portion -> (alert, run length) per portion
        ([3, 0, 5], 4, [[(1, 3), (3, 1)], [(3, 4)]]),
        ([10], 4, [[(1, 4)], [(1, 4)], [(1, 2)]]),
        ([1, 1, 1], 10, [[(1, 1), (2, 1), (3, 1)]]),
        ([2], 0, [[(1, 1)], [(1, 1)]]),  # at least one recipient per portion
        ([0], 4, []),
    ],
)
def test_portions_split_recipients_in_order_within_the_bound(
    sizes: list[int], size: int, expected: list[list[tuple[int, int]]]
) -> None:
    alerts = [
        Alert(id=i + 1, title="t", body="b", severity="warning", created_at=START)
        for i in range(len(sizes))
    ]
    audience = {i + 1: [view(i * 100 + r) for r in range(n)] for i, n in enumerate(sizes)}
    parts = list(portions(alerts, audience, size))
    assert [[(alert.id, len(run)) for alert, run in part] for part in parts] == expected
    # Nothing lost, nothing repeated, order kept.
    flat = [(alert.id, v.id) for part in parts for alert, run in part for v in run]
    assert flat == [(a.id, v.id) for a in alerts for v in audience[a.id or 0]]


async def test_alerts_spanning_many_portions_get_every_row_exactly_once(
    db_settings: Settings,
) -> None:
    names = [f"user{i:02d}" for i in range(40)]
    async with open_app(db_settings) as app:
        for name in names:
            await add_user(app, name, email=f"{name}@example.com")
        alerts = [await add_alert(app, names, title=f"Disk {i}") for i in range(2)]
        # 10 rows a statement: three recipients (nine rows) a portion, 27 portions.
        first = await small_producer(app, 10).run()
        async with app.sessions() as session:
            stored = set(
                await session.execute(
                    select(
                        col(Notification.alert_id),
                        col(Notification.recipient_id),
                        col(Notification.channel),
                    )
                )
            )
        # Some rows go missing (as if deleted by hand); a second expansion makes those alone.
        async with app.sessions() as session, session.begin():
            ids = select(col(Recipient.id)).where(col(Recipient.username).in_(names[5:10]))
            await session.execute(
                delete(Notification).where(
                    col(Notification.channel) == "email", col(Notification.recipient_id).in_(ids)
                )
            )
            await session.execute(update(Alert).values(processed_at=None))
        again = await small_producer(app, 10).run()
        async with app.sessions() as session:
            count = await session.scalar(select(func.count()).select_from(Notification))
        created = sample(
            app.metrics.registry, "tocsin_notifications_created_total", channel="email"
        )
    assert len(stored) == first.created == 2 * 40 * 3
    assert {a for a, _, _ in stored} == {a.id for a in alerts}
    assert (again.alerts, again.created, again.duplicates) == (2, 10, 240 - 10)
    assert count == 240
    assert created == 80 + 10


async def test_quiet_hours_and_preferences_hold_in_every_portion(db_settings: Settings) -> None:
    # START is 04:00 UTC: 12:00 in Shanghai, 05:00 in Berlin.
    shanghai_end = datetime(2026, 11, 23, 5, 30, tzinfo=UTC)
    berlin_end = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
    async with open_app(db_settings) as app:
        for i in range(12):
            fields: dict[str, str] = {"email": f"u{i}@example.com"}
            if i % 4 == 0:
                fields |= {"timezone": "Asia/Shanghai", "quiet_hours": "11:00-13:30"}
            elif i % 4 == 1:
                fields |= {"timezone": "Europe/Berlin", "quiet_hours": "04:00-06:00"}
            elif i % 4 == 2:
                fields |= {"channels": "system"}
            await add_user(app, f"u{i:02d}", **fields)
        await add_alert(app, [f"u{i:02d}" for i in range(12)])
        # Two recipients a portion: each window and each choice meets several portions.
        report = await small_producer(app, 6).run()
        found = await rows(app)
        registry = app.metrics.registry
        deferred = sample(registry, "tocsin_notifications_deferred_total", channel="email")
        opted_out = sample(
            registry, "tocsin_notifications_suppressed_total", channel="wecom", reason="opted_out"
        )
    for i in range(12):
        name = f"u{i:02d}"
        system, email, wecom = (found[(name, c)] for c in CHANNELS)
        assert (system.not_before, system.deferred, system.state) == (START, False, State.PENDING)
        if i % 4 in (0, 1):
            end = shanghai_end if i % 4 == 0 else berlin_end
            assert (email.not_before, email.deferred) == (end, True)
            assert (wecom.not_before, wecom.deferred) == (end, True)
        elif i % 4 == 2:
            assert {(n.state, n.last_reason) for n in (email, wecom)} == {
                (State.SUPPRESSED, Reason.OPTED_OUT)
            }
        else:
            assert (email.not_before, email.deferred, email.state) == (START, False, State.PENDING)
    assert (report.created, report.deferred, report.suppressed) == (36, 12, 6)
    assert (deferred, opted_out) == (6, 3)


async def test_views_load_by_id_beyond_one_statement_of_ids(db_settings: Settings) -> None:
    entries = [
        RecipientInput(f"bulk{i:04d}", {"email": f"bulk{i}@example.com"}, channels="system,email")
        for i in range(1200)
    ]
    async with open_app(db_settings) as app:
        await upsert_recipients(app.sessions, app.clock, entries, app.channels)
        async with app.sessions() as session:
            ids = list((await session.execute(select(col(Recipient.id)))).scalars())
            by_id = await load_views(session, [i for i in ids if i is not None], app.channels)
    assert len(by_id) == 1200
    some = next(v for v in by_id.values() if v.username == "bulk0042")
    assert some.contacts == {"email": "bulk42@example.com"}
    assert some.channels == {"system", "email"} and some.quiet_hours is None
