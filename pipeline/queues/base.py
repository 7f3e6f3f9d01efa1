"""The queue contract: publish "deliver notification N now", receive, ack after the commit."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass


class QueueUnavailable(Exception):
    """The broker cannot be reached or did not confirm; the rows stay in the database."""


class PoisonMessage(ValueError):
    """A message that can never be handled (not JSON, no id): for the broker's dead letters."""


def encode_message(notification_id: int) -> bytes:
    """Returns the body that asks a worker to deliver one notification."""
    return json.dumps({"id": notification_id}, separators=(",", ":")).encode()


def decode_message(body: bytes) -> int:
    """Returns the notification id in a body, or raises PoisonMessage."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoisonMessage(f"not JSON: {body[:80]!r}") from exc
    notification_id = data.get("id") if isinstance(data, dict) else None
    if not isinstance(notification_id, int) or isinstance(notification_id, bool):
        raise PoisonMessage(f"no integer id in {body[:80]!r}")
    return notification_id


@dataclass(frozen=True)
class QueueStats:
    """How one channel queue stands."""

    channel: str
    depth: int
    in_flight: int
    consumers: int
    dead_letters: int


class ReceivedMessage(ABC):
    """A message handed to a worker; exactly one of ack, reject or requeue settles it."""

    body: bytes

    @abstractmethod
    async def ack(self) -> None:
        """Settles the message as handled (call only after the database commit)."""

    @abstractmethod
    async def reject(self) -> None:
        """Sends the message to the broker's dead letters: it can never be handled."""

    @abstractmethod
    async def requeue(self) -> None:
        """Hands the message back for another consumer (graceful shutdown)."""


class Queue(ABC):
    """One queue per channel on some broker."""

    @abstractmethod
    async def connect(self) -> None:
        """Opens connections and declares topology; safe to call more than once."""

    async def subscribe(self, channel: str, prefetch: int) -> None:
        """Starts consuming a channel with at most prefetch unsettled messages (push brokers)."""
        return None

    @abstractmethod
    async def publish(self, channel: str, bodies: Sequence[bytes]) -> None:
        """Publishes every body durably, or raises QueueUnavailable."""

    @abstractmethod
    async def receive(
        self, channel: str, max_messages: int, timeout: float
    ) -> list[ReceivedMessage]:
        """Waits up to timeout seconds for the first message, then takes up to max_messages."""

    @abstractmethod
    async def stats(self, channels: Sequence[str]) -> list[QueueStats]:
        """Returns depth, in-flight, consumers and dead-letter depth per channel."""

    @abstractmethod
    async def close(self) -> None:
        """Closes connections; unsettled messages go back to the broker."""
