"""Group commit: concurrent callers' items are written together, one flush at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Coalesces items submitted while a flush runs into the next flush; no added delay.

    The first caller flushes at once; callers arriving during that flush are written together
    by the next one. Each caller learns whether its own flush succeeded.
    """

    def __init__(self, flush: Callable[[Sequence[T]], Awaitable[None]], max_batch: int = 500):
        self._flush = flush
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._lock = asyncio.Lock()

    async def submit(self, item: T) -> None:
        """Returns once item is written; raises what its flush raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        async with self._lock:
            # Loop: with more than max_batch pending, our item may not be in the first flush.
            while not done.done():
                await self._flush_pending()
        await done

    async def _flush_pending(self) -> None:
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        try:
            await self._flush([item for item, _ in batch])
        except Exception as exc:
            for _, done in batch:
                done.set_exception(exc)
        else:
            for _, done in batch:
                done.set_result(None)
