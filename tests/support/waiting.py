"""Waiting for a condition in tests without a fixed sleep."""

from __future__ import annotations

import asyncio
from typing import Any


async def eventually(check: Any, *, timeout: float = 15.0, interval: float = 0.2) -> Any:
    """Awaits check() until it returns something truthy, or fails after timeout seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout:g}s; last value: {last!r}")
