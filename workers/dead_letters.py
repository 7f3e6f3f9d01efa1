"""Dead letters are DEAD rows: inspect them, replay them with a fresh schedule, or purge them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from channels.errors import Reason
from monitoring.metrics import Metrics
from pipeline.audit import Audit, add_record
from pipeline.clock import Clock
from pipeline.db import SessionFactory
from pipeline.models import Notification, State
from pipeline.notifications import NotificationFilter, NotificationView, list_notifications
from pipeline.sql import id_channel_pairs, table_of
from pipeline.validation import InputError

# How fast a replay releases rows unless told otherwise, so a recovered provider is not flooded.
DEFAULT_RATE = "10/s"


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


Progress = Callable[[int, int], None]
# Rows per statement: bounded parameter lists, and a progress report between chunks.
_CHUNK = 500


async def replay(
    sessions: SessionFactory,
    clock: Clock,
    metrics: Metrics,
    where: NotificationFilter,
    *,
    dry_run: bool = False,
    audit: Audit | None = None,
    rate: float | None = None,
    on_progress: Progress | None = None,
) -> ReplayReport:
    """Puts the matching DEAD rows back to PENDING with a fresh retry schedule.

    With a rate (rows per second) their not_before is spread out in id order, so a recovered
    provider sees at most that many a second; nothing waits in memory. With audit, the change
    and its audit record commit together.
    """
    report = await _transition(
        sessions,
        clock,
        where,
        Change(
            action="replay",
            values={
                "state": State.PENDING.value,
                "attempts": 0,
                "last_reason": None,
                "last_error": None,
                "lease_until": None,
                "claim_token": None,
            },
            fresh_schedule=True,
            rate=rate,
        ),
        dry_run=dry_run,
        audit=audit,
        on_progress=on_progress,
    )
    if not dry_run:
        for channel, count in report.by_channel.items():
            metrics.record_replayed(channel, count)
    return report


async def purge(
    sessions: SessionFactory,
    clock: Clock,
    where: NotificationFilter,
    *,
    dry_run: bool = False,
    audit: Audit | None = None,
    on_progress: Progress | None = None,
) -> ReplayReport:
    """Moves the matching DEAD rows to SUPPRESSED (purged): out of the dead letters, kept."""
    change = Change(
        action="purge",
        values={"state": State.SUPPRESSED.value, "last_reason": Reason.PURGED.value},
    )
    return await _transition(
        sessions, clock, where, change, dry_run=dry_run, audit=audit, on_progress=on_progress
    )


@dataclass(frozen=True)
class Change:
    """What a bulk action writes to each DEAD row it takes."""

    action: str
    values: dict[str, object]
    fresh_schedule: bool = False
    rate: float | None = None

    def due_times(self, now: datetime, count: int) -> list[datetime]:
        """Returns the not_before of each of count rows, spread at the rate (now without one)."""
        step = 1.0 / self.rate if self.rate else 0.0
        return [now + timedelta(seconds=index * step) for index in range(count)]


async def _transition(
    sessions: SessionFactory,
    clock: Clock,
    where: NotificationFilter,
    change: Change,
    *,
    dry_run: bool,
    audit: Audit | None,
    on_progress: Progress | None,
) -> ReplayReport:
    rows = await _select(sessions, where)
    ids = sorted(n.id for n in rows)
    by_channel = dict(Counter(n.channel for n in rows))
    if dry_run or not ids:
        return ReplayReport(ids, by_channel, dry_run)
    now = clock.now()
    done: list[tuple[int, str]] = []
    async with sessions() as session, session.begin():
        for start in range(0, len(ids), _CHUNK):
            done += await _take_dead(session, ids[start : start + _CHUNK], change, now)
            if on_progress is not None:
                on_progress(min(start + _CHUNK, len(ids)), len(ids))
        taken = sorted(i for i, _ in done)
        if change.rate and taken:
            await _schedule(session, taken, change.due_times(now, len(taken)))
        if audit is not None:
            add_record(session, audit, change.action, now, taken)
    return ReplayReport(taken, dict(Counter(c for _, c in done)), dry_run)


async def _take_dead(
    session: AsyncSession, ids: list[int], change: Change, now: datetime
) -> list[tuple[int, str]]:
    extra = {"not_before": now} if change.fresh_schedule else {}
    # Guarded by state: a row replayed by someone else meanwhile is not touched twice.
    result = await session.execute(
        update(Notification)
        .where(col(Notification.id).in_(ids), col(Notification.state) == State.DEAD.value)
        .values(**change.values, **extra, updated_at=now)
        .returning(col(Notification.id), col(Notification.channel))
    )
    return id_channel_pairs(result)


async def _schedule(session: AsyncSession, ids: list[int], due: list[datetime]) -> None:
    table = table_of(Notification)
    statement = (
        update(table).where(table.c.id == bindparam("row_id")).values(not_before=bindparam("due"))
    )
    for start in range(0, len(ids), _CHUNK):
        await session.execute(
            statement,
            [
                {"row_id": i, "due": d}
                for i, d in zip(
                    ids[start : start + _CHUNK], due[start : start + _CHUNK], strict=True
                )
            ],
        )
