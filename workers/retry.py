"""Retry policy as data plus one pure function: when, if ever, to try a notification again."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pipeline.config import Settings


@dataclass(frozen=True)
class RetryPolicy:
    """Delays after the 1st, 2nd, ... failed attempt; past the last one a notification is dead."""

    schedule: tuple[timedelta, ...]
    jitter: float = 0.0
    max_age: timedelta | None = None
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """Builds the policy from RETRY_SCHEDULE, RETRY_JITTER and RETRY_MAX_AGE."""
        return cls(settings.retry_schedule, settings.retry_jitter, settings.retry_max_age)

    @property
    def max_attempts(self) -> int:
        """The first attempt plus one per scheduled retry."""
        return len(self.schedule) + 1

    def _jittered(self, delay: timedelta) -> timedelta:
        if not self.jitter:
            return delay
        return delay * (1 + self.rng.uniform(-self.jitter, self.jitter))

    def _within_age(self, moment: datetime, born: datetime | None) -> datetime | None:
        if born is not None and self.max_age is not None and moment - born > self.max_age:
            return None
        return moment

    def next_attempt(
        self,
        attempts: int,
        now: datetime,
        retry_after: timedelta | None = None,
        born: datetime | None = None,
    ) -> datetime | None:
        """Returns when to try again after `attempts` failed attempts, or None: dead."""
        if attempts < 1:
            raise ValueError("next_attempt counts failed attempts, starting at 1")
        if attempts > len(self.schedule):
            return None
        delay = self._jittered(self.schedule[attempts - 1])
        if retry_after is not None:
            delay = max(delay, retry_after)
        return self._within_age(now + delay, born)

    def after_rate_limit(
        self, now: datetime, retry_after: timedelta, born: datetime | None = None
    ) -> datetime | None:
        """Returns when to try again after the provider's cool-down (no attempt is spent)."""
        # Jitter only upwards, so a rate-limited burst never comes back before the cool-down.
        spread = retry_after * self.rng.uniform(0, self.jitter) if self.jitter else timedelta(0)
        return self._within_age(now + retry_after + spread, born)
