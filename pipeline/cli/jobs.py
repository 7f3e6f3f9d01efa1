"""`tocsin jobs ...` and `tocsin metrics`: scheduled jobs and a metrics snapshot."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from pipeline.app import App
from pipeline.cli.context import load_settings, run_async
from pipeline.cli.output import emit, fail, stdout
from pipeline.durations import parse_duration
from pipeline.jobs import job_checks, job_listing
from pipeline.snapshot import Snapshot, snapshot

jobs = typer.Typer(help="Scheduled jobs: what is declared, and whether it can run.")
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


@jobs.command("list")
def jobs_list(as_json: Json = False) -> None:
    """Lists every declared job with its owner, cron, next run and last success."""
    settings = load_settings()

    async def work(app: App) -> list[dict[str, object]]:
        return await job_listing(settings, app.sessions, datetime.now(UTC))

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
    checked = job_checks(settings, registered_job_ids(settings), datetime.now(UTC))
    if as_json:
        emit(checked, as_json=True)
    else:
        for row in checked["jobs"]:
            state = "ok" if row["ok"] else "FAILED"
            stdout.print(
                f"{row['id']}: {state}" + ("" if row["enabled"] else " (disabled)"), highlight=False
            )
            for problem in row["problems"]:
                stdout.print(f"  - {problem}", highlight=False, markup=False)
    if not checked["ok"]:
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
        return await snapshot(app.sessions, app.clock.now(), span, list(app.channels.names))

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
