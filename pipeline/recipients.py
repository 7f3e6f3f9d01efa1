"""Creates and updates recipients and their notification settings from validated input."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlmodel import col

from channels.registry import CHANNEL_NAMES
from channels.wecom_url import check_robot_url, robot_key, robot_url
from pipeline.clock import Clock
from pipeline.db import SessionFactory
from pipeline.models import NotificationSettings, Recipient
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


@dataclass(frozen=True)
class RecipientInput:
    """A user as given on the command line; None means "leave as it is"."""

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


def _given(value: str | None, check: Callable[[str], str]) -> str | None:
    """None stays None (leave as it is); "" stays "" (clear it); anything else is checked."""
    if value is None or not value.strip():
        return value if value is None else ""
    return check(value)


def _validated(data: RecipientInput, webhook_allow: AllowList) -> RecipientInput:
    """Returns data with every given field checked and normalised, or raises InputError."""
    if data.timezone is not None and not data.timezone.strip():
        raise InputError("--timezone must not be empty: use an IANA name such as Asia/Shanghai")
    if data.channels is not None and not data.channels.strip():
        raise InputError("--channels must name at least one channel, e.g. system")
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
    data = _validated(data, webhook_allow)
    now = clock.now()
    async with sessions() as session, session.begin():
        found = await session.execute(
            select(Recipient).where(col(Recipient.username) == data.username)
        )
        recipient = found.scalar_one_or_none()
        if recipient is None:
            recipient = Recipient(username=data.username, created_at=now, updated_at=now)
        for name in ("email", "wecom_userid"):
            if getattr(data, name) is not None:
                setattr(recipient, name, getattr(data, name) or None)  # "" clears
        if data.wecom_webhook is not None:
            recipient.wecom_webhook_origin, recipient.wecom_webhook_key = _split_robot(
                data.wecom_webhook, webhook_allow
            )
        recipient.updated_at = now
        session.add(recipient)
        await session.flush()
        settings = await session.get(NotificationSettings, recipient.id)
        settings = _merge_settings(settings, recipient.id or 0, data, now)
        session.add(settings)
        await session.flush()
        return _record(recipient, settings)


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


async def list_recipients(sessions: SessionFactory) -> list[RecipientRecord]:
    """Returns every recipient with its settings, by username."""
    async with sessions() as session:
        rows = await session.execute(
            select(Recipient, NotificationSettings)
            .outerjoin(
                NotificationSettings, col(NotificationSettings.recipient_id) == col(Recipient.id)
            )
            .order_by(col(Recipient.username))
        )
        return [_record(recipient, settings) for recipient, settings in rows]


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
