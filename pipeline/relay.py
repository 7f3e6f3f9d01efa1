"""The relay: publishes due notifications to their channel queue and re-publishes lost ones."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import ColumnElement, and_, func, select, update
from sqlmodel import col

from monitoring.metrics import Metrics
from pipeline.backoff import backoff_delay
from pipeline.clock import Clock
from pipeline.config import Settings
from pipeline.db import SessionFactory
from pipeline.models import Notification, State
from pipeline.queues.base import Queue, QueueUnavailable, encode_message
from pipeline.sql import id_channel_pairs

log = structlog.get_logger("tocsin.relay")

_LEASED = (State.QUEUED.value, State.SENDING.value)
# Longest wait between relay ticks while the broker or database keeps failing.
MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class RelayReport:
    """What one relay pass published."""

    due: int = 0
    lease_expired: int = 0
    failed: int = 0

    @property
    def published(self) -> int:
        """Rows handed to the queue in this pass."""
        return self.due + self.lease_expired


def due_condition(now: datetime) -> ColumnElement[bool]:
    """Returns the condition "PENDING and due by now"."""
    return and_(col(Notification.state) == State.PENDING.value, col(Notification.not_before) <= now)


class Relay:
    """Moves due rows PENDING -> QUEUED in the database, then publishes them."""

    def __init__(
        self,
        session_factory: SessionFactory,
        queue: Queue,
        clock: Clock,
        metrics: Metrics,
        settings: Settings,
        inline: Callable[[str, Sequence[int]], Awaitable[object]] | None = None,
    ) -> None:
        self._inline = inline
        self._sessions = session_factory
        self._queue = queue
        self._clock = clock
        self._metrics = metrics
        self._settings = settings

    async def tick(self) -> RelayReport:
        """Publishes every due row and every row whose lease expired, batch by batch."""
        total = RelayReport()
        while True:
            expired = await self._publish_batch(self._expired_leases(), lease_expired=True)
            due = await self._publish_batch(self._due(), lease_expired=False)
            total = RelayReport(
                total.due + due.due,
                total.lease_expired + expired.lease_expired,
                total.failed + due.failed + expired.failed,
            )
            if due.failed or expired.failed:
                break
            if due.due + expired.lease_expired < self._settings.relay_batch_size:
                break
        return total

    async def run(self, stop: asyncio.Event) -> None:
        """Ticks every RELAY_INTERVAL until stop is set, backing off while ticks fail."""
        interval = self._settings.relay_interval.total_seconds()
        failures = 0
        while not stop.is_set():
            wait = interval
            try:
                failed = (await self.tick()).failed
                if not failed:
                    wait = await self._until_next_due(interval)
            except Exception:
                log.exception("relay_tick_failed")
                failed = 1
            failures = failures + 1 if failed else 0
            if failures:
                wait = backoff_delay(failures, interval, MAX_BACKOFF)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    async def _until_next_due(self, interval: float) -> float:
        """Seconds until the earliest waiting row falls due, at most interval.

        Rows deferred to the same instant (a quiet window ending, a retry) are published when
        they fall due rather than up to a whole interval later.
        """
        async with self._sessions() as session:
            earliest = await session.scalar(
                select(func.min(col(Notification.not_before))).where(
                    col(Notification.state) == State.PENDING.value
                )
            )
        if earliest is None:
            return interval
        delay = (earliest - self._clock.now()).total_seconds()
        # A row already due was left by this tick (another relay holds it): no hurry for it.
        return delay if 0 < delay < interval else interval

    async def release_all_leases(self) -> int:
        """Makes every QUEUED/SENDING row due for publishing again (the memory queue is gone)."""
        now = self._clock.now()
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(Notification)
                .where(col(Notification.state).in_(_LEASED))
                .values(lease_until=now)
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def _due(self) -> ColumnElement[bool]:
        return due_condition(self._clock.now())

    def _expired_leases(self) -> ColumnElement[bool]:
        now = self._clock.now()
        return and_(col(Notification.state).in_(_LEASED), col(Notification.lease_until) < now)

    async def _publish_batch(
        self, condition: ColumnElement[bool], *, lease_expired: bool
    ) -> RelayReport:
        rows = await self._mark_queued(condition)
        if not rows:
            return RelayReport()
        by_channel: dict[str, list[int]] = defaultdict(list)
        for notification_id, channel in rows:
            by_channel[channel].append(notification_id)
        failed = 0
        for channel, ids in by_channel.items():
            if await self._publish(channel, ids):
                self._metrics.record_published(channel, len(ids), lease_expired=lease_expired)
            else:
                failed += len(ids)
        published = len(rows) - failed
        if lease_expired:
            log.warning("relay_lease_expired", republished=published, failed=failed)
            return RelayReport(lease_expired=published, failed=failed)
        return RelayReport(due=published, failed=failed)

    async def _mark_queued(self, condition: ColumnElement[bool]) -> list[tuple[int, str]]:
        # Committed before publishing: a worker that gets the message at once finds the row
        # QUEUED. SKIP LOCKED keeps two relays (PostgreSQL) from taking the same rows.
        now = self._clock.now()
        due_ids = (
            select(col(Notification.id))
            .where(condition)
            .order_by(col(Notification.not_before))
            .limit(self._settings.relay_batch_size)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(Notification)
                .where(col(Notification.id).in_(due_ids))
                .values(
                    state=State.QUEUED.value,
                    lease_until=now + self._settings.queue_lease,
                    claim_token=None,
                    updated_at=now,
                )
                .returning(col(Notification.id), col(Notification.channel))
            )
            return id_channel_pairs(result)

    async def _publish(self, channel: str, ids: Sequence[int]) -> bool:
        try:
            await self._queue.publish(channel, [encode_message(i) for i in ids])
        except QueueUnavailable as exc:
            self._metrics.publish_failures.labels(channel=channel).inc(len(ids))
            self._metrics.broker_up.set(0)
            log.error(
                "relay_publish_failed",
                channel=channel,
                count=len(ids),
                error=str(exc),
                fallback="inline" if self._inline else "none",
            )
            if self._inline is not None:
                return await self._deliver_inline(self._inline, channel, ids)
            await self._back_to_pending(ids)
            return False
        self._metrics.broker_up.set(1)
        return True

    async def _deliver_inline(
        self,
        inline: Callable[[str, Sequence[int]], Awaitable[object]],
        channel: str,
        ids: Sequence[int],
    ) -> bool:
        # The rows are QUEUED and leased to us: deliver them here, as the seed system did when
        # its Redis queue was down. A failure leaves them leased; expiry publishes them again.
        try:
            await inline(channel, ids)
        except Exception:
            log.exception("relay_inline_dispatch_failed", channel=channel, count=len(ids))
            return False
        self._metrics.inline.labels(channel=channel).inc(len(ids))
        log.warning("relay_inline_dispatch", channel=channel, count=len(ids))
        return True

    async def _back_to_pending(self, ids: Sequence[int]) -> None:
        # Guarded by state: a row a worker already claimed from a partial publish stays claimed.
        now: datetime = self._clock.now()
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(Notification)
                .where(col(Notification.id).in_(ids), col(Notification.state) == State.QUEUED.value)
                .values(state=State.PENDING.value, lease_until=None, updated_at=now)
            )
