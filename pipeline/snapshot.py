"""A JSON snapshot of job runs and per-channel delivery counts, read from the database."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlmodel import col

from pipeline.db import SessionFactory
from pipeline.models import DeliveryAttempt, JobRun, Notification, Outcome

FAILURES = (Outcome.TRANSIENT.value, Outcome.PERMANENT.value)


@dataclass
class JobStats:
    """Runs of one job in the window."""

    job: str
    success_count: int = 0
    failure_count: int = 0
    p50_seconds: float | None = None
    p95_seconds: float | None = None
    p99_seconds: float | None = None
    last_run: datetime | None = None
    last_outcome: str | None = None


@dataclass
class ChannelStats:
    """Delivery attempts of one channel in the window, and its rows by state (all time)."""

    channel: str
    success_count: int = 0
    failure_count: int = 0
    rate_limited_count: int = 0
    states: dict[str, int] = field(default_factory=dict)


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Returns the nearest-rank percentile of already sorted values, or None when empty."""
    if not sorted_values:
        return None
    rank = max(1, round(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def job_stats(sessions: SessionFactory, since: datetime) -> list[JobStats]:
    """Returns per-job counts and duration percentiles for runs that finished since."""
    async with sessions() as session:
        runs = (
            await session.execute(
                select(JobRun).where(col(JobRun.finished_at) >= since).order_by(col(JobRun.id))
            )
        ).scalars()
        by_job: dict[str, list[JobRun]] = defaultdict(list)
        for run in runs:
            by_job[run.job_id].append(run)
    return [_job(job_id, job_runs) for job_id, job_runs in sorted(by_job.items())]


def _job(job_id: str, runs: list[JobRun]) -> JobStats:
    durations = sorted((r.finished_at - r.started_at).total_seconds() for r in runs)
    return JobStats(
        job=job_id,
        success_count=sum(r.outcome == "success" for r in runs),
        failure_count=sum(r.outcome != "success" for r in runs),
        p50_seconds=percentile(durations, 0.50),
        p95_seconds=percentile(durations, 0.95),
        p99_seconds=percentile(durations, 0.99),
        last_run=runs[-1].finished_at,
        last_outcome=runs[-1].outcome,
    )


async def channel_stats(
    sessions: SessionFactory, since: datetime, channels: list[str]
) -> list[ChannelStats]:
    """Returns per-channel attempt counts since `since` and row counts by state."""
    stats = {name: ChannelStats(name) for name in channels}
    async with sessions() as session:
        attempts = await session.execute(
            select(col(DeliveryAttempt.channel), col(DeliveryAttempt.outcome), func.count())
            .where(col(DeliveryAttempt.started_at) >= since)
            .group_by(col(DeliveryAttempt.channel), col(DeliveryAttempt.outcome))
        )
        for channel, outcome, count in attempts:
            _count(stats.setdefault(channel, ChannelStats(channel)), outcome, count)
        states = await session.execute(
            select(col(Notification.channel), col(Notification.state), func.count()).group_by(
                col(Notification.channel), col(Notification.state)
            )
        )
        for channel, state, count in states:
            stats.setdefault(channel, ChannelStats(channel)).states[state] = count
    return list(stats.values())


def _count(stats: ChannelStats, outcome: str, count: int) -> None:
    if outcome == Outcome.SENT.value:
        stats.success_count += count
    elif outcome in FAILURES:
        stats.failure_count += count
    elif outcome == Outcome.RATE_LIMITED.value:
        stats.rate_limited_count += count


@dataclass(frozen=True)
class Snapshot:
    """The seed system's /scheduler/metrics document."""

    generated_at: datetime
    window_seconds: float
    jobs: list[JobStats]
    notification_channels: list[ChannelStats]


async def snapshot(
    sessions: SessionFactory, now: datetime, window: timedelta, channels: list[str]
) -> Snapshot:
    """Returns job and per-channel figures for the window ending now, from the database."""
    since = now - window
    return Snapshot(
        generated_at=now,
        window_seconds=window.total_seconds(),
        jobs=await job_stats(sessions, since),
        notification_channels=await channel_stats(sessions, since, channels),
    )
