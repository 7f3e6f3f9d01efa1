"""The worker loop: per-channel consumers, bounded concurrency, burst mode, graceful drain."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog

from channels.base import Channel, Delivery
from monitoring.metrics import Metrics
from pipeline.backoff import backoff_delay
from pipeline.channel_set import ChannelSet
from pipeline.clock import Clock
from pipeline.db import SessionFactory, database_unavailable
from pipeline.queues.base import (
    PoisonMessage,
    Queue,
    QueueUnavailable,
    ReceivedMessage,
    decode_message,
)
from pipeline.redact import Redactor
from pipeline.validation import InputError
from workers.claim import Claim, claim, new_token
from workers.outcome import AttemptResult
from workers.record import record, report
from workers.retry import RetryPolicy
from workers.send import attempt, render

log = structlog.get_logger("tocsin.worker")

# After an unexpected error the batch goes back to the queue; pause so we do not spin on it.
# Also the first wait before a database step is retried, doubling up to the maximum.
_ERROR_PAUSE = 1.0
_MAX_DATABASE_BACKOFF = 30.0
_MAX_BROKER_BACKOFF = 10.0

T = TypeVar("T")


@dataclass(frozen=True)
class WorkerConfig:
    """How hard and how long a worker works."""

    name: str
    concurrency: int = 16
    batch_size: int = 64
    send_timeout: timedelta = timedelta(seconds=30)
    send_lease: timedelta = timedelta(minutes=2)
    shutdown_grace: timedelta = timedelta(seconds=25)
    # How long a receive waits before the consumer checks for shutdown.
    receive_timeout: float = 1.0
    # In burst mode, how long an empty receive waits before the queue counts as idle.
    idle_timeout: float = 1.0

    @property
    def window(self) -> int:
        """Messages a channel's consumer holds at once: two batches, one claimed or recorded
        while the other is sending (and what a crash can repeat)."""
        return 2 * self.batch_size

    def __post_init__(self) -> None:
        # A claimed batch may wait for the batch before it to finish sending (the window is two
        # batches), and a send may start only if it can end within the lease.
        if self.send_lease < 2 * self.send_timeout:
            raise InputError(
                f"SEND_LEASE ({self.send_lease.total_seconds():g}s) must be at least twice"
                f" SEND_TIMEOUT ({self.send_timeout.total_seconds():g}s): sends that could not"
                " finish within the lease are given up and wait for it to expire"
            )


class Worker:
    """Consumes the queues of its channels and delivers each notification at least once."""

    def __init__(
        self,
        *,
        sessions: SessionFactory,
        queue: Queue,
        channels: Mapping[str, Channel[Any]],
        catalog: ChannelSet,
        clock: Clock,
        policy: RetryPolicy,
        metrics: Metrics,
        redact: Redactor,
        config: WorkerConfig,
    ) -> None:
        self._sessions = sessions
        self._queue = queue
        self._channels = channels
        # Every channel of the process: contacts and default preferences are read through it.
        self._catalog = catalog
        self._clock = clock
        self._policy = policy
        self._metrics = metrics
        self._redact = redact
        self._config = config
        self._stopping = asyncio.Event()
        self._sends = {
            name: asyncio.Semaphore(config.concurrency if channel.bounded_sends else config.window)
            for name, channel in channels.items()
        }
        self._starting = {name: asyncio.Lock() for name in channels}
        self._started: set[str] = set()
        self.delivered = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Works until stop is set, then finishes in-flight sends within the shutdown grace."""
        consumers = [
            asyncio.create_task(self._consume(name, burst=False), name=f"consume-{name}")
            for name in self._channels
        ]
        await stop.wait()
        log.info("worker_draining", grace_seconds=self._config.shutdown_grace.total_seconds())
        self._stopping.set()
        await asyncio.gather(*consumers, return_exceptions=True)

    async def run_until_idle(self) -> int:
        """Delivers until every channel queue is empty; returns how many results were recorded."""
        before = self.delivered
        await asyncio.gather(*(self._consume(name, burst=True) for name in self._channels))
        return self.delivered - before

    async def _consume(self, channel: str, *, burst: bool) -> None:
        # Its sends take turns for the concurrency; a batch's cost in the database is mostly
        # per statement, so a full batch makes each delivery cheaper.
        batch, window = self._config.batch_size, self._config.window
        slots = asyncio.Semaphore(window)
        tasks: set[asyncio.Task[None]] = set()
        timeout = self._config.idle_timeout if burst else self._config.receive_timeout
        failures = 0
        while not self._stopping.is_set():
            taken = await _take_slots(slots, batch)
            try:
                # Inside the loop: a broker that is down at start-up is retried, not fatal.
                await self._queue.subscribe(channel, window)
                messages = await self._queue.receive(channel, taken, timeout)
                failures = 0
            except Exception as exc:
                messages = []
                await self._after_receive_failed(channel, exc, failures)
                failures += 1
            for _ in range(taken - len(messages)):
                slots.release()
            if messages:
                task = asyncio.create_task(self._handle(channel, messages, slots))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif burst and not tasks:
                return
            elif burst:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        await self._drain(tasks)

    async def _after_receive_failed(self, channel: str, exc: Exception, failures: int) -> None:
        delay = backoff_delay(failures, _ERROR_PAUSE, _MAX_BROKER_BACKOFF)
        if isinstance(exc, QueueUnavailable):
            log.warning("queue_unavailable", channel=channel, error=str(exc), retry_in=delay)
        else:
            log.exception("queue_receive_failed", channel=channel, retry_in=delay)
        # Wakes early on shutdown: a worker waiting for a broker still exits promptly.
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _drain(self, tasks: set[asyncio.Task[None]]) -> None:
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self._config.shutdown_grace.total_seconds())
        for task in late:
            task.cancel()
        if late:
            # Their rows stay SENDING until the lease expires; the relay then republishes them.
            log.warning("worker_drain_deadline", cancelled=len(late))
            await asyncio.gather(*late, return_exceptions=True)

    async def _handle(
        self, channel: str, messages: list[ReceivedMessage], slots: asyncio.Semaphore
    ) -> None:
        try:
            await self._deliver_batch(channel, messages)
        except asyncio.CancelledError:
            await _settle(messages, requeue=True)
            raise
        except Exception:
            log.exception("worker_batch_failed", channel=channel, messages=len(messages))
            await _settle(messages, requeue=True)
            await asyncio.sleep(_ERROR_PAUSE)
        finally:
            for _ in messages:
                slots.release()

    async def _deliver_batch(self, channel: str, messages: list[ReceivedMessage]) -> None:
        by_id = await self._decode(channel, messages)
        if not by_id:
            return
        claimed = await self.deliver(channel, list(by_id))
        await self._reject_unknown(channel, claimed, by_id)
        # Acknowledged only now that the outcome is committed: a crash before this redelivers.
        await _settle([m for i, ms in by_id.items() if i not in claimed.unknown for m in ms])

    async def deliver(self, channel: str, ids: Sequence[int]) -> Claim:
        """Claims, sends and records QUEUED rows by id (also the relay's inline fallback).

        While the database is unreachable the claim and the record are retried with backoff
        and the batch's messages stay unsettled: requeueing them would spend the broker's
        delivery limit on an outage and dead-letter valid messages.
        """
        token, lease = new_token(), self._config.send_lease
        claimed = await self._persistently(
            channel, "claim", lambda: self._claim(channel, ids, lease, token)
        )
        results = await self._send_all(channel, claimed)
        recorded = await self._persistently(
            channel,
            "record",
            lambda: record(
                self._sessions,
                results,
                token,
                self._policy,
                self._clock.now(),
                self._config.name,
                self._catalog,
            ),
        )
        report(recorded, self._metrics, self._clock.now())
        self.delivered += len(recorded)
        return claimed

    async def _claim(self, channel: str, ids: Sequence[int], lease: timedelta, token: str) -> Claim:
        await self._start(channel)
        return await claim(
            self._sessions, ids, self._clock.now(), lease, token, self._catalog, channel
        )

    async def _start(self, channel: str) -> None:
        # Here rather than in run(): run, run_until_idle and the relay's inline fallback all
        # come through deliver(), and a database that is down at start-up is retried with the
        # claim. The lock makes concurrent first batches wait for one start.
        if channel in self._started:
            return
        async with self._starting[channel]:
            if channel not in self._started:
                await self._channels[channel].start()
                self._started.add(channel)

    async def _persistently(self, channel: str, stage: str, run: Callable[[], Awaitable[T]]) -> T:
        failures = 0
        while True:
            try:
                return await run()
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                delay = backoff_delay(failures, _ERROR_PAUSE, _MAX_DATABASE_BACKOFF)
                failures += 1
                self._metrics.record_database_retry(channel, stage)
                log.warning(
                    "database_unavailable",
                    channel=channel,
                    stage=stage,
                    failures=failures,
                    retry_in=delay,
                    error=self._redact(f"{type(exc).__name__}: {exc}")[:300],
                )
                await asyncio.sleep(delay)

    async def _decode(
        self, channel: str, messages: list[ReceivedMessage]
    ) -> dict[int, list[ReceivedMessage]]:
        by_id: dict[int, list[ReceivedMessage]] = {}
        for message in messages:
            try:
                by_id.setdefault(decode_message(message.body), []).append(message)
            except PoisonMessage as exc:
                log.error("poison_message", channel=channel, error=str(exc))
                self._metrics.record_poison(channel)
                await message.reject()
        return by_id

    async def _reject_unknown(
        self, channel: str, claimed: Claim, by_id: dict[int, list[ReceivedMessage]]
    ) -> None:
        for notification_id in claimed.unknown:
            log.error("poison_message", channel=channel, error=f"no notification {notification_id}")
            self._metrics.record_poison(channel)
            for message in by_id[notification_id]:
                await message.reject()
        if claimed.stale:
            log.info("duplicate_messages_dropped", channel=channel, count=len(claimed.stale))

    async def _send_all(self, channel: str, claimed: Claim) -> list[AttemptResult]:
        groups = coalesce(self._channels[channel], claimed.deliveries)
        sends = await asyncio.gather(
            *(self._send_group(channel, group, claimed.lease_until) for group in groups)
        )
        sent = [result for results in sends for result in results if result is not None]
        if abandoned := sum(len(results) for results in sends) - len(sent):
            # A stall (GC, SIGSTOP, an overloaded host) ate the lease: the relay hands these
            # rows to another worker, so sending them now could deliver them twice.
            log.warning("sends_abandoned", channel=channel, count=abandoned, why="lease ran out")
            self._metrics.record_abandoned(channel, abandoned)
        return [*sent, *claimed.suppressed]

    async def _send_group(
        self, channel: str, group: list[Delivery], lease_until: datetime
    ) -> list[AttemptResult | None]:
        """Sends one group's messages in order; None for a delivery whose lease could run out."""
        timeout = self._config.send_timeout
        gauge = self._metrics.in_flight.labels(channel=channel)
        sender = self._channels[channel]
        async with self._sends[channel]:
            messages, results = render(sender, group, self._clock, self._redact)
            outcomes: list[AttemptResult | None] = list(results)
            for message in messages:
                if self._clock.now() + timeout > lease_until:
                    outcomes.extend(None for _ in message.deliveries)
                    continue
                gauge.inc()
                try:
                    outcomes.extend(
                        await attempt(
                            sender, message, self._clock, timeout.total_seconds(), self._redact
                        )
                    )
                finally:
                    gauge.dec()
            return outcomes


def coalesce(channel: Channel[Any], deliveries: Sequence[Delivery]) -> list[list[Delivery]]:
    """Groups deliveries of one alert to one destination; the rest each go alone, in order."""
    groups: dict[Hashable, list[Delivery]] = {}
    alone: list[list[Delivery]] = []
    for delivery in deliveries:
        key = channel.group_key(delivery)
        if key is None:
            alone.append([delivery])
        else:
            groups.setdefault((delivery.alert_id, key), []).append(delivery)
    return [*groups.values(), *alone]


async def _take_slots(slots: asyncio.Semaphore, most: int) -> int:
    """Waits for one free slot, then takes as many more as are free at once, up to most."""
    await slots.acquire()
    taken = 1
    while taken < most and not slots.locked():
        await slots.acquire()
        taken += 1
    return taken


async def _settle(messages: Sequence[ReceivedMessage], *, requeue: bool = False) -> None:
    # A failed ack is harmless (the row is already recorded; a redelivery is dropped as stale),
    # so it is logged and the rest are still settled.
    for message in messages:
        try:
            await (message.requeue() if requeue else message.ack())
        except Exception as exc:
            log.warning("queue_settle_failed", requeue=requeue, error=type(exc).__name__)
