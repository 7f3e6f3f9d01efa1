"""Queue backends behind one interface, chosen by the scheme of QUEUE_URL."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.config import Settings
from pipeline.queues.base import Queue, QueueUnavailable
from pipeline.queues.memory import MemoryQueue

__all__ = ["Queue", "QueueUnavailable", "open_queue"]


def open_queue(settings: Settings, channels: Sequence[str]) -> Queue:
    """Returns the (not yet connected) queue for QUEUE_URL: memory://, amqp:// or redis://.

    channels are the channel names whose queues it declares at connect.
    """
    scheme = settings.queue_scheme
    if scheme == "memory":
        return MemoryQueue(settings.memory_queue_size)
    if scheme in ("amqp", "amqps"):
        from pipeline.queues.rabbitmq import AmqpQueue

        return AmqpQueue(settings, channels)
    if scheme in ("redis", "rediss"):
        from pipeline.queues.redis import RedisQueue

        return RedisQueue(settings, channels)
    raise ValueError(f"unsupported QUEUE_URL scheme {scheme!r}: use memory://, amqp:// or redis://")
