"""Decides whether an instant falls in a recipient's quiet hours and when those hours end."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from pipeline.validation import InputError, load_timezone

_WINDOW = re.compile(r"\s*([0-9]{1,2}):([0-9]{2})\s*[-–]\s*([0-9]{1,2}):([0-9]{2})\s*")
_DAY = timedelta(days=1)
_SECOND = timedelta(seconds=1)
# Offset changes are found by sampling this often: tzdata never has two within an hour.
_SCAN_STEP = timedelta(hours=1)


@dataclass(frozen=True)
class QuietHours:
    """Holds a daily window [start, end) of local wall-clock time; start > end wraps midnight."""

    start: time
    end: time
    zone: ZoneInfo

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("quiet hours start and end must be naive wall-clock times")
        if self.start == self.end:
            raise InputError(
                f"quiet hours {self.format()} start and end at the same time: "
                "use two different times such as 22:00-07:00"
            )

    @classmethod
    def parse(cls, window: str, timezone: str) -> QuietHours:
        """Parses a window such as "22:00-07:00" in an IANA time zone, or raises InputError."""
        match = _WINDOW.fullmatch(window)
        if match is None:
            raise InputError("quiet hours must look like 22:00-07:00")
        start = _clock(match[1], match[2])
        end = _clock(match[3], match[4])
        return cls(start, end, load_timezone(timezone))

    def format(self) -> str:
        """Formats the window as "22:00-07:00", the form parse() reads."""
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def contains(self, moment: datetime) -> bool:
        """Returns whether the recipient's wall clock at the aware moment is inside the window."""
        return self._covers(self._wall_clock(moment))

    def release_time(self, moment: datetime) -> datetime | None:
        """Returns the first UTC instant after moment outside the window, or None if not inside."""
        # The window is left when the wall clock reaches `end` or when an offset change jumps the
        # clock out of it: over an `end` a spring-forward skips (we return the first instant after
        # the gap), or back before a `start` inside a fall-back's repeated hour (we return the
        # fall-back instant, since contains() is false from then on; the local time is not `end`).
        current = _aware(moment).astimezone(UTC)
        if not self._covers(self._wall_clock(current)):
            return None
        # Ambiguous `end` (fall-back): we return its first occurrence after moment, never inside.
        while True:
            reach = current + _until(self._wall_clock(current), self.end)
            change = _next_offset_change(self.zone, current, reach)
            if change is None:
                return reach
            if not self.contains(change):
                return change
            # The change moved the clock but left it inside the window: carry on from there.
            current = change

    def _covers(self, clock: time) -> bool:
        """Returns whether a wall-clock time lies in [start, end), wrapping midnight if needed."""
        if self.start < self.end:
            return self.start <= clock < self.end
        return clock >= self.start or clock < self.end

    def _wall_clock(self, moment: datetime) -> time:
        """Returns the recipient's local wall-clock time at the aware moment."""
        return _aware(moment).astimezone(self.zone).time()


def _clock(hour: str, minute: str) -> time:
    """Returns the wall-clock time hour:minute, or raises InputError if it is out of range."""
    if int(hour) > 23 or int(minute) > 59:
        raise InputError(f"quiet hours time {hour}:{minute} is out of range: use 00:00 to 23:59")
    return time(int(hour), int(minute))


def _aware(moment: datetime) -> datetime:
    """Returns moment unchanged, or raises ValueError if it is naive."""
    if moment.utcoffset() is None:
        raise ValueError("quiet hours need an aware datetime, got a naive one")
    return moment


def _since_midnight(clock: time) -> timedelta:
    """Returns how far a wall-clock time is past midnight."""
    return timedelta(
        hours=clock.hour, minutes=clock.minute, seconds=clock.second, microseconds=clock.microsecond
    )


def _until(clock: time, target: time) -> timedelta:
    """Returns how long a steadily running wall clock takes to go from clock to target."""
    return (_since_midnight(target) - _since_midnight(clock)) % _DAY


def _offset(zone: ZoneInfo, moment: datetime) -> timedelta | None:
    """Returns the zone's UTC offset at the aware moment."""
    return moment.astimezone(zone).utcoffset()


def _next_offset_change(zone: ZoneInfo, after: datetime, until: datetime) -> datetime | None:
    """Returns the first instant in (after, until] at which the zone's UTC offset changes."""
    offset = _offset(zone, after)
    low = after
    while low < until:
        high = min(low + _SCAN_STEP, until)
        if _offset(zone, high) != offset:
            return _bisect_change(zone, low, high, offset)
        low = high
    return None


def _bisect_change(
    zone: ZoneInfo, low: datetime, high: datetime, offset: timedelta | None
) -> datetime:
    """Returns the whole second in (low, high] at which the zone's offset stops being offset."""
    # Zone transitions fall on whole seconds, so rounding low down and high up keeps them apart.
    low = low.replace(microsecond=0)
    if high.microsecond:
        high = high.replace(microsecond=0) + _SECOND
    while high - low > _SECOND:
        middle = low + _SECOND * ((high - low) // _SECOND // 2)
        if _offset(zone, middle) == offset:
            low = middle
        else:
            high = middle
    return high
