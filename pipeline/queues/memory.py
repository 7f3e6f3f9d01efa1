"""The in-process queue of the embedded default: bounded per-channel asyncio queues."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pipeline.queues.base import Queue, QueueStats, ReceivedMessage


class _MemoryMessage(ReceivedMessage):
    def __init__(self, queue: MemoryQueue, channel: str, body: bytes) -> None:
        self.body = body
        self._queue = queue
        self._channel = channel
        self._settled = False

    def _settle(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        self._queue._in_flight[self._channel] -= 1
        return True

    async def ack(self) -> None:
        self._settle()

    async def reject(self) -> None:
        if self._settle():
            self._queue.dead_letters.setdefault(self._channel, []).append(self.body)

    async def requeue(self) -> None:
        if self._settle():
            await self._queue._channel_queue(self._channel).put(self.body)


class MemoryQueue(Queue):
    """Per-channel bounded asyncio queues; publishing waits while a queue is full."""

    def __init__(self, max_size: int = 10_000) -> None:
        self._max_size = max_size
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self._in_flight: dict[str, int] = {}
        self.dead_letters: dict[str, list[bytes]] = {}

    def _channel_queue(self, channel: str) -> asyncio.Queue[bytes]:
        if channel not in self._queues:
            self._queues[channel] = asyncio.Queue(self._max_size)
            self._in_flight[channel] = 0
        return self._queues[channel]

    async def connect(self) -> None:
        return None

    async def publish(self, channel: str, bodies: Sequence[bytes]) -> None:
        queue = self._channel_queue(channel)
        for body in bodies:
            await queue.put(body)

    async def receive(
        self, channel: str, max_messages: int, timeout: float
    ) -> list[ReceivedMessage]:
        queue = self._channel_queue(channel)
        try:
            first = (
                await asyncio.wait_for(queue.get(), timeout) if timeout > 0 else queue.get_nowait()
            )
        except (TimeoutError, asyncio.QueueEmpty):
            return []
        bodies = [first]
        while len(bodies) < max_messages and not queue.empty():
            bodies.append(queue.get_nowait())
        self._in_flight[channel] += len(bodies)
        return [_MemoryMessage(self, channel, body) for body in bodies]

    async def stats(self, channels: Sequence[str]) -> list[QueueStats]:
        return [
            QueueStats(
                channel=channel,
                depth=self._channel_queue(channel).qsize(),
                in_flight=self._in_flight[channel],
                consumers=0,
                dead_letters=len(self.dead_letters.get(channel, [])),
            )
            for channel in channels
        ]

    async def close(self) -> None:
        return None
