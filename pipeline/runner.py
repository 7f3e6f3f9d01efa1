"""Runs the long-lived processes (all-in-one, producer, worker) and the one-shot drain."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from pipeline.app import App
from pipeline.config import Settings
from pipeline.jobs import PRODUCER_JOB_ID, JobSpec, declared_jobs, last_success, run_job
from pipeline.listeners import CannotListen
from pipeline.producer import ProducerReport
from pipeline.queues.base import QueueUnavailable

if TYPE_CHECKING:
    from pipeline.api.server import ApiServer

log = structlog.get_logger("tocsin.runner")

# Seconds between progress reports of a drain.
_PROGRESS_EVERY = 0.2


@dataclass(frozen=True)
class DrainReport:
    """What a drain did: one producer pass, then relay and deliver until nothing is due."""

    produced: ProducerReport
    published: int
    delivered: int


async def drain(app: App, on_progress: Callable[[int, int], None] | None = None) -> DrainReport:
    """Produces, relays and delivers everything due now (retries included), then returns.

    on_progress, if given, is called a few times a second with (published, delivered) so far.
    """
    # Leases are left alone: a `tocsin run` may be working on this database right now, and
    # releasing its rows would send them twice. Rows stranded by a crash come back on expiry.
    relay = app.relay()
    worker = app.worker()
    produced = await app.producer().run()
    published = 0

    async def report(progress: Callable[[int, int], None]) -> None:
        while True:
            progress(published, worker.delivered)
            await asyncio.sleep(_PROGRESS_EVERY)

    reporter = asyncio.create_task(report(on_progress)) if on_progress else None
    try:
        while True:
            ticked = await relay.tick()
            published += ticked.published
            done = await worker.run_until_idle()
            if ticked.published == 0 and done == 0:
                return DrainReport(produced, published, worker.delivered)
    finally:
        if reporter is not None:
            reporter.cancel()


def install_signal_handlers(stop: asyncio.Event) -> None:
    """Makes SIGTERM and SIGINT set stop, so the process drains and exits 0."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, _on_signal, stop, sig)


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("shutdown_requested", signal=sig.name)
    stop.set()


async def serve_metrics(app: App) -> Any:
    """Serves /metrics on METRICS_ADDR:METRICS_PORT (0: any free port; -1: not at all)."""
    if app.settings.metrics_port < 0:
        return None
    from prometheus_async.aio.web import start_http_server

    addr, port = app.settings.metrics_addr, app.settings.metrics_port
    try:
        server = await start_http_server(addr=addr, port=port)
    except OSError:
        raise CannotListen.on("/metrics", addr, port, "METRICS_ADDR, METRICS_PORT") from None
    log.info("metrics_serving", url=server.url)
    return server


async def serve_api(app: App) -> ApiServer | None:
    """Serves the HTTP API on API_ADDR:API_PORT (0: any free port; -1: not at all)."""
    if app.settings.api_port < 0:
        return None
    from pipeline.api.server import ApiServer  # FastAPI loads only where the API is served

    server = ApiServer(app)
    await server.start()
    return server


async def _serve_until(stop: asyncio.Event, server: ApiServer) -> None:
    await stop.wait()
    await server.stop()


def _job_runners(app: App) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Maps each declared job id to what runs it in this process."""
    return {PRODUCER_JOB_ID: app.producer().run}


async def restore_job_metrics(app: App) -> None:
    """Loads the producer's last success from the database, so a restart is not "stale"."""
    finished = await last_success(app.sessions, PRODUCER_JOB_ID)
    if finished is not None:
        app.metrics.producer_last_success.set(finished.timestamp())
        app.metrics.job_last_run.labels(job=PRODUCER_JOB_ID).set(finished.timestamp())


def build_scheduler(
    settings: Settings,
    runners: Mapping[str, Callable[[], Awaitable[Any]]],
    wrap: Callable[[JobSpec, Callable[[], Awaitable[Any]]], Callable[[], Awaitable[Any]]],
) -> AsyncIOScheduler:
    """Returns a scheduler with every enabled job added (not started)."""
    scheduler = AsyncIOScheduler(timezone=UTC)
    for spec in declared_jobs(settings):
        if not spec.enabled:
            log.info("job_skipped", **spec.fields(), why="listed in DISABLED_JOBS")
            continue
        scheduler.add_job(
            wrap(spec, runners[spec.id]),
            CronTrigger.from_crontab(spec.cron, timezone=UTC),
            id=spec.id,
            name=spec.name,
            next_run_time=datetime.now(UTC),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=300,
        )
        log.info("job_registered", **spec.fields(), cron=spec.cron)
    return scheduler


def registered_job_ids(settings: Settings) -> set[str]:
    """Returns the ids a scheduler built from these settings registers (for `jobs check`)."""

    async def nothing() -> None:
        return None

    runners = {spec.id: nothing for spec in declared_jobs(settings)}
    scheduler = build_scheduler(settings, runners, lambda _spec, job: job)
    return {job.id for job in scheduler.get_jobs()}


def start_scheduler(app: App) -> AsyncIOScheduler:
    """Schedules every enabled job on its cron (UTC) and runs each once at start-up."""
    scheduler = build_scheduler(
        app.settings, _job_runners(app), lambda spec, job: _telemetered(app, spec, job)
    )
    scheduler.start()
    return scheduler


def _telemetered(
    app: App, spec: JobSpec, job: Callable[[], Awaitable[Any]]
) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        return await run_job(spec, job, metrics=app.metrics, sessions=app.sessions, clock=app.clock)

    return run


async def run_job_now(app: App, spec: JobSpec) -> Any:
    """Runs a declared job at once, with the telemetry of a scheduled run (log, metrics, row)."""
    return await _telemetered(app, spec, _job_runners(app)[spec.id])()


async def _connect_queue(app: App) -> None:
    # A broker that is down must not keep the processes from starting: the relay keeps rows in
    # the database (or delivers inline), the worker retries, and both connect once it is back.
    try:
        await app.queue.connect()
    except QueueUnavailable as exc:
        app.metrics.broker_up.set(0)
        log.warning("queue_unavailable_at_start", error=str(exc), retrying=True)


async def run_forever(
    app: App,
    *,
    producer: bool,
    worker_channels: Iterable[str] | None,
    concurrency: int | None,
    api: bool = False,
) -> None:
    """Runs the chosen roles until SIGTERM/SIGINT, then stops taking work and drains."""
    stop = asyncio.Event()
    install_signal_handlers(stop)
    await _connect_queue(app)
    server = await serve_metrics(app)
    api_server = await serve_api(app) if api else None
    tasks: list[Awaitable[None]] = []
    scheduler = None
    if producer:
        if app.settings.queue_scheme == "memory":
            await app.relay().release_all_leases()
        await restore_job_metrics(app)
        scheduler = start_scheduler(app)
        tasks.append(app.relay().run(stop))
        tasks.append(app.observer().run(stop, app.settings.observe_interval))
    if worker_channels is not None:
        tasks.append(app.worker(worker_channels, concurrency=concurrency).run(stop))
    if api_server is not None:
        tasks.append(_serve_until(stop, api_server))
    try:
        await asyncio.gather(*tasks)
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        if server is not None:
            await server.close()
        log.info("stopped")
