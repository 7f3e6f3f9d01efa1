"""Wires one process's parts together from settings: database, queue, channels, stages, metrics.

This is the composition root: the one place that reads the channel registry. Everything below
is handed the ChannelSet it works with.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from channels.base import Channel, ChannelContext
from channels.registry import CHANNELS
from monitoring.metrics import Metrics
from pipeline.alerts import AlertInput, Ingested, ingest_alert
from pipeline.channel_set import ChannelSet
from pipeline.clock import Clock, SystemClock
from pipeline.config import DispatchFallback, Settings
from pipeline.db import SessionFactory, create_engine, session_factory
from pipeline.jobs import declared_jobs
from pipeline.observer import Observer
from pipeline.producer import Producer
from pipeline.queues import Queue, open_queue
from pipeline.redact import Redactor
from pipeline.relay import Relay
from pipeline.secret_url import secret_values
from workers.retry import RetryPolicy
from workers.worker import Worker, WorkerConfig


def registered_channels() -> ChannelSet:
    """Every registered channel with its settings from the environment (ValidationError if bad)."""
    return ChannelSet.load(CHANNELS)


def secrets_of(settings: Settings, channels: ChannelSet | None = None) -> list[str]:
    """Returns every configured secret value, for redaction (found by type, not by name)."""
    return secret_values(settings) + (channels.secrets() if channels is not None else [])


@dataclass
class App:
    """One process's shared parts; close it when done."""

    settings: Settings
    channels: ChannelSet
    clock: Clock
    engine: AsyncEngine
    sessions: SessionFactory
    queue: Queue
    metrics: Metrics
    policy: RetryPolicy
    redact: Redactor
    _built: list[Channel[Any]] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        channels: ChannelSet | None = None,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
        queue: Queue | None = None,
        policy: RetryPolicy | None = None,
    ) -> App:
        """Builds the parts (nothing connects until used); registry defaults to a private one.

        channels default to every registered channel, configured from the environment.
        """
        channels = channels or registered_channels()
        engine = create_engine(settings)
        metrics = Metrics(registry or CollectorRegistry())
        metrics.initialize(channels.reasons(), [job.id for job in declared_jobs(settings)])
        return cls(
            settings=settings,
            channels=channels,
            clock=clock or SystemClock(),
            engine=engine,
            sessions=session_factory(engine),
            queue=queue or open_queue(settings, channels.names),
            metrics=metrics,
            policy=policy or RetryPolicy.from_settings(settings),
            redact=Redactor(secrets_of(settings, channels)),
        )

    def producer(self) -> Producer:
        """Returns the producer over every registered channel."""
        return Producer(
            self.sessions,
            self.clock,
            self.metrics,
            self.channels,
            self.settings.producer_batch_size,
            self.settings.dedup_window,
        )

    async def ingest(
        self,
        alerts: Sequence[tuple[AlertInput, str | None]],
        *,
        key_retention: timedelta | None = None,
    ) -> list[Ingested]:
        """Stores alerts (each with an optional key naming it) and expands the new ones now.

        A key names its alert for key_retention (default IDEMPOTENCY_RETENTION).

        Whatever the door (API, Alertmanager, CLI), an alert is durable when this returns and
        its notifications exist, so a critical alert goes out within seconds, not at the next
        hourly pass (which stays as the sweep for alerts written by other means).
        """
        results = [
            await ingest_alert(
                self.sessions,
                self.clock,
                data,
                max_recipients=self.settings.max_recipients_per_alert,
                key=key,
                key_retention=key_retention or self.settings.idempotency_retention,
            )
            for data, key in alerts
        ]
        created = [r.alert.id for r in results if r.created and r.alert.id is not None]
        if created:
            await self.producer().produce(created)
        return results

    def observer(self) -> Observer:
        """Returns the observer that keeps the backlog and queue gauges current."""
        return Observer(self.sessions, self.queue, self.clock, self.metrics, self.channels.names)

    def relay(self) -> Relay:
        """Returns the relay; with DISPATCH_FALLBACK=inline it delivers while the broker is down."""
        inline = None
        if self.settings.dispatch_fallback is DispatchFallback.INLINE:
            inline = self.worker().deliver
        return Relay(self.sessions, self.queue, self.clock, self.metrics, self.settings, inline)

    def worker(
        self,
        channels: Iterable[str] | None = None,
        *,
        concurrency: int | None = None,
    ) -> Worker:
        """Returns a worker for the named channels (all by default)."""
        names = list(channels or self.channels.names)
        context = ChannelContext(self.sessions, self.clock, send_timeout=self.settings.send_timeout)
        built = self.channels.build(context, names)
        self._built.extend(built.values())
        config = WorkerConfig(
            name=f"{socket.gethostname()}:{os.getpid()}",
            concurrency=concurrency or self.settings.worker_concurrency,
            batch_size=self.settings.worker_batch_size,
            send_timeout=self.settings.send_timeout,
            send_lease=self.settings.send_lease,
            shutdown_grace=self.settings.shutdown_grace,
            idle_timeout=self._idle_wait(),
        )
        return Worker(
            sessions=self.sessions,
            queue=self.queue,
            channels=built,
            catalog=self.channels,
            clock=self.clock,
            policy=self.policy,
            metrics=self.metrics,
            redact=self.redact,
            config=config,
        )

    def _idle_wait(self) -> float:
        # In-process messages are there at once; a broker may need a moment to deliver.
        return 0.0 if self.settings.queue_scheme == "memory" else 1.0

    async def aclose(self) -> None:
        """Closes channels, the queue and the database engine."""
        for channel in self._built:
            await channel.aclose()
        await self.queue.close()
        await self.engine.dispose()
