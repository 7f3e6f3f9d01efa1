"""Records alerts for the producer to expand, and resolves them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, update
from sqlmodel import col

from pipeline.clock import Clock
from pipeline.db import SessionFactory
from pipeline.models import Alert, AlertRecipient, Severity
from pipeline.recipients import recipient_ids
from pipeline.validation import (
    InputError,
    validate_body,
    validate_dedup_key,
    validate_recipients,
    validate_severity,
    validate_title,
)


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


async def create_alert(
    sessions: SessionFactory, clock: Clock, data: AlertInput, *, max_recipients: int
) -> Alert:
    """Validates and stores an alert with its recipients; the next producer pass expands it."""
    title = validate_title(data.title)
    body = validate_body(data.body)
    severity = validate_severity(data.severity)
    usernames = validate_recipients(data.recipients)
    if len(usernames) > max_recipients:
        raise InputError(
            f"the alert names {len(usernames)} recipients: the limit is {max_recipients} "
            "(MAX_RECIPIENTS_PER_ALERT)"
        )
    dedup_key = validate_dedup_key(data.dedup_key) if data.dedup_key is not None else None
    if data.expires_in is not None and data.expires_in <= timedelta(0):
        raise InputError("--expires-in must be positive, e.g. 2h")
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
    async with sessions() as session, session.begin():
        session.add(alert)
        await session.flush()
        await session.execute(
            insert(AlertRecipient),
            [{"alert_id": alert.id, "recipient_id": ids[name]} for name in usernames],
        )
    return alert


async def resolve_alert(sessions: SessionFactory, clock: Clock, alert_id: int) -> datetime:
    """Marks an alert resolved; its undelivered notifications are suppressed at send time."""
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
    return now
