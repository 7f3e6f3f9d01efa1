"""The retry policy is a pure function of attempts, time and the provider's cool-down."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import Settings
from workers.retry import RetryPolicy

NOW = datetime(2026, 1, 1, tzinfo=UTC)
DEFAULT = RetryPolicy.from_settings(Settings(_env_file=None, retry_jitter=0))


@pytest.mark.parametrize(
    ("attempts", "minutes"), [(1, 5), (2, 15), (3, 30), (4, 60)], ids=["1st", "2nd", "3rd", "4th"]
)
def test_default_schedule_is_5_15_30_60_minutes(attempts: int, minutes: int) -> None:
    assert DEFAULT.next_attempt(attempts, NOW) == NOW + timedelta(minutes=minutes)


def test_after_the_schedule_the_notification_is_dead() -> None:
    assert DEFAULT.max_attempts == 5
    assert DEFAULT.next_attempt(5, NOW) is None


def test_counting_starts_at_one_failed_attempt() -> None:
    with pytest.raises(ValueError, match="starting at 1"):
        DEFAULT.next_attempt(0, NOW)


def test_schedule_comes_from_retry_schedule_setting() -> None:
    settings = Settings(_env_file=None, RETRY_SCHEDULE="30s,2m", retry_jitter=0)
    policy = RetryPolicy.from_settings(settings)
    assert policy.next_attempt(1, NOW) == NOW + timedelta(seconds=30)
    assert policy.next_attempt(2, NOW) == NOW + timedelta(minutes=2)
    assert policy.next_attempt(3, NOW) is None


def test_schedule_is_read_from_the_environment_in_its_documented_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RETRY_SCHEDULE", "5m,15m,30m,60m")
    assert Settings(_env_file=None).retry_schedule == DEFAULT.schedule
    monkeypatch.setenv("RETRY_SCHEDULE", "soon")
    with pytest.raises(ValueError, match="invalid duration 'soon'"):
        Settings(_env_file=None)


def test_a_longer_retry_after_wins_over_the_schedule() -> None:
    assert DEFAULT.next_attempt(1, NOW, retry_after=timedelta(minutes=9)) == NOW + timedelta(
        minutes=9
    )
    assert DEFAULT.next_attempt(1, NOW, retry_after=timedelta(minutes=1)) == NOW + timedelta(
        minutes=5
    )


def test_nothing_is_retried_past_max_age() -> None:
    policy = RetryPolicy((timedelta(hours=2),), max_age=timedelta(hours=1))
    assert policy.next_attempt(1, NOW, born=NOW) is None
    assert policy.next_attempt(1, NOW, born=NOW + timedelta(hours=2)) is not None


@given(
    attempts=st.integers(1, 4),
    jitter=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**32),
)
def test_jitter_stays_within_its_fraction(attempts: int, jitter: float, seed: int) -> None:
    policy = RetryPolicy(DEFAULT.schedule, jitter, rng=random.Random(seed))
    delay = DEFAULT.schedule[attempts - 1]
    later = policy.next_attempt(attempts, NOW)
    assert later is not None
    assert delay * (1 - jitter) - timedelta(microseconds=1) <= later - NOW
    assert later - NOW <= delay * (1 + jitter) + timedelta(microseconds=1)


@given(jitter=st.floats(0.0, 1.0), seconds=st.integers(1, 3600), seed=st.integers(0, 2**32))
def test_rate_limit_never_comes_back_before_the_cool_down(
    jitter: float, seconds: int, seed: int
) -> None:
    policy = RetryPolicy(DEFAULT.schedule, jitter, rng=random.Random(seed))
    later = policy.after_rate_limit(NOW, timedelta(seconds=seconds))
    assert later is not None
    assert later >= NOW + timedelta(seconds=seconds)
