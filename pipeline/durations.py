"""Parses the short duration strings used in configuration ("90s", "5m", "2h", "1d")."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|m|min))?\s*", re.IGNORECASE)


def parse_duration(text: str) -> timedelta:
    """Returns the timedelta for "90s", "5m", "2h", "1d" or a bare number of seconds."""
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(f"invalid duration {text!r}: use a number with s, m, h or d (e.g. 5m)")
    value, unit = match.groups()
    return timedelta(seconds=float(value) * _UNITS[unit or "s"])


def parse_rate(text: str) -> float:
    """Returns events per second from "5/s", "300/m" or "5"; raises ValueError otherwise."""
    match = _RATE.fullmatch(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"rate must be a positive rate such as 5/s or 300/m, not {text!r}")
    per = 60 if (match.group(2) or "s").lower().startswith("m") else 1
    return float(match.group(1)) / per


def parse_schedule(text: str) -> tuple[timedelta, ...]:
    """Returns the delays of a comma-separated schedule such as "5m,15m,30m,60m"."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError("retry schedule is empty: give at least one delay, e.g. 5m,15m,30m,60m")
    delays = tuple(parse_duration(part) for part in parts)
    if any(delay <= timedelta(0) for delay in delays):
        raise ValueError(f"retry schedule {text!r} has a delay that is not positive")
    return delays


def format_duration(delta: timedelta) -> str:
    """Renders a timedelta in the shortest exact unit ("5m", "90s", "2h")."""
    seconds = delta.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _duration(value: object) -> object:
    return parse_duration(value) if isinstance(value, str) else value


# A settings field given as "90s", "5m", "2h" or "1d" (or a number of seconds).
Duration = Annotated[timedelta, BeforeValidator(_duration)]
