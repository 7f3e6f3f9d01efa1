"""Claims a batch of queued notifications for this worker and loads what rendering needs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from channels.base import Delivery
from channels.errors import Reason
from pipeline.channel_set import ChannelSet
from pipeline.contacts import load_usable
from pipeline.db import SessionFactory
from pipeline.models import (
    Alert,
    Notification,
    NotificationSettings,
    Outcome,
    Recipient,
    State,
    channel_names,
)
from pipeline.producer import alert_suppression, content_suppression
from pipeline.sql import first_ints, is_postgresql, table_of
from workers.outcome import AttemptResult

# The first key of the per-alert claim locks (two-key advisory locks: apart from the
# producer's one-key lock).
CLAIM_LOCK_SPACE = 0x746F63

NOTIFICATIONS = table_of(Notification)
ALERTS = table_of(Alert)
RECIPIENTS = table_of(Recipient)
SETTINGS = table_of(NotificationSettings)
# What the claim reads of an alert: enough to render it and to tell whether it still holds.
_ALERT_COLUMNS = (
    "id",
    "title",
    "body",
    "severity",
    "mention_all",
    "created_at",
    "resolved_at",
    "expires_at",
)

# How many siblings one claim takes along (a WeCom app message addresses up to 1,000 users).
MAX_SIBLINGS = 1000


@dataclass
class Claim:
    """The outcome of claiming a batch of message ids."""

    token: str
    # Sends may start only while they can finish before this; later the relay owns the row.
    lease_until: datetime
    deliveries: list[Delivery] = field(default_factory=list)
    # Claimed, but no longer to be sent: alert resolved or recipient opted out since.
    suppressed: list[AttemptResult] = field(default_factory=list)
    # Rows that exist but were not QUEUED: a duplicate or late message; acknowledge and drop.
    stale: set[int] = field(default_factory=set)
    # Ids with no row at all: the message is poison.
    unknown: set[int] = field(default_factory=set)


def new_token() -> str:
    """Returns a fresh claim token."""
    return uuid.uuid4().hex


async def claim(
    sessions: SessionFactory,
    ids: Sequence[int],
    now: datetime,
    lease: timedelta,
    token: str,
    channels: ChannelSet,
    channel: str | None = None,
) -> Claim:
    """Moves QUEUED rows to SENDING under token, in one transaction (guarded by state).

    Rows already SENDING under the same token count as claimed, so a claim whose commit was
    lost with the connection can be retried as it is. On a coalescing channel (given as
    `channel`), claims of one alert's rows take turns, so the first takes the whole group.
    """
    result = Claim(token=token, lease_until=now + lease)
    async with sessions() as session, session.begin():
        if channel is not None and channels.coalesces(channel):
            await _take_turns_per_alert(session, ids)
        taken = await _take(session, ids, token, result.lease_until, now)
        claimed = {notification_id for notification_id, _, _ in taken}
        await _sort_unclaimed(session, set(ids) - claimed, result)
        for coalescing, alert_ids in _coalesced_alerts(taken, channels).items():
            claimed |= await _take_siblings(
                session, coalescing, alert_ids, token, result.lease_until, now
            )
        if claimed:
            await _load(session, claimed, now, channels, result)
    return result


async def _take_turns_per_alert(session: AsyncSession, ids: Sequence[int]) -> None:
    """Holds, until commit, a lock per alert of these rows (PostgreSQL; SQLite has one writer).

    Without it two batches holding rows of one alert each take part of its group: two posts
    instead of one. Taken in alert order before any row is locked, so claims never deadlock;
    a claim that waited finds its rows already taken, and drops their messages as stale.
    """
    if not is_postgresql(session):
        return
    alerts = await session.execute(
        select(col(Notification.alert_id))
        .where(col(Notification.id).in_(ids))
        .distinct()
        .order_by(col(Notification.alert_id))
    )
    for alert_id in alerts.scalars():
        await session.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK_SPACE, alert_id)))


async def _take(
    session: AsyncSession, ids: Sequence[int], token: str, lease_until: datetime, now: datetime
) -> list[tuple[int, int, str]]:
    """Claims the QUEUED rows among ids; returns (id, alert id, channel) of each claimed row."""
    rows = await session.execute(
        update(NOTIFICATIONS)
        .where(
            NOTIFICATIONS.c.id.in_(ids),
            or_(
                NOTIFICATIONS.c.state == State.QUEUED.value,
                and_(
                    NOTIFICATIONS.c.state == State.SENDING.value,
                    NOTIFICATIONS.c.claim_token == token,
                ),
            ),
        )
        .values(
            state=State.SENDING.value, claim_token=token, lease_until=lease_until, updated_at=now
        )
        .returning(NOTIFICATIONS.c.id, NOTIFICATIONS.c.alert_id, NOTIFICATIONS.c.channel)
    )
    return [(id_, alert_id, channel) for id_, alert_id, channel in rows]


def _coalesced_alerts(
    taken: list[tuple[int, int, str]], channels: ChannelSet
) -> dict[str, set[int]]:
    alerts: dict[str, set[int]] = {}
    for _, alert_id, channel in taken:
        if channels.coalesces(channel):
            alerts.setdefault(channel, set()).add(alert_id)
    return alerts


async def _take_siblings(
    session: AsyncSession,
    channel: str,
    alert_ids: set[int],
    token: str,
    lease_until: datetime,
    now: datetime,
) -> set[int]:
    """Claims the other due rows of these alerts on a coalescing channel, up to a bound.

    Here every sibling is visible, whichever message arrived first and however the batch
    filled: queued ones (their own messages are then dropped as stale) and due ones the relay
    has not published yet. Rows still waiting (quiet hours, a retry) stay where they are.
    """
    n = NOTIFICATIONS.c
    due = or_(
        n.state == State.QUEUED.value,
        and_(n.state == State.PENDING.value, n.not_before <= now),
    )
    siblings = (
        select(n.id)
        .where(n.alert_id.in_(alert_ids), n.channel == channel, due)
        .order_by(n.id)
        .limit(MAX_SIBLINGS)
        # Siblings another worker is claiming right now are theirs: waiting for their locks
        # while holding ours would deadlock two workers claiming one alert's rows.
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    rows = await session.execute(
        update(NOTIFICATIONS)
        # The state is checked again on the row itself: a sibling another worker took first
        # is no longer due, and stays its.
        .where(n.id.in_(siblings), due)
        .values(
            state=State.SENDING.value, claim_token=token, lease_until=lease_until, updated_at=now
        )
        .returning(n.id)
    )
    return set(first_ints(rows))


async def _sort_unclaimed(session: AsyncSession, unclaimed: set[int], result: Claim) -> None:
    if not unclaimed:
        return
    existing = await session.execute(
        select(NOTIFICATIONS.c.id).where(NOTIFICATIONS.c.id.in_(unclaimed))
    )
    result.stale = set(first_ints(existing))
    result.unknown = unclaimed - result.stale


async def _load(
    session: AsyncSession, ids: set[int], now: datetime, channels: ChannelSet, result: Claim
) -> None:
    # Core columns, not ORM entities: this runs for every batch a worker claims.
    n, a, r, s = NOTIFICATIONS.c, ALERTS.c, RECIPIENTS.c, SETTINGS.c
    statement = (
        select(
            n.id,
            n.channel,
            n.attempts,
            n.recipient_id,
            r.username,
            s.channels,
            # alert_id among them, from the alert's own id.
            *(a[name].label(f"alert_{name}") for name in _ALERT_COLUMNS),
        )
        .join(ALERTS, a.id == n.alert_id)
        .join(RECIPIENTS, r.id == n.recipient_id)
        .outerjoin(SETTINGS, s.recipient_id == n.recipient_id)
        .where(n.id.in_(ids))
        .order_by(n.id)
    )
    rows = list(await session.execute(statement))
    contacts = await load_usable(session, {row.recipient_id for row in rows}, channels)
    alerts: dict[int, tuple[Alert, Reason | None]] = {}
    for row in rows:
        if row.alert_id not in alerts:
            alert = Alert(**{name: row._mapping[f"alert_{name}"] for name in _ALERT_COLUMNS})
            reason = alert_suppression(alert, now) or content_suppression(alert)
            alerts[row.alert_id] = alert, reason
        alert, alert_reason = alerts[row.alert_id]
        delivery = _delivery(row, alert, contacts.get(row.recipient_id, {}))
        enabled = channel_names(row.channels) if row.channels is not None else channels.defaults
        # Checked again at send time: preferences, alert state (and its row) may have changed.
        reason = Reason.OPTED_OUT if row.channel not in enabled else alert_reason
        if reason is None:
            result.deliveries.append(delivery)
        else:
            result.suppressed.append(
                AttemptResult(delivery, Outcome.SUPPRESSED, now, 0.0, reason=reason)
            )


def _delivery(row: Any, alert: Alert, contacts: dict[str, str]) -> Delivery:
    return Delivery(
        notification_id=row.id,
        channel=row.channel,
        attempt=row.attempts + 1,
        alert_id=row.alert_id,
        title=alert.title,
        body=alert.body,
        severity=alert.severity,
        mention_all=alert.mention_all,
        alert_created_at=alert.created_at,
        recipient_id=row.recipient_id,
        username=row.username,
        contacts=contacts,
    )
