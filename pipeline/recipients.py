"""Creates, updates and removes recipients and their notification settings from validated input."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from channels.registry import CHANNEL_NAMES
from channels.wecom_url import check_robot_url, robot_key, robot_url
from pipeline.clock import Clock
from pipeline.db import SessionFactory
from pipeline.models import (
    AlertRecipient,
    GroupMember,
    InboxMessage,
    Notification,
    NotificationSettings,
    Recipient,
)
from pipeline.outbound import AllowList
from pipeline.quiet_hours import QuietHours
from pipeline.redact import MASK
from pipeline.validation import (
    InputError,
    validate_channels,
    validate_email,
    validate_robot_url,
    validate_timezone,
    validate_username,
    validate_wecom_userid,
)

# At most this many users in one bulk upsert (one transaction).
BULK_MAX = 10_000
# Usernames per IN (...) lookup: bounded parameter lists on every database.
_CHUNK = 500


@dataclass(frozen=True)
class RecipientInput:
    """A user as given on the command line or the API; None means "leave as it is"."""

    username: str
    email: str | None = None
    wecom_userid: str | None = None
    wecom_webhook: str | None = None
    timezone: str | None = None
    quiet_hours: str | None = None
    channels: str | None = None


@dataclass(frozen=True)
class RecipientRecord:
    """A recipient and its settings, as the CLI shows it (the webhook is never shown)."""

    id: int
    username: str
    email: str | None
    wecom_userid: str | None
    has_own_webhook: bool
    # The recipient's own robot with its key masked, e.g. https://host/cgi-bin/webhook/send?key=***
    wecom_webhook: str | None
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


def _validated(data: RecipientInput, webhook_allow: AllowList) -> RecipientInput:
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
        email=_given(data.email, validate_email),
        wecom_userid=_given(data.wecom_userid, validate_wecom_userid),
        wecom_webhook=_given(
            data.wecom_webhook, lambda url: validate_robot_url(url, webhook_allow)
        ),
        timezone=timezone,
        quiet_hours=_given(data.quiet_hours, str.strip),
        channels=",".join(sorted(validate_channels(data.channels))) if data.channels else None,
    )


async def upsert_recipient(
    sessions: SessionFactory, clock: Clock, data: RecipientInput, webhook_allow: AllowList
) -> RecipientRecord:
    """Creates the recipient or updates the fields given; returns what is now stored.

    A robot webhook must pass the WeCom URL policy (webhook_allow) to be saved at all.
    """
    record, _created = await save_recipient(sessions, clock, data, webhook_allow)
    return record


async def save_recipient(
    sessions: SessionFactory,
    clock: Clock,
    data: RecipientInput,
    webhook_allow: AllowList,
    *,
    create: bool = True,
) -> tuple[RecipientRecord, bool]:
    """Updates the fields given (creating the recipient unless create is False); returns
    what is now stored and whether it was created. Raises UnknownRecipient or InputError.
    """
    data = _validated(data, webhook_allow)
    for attempt in range(2):
        try:
            async with sessions() as session, session.begin():
                found = await _existing(session, [data.username])
                recipient, settings = found.get(data.username, (None, None))
                if recipient is None and not create:
                    raise UnknownRecipient(f"no user {data.username!r}")
                stored = await _store(session, [(data, recipient, settings)], webhook_allow, clock)
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
    webhook_allow: AllowList,
) -> BulkReport:
    """Creates or updates many recipients in one transaction: all of them, or none.

    Every entry is validated first; any invalid one raises BulkRejected listing each invalid
    entry by index, before the database is touched.
    """
    if len(entries) > BULK_MAX:
        raise InputError(f"{len(entries)} users in one request: the limit is {BULK_MAX}")
    valid = check_recipients(entries, webhook_allow)
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
                await _store(session, work, webhook_allow, clock)
                return BulkReport(created=len(valid) - len(found), updated=len(found))
        except IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")


def check_recipients(
    entries: Sequence[RecipientInput],
    webhook_allow: AllowList,
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
            valid.append(_validated(entry, webhook_allow))
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
    webhook_allow: AllowList,
    clock: Clock,
) -> list[RecipientRecord]:
    """Writes validated entries over their current rows (None: new); returns the records."""
    now = clock.now()
    recipients = []
    for data, current, _settings in work:
        recipient = current or Recipient(username=data.username, created_at=now)
        _apply_contacts(recipient, data, webhook_allow, now)
        recipients.append(recipient)
    session.add_all(recipients)
    await session.flush()  # new recipients get their ids
    records = []
    for (data, _recipient, settings), recipient in zip(work, recipients, strict=True):
        merged = _merge_settings(settings, recipient.id or 0, data, now)
        session.add(merged)
        records.append(_record(recipient, merged))
    await session.flush()
    return records


def _apply_contacts(
    recipient: Recipient, data: RecipientInput, webhook_allow: AllowList, now: datetime
) -> None:
    for name in ("email", "wecom_userid"):
        if getattr(data, name) is not None:
            setattr(recipient, name, getattr(data, name) or None)  # "" clears
    if data.wecom_webhook is not None:
        recipient.wecom_webhook_origin, recipient.wecom_webhook_key = _split_robot(
            data.wecom_webhook, webhook_allow
        )
    recipient.updated_at = now


def _merge_settings(
    settings: NotificationSettings | None, recipient_id: int, data: RecipientInput, now: datetime
) -> NotificationSettings:
    if settings is None:
        settings = NotificationSettings(
            recipient_id=recipient_id, channels=",".join(CHANNEL_NAMES), updated_at=now
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


def _split_robot(url: str, allow: AllowList) -> tuple[str | None, str | None]:
    """Returns (origin, key) of a checked robot URL; "" clears both."""
    if not url:
        return None, None
    destination = check_robot_url(url, allow)
    return destination.origin, robot_key(destination.query)


def _record(recipient: Recipient, settings: NotificationSettings | None) -> RecipientRecord:
    quiet = (
        f"{settings.quiet_start}-{settings.quiet_end}"
        if settings and settings.quiet_start
        else None
    )
    return RecipientRecord(
        id=recipient.id or 0,
        username=recipient.username,
        email=recipient.email,
        wecom_userid=recipient.wecom_userid,
        has_own_webhook=bool(recipient.wecom_webhook_key),
        wecom_webhook=(
            robot_url(recipient.wecom_webhook_origin, MASK)
            if recipient.wecom_webhook_origin and recipient.wecom_webhook_key
            else None
        ),
        channels=sorted(settings.channel_set) if settings else sorted(CHANNEL_NAMES),
        timezone=settings.timezone if settings else "UTC",
        quiet_hours=quiet,
    )


async def list_recipients(
    sessions: SessionFactory, *, after: str | None = None, limit: int | None = None
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
        rows = await session.execute(statement)
        return [_record(recipient, settings) for recipient, settings in rows]


async def get_recipient(sessions: SessionFactory, username: str) -> RecipientRecord | None:
    """Returns one recipient with its settings, or None."""
    async with sessions() as session:
        found = await _existing(session, [username])
    if username not in found:
        return None
    return _record(*found[username])


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
            await session.execute(
                delete(NotificationSettings).where(
                    col(NotificationSettings.recipient_id) == recipient_id
                )
            )
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
