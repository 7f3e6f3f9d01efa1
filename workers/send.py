"""Renders and sends one delivery through its channel, turning every failure into a result."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog

from channels.base import Channel, Delivery, Failures, Message
from channels.errors import DeliveryError, PermanentError, RateLimited, Reason, TransientError
from pipeline.clock import Clock
from pipeline.models import Outcome
from pipeline.redact import Redactor
from workers.outcome import AttemptResult

log = structlog.get_logger("tocsin.worker")

_OUTCOMES: tuple[tuple[type[DeliveryError], Outcome], ...] = (
    (RateLimited, Outcome.RATE_LIMITED),
    (PermanentError, Outcome.PERMANENT),
    (TransientError, Outcome.TRANSIENT),
)


def outcome_of(error: DeliveryError) -> Outcome:
    """Returns the outcome class of a delivery error."""
    for kind, outcome in _OUTCOMES:
        if isinstance(error, kind):
            return outcome
    return Outcome.TRANSIENT


def render(
    channel: Channel[Any], deliveries: Sequence[Delivery], clock: Clock, redact: Redactor
) -> tuple[list[Message], list[AttemptResult]]:
    """Renders a group into messages; if that fails, every delivery of the group fails with it."""
    try:
        return channel.render_group(deliveries), []
    except DeliveryError as error:
        failed = error
    except Exception as exc:  # a channel bug must cost one attempt, not the worker
        log.exception("channel_crashed", channel=deliveries[0].channel, stage="render")
        failed = TransientError(Reason.INTERNAL_ERROR, type(exc).__name__)
    now = clock.now()
    return [], [_result(delivery, failed, now, 0.0, redact) for delivery in deliveries]


async def attempt(
    channel: Channel[Any], message: Message, clock: Clock, timeout: float, redact: Redactor
) -> list[AttemptResult]:
    """Sends one message; never raises, so one bad message cannot stop a worker.

    Every delivery of the message shares its outcome, except those the provider refused alone.
    """
    started_at = clock.now()
    t0 = time.perf_counter()
    failures = await _send(channel, message, timeout)
    duration = time.perf_counter() - t0
    return [
        _result(delivery, failures.get(delivery.notification_id), started_at, duration, redact)
        for delivery in message.deliveries
    ]


def _result(
    delivery: Delivery,
    error: DeliveryError | None,
    started_at: datetime,
    duration: float,
    redact: Redactor,
) -> AttemptResult:
    if error is None:
        return AttemptResult(delivery, Outcome.SENT, started_at, duration)
    return AttemptResult(
        delivery,
        outcome_of(error),
        started_at,
        duration,
        reason=error.reason,
        detail=redact(error.detail)[:1000],
        error=error,
    )


async def _send(channel: Channel[Any], message: Message, timeout: float) -> Failures:
    try:
        # asyncio.timeout runs the send in this task; wait_for would start a task per send.
        async with asyncio.timeout(timeout):
            return await channel.send(message.payload) or {}
    except DeliveryError as error:
        failed: DeliveryError = error
    except TimeoutError:
        failed = TransientError(Reason.TIMEOUT, f"no answer within {timeout:g}s")
    except Exception as exc:  # a channel bug must cost one attempt, not the worker
        channel_name = message.deliveries[0].channel
        log.exception("channel_crashed", channel=channel_name, stage="send")
        failed = TransientError(Reason.INTERNAL_ERROR, type(exc).__name__)
    return {delivery.notification_id: failed for delivery in message.deliveries}
