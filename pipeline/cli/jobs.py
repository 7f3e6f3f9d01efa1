"""`tocsin jobs ...` and `tocsin metrics`: scheduled jobs and a metrics snapshot."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from apscheduler.triggers.cron import CronTrigger

from channels.registry import CHANNEL_NAMES
from pipeline.app import App
from pipeline.cli.context import load_settings, run_async
from pipeline.cli.output import emit, fail, stdout
from pipeline.durations import parse_duration
from pipeline.jobs import declared_jobs, last_success, problems
from pipeline.snapshot import Snapshot, snapshot

jobs = typer.Typer(help="Scheduled jobs: what is declared, and whether it can run.")
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def _next_run(cron: str) -> datetime | None:
    try:
        trigger = CronTrigger.from_crontab(cron, timezone=UTC)
    except ValueError:
        return None
    fire: datetime | None = trigger.get_next_fire_time(None, datetime.now(UTC))
    return fire


@jobs.command("list")
def jobs_list(as_json: Json = False) -> None:
    """Lists every declared job with its owner, cron, next run and last success."""
    settings = load_settings()

    async def work(app: App) -> list[dict[str, object]]:
        return [
            {
                **spec.__dict__,
                "next_run": _next_run(spec.cron) if spec.enabled else None,
                "last_success": await last_success(app.sessions, spec.id),
            }
            for spec in declared_jobs(settings)
        ]

    emit(
        run_async(work, app_settings=settings),
        as_json=as_json,
        title="jobs",
        columns=("id", "name", "owner", "category", "cron", "enabled", "next_run", "last_success"),
    )


@jobs.command("check")
def jobs_check(as_json: Json = False) -> None:
    """Checks every enabled job: importable, callable, valid cron, registered; exits 1 if not."""
    from pipeline.runner import registered_job_ids

    settings = load_settings()
    registered = registered_job_ids(settings)
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
                "next_run": _next_run(spec.cron) if spec.enabled else None,
            }
        )
    if as_json:
        emit({"ok": all(r["ok"] for r in report), "jobs": report}, as_json=True)
    else:
        for row in report:
            state = "ok" if row["ok"] else "FAILED"
            stdout.print(
                f"{row['id']}: {state}" + ("" if row["enabled"] else " (disabled)"), highlight=False
            )
            for problem in row["problems"]:  # type: ignore[attr-defined]
                stdout.print(f"  - {problem}", highlight=False, markup=False)
    if not all(r["ok"] for r in report):
        raise typer.Exit(1)


def metrics(
    window: Annotated[str, typer.Option(help="How far back to count, e.g. 24h.")] = "24h",
    as_json: Json = False,
) -> None:
    """Prints per-job success/failure with p50/p95/p99 durations and per-channel counts."""
    try:
        span = parse_duration(window)
    except ValueError as exc:
        fail(f"--window: {exc}")
        return

    async def work(app: App) -> Snapshot:
        return await snapshot(app.sessions, app.clock.now(), span, list(CHANNEL_NAMES))

    document = run_async(work)
    if as_json:
        emit(document, as_json=True)
        return
    emit(
        document.jobs,
        as_json=False,
        title=f"jobs (last {window})",
        columns=(
            "job",
            "success_count",
            "failure_count",
            "p50_seconds",
            "p95_seconds",
            "p99_seconds",
            "last_run",
            "last_outcome",
        ),
    )
    emit(
        document.notification_channels,
        as_json=False,
        title=f"channels (last {window})",
        columns=("channel", "success_count", "failure_count", "rate_limited_count", "states"),
    )
