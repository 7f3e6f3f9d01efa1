"""/api/v1/scheduler/...: the seed system's scheduler endpoints, computed as the CLI computes them.

status is `tocsin jobs check --json`, jobs is `tocsin jobs list --json`, metrics is
`tocsin metrics --json`: the same functions, so the same documents.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timedelta
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from pipeline.api.auth import Admin, Read
from pipeline.api.deps import tocsin
from pipeline.api.problems import problem, responses
from pipeline.app import App
from pipeline.durations import parse_duration
from pipeline.jobs import declared_jobs, job_checks, job_listing
from pipeline.runner import registered_job_ids, run_job_now
from pipeline.snapshot import Snapshot, snapshot
from pipeline.validation import InputError

log = structlog.get_logger("tocsin.api")
router = APIRouter(prefix="/scheduler", tags=["scheduler"])

WINDOW_MAX = timedelta(days=3660)


class JobCheck(BaseModel):
    """One job's check: importable, callable, valid cron, registered with the scheduler."""

    id: str
    enabled: bool
    ok: bool
    problems: list[str]
    next_run: datetime | None


class SchedulerStatus(BaseModel):
    """Whether every enabled job can run (`tocsin jobs check --json`)."""

    ok: bool
    jobs: list[JobCheck]


class Job(BaseModel):
    """A declared job with its metadata, next run and last success (`tocsin jobs list`)."""

    id: str
    name: str
    module: str
    callable: str
    cron: str
    owner: str
    category: str
    description: str
    enabled: bool
    next_run: datetime | None
    last_success: datetime | None


class JobRunResult(BaseModel):
    """A triggered run: its outcome, how long it took, and what the job reported."""

    job: str
    outcome: str
    duration_seconds: float
    result: dict[str, Any] | None = Field(description="The job's report, e.g. alerts expanded.")


def _same_as_cli(document: Any) -> JSONResponse:
    # jsonable_encoder writes datetimes with isoformat(), as the CLI's --json does.
    return JSONResponse(jsonable_encoder(document))


@router.get("/status", response_model=SchedulerStatus, responses=responses(401, 403))
async def scheduler_status(app: Annotated[App, Depends(tocsin)], _token: Read) -> JSONResponse:
    """Checks every enabled job: importable, callable, valid cron, registered (`jobs check`)."""
    settings = app.settings
    return _same_as_cli(job_checks(settings, registered_job_ids(settings), app.clock.now()))


@router.get("/jobs", response_model=list[Job], responses=responses(401, 403))
async def scheduler_jobs(app: Annotated[App, Depends(tocsin)], _token: Read) -> JSONResponse:
    """Lists every declared job with owner, cron, next run and last success (`jobs list`)."""
    return _same_as_cli(await job_listing(app.settings, app.sessions, app.clock.now()))


@router.post(
    "/jobs/{job_id}/trigger",
    response_model=JobRunResult,
    responses=responses(401, 403, 404, 409, 500),
)
async def scheduler_trigger(
    job_id: Annotated[str, Path(max_length=64, description="A declared job's id.")],
    app: Annotated[App, Depends(tocsin)],
    _token: Admin,
) -> JobRunResult | JSONResponse:
    """Runs a job now, as the scheduler would: logged, measured and recorded in job_runs.

    404 for a job that is not declared, 409 for one listed in DISABLED_JOBS. The answer comes
    when the run ends. A run may overlap a scheduled one: every job is idempotent.
    """
    spec = next((job for job in declared_jobs(app.settings) if job.id == job_id), None)
    if spec is None:
        raise HTTPException(404, f"no job {job_id!r}")
    if not spec.enabled:
        raise HTTPException(409, f"job {job_id!r} is disabled (DISABLED_JOBS)")
    started = time.perf_counter()
    try:
        result = await run_job_now(app, spec)
    except Exception as exc:  # logged and recorded by the job wrapper; the class name only here
        return problem(500, f"job {job_id!r} failed ({type(exc).__name__}): see the server log")
    report = jsonable_encoder(result) if dataclasses.is_dataclass(result) else None
    return JobRunResult(
        job=job_id,
        outcome="success",
        duration_seconds=round(time.perf_counter() - started, 4),
        result=report,
    )


@router.get("/metrics", response_model=Snapshot, responses=responses(401, 403, 422))
async def scheduler_metrics(
    app: Annotated[App, Depends(tocsin)],
    _token: Read,
    window: Annotated[
        str, Query(max_length=16, description="How far back to count, e.g. 24h.")
    ] = "24h",
) -> JSONResponse:
    """Per-job success/failure with p50/p95/p99 durations and per-channel counts, as
    `tocsin metrics --json` gives them.
    """
    try:
        span = parse_duration(window)
    except (ValueError, OverflowError) as exc:
        raise InputError(f"window: {exc}") from None
    if span > WINDOW_MAX:
        raise InputError(f"window must be at most {WINDOW_MAX.days}d")
    found = await snapshot(app.sessions, app.clock.now(), span, list(app.channels.names))
    return _same_as_cli(found)


@router.get(
    "/metrics/prometheus",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
        **responses(401, 403),
    },
)
async def scheduler_metrics_prometheus(
    app: Annotated[App, Depends(tocsin)], _token: Read
) -> Response:
    """This process's metrics registry in the Prometheus text format (as /metrics serves it)."""
    return Response(generate_latest(app.metrics.registry), media_type=CONTENT_TYPE_LATEST)
