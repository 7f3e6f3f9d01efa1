"""Group commit writes concurrent items together and reports each flush's failure to its callers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from pipeline.batching import GroupCommit


async def test_concurrent_items_share_flushes_and_each_caller_waits_for_its_own() -> None:
    flushed: list[list[int]] = []

    async def flush(items: Sequence[int]) -> None:
        await asyncio.sleep(0.01)
        flushed.append(list(items))

    group = GroupCommit(flush)
    await asyncio.gather(*(group.submit(i) for i in range(50)))
    assert sorted(i for batch in flushed for i in batch) == list(range(50))
    assert len(flushed) < 50  # coalesced
    assert flushed[0] == [0]  # the first caller does not wait for company


async def test_a_failed_flush_fails_only_its_own_callers() -> None:
    async def flush(items: Sequence[int]) -> None:
        await asyncio.sleep(0)
        if 0 in items:
            raise RuntimeError("disk full")

    group = GroupCommit(flush)
    results = await asyncio.gather(*(group.submit(i) for i in range(5)), return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    assert results[1:] == [None] * 4


async def test_batches_are_bounded() -> None:
    sizes: list[int] = []

    async def flush(items: Sequence[int]) -> None:
        await asyncio.sleep(0.001)
        sizes.append(len(items))

    group = GroupCommit(flush, max_batch=7)
    await asyncio.gather(*(group.submit(i) for i in range(40)))
    assert sum(sizes) == 40 and max(sizes) <= 7


async def test_a_lone_caller_beyond_the_batch_bound_is_still_written() -> None:
    written: list[int] = []

    async def flush(items: Sequence[int]) -> None:
        written.extend(items)

    group = GroupCommit(flush, max_batch=1)
    # Items queued before anyone holds the lock: the last caller's item is in a later batch.
    await asyncio.wait_for(asyncio.gather(*(group.submit(i) for i in range(5))), 5)
    assert sorted(written) == [0, 1, 2, 3, 4]


async def test_errors_propagate_to_the_caller() -> None:
    async def flush(items: Sequence[int]) -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await GroupCommit(flush).submit(1)
