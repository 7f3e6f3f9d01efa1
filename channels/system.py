"""The in-app system channel: writes the notification into the recipient's inbox."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from sqlalchemy import text

from channels.base import Channel, ChannelContext, ChannelSettings, Delivery
from channels.errors import Reason
from pipeline.batching import GroupCommit
from pipeline.models import InboxMessage
from pipeline.sql import insert_ignoring_duplicates, is_postgresql

# Any constant shared by every writer ("inbox" in ASCII, recognisable in pg_locks).
INBOX_ORDER_LOCK = text("SELECT pg_advisory_xact_lock(452823510904)")


class SystemChannel(Channel[ChannelSettings]):
    """Delivers by inserting an inbox row; a redelivery of the same notification is a no-op."""

    name = "system"
    settings_class = ChannelSettings  # nothing to configure
    deferrable = False
    # Its writes are group commits: a batch's sends all joining one is the point.
    bounded_sends = False
    reasons: ClassVar[tuple[Reason, ...]] = ()

    def __init__(self, context: ChannelContext) -> None:
        self._context = context
        # Concurrent deliveries share one transaction: one commit per batch, not per message.
        self._writes: GroupCommit[dict[str, object]] = GroupCommit(self._insert)

    @classmethod
    def from_settings(cls, settings: ChannelSettings, context: ChannelContext) -> SystemChannel:
        return cls(context)

    def render(self, delivery: Delivery) -> dict[str, object]:
        return {
            "recipient_id": delivery.recipient_id,
            "notification_id": delivery.notification_id,
            "alert_id": delivery.alert_id,
            "title": delivery.title,
            "body": delivery.body,
            "severity": delivery.severity,
            "created_at": self._context.clock.now(),
        }

    async def send(self, payload: dict[str, object]) -> None:
        await self._writes.submit(payload)

    async def _insert(self, payloads: Sequence[dict[str, object]]) -> None:
        async with self._context.session_factory() as session, session.begin():
            if is_postgresql(session):
                # Inbox ids must become visible in increasing order (readers resume "after id
                # N", see pipeline/inbox.py). Held until commit, this lock makes a later writer
                # draw its ids only once this one is visible; SQLite has one writer anyway.
                await session.execute(INBOX_ORDER_LOCK)
            await session.execute(insert_ignoring_duplicates(session, InboxMessage), payloads)
