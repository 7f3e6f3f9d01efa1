"""Dead letters are DEAD rows: inspect them, replay them with a fresh schedule, or purge them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import update
from sqlmodel import col

from channels.errors import Reason
from monitoring.metrics import Metrics
from pipeline.clock import Clock
from pipeline.db import SessionFactory
from pipeline.models import Notification, State
from pipeline.notifications import NotificationFilter, NotificationView, list_notifications
from pipeline.sql import id_channel_pairs
from pipeline.validation import InputError


@dataclass(frozen=True)
class ReplayReport:
    """What a replay (or purge) did or, with dry_run, would do."""

    ids: list[int]
    by_channel: dict[str, int]
    dry_run: bool


def dead(where: NotificationFilter) -> NotificationFilter:
    """Returns where narrowed to DEAD rows."""
    return NotificationFilter(**{**where.__dict__, "states": (State.DEAD.value,)})


async def check_replayable(sessions: SessionFactory, ids: Sequence[int]) -> None:
    """Raises InputError naming any id that is unknown or not DEAD."""
    found = await list_notifications(sessions, NotificationFilter(ids=tuple(ids), limit=None))
    states = {n.id: n.state for n in found}
    for notification_id in ids:
        if notification_id not in states:
            raise InputError(f"no notification {notification_id}")
        if states[notification_id] != State.DEAD.value:
            raise InputError(
                f"notification {notification_id} is {states[notification_id]}, not DEAD: "
                "only dead letters can be replayed or purged"
            )


async def _select(sessions: SessionFactory, where: NotificationFilter) -> list[NotificationView]:
    if where.ids:
        await check_replayable(sessions, where.ids)
    return await list_notifications(sessions, dead(where))


async def replay(
    sessions: SessionFactory,
    clock: Clock,
    metrics: Metrics,
    where: NotificationFilter,
    *,
    dry_run: bool = False,
) -> ReplayReport:
    """Puts the matching DEAD rows back to PENDING, due now, with a fresh retry schedule."""
    report = await _transition(
        sessions,
        clock,
        where,
        dry_run,
        values={
            "state": State.PENDING.value,
            "attempts": 0,
            "last_reason": None,
            "last_error": None,
            "lease_until": None,
            "claim_token": None,
        },
        fresh_schedule=True,
    )
    if not dry_run:
        for channel, count in report.by_channel.items():
            metrics.record_replayed(channel, count)
    return report


async def purge(
    sessions: SessionFactory, clock: Clock, where: NotificationFilter, *, dry_run: bool = False
) -> ReplayReport:
    """Moves the matching DEAD rows to SUPPRESSED (purged): out of the dead letters, kept."""
    return await _transition(
        sessions,
        clock,
        where,
        dry_run,
        values={"state": State.SUPPRESSED.value, "last_reason": Reason.PURGED.value},
        fresh_schedule=False,
    )


async def _transition(
    sessions: SessionFactory,
    clock: Clock,
    where: NotificationFilter,
    dry_run: bool,
    *,
    values: dict[str, object],
    fresh_schedule: bool,
) -> ReplayReport:
    rows = await _select(sessions, where)
    ids = [n.id for n in rows]
    by_channel = dict(Counter(n.channel for n in rows))
    if dry_run or not ids:
        return ReplayReport(ids, by_channel, dry_run)
    now = clock.now()
    extra = {"not_before": now} if fresh_schedule else {}
    async with sessions() as session, session.begin():
        # Guarded by state: a row replayed by someone else meanwhile is not touched twice.
        result = await session.execute(
            update(Notification)
            .where(col(Notification.id).in_(ids), col(Notification.state) == State.DEAD.value)
            .values(**values, **extra, updated_at=now)
            .returning(col(Notification.id), col(Notification.channel))
        )
        done = id_channel_pairs(result)
    return ReplayReport([i for i, _ in done], dict(Counter(c for _, c in done)), dry_run)
