"""Turns the result of one attempt into the row's next state (pure: no I/O, no clock)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from channels.base import Delivery
from channels.errors import DeliveryError, PermanentError, RateLimited, Reason, TransientError
from pipeline.models import Outcome, State
from workers.retry import RetryPolicy


@dataclass(frozen=True)
class AttemptResult:
    """What happened when a worker tried one delivery."""

    delivery: Delivery
    outcome: Outcome
    started_at: datetime
    duration_seconds: float
    reason: Reason | None = None
    detail: str = ""
    error: DeliveryError | None = None


@dataclass(frozen=True)
class Transition:
    """The row's new state after an attempt."""

    state: State
    attempts: int
    not_before: datetime | None = None
    reason: Reason | None = None
    detail: str | None = None
    sent_at: datetime | None = None


def decide(
    result: AttemptResult, attempts_before: int, now: datetime, policy: RetryPolicy
) -> Transition:
    """Returns SENT, SUPPRESSED, PENDING-with-a-retry-time or DEAD for an attempt's result."""
    born = result.delivery.alert_created_at
    if result.outcome is Outcome.SENT:
        return Transition(State.SENT, attempts_before + 1, sent_at=now)
    if result.outcome is Outcome.SUPPRESSED:
        return Transition(State.SUPPRESSED, attempts_before, reason=result.reason)
    error = result.error
    if isinstance(error, RateLimited):
        # A cool-down is the provider's pacing, not our failure: no attempt is spent.
        later = policy.after_rate_limit(now, error.retry_after, born)
        return _retry_or_dead(later, attempts_before, result, "rate limited past RETRY_MAX_AGE")
    attempts = attempts_before + 1
    if isinstance(error, PermanentError):
        return Transition(State.DEAD, attempts, reason=result.reason, detail=result.detail)
    retry_after = error.retry_after if isinstance(error, TransientError) else None
    later = policy.next_attempt(attempts, now, retry_after, born)
    return _retry_or_dead(later, attempts, result, f"gave up after {attempts} attempts")


def _retry_or_dead(
    later: datetime | None, attempts: int, result: AttemptResult, why_dead: str
) -> Transition:
    if later is None:
        detail = f"{why_dead}; last error: {result.detail}" if result.detail else why_dead
        return Transition(State.DEAD, attempts, reason=result.reason, detail=detail)
    return Transition(
        State.PENDING, attempts, not_before=later, reason=result.reason, detail=result.detail
    )
