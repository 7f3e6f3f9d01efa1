"""Every queue name and key prefix Tocsin uses on a broker, in one place."""

from __future__ import annotations

PREFIX = "tocsin"
DEAD_LETTER_EXCHANGE = f"{PREFIX}.dead"
DEAD_LETTER_QUEUE = f"{PREFIX}.dead"
REDIS_GROUP = f"{PREFIX}-workers"
REDIS_DEAD_STREAM = f"{PREFIX}:dead"


def queue_name(channel: str) -> str:
    """Returns the RabbitMQ / in-process queue name for a channel."""
    return f"{PREFIX}.notify.{channel}"


def stream_key(channel: str) -> str:
    """Returns the Redis stream key for a channel."""
    return f"{PREFIX}:notify:{channel}"


def dead_stream_key(channel: str) -> str:
    """Returns the Redis dead-letter stream key for a channel (XLEN counts its dead letters)."""
    return f"{REDIS_DEAD_STREAM}:{channel}"


def consumers_key(channel: str) -> str:
    """Returns the Redis sorted set of a channel's consumers, scored by their last poll time."""
    return f"{PREFIX}:consumers:{channel}"
