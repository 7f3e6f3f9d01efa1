"""The buffer of deliveries RabbitMQ pushed ahead (up to the prefetch), and taking batches from it.

aio-pika calls the consumer back once per delivery; the worker wants batches. Deliveries of a
channel that has since closed are dropped here: their tags mean nothing any more, and the
broker hands those messages out again anyway.
"""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import ChannelInvalidStateError

# Empty event-loop turns allowed for deliveries already read from the socket: they pass
# through a few tasks before they reach the buffer.
SETTLE_TURNS = 4
# How long receive waits for more deliveries after the first. The broker hands out a new
# message for each ack, one frame at a time: without it a worker claims batches of 2-3 rows
# (one transaction each) instead of ~10; 10 ms measured 1.9x the end-to-end deliveries/s.
# 50 ms (benchmarks/throughput.py): claims of ~40 rows instead of 4-8 while the relay's
# publishing trickles in, half the worker's CPU per delivery; a message waits at most 50 ms.
BATCH_LINGER = 0.05


def _live(message: AbstractIncomingMessage) -> bool:
    """True while the channel that delivered the message is open (its tag still means it)."""
    try:
        return not message.channel.is_closed
    except ChannelInvalidStateError:
        return False


def drain(
    buffer: asyncio.Queue[AbstractIncomingMessage], most: int | None = None
) -> list[AbstractIncomingMessage]:
    """Takes up to most buffered deliveries, dropping dead channels' (the broker redelivers)."""
    taken: list[AbstractIncomingMessage] = []
    while (most is None or len(taken) < most) and not buffer.empty():
        message = buffer.get_nowait()
        if _live(message):
            taken.append(message)
    return taken


async def _first(
    buffer: asyncio.Queue[AbstractIncomingMessage], timeout: float
) -> AbstractIncomingMessage | None:
    """Waits up to timeout for a delivery of a live channel; None when none came."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await buffer.get()
                if _live(message):
                    return message
    except TimeoutError:
        return None


async def take(
    buffer: asyncio.Queue[AbstractIncomingMessage], most: int, timeout: float
) -> list[AbstractIncomingMessage]:
    """Waits up to timeout for a live delivery, then up to BATCH_LINGER for more, up to most."""
    first = await _first(buffer, timeout)
    if first is None:
        return []
    taken = [first, *drain(buffer, most - 1)]
    deadline = asyncio.get_running_loop().time() + BATCH_LINGER
    while len(taken) < most:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        following = await _first(buffer, left)
        if following is None:
            break
        taken += [following, *drain(buffer, most - len(taken) - 1)]
    return taken
