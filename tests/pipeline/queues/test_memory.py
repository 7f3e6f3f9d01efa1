"""The in-process queue passes the queue contract."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pipeline.queues.memory import MemoryQueue
from tests.pipeline.queues.contract import QueueContract


@pytest.fixture
async def queue() -> AsyncIterator[MemoryQueue]:
    memory = MemoryQueue(max_size=100)
    await memory.connect()
    yield memory
    await memory.close()


class TestMemoryQueue(QueueContract):
    """Contract tests on memory://."""
