"""Each kind of attempt result leads to exactly one next state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from channels.base import Delivery
from channels.errors import (
    DeliveryError,
    PermanentError,
    RateLimited,
    Reason,
    TransientError,
)
from pipeline.models import Outcome, State
from workers.outcome import AttemptResult, decide
from workers.retry import RetryPolicy

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
POLICY = RetryPolicy((timedelta(minutes=5), timedelta(minutes=15)), max_age=timedelta(hours=1))


def result(error: DeliveryError | None, outcome: Outcome, born: datetime = NOW) -> AttemptResult:
    delivery = Delivery(1, "email", 1, 1, "t", "b", "warning", born, 1, "alice")
    reason = error.reason if error else None
    return AttemptResult(delivery, outcome, NOW, 0.1, reason, error.detail if error else "", error)


def test_sent_counts_the_attempt_and_stamps_sent_at() -> None:
    t = decide(result(None, Outcome.SENT), 2, NOW, POLICY)
    assert (t.state, t.attempts, t.sent_at) == (State.SENT, 3, NOW)


def test_transient_goes_back_to_pending_with_the_next_delay() -> None:
    error = TransientError(Reason.SMTP_4XX, "421 busy")
    t = decide(result(error, Outcome.TRANSIENT), 0, NOW, POLICY)
    assert (t.state, t.attempts, t.not_before) == (State.PENDING, 1, NOW + timedelta(minutes=5))
    assert t.reason is Reason.SMTP_4XX


def test_a_transient_retry_after_longer_than_the_schedule_wins_and_spends_an_attempt() -> None:
    error = TransientError(Reason.HTTP_5XX, "HTTP 503", timedelta(minutes=12))
    t = decide(result(error, Outcome.TRANSIENT), 0, NOW, POLICY)
    assert (t.state, t.attempts, t.not_before) == (State.PENDING, 1, NOW + timedelta(minutes=12))
    shorter = TransientError(Reason.HTTP_5XX, "HTTP 503", timedelta(seconds=30))
    t = decide(result(shorter, Outcome.TRANSIENT), 0, NOW, POLICY)
    assert t.not_before == NOW + timedelta(minutes=5)  # never sooner than the schedule


def test_transient_after_the_last_delay_is_dead_and_keeps_its_cause() -> None:
    error = TransientError(Reason.SMTP_4XX, "421 busy")
    t = decide(result(error, Outcome.TRANSIENT), 2, NOW, POLICY)
    assert (t.state, t.attempts, t.reason) == (State.DEAD, 3, Reason.SMTP_4XX)
    assert t.detail is not None and "gave up after 3 attempts" in t.detail and "421" in t.detail


def test_permanent_is_dead_at_once() -> None:
    t = decide(result(PermanentError(Reason.SMTP_5XX, "550"), Outcome.PERMANENT), 0, NOW, POLICY)
    assert (t.state, t.attempts, t.reason) == (State.DEAD, 1, Reason.SMTP_5XX)


def test_rate_limited_waits_the_cool_down_without_spending_an_attempt() -> None:
    error = RateLimited(Reason.WECOM_45009, "45009", timedelta(seconds=60))
    t = decide(result(error, Outcome.RATE_LIMITED), 2, NOW, POLICY)
    assert (t.state, t.attempts) == (State.PENDING, 2)
    assert t.not_before == NOW + timedelta(seconds=60)


def test_rate_limited_past_max_age_is_dead() -> None:
    error = RateLimited(Reason.WECOM_45009, "45009", timedelta(seconds=60))
    old = NOW - timedelta(hours=2)
    t = decide(result(error, Outcome.RATE_LIMITED, born=old), 1, NOW, POLICY)
    assert t.state is State.DEAD and t.reason is Reason.WECOM_45009


@pytest.mark.parametrize("reason", [Reason.OPTED_OUT, Reason.ALERT_RESOLVED])
def test_suppressed_keeps_attempts_and_reason(reason: Reason) -> None:
    delivery = Delivery(1, "email", 1, 1, "t", "b", "warning", NOW, 1, "alice")
    suppressed = AttemptResult(delivery, Outcome.SUPPRESSED, NOW, 0.0, reason)
    t = decide(suppressed, 1, NOW, POLICY)
    assert (t.state, t.attempts, t.reason) == (State.SUPPRESSED, 1, reason)
