"""A recipient's effective preferences: channels, contacts and quiet hours, defaults applied."""

from __future__ import annotations

from dataclasses import dataclass

from channels.base import Contacts
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
