"""Creates, updates and removes recipients and their notification settings from validated input."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from pipeline.channel_set import BoundContact, ChannelSet
from pipeline.clock import Clock
from pipeline.contacts import StoredContacts, load_contacts, shown, store_contacts
from pipeline.db import SessionFactory
from pipeline.models import (
    AlertRecipient,
    GroupMember,
    InboxMessage,
    Notification,
    NotificationSettings,
    Recipient,
    RecipientContact,
)
from pipeline.quiet_hours import QuietHours
from pipeline.validation import InputError, validate_timezone, validate_username

# At most this many users in one bulk upsert (one transaction).
BULK_MAX = 10_000
# Usernames per IN (...) lookup: bounded parameter lists on every database.
_CHUNK = 500


@dataclass(frozen=True)
class RecipientInput:
    """A user as given on the command line or the API; None means "leave as it is"."""

    username: str
    # Addresses by contact kind (email, wecom_userid, ...): "" removes one, absent keeps it.
    contacts: Mapping[str, str] = field(default_factory=dict, repr=False)
    timezone: str | None = None
    quiet_hours: str | None = None
    channels: str | None = None


@dataclass(frozen=True)
class RecipientRecord:
    """A recipient and its settings, as the CLI shows it (the webhook is never shown)."""

    id: int
    username: str
    # Addresses by kind; a secret one with its secret part masked, e.g. a robot URL ?key=***
    contacts: dict[str, str]
    channels: list[str]
    timezone: str
    quiet_hours: str | None


class UnknownRecipient(InputError):
    """Names a recipient that does not exist (the API answers it with 404)."""


class RecipientInUse(InputError):
    """Refuses to remove a recipient that alerts, notifications, inbox or groups refer to."""


@dataclass(frozen=True)
class EntryError:
    """Why one entry of a bulk upsert was refused; index counts from 0."""

    index: int
    detail: str


class BulkRejected(InputError):
    """Refuses a bulk upsert: every invalid entry by index; nothing was stored."""

    def __init__(self, errors: list[EntryError]) -> None:
        super().__init__(
            f"{len(errors)} entr{'y is' if len(errors) == 1 else 'ies are'} invalid "
            f"(first: #{errors[0].index}: {errors[0].detail}); nothing was stored"
        )
        self.errors = errors


@dataclass(frozen=True)
class BulkReport:
    """What a bulk upsert stored: users created and users updated."""

    created: int
    updated: int


def _given(value: str | None, check: Callable[[str], str]) -> str | None:
    """None stays None (leave as it is); "" stays "" (clear it); anything else is checked."""
    if value is None or not value.strip():
        return value if value is None else ""
    return check(value)


def _validated(data: RecipientInput, channels: ChannelSet) -> RecipientInput:
    """Returns data with every given field checked and normalised, or raises InputError."""
    if data.timezone is not None and not data.timezone.strip():
        raise InputError("timezone must not be empty: use an IANA name such as Asia/Shanghai")
    if data.channels is not None and not data.channels.strip():
        raise InputError("channels must name at least one channel, e.g. system")
    timezone = validate_timezone(data.timezone) if data.timezone else None
    if data.quiet_hours and data.quiet_hours.strip():
        QuietHours.parse(data.quiet_hours, timezone or "UTC")
    return RecipientInput(
        username=validate_username(data.username),
        contacts=_checked_contacts(data.contacts, channels.contacts),
        timezone=timezone,
        quiet_hours=_given(data.quiet_hours, str.strip),
        channels=",".join(sorted(channels.parse(data.channels))) if data.channels else None,
    )


def _checked_contacts(
    given: Mapping[str, str], kinds: Mapping[str, BoundContact]
) -> dict[str, str]:
    checked: dict[str, str] = {}
    for kind, address in given.items():
        bound = kinds.get(kind)
        if bound is None:
            raise InputError(f"unknown contact {kind[:40]!r}: choose from {', '.join(kinds)}")
        checked[kind] = _given(address, bound.check) or ""
    return checked


async def upsert_recipient(
    sessions: SessionFactory, clock: Clock, data: RecipientInput, channels: ChannelSet
) -> RecipientRecord:
    """Creates the recipient or updates the fields given; returns what is now stored.

    Each contact is checked by the channel that declares its kind (a robot URL must pass the
    WeCom URL policy to be saved at all).
    """
    record, _created = await save_recipient(sessions, clock, data, channels)
    return record


async def save_recipient(
    sessions: SessionFactory,
    clock: Clock,
    data: RecipientInput,
    channels: ChannelSet,
    *,
    create: bool = True,
) -> tuple[RecipientRecord, bool]:
    """Updates the fields given (creating the recipient unless create is False); returns
    what is now stored and whether it was created. Raises UnknownRecipient or InputError.
    """
    data = _validated(data, channels)
    for attempt in range(2):
        try:
            async with sessions() as session, session.begin():
                found = await _existing(session, [data.username])
                recipient, settings = found.get(data.username, (None, None))
                if recipient is None and not create:
                    raise UnknownRecipient(f"no user {data.username!r}")
                stored = await _store(session, [(data, recipient, settings)], channels, clock)
                return stored[0], recipient is None
        except IntegrityError:
            # Created by someone else since we looked: the second pass finds and updates it.
            if attempt:
                raise
    raise AssertionError("unreachable")


async def upsert_recipients(
    sessions: SessionFactory,
    clock: Clock,
    entries: Sequence[RecipientInput],
    channels: ChannelSet,
) -> BulkReport:
    """Creates or updates many recipients in one transaction: all of them, or none.

    Every entry is validated first; any invalid one raises BulkRejected listing each invalid
    entry by index, before the database is touched.
    """
    if len(entries) > BULK_MAX:
        raise InputError(f"{len(entries)} users in one request: the limit is {BULK_MAX}")
    valid = check_recipients(entries, channels)
    for attempt in range(2):
        try:
            async with sessions() as session, session.begin():
                found: dict[str, tuple[Recipient, NotificationSettings | None]] = {}
                names = [data.username for data in valid]
                for start in range(0, len(names), _CHUNK):
                    found |= await _existing(session, names[start : start + _CHUNK])
                work: list[_Work] = [
                    (data, *found[data.username]) if data.username in found else (data, None, None)
                    for data in valid
                ]
                await _store(session, work, channels, clock)
                return BulkReport(created=len(valid) - len(found), updated=len(found))
        except IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")


def check_recipients(
    entries: Sequence[RecipientInput],
    channels: ChannelSet,
    positions: Sequence[int] | None = None,
) -> list[RecipientInput]:
    """Returns every entry validated, or raises BulkRejected listing each invalid one by index.

    positions, if given, are the indexes to report for entries (where they stood in a longer
    list). A username given twice is refused at its second entry: one request, one say per user.
    """
    valid: list[RecipientInput] = []
    errors: list[EntryError] = []
    first_index: dict[str, int] = {}
    for index, entry in zip(positions or range(len(entries)), entries, strict=True):
        name = entry.username.strip()
        if name in first_index:
            errors.append(EntryError(index, f"user {name!r} repeats entry {first_index[name]}"))
            continue
        first_index[name] = index
        try:
            valid.append(_validated(entry, channels))
        except InputError as exc:
            errors.append(EntryError(index, str(exc)))
    if errors:
        raise BulkRejected(errors)
    return valid


async def _existing(
    session: AsyncSession, usernames: list[str]
) -> dict[str, tuple[Recipient, NotificationSettings | None]]:
    rows = await session.execute(
        select(Recipient, NotificationSettings)
        .outerjoin(
            NotificationSettings, col(NotificationSettings.recipient_id) == col(Recipient.id)
        )
        .where(col(Recipient.username).in_(usernames))
    )
    return {recipient.username: (recipient, settings) for recipient, settings in rows}


# An entry to store over its current rows (None: none yet).
_Work = tuple[RecipientInput, Recipient | None, NotificationSettings | None]


async def _store(
    session: AsyncSession,
    work: list[_Work],
    channels: ChannelSet,
    clock: Clock,
) -> list[RecipientRecord]:
    """Writes validated entries over their current rows (None: new); returns the records."""
    now = clock.now()
    recipients = []
    for data, current, _settings in work:
        recipient = current or Recipient(username=data.username, created_at=now)
        recipient.updated_at = now
        recipients.append(recipient)
    session.add_all(recipients)
    await session.flush()  # new recipients get their ids
    merged = [
        _merge_settings(settings, recipient.id or 0, data, channels, now)
        for (data, _recipient, settings), recipient in zip(work, recipients, strict=True)
    ]
    given = {r.id or 0: data.contacts for (data, _, _), r in zip(work, recipients, strict=True)}
    await store_contacts(session, given, channels)
    session.add_all(merged)
    await session.flush()
    stored = await load_contacts(session, [r.id or 0 for r in recipients])
    return [
        _record(recipient, settings, stored.get(recipient.id or 0, {}), channels)
        for recipient, settings in zip(recipients, merged, strict=True)
    ]


def _merge_settings(
    settings: NotificationSettings | None,
    recipient_id: int,
    data: RecipientInput,
    channels: ChannelSet,
    now: datetime,
) -> NotificationSettings:
    if settings is None:
        settings = NotificationSettings(
            recipient_id=recipient_id,
            channels=",".join(n for n in channels.names if n in channels.defaults),
            updated_at=now,
        )
    if data.channels is not None:
        settings.channels = data.channels
    if data.timezone is not None:
        settings.timezone = data.timezone
    if data.quiet_hours == "":
        settings.quiet_start = settings.quiet_end = None
    elif data.quiet_hours is not None:
        quiet = QuietHours.parse(data.quiet_hours, settings.timezone)
        settings.quiet_start, settings.quiet_end = quiet.format().split("-")
    settings.updated_at = now
    return settings


def _record(
    recipient: Recipient,
    settings: NotificationSettings | None,
    stored: StoredContacts,
    channels: ChannelSet,
) -> RecipientRecord:
    quiet = (
        f"{settings.quiet_start}-{settings.quiet_end}"
        if settings and settings.quiet_start
        else None
    )
    return RecipientRecord(
        id=recipient.id or 0,
        username=recipient.username,
        contacts=shown(stored, channels),
        channels=sorted(settings.channel_set if settings else channels.defaults),
        timezone=settings.timezone if settings else "UTC",
        quiet_hours=quiet,
    )


async def list_recipients(
    sessions: SessionFactory,
    channels: ChannelSet,
    *,
    after: str | None = None,
    limit: int | None = None,
) -> list[RecipientRecord]:
    """Returns recipients with their settings by username: those after `after`, at most limit."""
    statement = (
        select(Recipient, NotificationSettings)
        .outerjoin(
            NotificationSettings, col(NotificationSettings.recipient_id) == col(Recipient.id)
        )
        .order_by(col(Recipient.username))
        .limit(limit)
    )
    if after is not None:
        statement = statement.where(col(Recipient.username) > after)
    async with sessions() as session:
        rows = list(await session.execute(statement))
        stored = await load_contacts(session, [recipient.id or 0 for recipient, _ in rows])
    return [
        _record(recipient, settings, stored.get(recipient.id or 0, {}), channels)
        for recipient, settings in rows
    ]


async def get_recipient(
    sessions: SessionFactory, channels: ChannelSet, username: str
) -> RecipientRecord | None:
    """Returns one recipient with its settings, or None."""
    async with sessions() as session:
        found = await _existing(session, [username])
        if username not in found:
            return None
        recipient, settings = found[username]
        stored = await load_contacts(session, [recipient.id or 0])
    return _record(recipient, settings, stored.get(recipient.id or 0, {}), channels)


# What may refer to a recipient, named for the message that refuses to remove it.
_REFERENCES = (
    ("alert(s)", AlertRecipient.recipient_id),
    ("notification(s)", Notification.recipient_id),
    ("inbox message(s)", InboxMessage.recipient_id),
    ("group(s)", GroupMember.recipient_id),
)


async def delete_recipient(sessions: SessionFactory, username: str) -> None:
    """Removes a recipient and its settings; raises UnknownRecipient or RecipientInUse.

    A recipient that alerts, notifications, inbox messages or groups refer to stays: its
    history is what "why was I (not) notified" answers from.
    """
    try:
        async with sessions() as session, session.begin():
            found = await _existing(session, [username])
            if username not in found:
                raise UnknownRecipient(f"no user {username!r}")
            recipient_id = found[username][0].id
            uses = []
            for label, column in _REFERENCES:
                count = await session.scalar(
                    select(func.count()).where(col(column) == recipient_id)
                )
                if count:
                    uses.append(f"{count} {label}")
            if uses:
                raise RecipientInUse(_in_use(username, ", ".join(uses)))
            for owned in (NotificationSettings, RecipientContact):
                await session.execute(delete(owned).where(col(owned.recipient_id) == recipient_id))
            await session.execute(delete(Recipient).where(col(Recipient.id) == recipient_id))
    except IntegrityError:
        # Referred to since we counted (a new alert for them): it stays, as above.
        raise RecipientInUse(_in_use(username, "a row written meanwhile")) from None


def _in_use(username: str, uses: str) -> str:
    return (
        f"user {username!r} is referred to by {uses}, so it stays: clear its contacts and "
        "channels instead, or remove it from its groups first"
    )


async def recipient_ids(sessions: SessionFactory, usernames: list[str]) -> dict[str, int]:
    """Maps usernames to ids; raises InputError naming every unknown one."""
    async with sessions() as session:
        rows = await session.execute(
            select(col(Recipient.username), col(Recipient.id)).where(
                col(Recipient.username).in_(usernames)
            )
        )
        found = {name: rid for name, rid in rows if rid is not None}
    missing = [name for name in usernames if name not in found]
    if missing:
        raise InputError(
            f"unknown recipient(s): {', '.join(missing)}; create them with `tocsin users upsert`"
        )
    return found
