"""A recipient's effective preferences: channels, contacts and quiet hours, defaults applied."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from channels.base import Contacts
from pipeline.channel_set import ChannelSet
from pipeline.contacts import among, load_usable
from pipeline.models import AlertRecipient, NotificationSettings, Recipient, channel_names
from pipeline.quiet_hours import QuietHours


@dataclass(frozen=True, slots=True)
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


@lru_cache(maxsize=1024)
def _quiet_hours(start: str | None, end: str | None, timezone: str) -> QuietHours | None:
    # Cached: thousands of recipients share a handful of windows (parsing loads a zone).
    if not start or not end:
        return None
    return QuietHours.parse(f"{start}-{end}", timezone)


@lru_cache(maxsize=1024)
def _channel_names(stored: str) -> frozenset[str]:
    return channel_names(stored)


def _with_settings(statement: Select[Any]) -> Select[Any]:
    """Adds the recipient's columns and its settings' (absent without a settings row)."""
    return statement.add_columns(
        col(Recipient.id),
        col(Recipient.username),
        col(NotificationSettings.channels),
        col(NotificationSettings.timezone),
        col(NotificationSettings.quiet_start),
        col(NotificationSettings.quiet_end),
    ).outerjoin(NotificationSettings, col(NotificationSettings.recipient_id) == col(Recipient.id))


def _view(
    row: Sequence[Any], contacts: Mapping[int, Contacts], defaults: frozenset[str]
) -> RecipientView:
    """The view of a row of _with_settings's six columns."""
    rid, username, enabled, timezone, start, end = row
    return RecipientView(
        id=rid,
        username=username,
        contacts=contacts.get(rid, {}),
        # No settings row: the defaults, and no quiet hours.
        channels=defaults if enabled is None else _channel_names(enabled),
        quiet_hours=None if enabled is None else _quiet_hours(start, end, timezone),
    )


async def load_views(
    session: AsyncSession, recipients: Collection[int], channels: ChannelSet
) -> dict[int, RecipientView]:
    """Loads the recipients by id with their settings and usable contacts (plain rows, no ORM
    objects; ids in bounded chunks)."""
    contacts = await load_usable(session, recipients, channels)
    statement = _with_settings(select().select_from(Recipient))
    views: dict[int, RecipientView] = {}
    for condition in among(col(Recipient.id), recipients):
        # all(): one fetch, not a fetch per row.
        for row in (await session.execute(statement.where(condition))).all():
            view = _view(row, contacts, channels.defaults)
            views[view.id] = view
    return views


async def load_audience(
    session: AsyncSession, alert_ids: Collection[int], channels: ChannelSet
) -> dict[int, list[RecipientView]]:
    """Returns each alert's recipients as views, in recipient order: two queries whatever
    their number, and one view for a recipient of several alerts."""
    chosen = col(AlertRecipient.alert_id).in_(alert_ids)
    contacts = await load_usable(
        session, select(col(AlertRecipient.recipient_id)).where(chosen), channels
    )
    statement = (
        _with_settings(
            select(col(AlertRecipient.alert_id)).join(
                Recipient, col(Recipient.id) == col(AlertRecipient.recipient_id)
            )
        )
        .where(chosen)
        .order_by(col(AlertRecipient.alert_id), col(AlertRecipient.recipient_id))
    )
    views: dict[int, RecipientView] = {}
    by_alert: dict[int, list[RecipientView]] = {}
    for alert_id, *row in (await session.execute(statement)).all():
        view = views.get(row[0])
        if view is None:
            view = views[row[0]] = _view(row, contacts, channels.defaults)
        by_alert.setdefault(alert_id, []).append(view)
    return by_alert
