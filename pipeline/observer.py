"""Reads the state of the pipeline from the database and the broker into gauges."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from contextlib import suppress
from datetime import datetime, timedelta

import structlog
from sqlalchemy import func, or_, select
from sqlmodel import col

from monitoring.metrics import Metrics
from pipeline.clock import Clock
from pipeline.db import SessionFactory
from pipeline.models import Notification, State
from pipeline.queues.base import Queue
from pipeline.relay import due_condition

log = structlog.get_logger("tocsin.observer")

_OPEN = (State.QUEUED.value, State.SENDING.value)


class Observer:
    """Sets backlog, oldest due age, dead-letter depth and queue gauges per channel."""

    def __init__(
        self,
        sessions: SessionFactory,
        queue: Queue,
        clock: Clock,
        metrics: Metrics,
        channels: Sequence[str],
    ) -> None:
        self._sessions = sessions
        self._queue = queue
        self._clock = clock
        self._metrics = metrics
        self._channels = channels

    async def observe(self) -> None:
        """Takes one reading of the database and the broker."""
        await self._observe_rows()
        self._metrics.observed_at.set(self._clock.now().timestamp())
        await self._observe_queue()

    async def run(self, stop: asyncio.Event, interval: timedelta) -> None:
        """Observes every interval until stop is set; a failed reading is logged, never fatal."""
        while not stop.is_set():
            try:
                await self.observe()
            except Exception:
                log.exception("observe_failed")
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval.total_seconds())

    async def _observe_rows(self) -> None:
        now = self._clock.now()
        due = due_condition(now)
        statement = (
            select(
                col(Notification.channel),
                col(Notification.state),
                func.count(),
                func.min(col(Notification.not_before)),
            )
            .where(or_(due, col(Notification.state).in_([*_OPEN, State.DEAD.value])))
            .group_by(col(Notification.channel), col(Notification.state))
        )
        backlog: dict[str, int] = defaultdict(int)
        oldest: dict[str, datetime] = {}
        dead: dict[str, int] = defaultdict(int)
        async with self._sessions() as session:
            for channel, state, count, first in await session.execute(statement):
                if state == State.DEAD.value:
                    dead[channel] += count
                    continue
                backlog[channel] += count
                if first is not None and (channel not in oldest or first < oldest[channel]):
                    oldest[channel] = first
        for channel in self._channels:
            self._metrics.backlog.labels(channel=channel).set(backlog[channel])
            self._metrics.dead_depth.labels(channel=channel).set(dead[channel])
            age = (now - oldest[channel]).total_seconds() if channel in oldest else 0.0
            self._metrics.oldest_due.labels(channel=channel).set(max(age, 0.0))

    async def _observe_queue(self) -> None:
        try:
            stats = await self._queue.stats(list(self._channels))
        except Exception as exc:
            self._metrics.broker_up.set(0)
            log.warning("broker_stats_failed", error=type(exc).__name__)
            return
        self._metrics.broker_up.set(1)
        for item in stats:
            self._metrics.queue_depth.labels(channel=item.channel).set(item.depth)
            self._metrics.queue_in_flight.labels(channel=item.channel).set(item.in_flight)
