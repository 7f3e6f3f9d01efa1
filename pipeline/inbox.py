"""Reads a recipient's in-app inbox and marks messages read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlmodel import col

from pipeline.clock import Clock
from pipeline.db import SessionFactory
from pipeline.models import InboxMessage
from pipeline.recipients import recipient_ids


@dataclass(frozen=True)
class InboxItem:
    """One inbox message as shown to its recipient."""

    id: int
    alert_id: int
    title: str
    body: str
    severity: str
    created_at: datetime
    read: bool


async def read_inbox(
    sessions: SessionFactory, username: str, *, unread_only: bool = False, limit: int = 100
) -> list[InboxItem]:
    """Returns the newest messages of a recipient's inbox."""
    recipient_id = (await recipient_ids(sessions, [username]))[username]
    statement = select(InboxMessage).where(col(InboxMessage.recipient_id) == recipient_id)
    if unread_only:
        statement = statement.where(col(InboxMessage.read_at).is_(None))
    statement = statement.order_by(col(InboxMessage.id).desc()).limit(limit)
    async with sessions() as session:
        rows = (await session.execute(statement)).scalars()
        return [
            InboxItem(
                m.id or 0,
                m.alert_id,
                m.title,
                m.body,
                m.severity,
                m.created_at,
                m.read_at is not None,
            )
            for m in rows
        ]


async def mark_read(sessions: SessionFactory, clock: Clock, username: str) -> int:
    """Marks every unread message of a recipient read; returns how many."""
    recipient_id = (await recipient_ids(sessions, [username]))[username]
    async with sessions() as session, session.begin():
        result = await session.execute(
            update(InboxMessage)
            .where(
                col(InboxMessage.recipient_id) == recipient_id, col(InboxMessage.read_at).is_(None)
            )
            .values(read_at=clock.now())
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
