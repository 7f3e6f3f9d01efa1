"""Jobs are declared once, checked, scheduled when enabled, and leave telemetry on every run."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from structlog.testing import capture_logs

from pipeline.config import Settings
from pipeline.jobs import PRODUCER_JOB_ID, declared_jobs, last_success, problems, run_job
from pipeline.runner import registered_job_ids, restore_job_metrics
from tests.support.pipeline import START, open_app, sample


def test_the_producer_job_carries_the_seed_metadata() -> None:
    [job] = declared_jobs(Settings(_env_file=None, PRODUCER_CRON="*/5 * * * *"))
    assert (job.id, job.module, job.callable, job.cron, job.enabled) == (
        "send_alert_notifications",
        "pipeline.producer",
        "Producer.run",
        "*/5 * * * *",
        True,
    )
    assert job.owner and job.category and job.description
    assert problems(job) == []


def test_disabled_jobs_are_not_registered() -> None:
    settings = Settings(_env_file=None, DISABLED_JOBS=PRODUCER_JOB_ID)
    assert [j.enabled for j in declared_jobs(settings)] == [False]
    with capture_logs() as logs:
        assert registered_job_ids(settings) == set()
    assert [e["event"] for e in logs] == ["job_skipped"]
    assert registered_job_ids(Settings(_env_file=None)) == {PRODUCER_JOB_ID}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"module": "pipeline.nowhere"}, "cannot be imported"),
        ({"callable": "Producer.nothing"}, "cannot be imported"),
        ({"callable": "PRODUCER_JOB_ID"}, "not callable"),
        ({"cron": "every hour"}, "is invalid"),
    ],
)
def test_problems_name_what_is_wrong(change: dict[str, Any], expected: str) -> None:
    job = replace(declared_jobs(Settings(_env_file=None))[0], **change)
    if change.get("callable") == "PRODUCER_JOB_ID":
        job = replace(job, module="pipeline.jobs")
    assert any(expected in problem for problem in problems(job))


async def test_each_run_logs_counts_and_is_remembered(sqlite_settings: Settings) -> None:
    async with open_app(sqlite_settings) as app:
        [spec] = declared_jobs(app.settings)

        async def ok() -> str:
            return "done"

        async def broken() -> None:
            raise RuntimeError("database gone")

        with capture_logs() as logs:
            assert (
                await run_job(spec, ok, metrics=app.metrics, sessions=app.sessions, clock=app.clock)
                == "done"
            )
            with pytest.raises(RuntimeError):
                await run_job(
                    spec, broken, metrics=app.metrics, sessions=app.sessions, clock=app.clock
                )
        registry = app.metrics.registry
        assert sample(registry, "scheduler_job_success_total", job=spec.id) == 1
        assert sample(registry, "scheduler_job_failed_total", job=spec.id) == 1
        assert sample(registry, "scheduler_job_last_run_timestamp_seconds", job=spec.id) == (
            START.timestamp()
        )
        assert await last_success(app.sessions, spec.id) == START
    events = [(e["event"], e.get("job_id"), "duration_ms" in e, e.get("error")) for e in logs]
    assert events == [
        ("job_run_start", spec.id, False, None),
        ("job_run_success", spec.id, True, None),
        ("job_run_start", spec.id, False, None),
        ("job_run_failed", spec.id, True, "RuntimeError: database gone"),
    ]


async def test_last_success_survives_a_restart(sqlite_settings: Settings) -> None:
    async with open_app(sqlite_settings) as app:
        [spec] = declared_jobs(app.settings)

        async def ok() -> None:
            return None

        await run_job(spec, ok, metrics=app.metrics, sessions=app.sessions, clock=app.clock)
    async with open_app(sqlite_settings) as restarted:
        assert (
            sample(restarted.metrics.registry, "tocsin_producer_last_success_timestamp_seconds")
            == 0
        )
        await restore_job_metrics(restarted)
        assert (
            sample(restarted.metrics.registry, "tocsin_producer_last_success_timestamp_seconds")
            == START.timestamp()
        )
