"""Recipients' addresses by contact kind: stored (secret parts apart), loaded, shown masked."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import ColumnElement, Select, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped
from sqlmodel import col

from channels.base import Contact
from pipeline.channel_set import ChannelSet
from pipeline.models import RecipientContact
from pipeline.redact import MASK


class Stored(NamedTuple):
    """One stored address: what may be shown, and the secret part kept apart (or None)."""

    address: str
    secret: str | None


T = TypeVar("T")
_CHUNK = 1000

# A recipient's stored addresses by kind.
StoredContacts = dict[str, Stored]
# Recipients by id, or a select of their ids (a subquery: no parameter per recipient).
Chosen = Collection[int] | Select[Any]


async def load_contacts(session: AsyncSession, recipients: Chosen) -> dict[int, StoredContacts]:
    """Returns the stored addresses of each recipient (one without any is absent)."""
    found: dict[int, StoredContacts] = {}
    statement = select(
        col(RecipientContact.recipient_id),
        col(RecipientContact.kind),
        col(RecipientContact.address),
        col(RecipientContact.secret),
    )
    for condition in among(col(RecipientContact.recipient_id), recipients):
        rows = (await session.execute(statement.where(condition))).all()
        for recipient_id, kind, address, secret in rows:
            found.setdefault(recipient_id, {})[kind] = Stored(address, secret)
    return found


async def store_contacts(
    session: AsyncSession, given: Mapping[int, Mapping[str, str]], channels: ChannelSet
) -> None:
    """Writes checked addresses by recipient id over the stored ones: "" removes a kind,
    absent keeps it. A few statements for any number of recipients (a bulk upsert of 10,000)."""
    by_kind: dict[str, list[int]] = {}
    for recipient_id, contacts in given.items():
        for kind in contacts:
            by_kind.setdefault(kind, []).append(recipient_id)
    for kind, ids in by_kind.items():
        for chunk in _chunks(ids):
            await session.execute(
                delete(RecipientContact).where(
                    col(RecipientContact.kind) == kind,
                    col(RecipientContact.recipient_id).in_(chunk),
                )
            )
    rows = [
        _row(channels, recipient_id, kind, value)
        for recipient_id, contacts in given.items()
        for kind, value in contacts.items()
        if value
    ]
    for batch in _chunks(rows):
        await session.execute(insert(RecipientContact), batch)


def _row(channels: ChannelSet, recipient_id: int, kind: str, value: str) -> dict[str, object]:
    address, secret = _split(channels, kind, value)
    return {"recipient_id": recipient_id, "kind": kind, "address": address, "secret": secret}


def among(column: Mapped[Any], chosen: Chosen) -> Iterator[ColumnElement[bool]]:
    """Yields conditions that together pick the chosen ids: one IN per chunk of a collection,
    one IN (subquery) for a select."""
    if isinstance(chosen, Select):
        yield column.in_(chosen)
        return
    for chunk in _chunks(sorted(set(chosen))):
        yield column.in_(chunk)


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    # Bound each statement's parameters (SQLite allows 32,766; asyncpg 32,767).
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def usable(stored: StoredContacts, channels: ChannelSet) -> dict[str, str]:
    """The addresses as channels use them: secret parts joined back in (never print these)."""
    return {
        kind: _join(_contact(channels, kind), s.address, s.secret) for kind, s in stored.items()
    }


async def load_usable(
    session: AsyncSession, recipients: Chosen, channels: ChannelSet
) -> dict[int, dict[str, str]]:
    """Each recipient's addresses as channels use them (one without any is absent)."""
    stored = await load_contacts(session, recipients)
    return {recipient_id: usable(found, channels) for recipient_id, found in stored.items()}


def shown(stored: StoredContacts, channels: ChannelSet) -> dict[str, str]:
    """The addresses as views show them: secret parts masked."""
    return {
        kind: _join(_contact(channels, kind), s.address, MASK if s.secret else None)
        for kind, s in sorted(stored.items())
    }


def _contact(channels: ChannelSet, kind: str) -> Contact | None:
    bound = channels.contacts.get(kind)
    return bound.contact if bound is not None else None


def _split(channels: ChannelSet, kind: str, value: str) -> tuple[str, str | None]:
    contact = _contact(channels, kind)
    if contact is None or contact.secret is None:
        return value, None
    return contact.secret.split(value)


def _join(contact: Contact | None, address: str, secret: str | None) -> str:
    if secret is None:
        return address
    if contact is None or contact.secret is None:
        # A kind no channel here declares (or no longer splits): never show its secret part.
        return f"{address} ({MASK})" if secret == MASK else address
    return contact.secret.join(address, secret)
