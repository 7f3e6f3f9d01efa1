"""Exponential backoff between retries of a step that keeps failing (relay ticks, DB steps)."""

from __future__ import annotations

# 2**10 times any base we use is already past its cap; keeps the power from growing unbounded.
_MAX_DOUBLINGS = 10


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Returns base x 2**failures, at most cap: base when nothing failed yet."""
    return float(min(base * 2 ** min(max(failures, 0), _MAX_DOUBLINGS), cap))
