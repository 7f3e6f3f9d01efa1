"""Renders and sends one delivery through its channel, turning every failure into a result."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from channels.base import Channel, Delivery
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


async def attempt(
    channel: Channel[Any], delivery: Delivery, clock: Clock, timeout: float, redact: Redactor
) -> AttemptResult:
    """Tries one delivery; never raises, so one bad message cannot stop a worker."""
    started_at = clock.now()
    t0 = time.perf_counter()
    error = await _send(channel, delivery, timeout)
    duration = time.perf_counter() - t0
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


async def _send(channel: Channel[Any], delivery: Delivery, timeout: float) -> DeliveryError | None:
    try:
        payload = channel.render(delivery)
        await asyncio.wait_for(channel.send(payload), timeout)
    except DeliveryError as error:
        return error
    except TimeoutError:
        return TransientError(Reason.TIMEOUT, f"no answer within {timeout:g}s")
    except Exception as exc:  # a channel bug must cost one attempt, not the worker
        log.exception("channel_crashed", channel=delivery.channel, id=delivery.notification_id)
        return TransientError(Reason.INTERNAL_ERROR, type(exc).__name__)
    return None
