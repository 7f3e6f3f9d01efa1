"""An alert's repeats within DEDUP_WINDOW notify nobody, and one alert has a recipient cap."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlmodel import col

from channels.errors import Reason
from pipeline.alerts import AlertInput, create_alert
from pipeline.app import App
from pipeline.clock import ManualClock
from pipeline.config import Settings
from pipeline.models import Alert, Notification, State
from pipeline.validation import InputError
from tests.support.pipeline import START, add_user, open_app


async def alert(app: App, title: str, key: str | None, recipients: list[str]) -> Alert:
    data = AlertInput(title, title, "warning", recipients, dedup_key=key)
    return await create_alert(
        app.sessions, app.clock, data, max_recipients=app.settings.max_recipients_per_alert
    )


async def states(app: App, alert_id: int) -> set[tuple[str, str | None]]:
    async with app.sessions() as session:
        found = await session.execute(
            select(Notification).where(
                col(Notification.alert_id) == alert_id, col(Notification.channel) == "system"
            )
        )
        return {(n.state, n.last_reason) for n in found.scalars()}


async def test_a_repeat_within_the_window_is_suppressed_as_duplicate(db_settings: Settings) -> None:
    settings = db_settings.model_copy(update={"dedup_window": timedelta(hours=1)})
    clock = ManualClock(START)
    async with open_app(settings, clock) as app:
        await add_user(app, "alice", channels="system")
        first = await alert(app, "Disk 95% on db-1", "disk-db1", ["alice"])
        await app.producer().run()
        clock.advance(timedelta(minutes=1))
        repeat = await alert(app, "Disk 95% on db-1", "disk-db1", ["alice"])
        other = await alert(app, "Disk 95% on db-2", "disk-db2", ["alice"])
        unkeyed = await alert(app, "Disk 95% on db-1", None, ["alice"])
        await app.producer().run()
        assert await states(app, first.id or 0) == {(State.PENDING.value, None)}
        assert await states(app, repeat.id or 0) == {
            (State.SUPPRESSED.value, Reason.DUPLICATE.value)
        }
        assert await states(app, other.id or 0) == {(State.PENDING.value, None)}
        assert await states(app, unkeyed.id or 0) == {(State.PENDING.value, None)}
        async with app.sessions() as session:
            stored = await session.get(Alert, repeat.id)
        assert stored is not None and stored.duplicate_of == first.id


async def test_the_window_counts_from_the_first_alert_not_the_last_repeat(
    db_settings: Settings,
) -> None:
    settings = db_settings.model_copy(update={"dedup_window": timedelta(minutes=30)})
    clock = ManualClock(START)
    async with open_app(settings, clock) as app:
        await add_user(app, "alice", channels="system")
        told: list[bool] = []
        # A problem that fires every 20 minutes: told at 0 and 40 (a new window), not 20 or 60.
        for _ in range(4):
            created = await alert(app, "Flapping", "flap", ["alice"])
            await app.producer().run()
            reasons = await states(app, created.id or 0)
            told.append(reasons == {(State.PENDING.value, None)})
            clock.advance(timedelta(minutes=20))
    assert told == [True, False, True, False]


async def test_repeats_in_one_producer_batch_are_found_too(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        await add_user(app, "alice", channels="system")
        created = [await alert(app, "Same", "same", ["alice"]) for _ in range(3)]
        await app.producer().run()
        found = [await states(app, a.id or 0) for a in created]
    assert found[0] == {(State.PENDING.value, None)}
    assert found[1:] == [{(State.SUPPRESSED.value, Reason.DUPLICATE.value)}] * 2


async def test_an_alert_over_the_recipient_cap_is_refused(sqlite_settings: Settings) -> None:
    settings = sqlite_settings.model_copy(update={"max_recipients_per_alert": 2})
    async with open_app(settings) as app:
        for name in ("a1", "a2", "a3"):
            await add_user(app, name, channels="system")
        with pytest.raises(InputError, match="names 3 recipients: the limit is 2"):
            await alert(app, "Too many", None, ["a1", "a2", "a3"])
        assert (await alert(app, "Fine", None, ["a1", "a2"])).id is not None


@pytest.mark.parametrize("key", ["", " ", "x" * 201, "a\x00b"])
async def test_bad_dedup_keys_are_refused(sqlite_settings: Settings, key: str) -> None:
    async with open_app(sqlite_settings) as app:
        await add_user(app, "alice", channels="system")
        with pytest.raises(InputError, match="dedup key"):
            await alert(app, "Keyed", key, ["alice"])
