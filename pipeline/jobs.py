"""Scheduled jobs declared in one place, checks on them, and telemetry for every run."""

from __future__ import annotations

import importlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select
from sqlmodel import col

from monitoring.metrics import Metrics
from pipeline.clock import Clock
from pipeline.config import Settings
from pipeline.db import SessionFactory
from pipeline.models import JobRun

log = structlog.get_logger("tocsin.jobs")

PRODUCER_JOB_ID = "send_alert_notifications"


@dataclass(frozen=True)
class JobSpec:
    """Metadata of one scheduled job, as the seed system's scheduler_config declared it."""

    id: str
    name: str
    module: str
    callable: str
    cron: str
    owner: str
    category: str
    description: str
    enabled: bool = True

    def fields(self) -> dict[str, str]:
        """Returns the fields every job log event carries."""
        return {
            "job_id": self.id,
            "job_name": self.name,
            "owner": self.owner,
            "category": self.category,
        }


def declared_jobs(settings: Settings) -> list[JobSpec]:
    """Returns every job Tocsin schedules, with DISABLED_JOBS applied."""
    jobs = [
        JobSpec(
            id=PRODUCER_JOB_ID,
            name="Send alert notifications",
            module="pipeline.producer",
            callable="Producer.run",
            cron=settings.producer_cron,
            owner="tocsin",
            category="notifications",
            description="Expands unprocessed alerts into per-recipient, per-channel notifications.",
        ),
    ]
    disabled = {name.strip() for name in settings.disabled_jobs.split(",") if name.strip()}
    return [replace(job, enabled=job.id not in disabled) for job in jobs]


def resolve(spec: JobSpec) -> Any:
    """Imports spec.module and returns spec.callable from it (a dotted path is followed)."""
    target: Any = importlib.import_module(spec.module)
    for part in spec.callable.split("."):
        target = getattr(target, part)
    return target


def problems(spec: JobSpec) -> list[str]:
    """Returns what is wrong with a job's declaration: not importable, not callable, bad cron."""
    from apscheduler.triggers.cron import CronTrigger

    found: list[str] = []
    try:
        if not callable(resolve(spec)):
            found.append(f"{spec.module}:{spec.callable} is not callable")
    except (ImportError, AttributeError) as exc:
        found.append(f"{spec.module}:{spec.callable} cannot be imported: {exc}")
    try:
        CronTrigger.from_crontab(spec.cron)
    except ValueError as exc:
        found.append(f"cron {spec.cron!r} is invalid: {exc}")
    return found


def next_run(cron: str, now: datetime) -> datetime | None:
    """Returns when a cron expression (UTC) next fires after now, or None if it is invalid."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        trigger = CronTrigger.from_crontab(cron, timezone=UTC)
    except ValueError:
        return None
    fire: datetime | None = trigger.get_next_fire_time(None, now)
    return fire


async def job_listing(
    settings: Settings, sessions: SessionFactory, now: datetime
) -> list[dict[str, object]]:
    """Returns every declared job with its next run and last success (`tocsin jobs list`)."""
    return [
        {
            **spec.__dict__,
            "next_run": next_run(spec.cron, now) if spec.enabled else None,
            "last_success": await last_success(sessions, spec.id),
        }
        for spec in declared_jobs(settings)
    ]


def job_checks(settings: Settings, registered: set[str], now: datetime) -> dict[str, Any]:
    """Checks every enabled job: importable, callable, valid cron, among registered (the ids a
    scheduler registers); returns {"ok": bool, "jobs": [...]} (`tocsin jobs check`).
    """
    report = []
    for spec in declared_jobs(settings):
        found = problems(spec) if spec.enabled else []
        if spec.enabled and spec.id not in registered:
            found.append("not registered with the scheduler")
        report.append(
            {
                "id": spec.id,
                "enabled": spec.enabled,
                "ok": not found,
                "problems": found,
                "next_run": next_run(spec.cron, now) if spec.enabled else None,
            }
        )
    return {"ok": all(row["ok"] for row in report), "jobs": report}


async def last_success(sessions: SessionFactory, job_id: str) -> datetime | None:
    """Returns when a job last finished successfully, from the job_runs table."""
    async with sessions() as session:
        result = await session.execute(
            select(col(JobRun.finished_at))
            .where(col(JobRun.job_id) == job_id, col(JobRun.outcome) == "success")
            .order_by(col(JobRun.finished_at).desc())
            .limit(1)
        )
        return result.scalar_one_or_none()


async def run_job(
    spec: JobSpec,
    job: Callable[[], Awaitable[Any]],
    *,
    metrics: Metrics,
    sessions: SessionFactory,
    clock: Clock,
) -> Any:
    """Runs one job with start/success/failure log events, metrics and a job_runs row."""
    started_at = clock.now()
    t0 = time.perf_counter()
    log.info("job_run_start", **spec.fields())
    error: str | None = None
    try:
        return await job()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
        log.exception(
            "job_run_failed",
            **spec.fields(),
            error=error,
            duration_ms=round((time.perf_counter() - t0) * 1000, 1),
        )
        raise
    finally:
        seconds = time.perf_counter() - t0
        finished_at = clock.now()
        metrics.record_job_run(spec.id, error is None, seconds, finished_at.timestamp())
        if error is None:
            log.info("job_run_success", **spec.fields(), duration_ms=round(seconds * 1000, 1))
        await _remember(sessions, spec.id, started_at, finished_at, error)


async def _remember(
    sessions: SessionFactory,
    job_id: str,
    started_at: datetime,
    finished_at: datetime,
    error: str | None,
) -> None:
    try:
        async with sessions() as session, session.begin():
            session.add(
                JobRun(
                    job_id=job_id,
                    started_at=started_at,
                    finished_at=finished_at,
                    outcome="success" if error is None else "failure",
                    error=error,
                )
            )
    except Exception:
        log.exception("job_run_not_recorded", job_id=job_id)
