"""Claims a batch of queued notifications for this worker and loads what rendering needs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from channels.base import Delivery
from channels.errors import Reason
from pipeline.channel_set import ChannelSet
from pipeline.contacts import load_usable
from pipeline.db import SessionFactory
from pipeline.models import Alert, Notification, NotificationSettings, Outcome, Recipient, State
from pipeline.preferences import enabled_channels
from pipeline.producer import alert_suppression, content_suppression
from pipeline.sql import first_ints
from workers.outcome import AttemptResult

# The first key of the per-alert claim locks (two-key advisory locks: apart from the
# producer's one-key lock).
CLAIM_LOCK_SPACE = 0x746F63

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
    if session.bind is None or session.bind.dialect.name != "postgresql":
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
        update(Notification)
        .where(
            col(Notification.id).in_(ids),
            or_(
                col(Notification.state) == State.QUEUED.value,
                and_(
                    col(Notification.state) == State.SENDING.value,
                    col(Notification.claim_token) == token,
                ),
            ),
        )
        .values(
            state=State.SENDING.value, claim_token=token, lease_until=lease_until, updated_at=now
        )
        .returning(col(Notification.id), col(Notification.alert_id), col(Notification.channel))
    )
    return [(id_ or 0, alert_id, channel) for id_, alert_id, channel in rows]


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
    due = or_(
        col(Notification.state) == State.QUEUED.value,
        and_(col(Notification.state) == State.PENDING.value, col(Notification.not_before) <= now),
    )
    siblings = (
        select(col(Notification.id))
        .where(col(Notification.alert_id).in_(alert_ids), col(Notification.channel) == channel, due)
        .order_by(col(Notification.id))
        .limit(MAX_SIBLINGS)
        # Siblings another worker is claiming right now are theirs: waiting for their locks
        # while holding ours would deadlock two workers claiming one alert's rows.
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    rows = await session.execute(
        update(Notification)
        # The state is checked again on the row itself: a sibling another worker took first
        # is no longer due, and stays its.
        .where(col(Notification.id).in_(siblings), due)
        .values(
            state=State.SENDING.value, claim_token=token, lease_until=lease_until, updated_at=now
        )
        .returning(col(Notification.id))
    )
    return set(first_ints(rows))


async def _sort_unclaimed(session: AsyncSession, unclaimed: set[int], result: Claim) -> None:
    if not unclaimed:
        return
    existing = await session.execute(
        select(col(Notification.id)).where(col(Notification.id).in_(unclaimed))
    )
    result.stale = set(first_ints(existing))
    result.unknown = unclaimed - result.stale


async def _load(
    session: AsyncSession, ids: set[int], now: datetime, channels: ChannelSet, result: Claim
) -> None:
    statement = (
        select(Notification, Alert, Recipient, NotificationSettings)
        .join(Alert, col(Alert.id) == col(Notification.alert_id))
        .join(Recipient, col(Recipient.id) == col(Notification.recipient_id))
        .outerjoin(
            NotificationSettings, col(NotificationSettings.recipient_id) == col(Recipient.id)
        )
        .where(col(Notification.id).in_(ids))
        .order_by(col(Notification.id))
    )
    rows = list(await session.execute(statement))
    contacts = await load_usable(session, {n.recipient_id for n, _, _, _ in rows}, channels)
    for notification, alert, recipient, settings in rows:
        found = contacts.get(notification.recipient_id, {})
        delivery = _delivery(notification, alert, recipient, found)
        reason = _suppression(alert, settings, notification.channel, channels.defaults, now)
        if reason is None:
            result.deliveries.append(delivery)
        else:
            result.suppressed.append(
                AttemptResult(delivery, Outcome.SUPPRESSED, now, 0.0, reason=reason)
            )


def _suppression(
    alert: Alert,
    settings: NotificationSettings | None,
    channel: str,
    defaults: frozenset[str],
    now: datetime,
) -> Reason | None:
    # Checked again at send time: preferences, alert state (and its row) may have changed since.
    if channel not in enabled_channels(settings, defaults):
        return Reason.OPTED_OUT
    return alert_suppression(alert, now) or content_suppression(alert)


def _delivery(
    notification: Notification, alert: Alert, recipient: Recipient, contacts: dict[str, str]
) -> Delivery:
    return Delivery(
        notification_id=notification.id or 0,
        channel=notification.channel,
        attempt=notification.attempts + 1,
        alert_id=alert.id or 0,
        title=alert.title,
        body=alert.body,
        severity=alert.severity,
        mention_all=alert.mention_all,
        alert_created_at=alert.created_at,
        recipient_id=recipient.id or 0,
        username=recipient.username,
        contacts=contacts,
    )
