"""Builds a test pipeline (app, users, alerts) on a real database and loopback servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlmodel import col

from channels.base import Channel, Delivery
from pipeline.alerts import AlertInput, create_alert
from pipeline.app import App
from pipeline.channel_set import ChannelSet
from pipeline.clock import Clock, ManualClock
from pipeline.config import Settings
from pipeline.models import Alert, DeliveryAttempt, Notification
from pipeline.recipients import RecipientInput, RecipientRecord, upsert_recipient
from pipeline.redact import Redactor
from tests.support.channels import pinned
from workers.outcome import AttemptResult
from workers.send import attempt, render

START = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)  # 12:00 in Asia/Shanghai


@asynccontextmanager
async def open_app(
    settings: Settings, clock: Clock | None = None, channels: ChannelSet | None = None
) -> AsyncIterator[App]:
    """Yields a connected app on its own metrics registry and a manual clock.

    channels default to the registered ones, all off but the inbox (tests/support/channels.py).
    """
    app = App.create(
        settings,
        channels=channels or pinned(),
        clock=clock or ManualClock(START),
        registry=CollectorRegistry(),
    )
    await app.queue.connect()
    try:
        yield app
    finally:
        await app.aclose()


async def add_user(app: App, username: str, **fields: Any) -> RecipientRecord:
    """Creates a recipient; fields are RecipientInput's (channels, quiet_hours, ...) or a contact
    kind of the app's channels (email="a@example.com", wecom_userid="alice")."""
    contacts = {kind: fields.pop(kind) for kind in list(fields) if kind in app.channels.contacts}
    data = RecipientInput(username, contacts, **fields)
    return await upsert_recipient(app.sessions, app.clock, data, app.channels)


async def add_alert(
    app: App,
    recipients: Sequence[str],
    severity: str = "warning",
    title: str = "Disk 95% on db-1",
    *,
    mention_all: bool = False,
) -> Alert:
    """Creates an alert for the recipients."""
    data = AlertInput(
        title, f"{title}: details", severity, list(recipients), mention_all=mention_all
    )
    return await create_alert(
        app.sessions, app.clock, data, max_recipients=app.settings.max_recipients_per_alert
    )


async def produced(app: App, username: str = "alice", **user_fields: Any) -> Alert:
    """Creates one user and one alert for them, and runs the producer."""
    await add_user(app, username, **user_fields)
    alert = await add_alert(app, [username])
    await app.producer().run()
    return alert


async def rows(app: App) -> dict[tuple[str, str], Notification]:
    """Returns every notification keyed by (username, channel)."""
    from pipeline.models import Recipient

    async with app.sessions() as session:
        result = await session.execute(
            select(Notification, col(Recipient.username)).join(
                Recipient, col(Recipient.id) == col(Notification.recipient_id)
            )
        )
        return {(username, n.channel): n for n, username in result}


async def attempts_of(app: App, notification_id: int) -> list[DeliveryAttempt]:
    """Returns the recorded attempts of a notification, in order."""
    async with app.sessions() as session:
        result = await session.execute(
            select(DeliveryAttempt)
            .where(col(DeliveryAttempt.notification_id) == notification_id)
            .order_by(col(DeliveryAttempt.id))
        )
        return list(result.scalars())


async def cycle(app: App) -> int:
    """Runs one relay pass and delivers until the queues are idle; returns results recorded."""
    await app.relay().tick()
    return await app.worker().run_until_idle()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """Returns a metric sample's value (0 when absent)."""
    return registry.get_sample_value(name, labels) or 0.0


async def attempt_one(
    channel: Channel[Any], delivery: Delivery, clock: Clock, timeout: float, redact: Redactor
) -> AttemptResult:
    """What the worker does with one delivery: render it, send it, turn failures into a result."""
    messages, failed = render(channel, [delivery], clock, redact)
    for message in messages:
        failed.extend(await attempt(channel, message, clock, timeout, redact))
    [result] = failed
    return result
