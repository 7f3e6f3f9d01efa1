"""Quiet hours: wall-clock windows, overnight wrap-around and DST gaps and overlaps."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.quiet_hours import QuietHours
from pipeline.validation import InputError

ZONES = (
    "Asia/Shanghai",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",  # 30-minute DST
    "America/Sao_Paulo",  # DST until 2019, none since
    "Pacific/Chatham",  # +12:45 / +13:45
    "Asia/Kolkata",
    "UTC",
    "Europe/Berlin",
    "America/Los_Angeles",
)
FIRST = datetime(2018, 1, 1, tzinfo=UTC)
LAST = datetime(2031, 12, 31, tzinfo=UTC)
NEW_YORK = ZoneInfo("America/New_York")
MICROSECOND = timedelta(microseconds=1)
SAMPLES = 16


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def offset(zone: ZoneInfo, moment: datetime) -> timedelta:
    value = moment.astimezone(zone).utcoffset()
    assert value is not None
    return value


@functools.cache
def transitions(key: str) -> tuple[datetime, ...]:
    """Every instant between FIRST and LAST at which the zone's UTC offset changes."""
    zone, found, moment, step = ZoneInfo(key), [], FIRST, timedelta(hours=6)
    while moment < LAST:
        low, high = moment, moment + step
        if offset(zone, low) != offset(zone, high):
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) // 2
                if offset(zone, middle) == offset(zone, low):
                    low = middle
                else:
                    high = middle
            found.append(high.replace(microsecond=0))
        moment += step
    return tuple(found)


clocks = st.builds(time, st.integers(0, 23), st.integers(0, 59))
moments = st.datetimes(
    min_value=FIRST.replace(tzinfo=None),
    max_value=LAST.replace(tzinfo=None),
    timezones=st.just(UTC),
)


@st.composite
def near_transition(draw: st.DrawFn, key: str) -> tuple[time, time, datetime] | None:
    """A window with an edge near a DST change's wall times, and a moment near that change."""
    changes = transitions(key)
    if not changes:
        return None
    change = draw(st.sampled_from(changes))
    jump_clock = (change - MICROSECOND).astimezone(ZoneInfo(key)) + MICROSECOND
    edge = st.integers(-90, 90).map(
        lambda minutes: (jump_clock + timedelta(minutes=minutes)).time().replace(second=0)
    )
    start, end = draw(st.one_of(clocks, edge)), draw(st.one_of(clocks, edge))
    moment = change + timedelta(seconds=draw(st.integers(-36 * 3600, 36 * 3600)))
    return start, end, moment + timedelta(microseconds=draw(st.integers(0, 999_999)))


@st.composite
def cases(draw: st.DrawFn) -> tuple[QuietHours, datetime]:
    """A window in one of ZONES and a moment: anywhere in the years, or close to a DST change."""
    key = draw(st.sampled_from(ZONES))
    near = draw(st.one_of(st.none(), near_transition(key)))
    start, end, moment = near or (draw(clocks), draw(clocks), draw(moments))
    if start == end:
        later = timedelta(minutes=draw(st.integers(1, 1439)))
        end = (datetime.combine(FIRST, start) + later).time()
    return QuietHours(start, end, ZoneInfo(key)), moment


def first_exit_by_scanning(quiet: QuietHours, moment: datetime) -> datetime:
    """The first whole UTC minute after moment outside the window (every exit is on one)."""
    candidate = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(3 * 24 * 60):
        if not quiet.contains(candidate):
            return candidate
        candidate += timedelta(minutes=1)
    raise AssertionError("window never left")


def assert_exit_explained(quiet: QuietHours, release: datetime) -> None:
    """The release is the clock reaching `end`, or a DST jump over `end` or back before `start`."""
    local = release.astimezone(quiet.zone)
    if local.time() == quiet.end:
        return
    before, after = offset(quiet.zone, release - MICROSECOND), offset(quiet.zone, release)
    assert before != after, f"{local} is neither the window's end nor a DST change"
    if after > before:
        # Spring forward: `end` lay in the skipped wall-clock times.
        skipped_from = (release + before).replace(tzinfo=None).time()
        jump_to_end = datetime.combine(FIRST, quiet.end) - datetime.combine(FIRST, skipped_from)
        assert jump_to_end % timedelta(days=1) < after - before
    # Fall back: the repeated hour begins before `start`, which not contains(release) shows.


@given(case=cases())
@settings(max_examples=1500, deadline=None)
def test_release_is_the_first_instant_outside_the_window(case: tuple[QuietHours, datetime]) -> None:
    quiet, moment = case
    release = quiet.release_time(moment)
    if not quiet.contains(moment):
        assert release is None
        return
    assert release is not None
    assert release.tzinfo is UTC
    assert release > moment
    assert not quiet.contains(release)
    assert_exit_explained(quiet, release)
    for step in range(1, SAMPLES + 1):
        assert quiet.contains(moment + (release - moment) * step / (SAMPLES + 1))
    assert quiet.contains(max(moment, release - MICROSECOND))


@given(case=cases())
@settings(max_examples=150, deadline=None)
def test_release_matches_a_minute_by_minute_scan(case: tuple[QuietHours, datetime]) -> None:
    quiet, moment = case
    if quiet.contains(moment):
        assert quiet.release_time(moment) == first_exit_by_scanning(quiet, moment)


@pytest.mark.parametrize(
    ("window", "key", "moment", "expected"),
    [
        # 23:30 in Shanghai (UTC+8) -> 07:00 the next local day, 23:00 UTC.
        ("22:00-07:00", "Asia/Shanghai", utc(2026, 1, 15, 15, 30), utc(2026, 1, 15, 23, 0)),
        # 06:59 local, before the overnight window's end on the same local day.
        ("22:00-07:00", "Asia/Shanghai", utc(2026, 1, 15, 22, 59), utc(2026, 1, 15, 23, 0)),
        ("22:00-07:00", "Asia/Shanghai", utc(2026, 1, 15, 14, 0), utc(2026, 1, 15, 23, 0)),
        ("12:00-13:00", "Asia/Kolkata", utc(2026, 6, 1, 6, 45), utc(2026, 6, 1, 7, 30)),
        ("12:00-13:00", "Asia/Kolkata", utc(2026, 6, 1, 6, 30), utc(2026, 6, 1, 7, 30)),
        # New York springs forward 02:00 EST -> 03:00 EDT (07:00 UTC): 02:30 never happens.
        ("22:00-02:30", "America/New_York", utc(2026, 3, 8, 6, 0), utc(2026, 3, 8, 7, 0)),
        ("01:00-02:30", "America/New_York", utc(2026, 3, 8, 6, 59), utc(2026, 3, 8, 7, 0)),
        # Start and end both skipped: the clock jumps from one night's window into the next's.
        ("02:45-02:30", "America/New_York", utc(2026, 3, 8, 6, 0), utc(2026, 3, 9, 6, 30)),
        # New York falls back 02:00 EDT -> 01:00 EST (06:00 UTC): 01:30 happens twice.
        ("22:00-01:30", "America/New_York", utc(2026, 11, 1, 4, 0), utc(2026, 11, 1, 5, 30)),
        ("22:00-01:30", "America/New_York", utc(2026, 11, 1, 6, 10), utc(2026, 11, 1, 6, 30)),
        # 01:50 EDT: the repeated hour brings the clock to 01:30 again, 40 minutes later.
        ("01:45-01:30", "America/New_York", utc(2026, 11, 1, 5, 50), utc(2026, 11, 1, 6, 30)),
        # 01:45 EDT: the clock falls back to 01:00, before the 01:15 start: the window is left.
        ("01:15-03:00", "America/New_York", utc(2026, 11, 1, 5, 45), utc(2026, 11, 1, 6, 0)),
        # The fall-back to 01:00 EST re-enters this window, which then ends at 01:30 EST.
        ("00:30-01:30", "America/New_York", utc(2026, 11, 1, 6, 0), utc(2026, 11, 1, 6, 30)),
        # Lord Howe falls back 30 minutes, 02:00 +11:00 -> 01:30 +10:30 (15:00 UTC).
        ("23:00-01:45", "Australia/Lord_Howe", utc(2026, 4, 4, 14, 40), utc(2026, 4, 4, 14, 45)),
        ("23:00-01:45", "Australia/Lord_Howe", utc(2026, 4, 4, 15, 10), utc(2026, 4, 4, 15, 15)),
    ],
)
def test_release_time_examples(window: str, key: str, moment: datetime, expected: datetime) -> None:
    quiet = QuietHours.parse(window, key)
    assert quiet.contains(moment)
    assert quiet.release_time(moment) == expected


@pytest.mark.parametrize(
    ("window", "key", "moment"),
    [
        ("22:00-07:00", "Asia/Shanghai", utc(2026, 1, 15, 23, 0)),  # exactly 07:00: end excluded
        ("22:00-07:00", "Asia/Shanghai", utc(2026, 1, 15, 12, 0)),  # 20:00
        ("12:00-13:00", "Asia/Kolkata", utc(2026, 6, 1, 6, 29)),  # 11:59
        ("12:00-13:00", "Asia/Kolkata", utc(2026, 6, 1, 7, 30)),  # 13:00
        ("22:00-01:30", "America/New_York", utc(2026, 11, 1, 5, 40)),  # 01:40 EDT
    ],
)
def test_outside_the_window_nothing_is_held(window: str, key: str, moment: datetime) -> None:
    quiet = QuietHours.parse(window, key)
    assert not quiet.contains(moment)
    assert quiet.release_time(moment) is None


def test_start_is_inside_and_end_is_outside() -> None:
    quiet = QuietHours.parse("12:00-13:00", "UTC")
    assert quiet.contains(utc(2026, 6, 1, 12, 0))
    assert quiet.contains(utc(2026, 6, 1, 12, 59, 59))
    assert not quiet.contains(utc(2026, 6, 1, 13, 0))


def test_any_aware_moment_is_accepted_and_the_release_is_utc() -> None:
    quiet = QuietHours.parse("22:00-07:00", "Asia/Shanghai")
    moment = datetime(2026, 1, 15, 23, 30, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert quiet.release_time(moment) == utc(2026, 1, 15, 23, 0)


def test_naive_moments_are_refused() -> None:
    quiet = QuietHours.parse("22:00-07:00", "UTC")
    with pytest.raises(ValueError, match="aware"):
        quiet.contains(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="aware"):
        quiet.release_time(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("22:00-07:00", (time(22), time(7))),
        ("22:00–07:00", (time(22), time(7))),
        ("  22:00 – 07:00 ", (time(22), time(7))),
        ("7:05-9:30", (time(7, 5), time(9, 30))),
        ("00:00-23:59", (time(0), time(23, 59))),
    ],
)
def test_parse_and_format(text: str, expected: tuple[time, time]) -> None:
    quiet = QuietHours.parse(text, "Asia/Shanghai")
    assert (quiet.start, quiet.end, quiet.zone) == (*expected, ZoneInfo("Asia/Shanghai"))
    assert QuietHours.parse(quiet.format(), "Asia/Shanghai") == quiet


def test_format_pads_hours() -> None:
    assert QuietHours.parse("7:05-9:30", "UTC").format() == "07:05-09:30"


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("", "UTC", "quiet hours must look like 22:00-07:00"),
        ("22:00", "UTC", "quiet hours must look like 22:00-07:00"),
        ("22-07", "UTC", "quiet hours must look like 22:00-07:00"),
        ("2200-0700", "UTC", "quiet hours must look like 22:00-07:00"),
        ("22:00-07:00-08:00", "UTC", "quiet hours must look like 22:00-07:00"),
        ("22:0-07:00", "UTC", "quiet hours must look like 22:00-07:00"),
        ("٢٢:٠٠-٠٧:٠٠", "UTC", "quiet hours must look like 22:00-07:00"),  # Arabic-Indic digits
        ("24:00-07:00", "UTC", "quiet hours time 24:00 is out of range: use 00:00 to 23:59"),
        ("22:00-07:60", "UTC", "quiet hours time 07:60 is out of range: use 00:00 to 23:59"),
        ("22:00-22:00", "UTC", "quiet hours 22:00-22:00 start and end at the same time"),
        ("22:00-07:00", "Mars/Base", "unknown time zone 'Mars/Base': use an IANA name such as"),
        ("22:00-07:00", "America", "unknown time zone 'America'"),
        ("22:00-07:00", "localtime", "unknown time zone 'localtime'"),
    ],
)
def test_parse_errors(text: str, key: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        QuietHours.parse(text, key)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_unknown_time_zone_message_in_full() -> None:
    with pytest.raises(InputError) as caught:
        QuietHours.parse("22:00-07:00", "Mars/Base")
    expected = "unknown time zone 'Mars/Base': use an IANA name such as Asia/Shanghai"
    assert str(caught.value) == expected


def test_new_york_transitions_are_where_the_examples_assume() -> None:
    changes = [change for change in transitions("America/New_York") if change.year == 2026]
    assert changes == [utc(2026, 3, 8, 7, 0), utc(2026, 11, 1, 6, 0)]
    assert offset(NEW_YORK, utc(2026, 3, 8, 7, 0)) == timedelta(hours=-4)
