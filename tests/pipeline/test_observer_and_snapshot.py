"""The observer turns rows and queue stats into gauges; the snapshot summarises runs and sends."""

from __future__ import annotations

from datetime import timedelta

from pipeline.clock import ManualClock
from pipeline.config import Settings
from pipeline.jobs import declared_jobs, run_job
from pipeline.snapshot import percentile, snapshot
from tests.support.pipeline import START, add_alert, add_user, cycle, open_app, sample


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.95), percentile(values, 0.99)) == (
        50.0,
        95.0,
        99.0,
    )
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.99) == 3.0


async def test_gauges_show_backlog_oldest_due_and_dead_letters(db_settings: Settings) -> None:
    clock = ManualClock(START)
    async with open_app(db_settings, clock) as app:
        await add_user(app, "alice", email="alice@example.com", channels="system,email")
        await add_alert(app, ["alice"])
        await add_alert(app, ["alice"])
        await app.producer().run()
        clock.advance(timedelta(minutes=7))
        await app.relay().tick()  # 2 system + 2 email rows QUEUED, not yet delivered
        await app.observer().observe()
        registry = app.metrics.registry
        assert sample(registry, "tocsin_backlog", channel="system") == 2
        assert sample(registry, "tocsin_oldest_due_age_seconds", channel="email") == 420
        assert sample(registry, "tocsin_queue_depth", channel="email") == 2
        assert sample(registry, "tocsin_broker_up") == 1
        assert (
            sample(registry, "tocsin_observer_last_success_timestamp_seconds")
            == (START + timedelta(minutes=7)).timestamp()
        )
        await app.worker().run_until_idle()  # e-mail is not configured: both DEAD
        await app.observer().observe()
        assert sample(registry, "tocsin_backlog", channel="email") == 0
        assert sample(registry, "tocsin_oldest_due_age_seconds", channel="email") == 0
        assert sample(registry, "tocsin_dead_letters", channel="email") == 2
        assert sample(registry, "tocsin_queue_depth", channel="email") == 0


async def test_snapshot_counts_job_runs_and_channel_outcomes(sqlite_settings: Settings) -> None:
    async with open_app(sqlite_settings) as app:
        await add_user(app, "alice", email="alice@example.com", channels="system,email")
        await add_alert(app, ["alice"])
        [spec] = declared_jobs(app.settings)
        await run_job(
            spec, app.producer().run, metrics=app.metrics, sessions=app.sessions, clock=app.clock
        )
        await cycle(app)
        document = await snapshot(
            app.sessions, app.clock.now(), timedelta(hours=1), ["system", "email", "wecom"]
        )
    [job] = document.jobs
    assert (job.job, job.success_count, job.failure_count, job.last_outcome) == (
        spec.id,
        1,
        0,
        "success",
    )
    channels = {c.channel: c for c in document.notification_channels}
    assert (channels["system"].success_count, channels["system"].states) == (1, {"SENT": 1})
    assert (channels["email"].failure_count, channels["email"].states) == (1, {"DEAD": 1})
    assert channels["wecom"].states == {"SUPPRESSED": 1}
