"""Queries over notifications: listings with filters, one row with its attempts, counts by state."""

from __future__ import annotations

from collections.abc import Collection
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from channels.errors import Reason
from pipeline.db import SessionFactory
from pipeline.durations import parse_duration
from pipeline.models import DeliveryAttempt, Notification, Recipient, State
from pipeline.validation import InputError

REASONS = frozenset(reason.value for reason in Reason)


@dataclass(frozen=True)
class NotificationFilter:
    """Which notifications to list; None means any."""

    states: tuple[str, ...] = ()
    channel: str | None = None
    reason: str | None = None
    alert_id: int | None = None
    since: datetime | None = None
    ids: tuple[int, ...] = ()
    limit: int | None = 100
    # Only ids above this one (the cursor of a paged listing).
    after: int | None = None

    def apply(self, statement: Select[Notification, str]) -> Select[Notification, str]:
        """Adds this filter's conditions to a select over notifications."""
        conditions: list[ColumnElement[bool]] = []
        if self.states:
            conditions.append(col(Notification.state).in_(self.states))
        if self.channel:
            conditions.append(col(Notification.channel) == self.channel)
        if self.reason:
            conditions.append(col(Notification.last_reason) == self.reason)
        if self.alert_id is not None:
            conditions.append(col(Notification.alert_id) == self.alert_id)
        if self.since:
            conditions.append(col(Notification.updated_at) >= self.since)
        if self.ids:
            conditions.append(col(Notification.id).in_(self.ids))
        if self.after is not None:
            conditions.append(col(Notification.id) > self.after)
        return statement.where(*conditions) if conditions else statement


def parse_since(text: str, now: datetime) -> datetime:
    """Returns the time in text: an ISO time (UTC if it names no zone) or an age such as 2h."""
    with suppress(ValueError):
        moment = datetime.fromisoformat(text)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    try:
        return now - parse_duration(text)
    except ValueError:
        raise InputError(
            f"since must be an ISO time (2026-11-23T08:00+00:00) or an age (2h), not {text!r}"
        ) from None


def notification_filter(
    channels: Collection[str],
    now: datetime,
    *,
    states: Collection[str] = (),
    channel: str | None = None,
    reason: str | None = None,
    alert_id: int | None = None,
    since: str | None = None,
    limit: int | None = 100,
    after: int | None = None,
) -> NotificationFilter:
    """Returns the filter for these criteria, or raises InputError naming the bad one.

    channels are the known channel names; states may be in any case.
    """
    wanted = tuple(state.upper() for state in states)
    bad = [state for state in wanted if state not in State.__members__]
    if bad:
        raise InputError(f"unknown status {bad[0]!r}: choose from {', '.join(State.__members__)}")
    if channel is not None and channel not in channels:
        raise InputError(f"unknown channel {channel!r}: choose from {', '.join(channels)}")
    if reason is not None and reason not in REASONS:
        raise InputError(f"unknown reason {reason!r}: see docs/operations.md for the list")
    moment = parse_since(since, now) if since else None
    return NotificationFilter(wanted, channel, reason, alert_id, moment, (), limit, after)


@dataclass(frozen=True)
class NotificationView:
    """A notification as listings show it."""

    id: int
    alert_id: int
    recipient: str
    channel: str
    state: str
    attempts: int
    not_before: datetime
    deferred: bool
    reason: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    # The notification this one stands in for (FALLBACK_<CHANNEL>), if any.
    fallback_of: int | None = None
    attempt_log: list[dict[str, Any]] = field(default_factory=list)
    # The notifications that stand in for this one since it died: id, channel, state.
    fell_back_to: list[dict[str, Any]] = field(default_factory=list)


async def list_notifications(
    sessions: SessionFactory, where: NotificationFilter
) -> list[NotificationView]:
    """Returns the notifications matching where, oldest id first."""
    statement = where.apply(
        select(Notification, col(Recipient.username))
        .join(Recipient, col(Recipient.id) == col(Notification.recipient_id))
        .order_by(col(Notification.id))
    )
    if where.limit is not None:
        statement = statement.limit(where.limit)
    async with sessions() as session:
        return [_view(n, username) for n, username in await session.execute(statement)]


async def get_notification(
    sessions: SessionFactory, notification_id: int
) -> NotificationView | None:
    """Returns one notification with every recorded attempt and its fallbacks, or None."""
    found = await list_notifications(sessions, NotificationFilter(ids=(notification_id,)))
    if not found:
        return None
    async with sessions() as session:
        log = await _attempt_log(session, notification_id)
        fallbacks = await _fell_back_to(session, notification_id)
    view = found[0]
    return NotificationView(**{**view.__dict__, "attempt_log": log, "fell_back_to": fallbacks})


async def _attempt_log(session: AsyncSession, notification_id: int) -> list[dict[str, Any]]:
    attempts = await session.execute(
        select(DeliveryAttempt)
        .where(col(DeliveryAttempt.notification_id) == notification_id)
        .order_by(col(DeliveryAttempt.id))
    )
    return [
        {
            "attempt": a.attempt,
            "started_at": a.started_at.isoformat(),
            "duration_seconds": round(a.duration_seconds, 4),
            "outcome": a.outcome,
            "reason": a.reason,
            "detail": a.detail,
            "worker": a.worker,
        }
        for a in attempts.scalars()
    ]


async def _fell_back_to(session: AsyncSession, notification_id: int) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(col(Notification.id), col(Notification.channel), col(Notification.state))
        .where(col(Notification.fallback_of) == notification_id)
        .order_by(col(Notification.id))
    )
    return [{"id": i, "channel": channel, "state": state} for i, channel, state in rows]


async def count_by_state(sessions: SessionFactory) -> dict[tuple[str, str], int]:
    """Returns {(channel, state): count} over all notifications."""
    async with sessions() as session:
        rows = await session.execute(
            select(col(Notification.channel), col(Notification.state), func.count()).group_by(
                col(Notification.channel), col(Notification.state)
            )
        )
        return {(channel, state): count for channel, state, count in rows}


def _view(n: Notification, username: str) -> NotificationView:
    return NotificationView(
        id=n.id or 0,
        alert_id=n.alert_id,
        recipient=username,
        channel=n.channel,
        state=n.state,
        attempts=n.attempts,
        not_before=n.not_before,
        deferred=n.deferred,
        reason=n.last_reason,
        error=n.last_error,
        created_at=n.created_at,
        updated_at=n.updated_at,
        sent_at=n.sent_at,
        fallback_of=n.fallback_of,
    )
