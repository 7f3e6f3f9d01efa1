"""Reads a recipient's in-app inbox, marks messages read, and writes it in id order.

Ordering invariant: inbox ids become visible in increasing order (SQLite has one writer at a
time; on PostgreSQL the system channel serialises its inserts with a transaction-scoped
advisory lock). So "every message after id N" is exact: a cursor or a stream's Last-Event-ID
can never skip a message that an earlier-started transaction committed later.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select, update
from sqlmodel import col

from pipeline.clock import Clock
from pipeline.db import SessionFactory
from pipeline.models import InboxMessage, Recipient
from pipeline.recipients import recipient_ids
from pipeline.validation import InputError, validate_username


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
    read_at: datetime | None = None


@dataclass(frozen=True)
class InboxPage:
    """A page of an inbox, newest first; next_cursor is None on the last page."""

    items: list[InboxItem]
    next_cursor: int | None


def _item(m: InboxMessage) -> InboxItem:
    return InboxItem(
        m.id or 0, m.alert_id, m.title, m.body, m.severity, m.created_at, m.read_at is not None,
        m.read_at,
    )  # fmt: skip


async def owner_id(sessions: SessionFactory, username: str) -> int | None:
    """Returns the id of the recipient named username, or None."""
    try:
        username = validate_username(username)
    except InputError:
        return None  # no such name can exist
    async with sessions() as session:
        found = await session.execute(
            select(col(Recipient.id)).where(col(Recipient.username) == username)
        )
        return found.scalar_one_or_none()


async def inbox_page(
    sessions: SessionFactory,
    recipient_id: int,
    *,
    unread_only: bool = False,
    limit: int = 100,
    before: int | None = None,
) -> InboxPage:
    """Returns up to limit messages older than the cursor `before`, newest first."""
    statement = select(InboxMessage).where(col(InboxMessage.recipient_id) == recipient_id)
    if unread_only:
        statement = statement.where(col(InboxMessage.read_at).is_(None))
    if before is not None:
        statement = statement.where(col(InboxMessage.id) < before)
    statement = statement.order_by(col(InboxMessage.id).desc()).limit(limit + 1)
    async with sessions() as session:
        items = [_item(m) for m in (await session.execute(statement)).scalars()]
    more = len(items) > limit
    return InboxPage(items[:limit], items[limit - 1].id if more else None)


async def read_inbox(
    sessions: SessionFactory, username: str, *, unread_only: bool = False, limit: int = 100
) -> list[InboxItem]:
    """Returns the newest messages of a recipient's inbox; raises InputError for a stranger."""
    recipient_id = (await recipient_ids(sessions, [username]))[username]
    return (await inbox_page(sessions, recipient_id, unread_only=unread_only, limit=limit)).items


async def unread_count(sessions: SessionFactory, recipient_id: int) -> int:
    """Returns how many of a recipient's messages are unread."""
    async with sessions() as session:
        found = await session.execute(
            select(func.count()).where(
                col(InboxMessage.recipient_id) == recipient_id,
                col(InboxMessage.read_at).is_(None),
            )
        )
        return int(found.scalar_one())


async def mark_one_read(
    sessions: SessionFactory, clock: Clock, recipient_id: int, message_id: int
) -> InboxItem | None:
    """Marks one of the recipient's own messages read (once); None if they have no such message."""
    mine = (col(InboxMessage.id) == message_id, col(InboxMessage.recipient_id) == recipient_id)
    async with sessions() as session, session.begin():
        await session.execute(
            update(InboxMessage)
            .where(*mine, col(InboxMessage.read_at).is_(None))
            .values(read_at=clock.now())
        )
        found = (await session.execute(select(InboxMessage).where(*mine))).scalar_one_or_none()
        return None if found is None else _item(found)


async def mark_all_read(sessions: SessionFactory, clock: Clock, recipient_id: int) -> int:
    """Marks every unread message of a recipient read; returns how many."""
    async with sessions() as session, session.begin():
        result = await session.execute(
            update(InboxMessage)
            .where(
                col(InboxMessage.recipient_id) == recipient_id, col(InboxMessage.read_at).is_(None)
            )
            .values(read_at=clock.now())
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def mark_read(sessions: SessionFactory, clock: Clock, username: str) -> int:
    """Marks every unread message of the named recipient read; raises InputError for a stranger."""
    recipient_id = (await recipient_ids(sessions, [username]))[username]
    return await mark_all_read(sessions, clock, recipient_id)


async def read_since(
    sessions: SessionFactory, recipient_id: int, after_id: int, limit: int = 500
) -> list[InboxItem]:
    """Returns up to limit of the recipient's messages after after_id, oldest first."""
    statement = (
        select(InboxMessage)
        .where(col(InboxMessage.recipient_id) == recipient_id, col(InboxMessage.id) > after_id)
        .order_by(col(InboxMessage.id))
        .limit(limit)
    )
    async with sessions() as session:
        return [_item(m) for m in (await session.execute(statement)).scalars()]


async def newest_id(sessions: SessionFactory) -> int:
    """Returns the highest inbox id (0 when the inbox table is empty)."""
    async with sessions() as session:
        found = await session.execute(select(func.max(col(InboxMessage.id))))
        return int(found.scalar_one() or 0)


async def messages_after(
    sessions: SessionFactory,
    after_id: int,
    recipients: Collection[int] | None,
    limit: int,
) -> list[tuple[int, InboxItem]]:
    """Returns (recipient id, message) after after_id, oldest first, in one query.

    With recipients, only theirs are returned, plus the newest message of anyone (so the
    caller learns how far the inbox has been read without a second query).
    """
    message_id = col(InboxMessage.id)
    statement = select(InboxMessage).where(message_id > after_id)
    if recipients is not None:
        top = select(func.max(col(InboxMessage.id))).scalar_subquery()
        statement = statement.where(
            or_(col(InboxMessage.recipient_id).in_(list(recipients)), message_id == top)
        )
    statement = statement.order_by(message_id).limit(limit)
    async with sessions() as session:
        rows = (await session.execute(statement)).scalars()
        return [(m.recipient_id, _item(m)) for m in rows]
