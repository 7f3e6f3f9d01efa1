"""Dead letters can be listed, replayed with a fresh schedule (or dry-run), and purged."""

from __future__ import annotations

import pytest

from channels.errors import Reason
from pipeline.app import App
from pipeline.config import Settings
from pipeline.models import State
from pipeline.notifications import NotificationFilter
from pipeline.validation import InputError
from tests.support.pipeline import START, cycle, open_app, produced, rows, sample
from workers.dead_letters import purge, replay


async def _one_dead_email(app: App) -> int:
    await produced(app, email="alice@example.com", channels="email,system")
    await cycle(app)  # e-mail is not configured: dead with channel_disabled
    row = (await rows(app))[("alice", "email")]
    assert (row.state, row.last_reason) == (State.DEAD, Reason.CHANNEL_DISABLED)
    return row.id or 0


async def test_replay_dry_run_changes_nothing(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        dead_id = await _one_dead_email(app)
        report = await replay(
            app.sessions, app.clock, app.metrics, NotificationFilter(ids=(dead_id,)), dry_run=True
        )
        row = (await rows(app))[("alice", "email")]
    assert (report.ids, report.by_channel, report.dry_run) == ([dead_id], {"email": 1}, True)
    assert row.state == State.DEAD


async def test_replay_puts_dead_letters_back_with_a_fresh_schedule(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        dead_id = await _one_dead_email(app)
        report = await replay(
            app.sessions, app.clock, app.metrics, NotificationFilter(channel="email", limit=None)
        )
        row = (await rows(app))[("alice", "email")]
        replayed = sample(
            app.metrics.registry, "tocsin_dead_letters_replayed_total", channel="email"
        )
    assert report.ids == [dead_id] and replayed == 1
    assert (row.state, row.attempts, row.not_before, row.last_reason) == (
        State.PENDING,
        0,
        START,
        None,
    )


async def test_replaying_a_row_that_is_not_dead_is_refused(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        await _one_dead_email(app)
        sent = (await rows(app))[("alice", "system")]
        with pytest.raises(InputError, match=f"notification {sent.id} is SENT, not DEAD"):
            await replay(
                app.sessions, app.clock, app.metrics, NotificationFilter(ids=(sent.id or 0,))
            )
        with pytest.raises(InputError, match="no notification 424242"):
            await replay(app.sessions, app.clock, app.metrics, NotificationFilter(ids=(424242,)))


async def test_purge_takes_rows_out_of_the_dead_letters_but_keeps_them(
    db_settings: Settings,
) -> None:
    async with open_app(db_settings) as app:
        await _one_dead_email(app)
        report = await purge(app.sessions, app.clock, NotificationFilter(limit=None))
        row = (await rows(app))[("alice", "email")]
    assert len(report.ids) == 1
    assert (row.state, row.last_reason) == (State.SUPPRESSED, Reason.PURGED)
