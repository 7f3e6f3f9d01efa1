"""A recipient's effective preferences: channels, contacts and quiet hours, defaults applied."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from channels.base import Contacts
from pipeline.channel_set import ChannelSet
from pipeline.contacts import load_usable
from pipeline.models import NotificationSettings, Recipient
from pipeline.quiet_hours import QuietHours


@dataclass(frozen=True)
class RecipientView:
    """What the stages need to know about a recipient."""

    id: int
    username: str
    contacts: Contacts
    channels: frozenset[str]
    quiet_hours: QuietHours | None


def enabled_channels(
    settings: NotificationSettings | None, defaults: frozenset[str]
) -> frozenset[str]:
    """Returns the recipient's enabled channels; no settings row means the defaults."""
    return settings.channel_set if settings is not None else defaults


def quiet_hours_of(settings: NotificationSettings | None) -> QuietHours | None:
    """Returns the recipient's quiet hours, or None when they have none."""
    if settings is None or not settings.quiet_start or not settings.quiet_end:
        return None
    return QuietHours.parse(f"{settings.quiet_start}-{settings.quiet_end}", settings.timezone)


def recipient_view(
    recipient: Recipient,
    settings: NotificationSettings | None,
    contacts: Contacts,
    defaults: frozenset[str],
) -> RecipientView:
    """Combines a recipient row, its optional settings row and its addresses."""
    return RecipientView(
        id=recipient.id or 0,
        username=recipient.username,
        contacts=contacts,
        channels=enabled_channels(settings, defaults),
        quiet_hours=quiet_hours_of(settings),
    )


async def load_views(
    session: AsyncSession, recipient_ids: Collection[int], channels: ChannelSet
) -> dict[int, RecipientView]:
    """Loads the recipients by id with their settings and usable contacts."""
    statement = (
        select(Recipient, NotificationSettings)
        .outerjoin(
            NotificationSettings, col(NotificationSettings.recipient_id) == col(Recipient.id)
        )
        .where(col(Recipient.id).in_(recipient_ids))
    )
    rows = list(await session.execute(statement))
    contacts = await load_usable(session, set(recipient_ids), channels)
    views = (
        recipient_view(recipient, settings, contacts.get(recipient.id or 0, {}), channels.defaults)
        for recipient, settings in rows
    )
    return {view.id: view for view in views}
