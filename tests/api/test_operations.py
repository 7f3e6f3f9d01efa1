"""Operations over HTTP through the real server: notifications, dead letters and their audited
replay, the audit log, and the seed system's scheduler endpoints (the CLI's documents).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlmodel import col

from pipeline.config import Settings
from pipeline.jobs import PRODUCER_JOB_ID
from pipeline.models import Notification
from tests.integration.cli import base_env, tocsin
from tests.support.api import Api, running_api
from tests.support.channels import pinned
from tests.support.pipeline import add_alert, add_user, cycle
from tests.support.smtp_server import SmtpSink
from tests.support.wecom_server import WeComRobot

PROBLEM = "application/problem+json"
DEAD = 3


def assert_problem(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


@pytest.fixture
async def ops(sqlite_settings: Settings, smtp_server: SmtpSink) -> AsyncIterator[Api]:
    """The API over DEAD e-mail notifications (550) for erin, and one PENDING system one."""
    async with running_api(sqlite_settings, channels=pinned(smtp=smtp_server)) as api:
        await add_user(api.app, "erin", email="erin@example.com", channels="email")
        await add_user(api.app, "sam", channels="system")
        for number in range(DEAD):
            await add_alert(api.app, ["erin"], title=f"Disk {number}")
        await api.app.producer().run()
        smtp_server.respond_with(550, "5.1.1 mailbox unavailable")
        await cycle(api.app)
        smtp_server.reset()
        await add_alert(api.app, ["sam"], title="Later")
        await api.app.producer().run()
        yield api


async def states(api: Api) -> dict[int, str]:
    async with api.app.sessions() as session:
        rows = await session.execute(select(col(Notification.id), col(Notification.state)))
        return {int(notification_id or 0): state for notification_id, state in rows}


async def dead_ids(api: Api) -> list[int]:
    return sorted(i for i, state in (await states(api)).items() if state == "DEAD")


async def test_notifications_are_listed_with_the_cli_filters_and_paged(ops: Api) -> None:
    async with ops.client() as client:
        everything = (await client.get("/api/v1/notifications")).json()
        dead = (await client.get("/api/v1/notifications", params={"status": "dead"})).json()
        two_states = await client.get(
            "/api/v1/notifications", params=[("status", "DEAD"), ("status", "PENDING")]
        )
        by_channel = await client.get("/api/v1/notifications", params={"channel": "system"})
        by_reason = await client.get("/api/v1/notifications", params={"reason": "smtp_5xx"})
        by_alert = await client.get("/api/v1/notifications", params={"alert": 1})
        recent = await client.get("/api/v1/notifications", params={"since": "1h"})
        future = await client.get("/api/v1/notifications", params={"since": "2099-01-01T00:00"})
        first = (await client.get("/api/v1/notifications", params={"limit": 8})).json()
        rest = (
            await client.get(
                "/api/v1/notifications", params={"limit": 4, "cursor": first["next_cursor"]}
            )
        ).json()
    # Per alert and recipient one row per channel: the channels they opted out of SUPPRESSED.
    rows = 3 * (DEAD + 1)
    assert len(everything["items"]) == rows
    assert everything["next_cursor"] is None
    assert [n["state"] for n in dead["items"]] == ["DEAD"] * DEAD
    assert dead["items"][0]["recipient"] == "erin"
    assert dead["items"][0]["reason"] == "smtp_5xx"
    assert len(two_states.json()["items"]) == DEAD + 1
    assert [n["state"] for n in by_channel.json()["items"]] == ["SUPPRESSED"] * DEAD + ["PENDING"]
    assert len(by_reason.json()["items"]) == DEAD
    assert {n["alert_id"] for n in by_alert.json()["items"]} == {1}
    assert len(recent.json()["items"]) == rows
    assert future.json()["items"] == []
    assert [n["id"] for n in first["items"] + rest["items"]] == [
        n["id"] for n in everything["items"]
    ]
    assert rest["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"status": "LOST"}, ("unknown status 'LOST'",)),
        ({"channel": "pager"}, ("unknown channel 'pager'",)),
        ({"reason": "bad_luck"}, ("unknown reason",)),
        ({"since": "yesterday"}, ("since must be an ISO time",)),
        ({"cursor": "abc"}, ("cursor",)),
        ({"alert": 2**31}, ("alert",)),
        ({"limit": 0}, ("limit",)),
    ],
)
async def test_bad_filters_are_422(api: Api, params: dict[str, Any], words: tuple[str]) -> None:
    async with api.client() as client:
        assert_problem(await client.get("/api/v1/notifications", params=params), 422, *words)


async def test_one_notification_comes_with_its_attempts(ops: Api) -> None:
    first = (await dead_ids(ops))[0]
    async with ops.client() as client:
        shown = await client.get(f"/api/v1/notifications/{first}")
        missing = await client.get("/api/v1/notifications/99999")
        out_of_range = await client.get(f"/api/v1/notifications/{2**31}")
    body = shown.json()
    assert (body["id"], body["state"], body["attempts"]) == (first, "DEAD", 1)
    (attempt,) = body["attempt_log"]
    assert (attempt["attempt"], attempt["outcome"], attempt["reason"]) == (
        1,
        "permanent",
        "smtp_5xx",
    )
    assert_problem(missing, 404, "99999")
    assert_problem(out_of_range, 422)


async def test_the_dlq_lists_dead_letters_only(ops: Api) -> None:
    async with ops.client() as client:
        dlq = (await client.get("/api/v1/dlq")).json()
        by_channel = (await client.get("/api/v1/dlq", params={"channel": "system"})).json()
    assert [n["id"] for n in dlq["items"]] == await dead_ids(ops)
    assert by_channel["items"] == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, ("say which dead letters",)),
        ({"ids": [1], "all": True}, ("either ids or filters",)),
        ({"ids": [1], "channel": "email"}, ("either ids or filters",)),
        ({"all": True}, ('"confirm": true',)),
        ({"all": True, "confirm": True, "rate": "fast"}, ("rate",)),
        ({"channel": "pager"}, ("unknown channel",)),
        ({"ids": [0]}, ("ids",)),
        ({"all": True, "confirm": True, "force": True}, ("force",)),
    ],
)
async def test_a_replay_without_a_clear_selection_is_422_and_changes_nothing(
    ops: Api, body: dict[str, Any], words: tuple[str]
) -> None:
    before = await states(ops)
    async with ops.client() as client:
        refused = await client.post("/api/v1/dlq/replay", json=body)
        audit = (await client.get("/api/v1/audit")).json()
    assert_problem(refused, 422, *words)
    assert await states(ops) == before
    assert audit["items"] == []


async def test_a_replay_refuses_rows_that_are_not_dead(ops: Api) -> None:
    before = await states(ops)
    pending = next(i for i, state in before.items() if state == "PENDING")
    async with ops.client() as client:
        not_dead = await client.post(
            "/api/v1/dlq/replay", json={"ids": [*await dead_ids(ops), pending]}
        )
        unknown = await client.post("/api/v1/dlq/replay", json={"ids": [99999]})
    assert_problem(not_dead, 409, f"notification {pending} is PENDING, not DEAD")
    assert_problem(unknown, 409, "no notification 99999")
    assert await states(ops) == before


async def test_a_dry_run_says_what_it_would_do_and_does_nothing(ops: Api) -> None:
    before = await states(ops)
    async with ops.client() as client:
        dry = await client.post("/api/v1/dlq/replay", json={"all": True, "dry_run": True})
        audit = (await client.get("/api/v1/audit")).json()
    assert dry.json() == {
        "action": "replayed",
        "ids": await dead_ids(ops),
        "by_channel": {"email": DEAD},
        "dry_run": True,
    }
    assert await states(ops) == before
    assert audit["items"] == []


async def test_a_replay_is_paced_and_audited_under_the_tokens_name(ops: Api) -> None:
    ids = await dead_ids(ops)
    async with ops.client() as client:
        one = await client.post("/api/v1/dlq/replay", json={"ids": ids[:1]})
        rest = await client.post(
            "/api/v1/dlq/replay",
            json={"channel": "email", "reason": "smtp_5xx", "rate": "120/m"},
        )
        nothing_left = await client.post("/api/v1/dlq/replay", json={"all": True, "confirm": True})
        audit = (await client.get("/api/v1/audit")).json()
        newest = (await client.get("/api/v1/audit", params={"limit": 1})).json()
        older = (
            await client.get("/api/v1/audit", params={"limit": 1, "cursor": newest["next_cursor"]})
        ).json()
    assert one.json() == {
        "action": "replayed",
        "ids": ids[:1],
        "by_channel": {"email": 1},
        "dry_run": False,
    }
    assert rest.json()["ids"] == ids[1:]
    assert nothing_left.json()["ids"] == []
    now = await states(ops)
    assert [now[i] for i in ids] == ["PENDING"] * DEAD
    # A replay that matched nothing changed nothing, so it has no record (as in the CLI).
    second, first = audit["items"]
    assert {entry["actor"] for entry in audit["items"]} == {"token:test-admin"}
    assert (first["action"], first["ids"], first["selection"]) == (
        "replay",
        ids[:1],
        {"ids": ids[:1], "rate": "10/s"},
    )
    assert second["selection"] == {"channel": "email", "reason": "smtp_5xx", "rate": "120/m"}
    assert second["count"] == DEAD - 1
    assert [entry["id"] for entry in older["items"]] == [first["id"]]
    assert older["next_cursor"] is None
    async with ops.app.sessions() as session:
        rows = await session.execute(
            select(col(Notification.not_before)).where(col(Notification.id).in_(ids[1:]))
        )
        due = sorted(rows.scalars())
    assert due[1] - due[0] == timedelta(seconds=0.5)  # 120/m: one every half second


async def test_the_scheduler_answers_what_the_cli_prints(api: Api, tmp_path: Path) -> None:
    await add_user(api.app, "alice")
    await add_alert(api.app, ["alice"])
    async with api.client("read") as client:
        triggered_by_read = await client.post(f"/api/v1/scheduler/jobs/{PRODUCER_JOB_ID}/trigger")
    async with api.client() as client:
        triggered = await client.post(f"/api/v1/scheduler/jobs/{PRODUCER_JOB_ID}/trigger")
        status = (await client.get("/api/v1/scheduler/status")).json()
        jobs = (await client.get("/api/v1/scheduler/jobs")).json()
        metrics = (await client.get("/api/v1/scheduler/metrics?window=3650d")).json()
    env = base_env(tmp_path, DATABASE_URL=api.app.settings.database_url.get_secret_value())
    cli_status = (await tocsin("jobs", "check", "--json", env=env)).ok().json()
    cli_jobs = (await tocsin("jobs", "list", "--json", env=env)).ok().json()
    cli_metrics = (await tocsin("metrics", "--window", "3650d", "--json", env=env)).ok().json()

    assert_problem(triggered_by_read, 403, "admin")
    assert triggered.status_code == 200
    assert triggered.json()["job"] == PRODUCER_JOB_ID
    assert triggered.json()["outcome"] == "success"
    assert triggered.json()["result"]["alerts"] == 1
    # next_run and generated_at follow each process's clock (the API's is a manual one).
    assert without(status, "next_run") == without(cli_status, "next_run")
    assert status["ok"] is True
    assert without(jobs, "next_run") == without(cli_jobs, "next_run")
    assert jobs[0]["last_success"] is not None
    assert without(metrics, "generated_at") == without(cli_metrics, "generated_at")
    (job,) = metrics["jobs"]
    assert (job["job"], job["success_count"], job["failure_count"]) == (PRODUCER_JOB_ID, 1, 0)
    assert {"p50_seconds", "p95_seconds", "p99_seconds"} <= job.keys()
    channels = [c["channel"] for c in metrics["notification_channels"]]
    assert channels == list(api.app.channels.names)  # one entry per channel, in order
    assert datetime.fromisoformat(metrics["generated_at"]).utcoffset() == timedelta(0)


def without(document: Any, key: str) -> Any:
    """The document with every `key` member removed, at any depth."""
    if isinstance(document, dict):
        return {k: without(v, key) for k, v in document.items() if k != key}
    if isinstance(document, list):
        return [without(item, key) for item in document]
    return document


async def test_an_unknown_job_or_window_is_refused(api: Api) -> None:
    async with api.client() as client:
        unknown = await client.post("/api/v1/scheduler/jobs/no_such_job/trigger")
        bad_window = await client.get("/api/v1/scheduler/metrics", params={"window": "soon"})
        huge_window = await client.get("/api/v1/scheduler/metrics", params={"window": "99999999d"})
    assert_problem(unknown, 404, "no_such_job")
    assert_problem(bad_window, 422, "window")
    assert_problem(huge_window, 422, "window")


async def test_triggering_a_disabled_job_is_409(sqlite_settings: Settings) -> None:
    disabled = sqlite_settings.model_copy(update={"disabled_jobs": PRODUCER_JOB_ID})
    async with running_api(disabled) as served, served.client() as client:
        refused = await client.post(f"/api/v1/scheduler/jobs/{PRODUCER_JOB_ID}/trigger")
        listed = (await client.get("/api/v1/scheduler/jobs")).json()
    assert_problem(refused, 409, "disabled")
    assert listed[0]["enabled"] is False


async def test_the_prometheus_endpoint_exposes_the_process_registry(api: Api) -> None:
    async with api.client() as client:
        await client.post(f"/api/v1/scheduler/jobs/{PRODUCER_JOB_ID}/trigger")
    async with api.client("read") as client:
        text = await client.get("/api/v1/scheduler/metrics/prometheus")
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    assert f'scheduler_job_success_total{{job="{PRODUCER_JOB_ID}"}} 1.0' in text.text
    assert "# TYPE tocsin_" in text.text  # the pre-created tocsin_ series, not just the job's


ADMIN = [
    ("GET", "/api/v1/notifications"),
    ("GET", "/api/v1/notifications/1"),
    ("GET", "/api/v1/dlq"),
    ("POST", "/api/v1/dlq/replay"),
    ("GET", "/api/v1/audit"),
    ("POST", f"/api/v1/scheduler/jobs/{PRODUCER_JOB_ID}/trigger"),
]
READ = [
    ("GET", "/api/v1/scheduler/status"),
    ("GET", "/api/v1/scheduler/jobs"),
    ("GET", "/api/v1/scheduler/metrics"),
    ("GET", "/api/v1/scheduler/metrics/prometheus"),
]


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [(m, p, "admin") for m, p in ADMIN] + [(m, p, "read") for m, p in READ],
)
async def test_every_endpoint_needs_a_token_of_its_scope(
    api: Api, method: str, path: str, scope: str
) -> None:
    body = {"ids": [1], "dry_run": True} if method == "POST" else None
    async with api.client(None) as anonymous:
        assert_problem(await anonymous.request(method, path, json=body), 401)
    lesser = {"read": ["ingest"], "admin": ["ingest", "read"]}[scope]
    for other in lesser:
        async with api.client(other) as client:
            assert_problem(await client.request(method, path, json=body), 403, scope)
    async with api.client(scope) as client:
        allowed = await client.request(method, path, json=body)
    assert allowed.status_code not in (401, 403), allowed.text


async def test_a_notification_shows_its_fallback_both_ways(
    sqlite_settings: Settings, smtp_server: SmtpSink, wecom_server: WeComRobot
) -> None:
    wecom_server.remove_key("k1")  # the robot is gone: 93000
    channels = pinned(smtp_server, wecom_server, fallbacks={"wecom": "email"})
    async with running_api(sqlite_settings, channels=channels) as api:
        await add_user(api.app, "erin", email="erin@example.com", channels="wecom,email")
        alert = await add_alert(api.app, ["erin"])
        await api.app.producer().run()
        await cycle(api.app)
        await cycle(api.app)
        async with api.client() as client:
            listed = (await client.get("/api/v1/notifications")).json()["items"]
            ids = {row["channel"]: row["id"] for row in listed}
            dead = (await client.get(f"/api/v1/notifications/{ids['wecom']}")).json()
            standing_in = (await client.get(f"/api/v1/notifications/{ids['email']}")).json()
            of_alert = (await client.get(f"/api/v1/alerts/{alert.id}")).json()
    assert (dead["state"], dead["fallback_of"]) == ("DEAD", None)
    assert dead["fell_back_to"] == [{"id": ids["email"], "channel": "email", "state": "SENT"}]
    assert (standing_in["state"], standing_in["fallback_of"]) == ("SENT", ids["wecom"])
    assert {n["channel"]: n["fallback_of"] for n in of_alert["notifications"]} == {
        "system": None,
        "wecom": None,
        "email": ids["wecom"],
    }
