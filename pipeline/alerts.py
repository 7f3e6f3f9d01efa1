"""Records alerts for the producer to expand, and resolves them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from channels.errors import Reason
from pipeline.clock import Clock
from pipeline.db import SessionFactory
from pipeline.groups import addressed_usernames
from pipeline.models import (
    Alert,
    AlertKey,
    AlertRecipient,
    Notification,
    Recipient,
    Severity,
    State,
)
from pipeline.recipients import recipient_ids
from pipeline.validation import (
    InputError,
    validate_body,
    validate_dedup_key,
    validate_severity,
    validate_title,
)

# Longer would overflow the expiry time; no alert needs to notify for ten years.
EXPIRES_IN_MAX = timedelta(days=3650)


@dataclass(frozen=True)
class AlertInput:
    """An alert as given on the command line."""

    title: str
    body: str
    severity: str
    recipients: list[str]
    expires_in: timedelta | None = None
    # Mention the whole WeCom group (<@all>); only a critical alert may.
    mention_all: bool = False
    # A repeat with the same key within DEDUP_WINDOW notifies nobody (SUPPRESSED duplicate).
    dedup_key: str | None = None
    # Recipient groups: their members when the alert comes in join the recipients.
    groups: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Ingested:
    """An alert that came in, and whether this call created it (False: its key named it)."""

    alert: Alert
    created: bool


async def create_alert(
    sessions: SessionFactory, clock: Clock, data: AlertInput, *, max_recipients: int
) -> Alert:
    """Validates and stores an alert with its recipients (the producer expands it)."""
    alert, ids = await _prepare(sessions, clock, data, max_recipients)
    async with sessions() as session, session.begin():
        await _insert(session, alert, ids)
    return alert


async def ingest_alert(
    sessions: SessionFactory,
    clock: Clock,
    data: AlertInput,
    *,
    max_recipients: int,
    key: str | None = None,
    key_retention: timedelta = timedelta(hours=24),
) -> Ingested:
    """Stores an alert unless key already names one from within key_retention (then that one).

    The key and the alert commit together, and the key is a primary key: two concurrent calls
    with one key create one alert. Validation runs first either way, so a bad repeat is refused.
    """
    alert, ids = await _prepare(sessions, clock, data, max_recipients)
    if key is None:
        async with sessions() as session, session.begin():
            await _insert(session, alert, ids)
        return Ingested(alert, True)
    since = alert.created_at - key_retention
    for _ in range(2):  # the second round follows a concurrent insert or an expired key
        existing = await keyed_alert(sessions, key, since)
        if existing is not None:
            return Ingested(existing, False)
        try:
            async with sessions() as session, session.begin():
                # An expired key is taken over: it no longer names anything.
                await session.execute(
                    delete(AlertKey).where(
                        col(AlertKey.key) == key, col(AlertKey.created_at) <= since
                    )
                )
                await _insert(session, alert, ids)
                session.add(AlertKey(key=key, alert_id=alert.id or 0, created_at=alert.created_at))
        except IntegrityError:
            alert = Alert.model_validate(alert.model_dump(exclude={"id"}))
            continue
        return Ingested(alert, True)
    raise InputError(f"alert key {key[:60]!r} is being used concurrently: try again")


async def validate_alert(
    sessions: SessionFactory, clock: Clock, data: AlertInput, *, max_recipients: int
) -> None:
    """Raises InputError if ingest_alert would refuse data (its recipients are looked up too)."""
    await _prepare(sessions, clock, data, max_recipients)


async def keyed_alert(sessions: SessionFactory, key: str, since: datetime) -> Alert | None:
    """Returns the alert that key names, if the key was made after since."""
    async with sessions() as session:
        found = await session.execute(
            select(Alert)
            .join(AlertKey, col(AlertKey.alert_id) == col(Alert.id))
            .where(col(AlertKey.key) == key, col(AlertKey.created_at) > since)
        )
        return found.scalars().first()


async def _prepare(
    sessions: SessionFactory, clock: Clock, data: AlertInput, max_recipients: int
) -> tuple[Alert, list[int]]:
    """Validates data and returns the unsaved alert and its recipients' ids, in order."""
    title = validate_title(data.title)
    body = validate_body(data.body)
    severity = validate_severity(data.severity)
    usernames = await addressed_usernames(sessions, data.recipients, data.groups)
    if len(usernames) > max_recipients:
        raise InputError(
            f"the alert names {len(usernames)} recipients: the limit is {max_recipients} "
            "(MAX_RECIPIENTS_PER_ALERT)"
        )
    dedup_key = validate_dedup_key(data.dedup_key) if data.dedup_key is not None else None
    if data.expires_in is not None and data.expires_in <= timedelta(0):
        raise InputError("--expires-in must be positive, e.g. 2h")
    if data.expires_in is not None and data.expires_in > EXPIRES_IN_MAX:
        raise InputError(f"--expires-in must be at most {EXPIRES_IN_MAX.days}d")
    if data.mention_all and severity is not Severity.CRITICAL:
        raise InputError("--mention-all is only allowed on critical alerts")
    ids = await recipient_ids(sessions, usernames)
    now = clock.now()
    alert = Alert(
        title=title,
        body=body,
        severity=severity.value,
        created_at=now,
        expires_at=now + data.expires_in if data.expires_in else None,
        mention_all=data.mention_all,
        dedup_key=dedup_key,
    )
    return alert, [ids[name] for name in usernames]


async def alert_usernames(session: AsyncSession, alert_id: int) -> list[str]:
    """Returns the usernames an alert addresses (group members included), sorted."""
    names = await session.execute(
        select(col(Recipient.username))
        .join(AlertRecipient, col(AlertRecipient.recipient_id) == col(Recipient.id))
        .where(col(AlertRecipient.alert_id) == alert_id)
        .order_by(col(Recipient.username))
    )
    return list(names.scalars())


async def _insert(session: AsyncSession, alert: Alert, recipient_ids: list[int]) -> None:
    session.add(alert)
    await session.flush()
    await session.execute(
        insert(AlertRecipient),
        [{"alert_id": alert.id, "recipient_id": rid} for rid in recipient_ids],
    )


async def resolve_alert(sessions: SessionFactory, clock: Clock, alert_id: int) -> datetime:
    """Marks an alert resolved and suppresses its unsent notifications at once.

    PENDING and QUEUED rows become SUPPRESSED (alert_resolved) now; a QUEUED row's message is
    then dropped by the worker, whose claim is guarded by state. A row being sent right now
    finishes its send.
    """
    now = clock.now()
    async with sessions() as session, session.begin():
        result = await session.execute(
            update(Alert)
            .where(col(Alert.id) == alert_id, col(Alert.resolved_at).is_(None))
            .values(resolved_at=now)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            alert = await session.get(Alert, alert_id)
            if alert is None:
                raise InputError(f"no alert {alert_id}")
            return alert.resolved_at or now
        await session.execute(
            update(Notification)
            .where(
                col(Notification.alert_id) == alert_id,
                col(Notification.state).in_((State.PENDING.value, State.QUEUED.value)),
            )
            .values(
                state=State.SUPPRESSED.value,
                last_reason=Reason.ALERT_RESOLVED.value,
                lease_until=None,
                updated_at=now,
            )
        )
    return now
