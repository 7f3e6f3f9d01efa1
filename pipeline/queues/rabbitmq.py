"""RabbitMQ queues: a durable quorum queue per channel, persistent messages, publisher confirms.

Topology (declared idempotently at connect, re-declared by aio-pika's robust channels after a
reconnect): one quorum queue per channel with an explicit delivery limit, at-least-once
dead-lettering (which needs `x-overflow: reject-publish`) to a fanout exchange bound to one
shared quorum dead-letter queue. Messages go through the default exchange, routed by queue
name, with `mandatory` set so an unroutable message fails the publish instead of vanishing.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aio_pika import DeliveryMode, ExchangeType, Message, RobustConnection
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
    ConsumerTag,
)
from aio_pika.connection import make_url
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aiormq import spec

from pipeline.config import Settings
from pipeline.queues import names
from pipeline.queues.base import Queue, QueueStats, QueueUnavailable, ReceivedMessage
from pipeline.queues.prefetch import SETTLE_TURNS, drain, take

log = structlog.get_logger("tocsin.queue.amqp")

# Unconfirmed publishes in flight at once: awaiting each confirm in turn is ~5x slower.
PUBLISH_WINDOW = 256
# Seconds between reconnection attempts of the robust connection.
RECONNECT_INTERVAL = 1.0
# Everything aio-pika / aiormq raise for a broker that is gone, slow or refusing.
_BROKER_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *CONNECTION_EXCEPTIONS)


def queue_arguments(delivery_limit: int) -> dict[str, Any]:
    """Returns the arguments of every channel queue (all accepted by RabbitMQ 3.10+)."""
    return {
        "x-queue-type": "quorum",
        # RabbitMQ 3.x has no default limit: without it a poison message loops forever.
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": names.DEAD_LETTER_EXCHANGE,
        # At-least-once dead-lettering keeps the message until the dead-letter queue confirmed
        # it; RabbitMQ falls back to at-most-once unless overflow is reject-publish.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


DEAD_LETTER_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}


class _AmqpMessage(ReceivedMessage):
    """A delivery handed to a worker; settling it on a dead channel only logs."""

    def __init__(
        self, owner: AmqpQueue, channel: str, message: AbstractIncomingMessage, timeout: float
    ) -> None:
        self.body = message.body
        self._owner = owner
        self._channel = channel
        self._message = message
        self._timeout = timeout
        self._settled = False

    async def ack(self) -> None:
        await self._settle("ack", self._message.ack)

    async def reject(self) -> None:
        await self._settle("reject", lambda: self._message.nack(requeue=False))

    async def requeue(self) -> None:
        await self._settle("requeue", lambda: self._message.nack(requeue=True))

    async def _settle(self, how: str, send: Callable[[], Awaitable[None]]) -> None:
        if self._settled:
            return
        self._settled = True
        self._owner.settled(self._channel)
        try:
            async with asyncio.timeout(self._timeout):
                await send()
        except _BROKER_ERRORS as exc:
            # The delivering channel is gone: the broker hands the message out again anyway.
            log.warning("amqp_settle_failed", channel=self._channel, how=how, error=repr(exc))


@dataclass
class _Consumer:
    """One channel's consumer: its own AMQP channel (for its prefetch) and a local buffer."""

    amqp_channel: AbstractRobustChannel
    queue: AbstractRobustQueue
    tag: ConsumerTag
    buffer: asyncio.Queue[AbstractIncomingMessage]


class AmqpQueue(Queue):
    """Quorum queues on RabbitMQ through one robust aio-pika connection."""

    def __init__(self, settings: Settings, channels: Sequence[str]) -> None:
        self._url = settings.queue_url.get_secret_value()
        self._delivery_limit = settings.queue_delivery_limit
        self._timeout = settings.broker_timeout.total_seconds()
        # The queues declared at connect: one per channel of the process.
        self._channel_names = tuple(channels)
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._topology: AbstractRobustChannel | None = None
        self._consumers: dict[str, _Consumer] = {}
        self._in_flight: defaultdict[str, int] = defaultdict(int)
        self._lock = asyncio.Lock()
        # The last failed connect: callers that queued behind it fail at once instead of each
        # waiting out BROKER_TIMEOUT again (a worker must still stop promptly on SIGTERM).
        self._failure: tuple[float, str] | None = None

    async def connect(self) -> None:
        async with self._lock:
            if self._connection is not None:
                return
            loop = asyncio.get_running_loop()
            if self._failure and loop.time() - self._failure[0] < RECONNECT_INTERVAL:
                raise QueueUnavailable(self._failure[1])
            try:
                self._connection = await self._open()
            except QueueUnavailable as exc:
                self._failure = (loop.time(), str(exc))
                raise
            self._failure = None

    async def _open(self) -> AbstractRobustConnection:
        connection = RobustConnection(
            make_url(self._url),
            client_properties={"connection_name": names.PREFIX},
            reconnect_interval=RECONNECT_INTERVAL,
        )
        try:
            async with asyncio.timeout(self._timeout):
                await connection.connect(timeout=self._timeout)
                await self._declare_topology(connection)
        except _BROKER_ERRORS as exc:
            # Closing also stops the reconnect loop a timed-out attempt would leave behind.
            await _quietly(connection.close())
            raise QueueUnavailable(f"cannot connect to RabbitMQ: {exc!r}") from exc
        return connection

    async def _declare_topology(self, connection: AbstractRobustConnection) -> None:
        topology = await connection.channel()
        exchange = await topology.declare_exchange(
            names.DEAD_LETTER_EXCHANGE, ExchangeType.FANOUT, durable=True
        )
        dead = await topology.declare_queue(
            names.DEAD_LETTER_QUEUE, durable=True, arguments=DEAD_LETTER_ARGUMENTS
        )
        await dead.bind(exchange, routing_key="")
        for channel in self._channels():
            await topology.declare_queue(
                names.queue_name(channel),
                durable=True,
                arguments=queue_arguments(self._delivery_limit),
            )
        self._topology = topology
        # A returned (unroutable) message raises instead of counting as published.
        self._publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)

    def _channels(self) -> tuple[str, ...]:
        return self._channel_names

    async def _connected(self) -> AbstractRobustConnection:
        """Connects first if no connection was ever made (the broker was down at start-up)."""
        if self._connection is None:
            await self.connect()
        return self._live_connection()

    def _live_connection(self) -> AbstractRobustConnection:
        # Fails at once while the robust connection is reconnecting, rather than after a timeout.
        if self._connection is None:
            raise QueueUnavailable("not connected to RabbitMQ")
        if not self._connection.connected.is_set():
            raise QueueUnavailable("RabbitMQ connection lost; reconnecting")
        return self._connection

    def _usable(self, amqp_channel: AbstractRobustChannel | None) -> AbstractRobustChannel:
        self._live_connection()
        if amqp_channel is None:
            raise QueueUnavailable("not connected to RabbitMQ")
        return amqp_channel

    async def publish(self, channel: str, bodies: Sequence[bytes]) -> None:
        await self._connected()
        exchange = self._usable(self._publisher).default_exchange
        routing_key = names.queue_name(channel)
        for start in range(0, len(bodies), PUBLISH_WINDOW):
            await self._publish_window(
                exchange, routing_key, bodies[start : start + PUBLISH_WINDOW]
            )

    async def _publish_window(
        self, exchange: AbstractExchange, routing_key: str, bodies: Sequence[bytes]
    ) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                results = await asyncio.gather(
                    *(exchange.publish(_message(body), routing_key) for body in bodies),
                    return_exceptions=True,
                )
        except _BROKER_ERRORS as exc:
            raise QueueUnavailable(f"publish to {routing_key} failed: {exc!r}") from exc
        failed = [r for r in results if not isinstance(r, spec.Basic.Ack)]
        if failed:
            raise QueueUnavailable(
                f"{len(failed)} of {len(bodies)} messages to {routing_key} not confirmed:"
                f" {failed[0]!r}"
            )

    async def subscribe(self, channel: str, prefetch: int) -> None:
        await self._consumer(channel, prefetch)

    async def _consumer(self, channel: str, prefetch: int) -> _Consumer:
        consumer = self._consumers.get(channel)
        if consumer is not None:
            return consumer
        await self._connected()  # before the lock: connect() takes it too
        async with self._lock:
            if channel not in self._consumers:
                connection = self._live_connection()
                self._consumers[channel] = await self._start_consumer(connection, channel, prefetch)
            return self._consumers[channel]

    async def _start_consumer(
        self, connection: AbstractRobustConnection, channel: str, prefetch: int
    ) -> _Consumer:
        buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

        async def on_message(message: AbstractIncomingMessage) -> None:
            # Never message.process(): it rejects without requeue on any exception.
            buffer.put_nowait(message)

        amqp_channel = connection.channel()
        try:
            async with asyncio.timeout(self._timeout):
                await amqp_channel.initialize()
                # Per consumer (global_=False); robust channels restore it after a reconnect.
                await amqp_channel.set_qos(prefetch_count=prefetch)
                queue = await amqp_channel.declare_queue(
                    names.queue_name(channel),
                    durable=True,
                    arguments=queue_arguments(self._delivery_limit),
                )
                tag = await queue.consume(on_message, no_ack=False)
        except _BROKER_ERRORS as exc:
            await _quietly(amqp_channel.close())
            raise QueueUnavailable(f"cannot consume {channel}: {exc!r}") from exc
        return _Consumer(amqp_channel, queue, tag, buffer)

    async def receive(
        self, channel: str, max_messages: int, timeout: float
    ) -> list[ReceivedMessage]:
        consumer = await self._consumer(channel, max_messages)
        deliveries = await take(consumer.buffer, max_messages, timeout)
        self._in_flight[channel] += len(deliveries)
        return [_AmqpMessage(self, channel, d, self._timeout) for d in deliveries]

    def settled(self, channel: str) -> None:
        """Counts one handed-out message of channel as settled."""
        # Never below zero: close() forgets the count, a late settle must not go negative.
        self._in_flight[channel] = max(0, self._in_flight[channel] - 1)

    async def stats(self, channels: Sequence[str]) -> list[QueueStats]:
        """Returns ready depth and consumers per queue, this process's in-flight, DLQ depth."""
        # depth and consumers come from a passive declare, so they cover every process; AMQP
        # 0-9-1 reports no unacked count, so in_flight is this process's handed-out, unsettled
        # messages; the dead-letter queue is shared, so each channel shows its whole depth (a
        # dashboard takes the max of dead_letters, never the sum).
        await self._connected()
        topology = self._usable(self._topology)
        try:
            async with asyncio.timeout(self._timeout):
                # The raw channel: aio-pika's robust passive declare answers from its cache.
                raw = await topology.get_underlay_channel()
                dead = await raw.queue_declare(names.DEAD_LETTER_QUEUE, passive=True)
                declared = [
                    await raw.queue_declare(names.queue_name(c), passive=True) for c in channels
                ]
        except _BROKER_ERRORS as exc:
            raise QueueUnavailable(f"cannot read queue stats: {exc!r}") from exc
        return [
            QueueStats(
                channel=channel,
                depth=ok.message_count or 0,
                in_flight=self._in_flight[channel],
                consumers=ok.consumer_count or 0,
                dead_letters=dead.message_count or 0,
            )
            for channel, ok in zip(channels, declared, strict=True)
        ]

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        consumers = list(self._consumers.items())
        self._consumers.clear()
        # While disconnected the broker already took every delivery back: nothing to hand over.
        if connection is not None and connection.connected.is_set():
            for channel, consumer in consumers:
                await self._stop_consumer(channel, consumer)
        self._publisher = self._topology = None
        self._in_flight.clear()
        if connection is not None:
            await _quietly(connection.close())

    async def _stop_consumer(self, channel: str, consumer: _Consumer) -> None:
        # Cancel first so nothing new arrives, then hand back what is still buffered; messages
        # already handed to workers return to the queue when the connection closes.
        try:
            async with asyncio.timeout(self._timeout):
                await consumer.queue.cancel(consumer.tag)
                # Deliveries that preceded the cancel-ok may still be a task or two away.
                for _ in range(SETTLE_TURNS):
                    await asyncio.sleep(0)
                for message in drain(consumer.buffer):
                    await message.nack(requeue=True)
        except _BROKER_ERRORS as exc:
            log.warning("amqp_consumer_stop_failed", channel=channel, error=repr(exc))


def _message(body: bytes) -> Message:
    return Message(body, delivery_mode=DeliveryMode.PERSISTENT, content_type="application/json")


async def _quietly(closing: Awaitable[Any]) -> None:
    """Awaits a close, logging instead of raising: it runs on paths that already failed."""
    try:
        await closing
    except Exception as exc:
        log.debug("amqp_close_failed", error=repr(exc))
