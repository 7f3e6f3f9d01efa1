"""Alertmanager ingest: the payload mapping (tables), then the endpoint on a real server.

Repeats and HA duplicates create nothing, a resolution suppresses what quiet hours still hold,
alerts that reach nobody are skipped and reported (200), and only a malformed payload is a 4xx.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlmodel import col

from channels.errors import Reason
from pipeline.alertmanager import (
    Episode,
    Skip,
    SkipReason,
    WebhookAlert,
    WebhookPayload,
    body_of,
    decide,
    episode,
    episode_key,
    names_in,
    severity_of,
    title_of,
)
from pipeline.alerts import AlertInput
from pipeline.config import Settings
from pipeline.groups import Addressees, upsert_group
from pipeline.models import Alert, AlertRecipient, Notification, Recipient, Severity, State
from pipeline.secret_url import SecretUrl
from pipeline.validation import BODY_MAX_BYTES, TITLE_MAX
from tests.support.api import Api, running_api
from tests.support.channels import pinned
from tests.support.pipeline import add_user
from tests.support.proxy import FaultProxy
from tests.support.smtp_server import SmtpSink

PATH = "/api/v1/integrations/alertmanager"
PROBLEM = "application/problem+json"
STARTS = "2026-11-23T03:55:00Z"
ZERO = "0001-01-01T00:00:00Z"


def am_alert(
    fingerprint: str = "c0ffee0000000001",
    *,
    status: str = "firing",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    starts: str = STARTS,
    ends: str = ZERO,
) -> dict[str, Any]:
    """One alert as Alertmanager puts it in a webhook notification."""
    return {
        "status": status,
        "labels": {"alertname": "DiskFull", "severity": "warning", **(labels or {})},
        "annotations": annotations if annotations is not None else {"summary": "Disk full"},
        "startsAt": starts,
        "endsAt": ends,
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fingerprint,
    }


def notification(*alerts: dict[str, Any], truncated: int = 0) -> dict[str, Any]:
    """A version 4 webhook notification carrying alerts."""
    firing = any(a["status"] == "firing" for a in alerts)
    return {
        "version": "4",
        "groupKey": '{}:{alertname="DiskFull"}',
        "truncatedAlerts": truncated,
        "status": "firing" if firing else "resolved",
        "receiver": "tocsin",
        "groupLabels": {"alertname": "DiskFull"},
        "commonLabels": {"alertname": "DiskFull"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


def parsed(**kwargs: Any) -> WebhookAlert:
    return WebhookAlert.model_validate(am_alert(**kwargs))


# --- the mapping, as tables ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "severity"),
    [
        ("critical", Severity.CRITICAL),
        ("CRITICAL", Severity.CRITICAL),
        (" page ", Severity.CRITICAL),
        ("error", Severity.CRITICAL),
        ("warning", Severity.WARNING),
        ("Warn", Severity.WARNING),
        ("info", Severity.INFO),
        ("none", Severity.INFO),
        ("disaster", Severity.INFO),
        ("", Severity.INFO),
        (None, Severity.INFO),
    ],
)
def test_severity_from_the_label(label: str | None, severity: Severity) -> None:
    assert severity_of({} if label is None else {"severity": label}) is severity


@pytest.mark.parametrize(
    ("labels", "annotations", "title"),
    [
        ({"alertname": "DiskFull"}, {"summary": "Disk full on db-2"}, "Disk full on db-2"),
        ({"alertname": "DiskFull"}, {}, "DiskFull"),
        ({"alertname": "DiskFull"}, {"summary": "  \n "}, "DiskFull"),
        ({}, {}, "Alertmanager alert f00"),
        ({}, {"summary": "Disk\nfull\r\n on\tdb-2"}, "Disk full on db-2"),
        ({}, {"summary": "bell\x07 and \x1b[31mred"}, "bell and [31mred"),
        ({}, {"summary": "x" * 300}, "x" * (TITLE_MAX - 1) + "…"),
    ],
)
def test_title_from_summary_then_alertname(
    labels: dict[str, str], annotations: dict[str, str], title: str
) -> None:
    assert title_of(labels, annotations, "f00") == title


@pytest.mark.parametrize(
    ("labels", "annotations", "body"),
    [
        ({"a": "1"}, {"description": "98% used"}, "98% used"),
        ({"instance": "db-2", "alertname": "DiskFull"}, {}, "alertname=DiskFull\ninstance=db-2"),
        ({"a": "1"}, {"description": "line 1\r\nline 2\x00"}, "line 1\nline 2"),
    ],
)
def test_body_from_description_then_labels(
    labels: dict[str, str], annotations: dict[str, str], body: str
) -> None:
    assert body_of(labels, annotations) == body


def test_a_huge_description_is_cut_to_the_body_limit() -> None:
    body = body_of({}, {"description": "é" * BODY_MAX_BYTES})
    assert len(body.encode()) <= BODY_MAX_BYTES
    assert body.endswith("…")


@pytest.mark.parametrize(
    ("value", "names"),
    [(None, []), ("", []), ("alice", ["alice"]), (" alice, bob,,alice ,", ["alice", "bob"])],
)
def test_names_in_a_label(value: str | None, names: list[str]) -> None:
    assert names_in(value) == names


@pytest.mark.parametrize(
    ("starts", "key"),
    [
        ("2026-12-02T10:00:00Z", "am:f1:2026-12-02T10:00:00Z"),
        ("2026-12-02T11:00:00+01:00", "am:f1:2026-12-02T10:00:00Z"),
        ("2026-12-02T10:00:00.120Z", "am:f1:2026-12-02T10:00:00.12Z"),
        ("2026-12-02T10:00:00.123456789Z", "am:f1:2026-12-02T10:00:00.123456Z"),
    ],
)
def test_the_episode_key_is_fingerprint_and_start_in_utc(starts: str, key: str) -> None:
    alert = WebhookAlert.model_validate(am_alert("f1", starts=starts))
    assert episode_key(alert.fingerprint, alert.starts_at) == key


def test_episode_reads_the_configured_labels() -> None:
    alert = parsed(labels={"recipients": "alice,bob", "team": "db", "squad": "web"})
    assert (
        episode(alert, "recipients", "team").usernames,
        episode(alert, "", "team").usernames,
    ) == (
        ["alice", "bob"],
        [],
    )
    assert episode(alert, "recipients", "squad").groups == ["web"]
    assert episode(alert, "recipients", "").groups == []
    mapped = episode(alert, "recipients", "team")
    assert (mapped.title, mapped.severity, mapped.status) == (
        "Disk full",
        Severity.WARNING,
        "firing",
    )
    assert (
        mapped.body
        == "alertname=DiskFull\nrecipients=alice,bob\nseverity=warning\nsquad=web\nteam=db"
    )


def _episode(usernames: list[str], groups: list[str], title: str = "Disk full") -> Episode:
    return Episode("am:f:t", "f", "firing", title, "body", Severity.CRITICAL, usernames, groups)


@pytest.mark.parametrize(
    ("found", "reached", "expected"),
    [
        (_episode([], []), Addressees([], [], [], []), SkipReason.NO_RECIPIENTS),
        (_episode(["zed"], []), Addressees([], ["zed"], [], []), SkipReason.UNKNOWN_RECIPIENTS),
        (_episode([], ["db"]), Addressees([], [], ["db"], []), SkipReason.UNKNOWN_RECIPIENTS),
        (_episode([], ["db"]), Addressees([], [], [], ["db"]), SkipReason.UNKNOWN_RECIPIENTS),
        (
            _episode([], ["db"]),
            Addressees(["a", "b", "c"], [], [], []),
            SkipReason.TOO_MANY_RECIPIENTS,
        ),
        (
            _episode(["a"], [], title="x" * (TITLE_MAX + 1)),
            Addressees(["a"], [], [], []),
            SkipReason.INVALID,
        ),
        (
            _episode(["a", "zed"], ["db"]),
            Addressees(["a"], ["zed"], [], []),
            AlertInput("Disk full", "body", "critical", ["a"]),
        ),
    ],
)
def test_decide(found: Episode, reached: Addressees, expected: object) -> None:
    decision = decide(found, reached, max_recipients=2)
    if isinstance(expected, SkipReason):
        assert isinstance(decision, Skip) and decision.reason is expected, decision
        assert decision.detail
    else:
        assert decision == expected


def test_unknown_names_are_named_in_the_skip() -> None:
    decision = decide(
        _episode(["zed", "yan"], ["db", "web"]), Addressees([], ["zed", "yan"], ["db"], ["web"]), 5
    )
    assert isinstance(decision, Skip)
    assert decision.detail == "unknown user(s): zed, yan; unknown group(s): db; empty group(s): web"


@pytest.mark.parametrize(
    "change",
    [
        {"version": "3"},
        {"alerts": None},
        {"status": "weird"},
        {"alerts": [{**am_alert(), "fingerprint": "not/hex"}]},
        {"alerts": [{**am_alert(), "startsAt": "yesterday"}]},
        {"alerts": [{**am_alert(), "labels": {"a": 1}}]},
    ],
)
def test_malformed_payloads_do_not_validate(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        WebhookPayload.model_validate({**notification(am_alert()), **change})


# --- the endpoint -------------------------------------------------------------------------


@pytest.fixture
async def am(sqlite_settings: Settings, smtp_server: SmtpSink) -> AsyncIterator[Api]:
    """The API with e-mail on the sink, users alice (quiet now) and bob, group db-oncall."""
    async with running_api(sqlite_settings, channels=pinned(smtp=smtp_server)) as served:
        await _people(served)
        yield served


async def _people(api: Api) -> None:
    # START is 12:00 in Asia/Shanghai: alice's e-mail waits for 13:30, bob's goes now.
    await add_user(
        api.app,
        "alice",
        email="alice@example.com",
        timezone="Asia/Shanghai",
        quiet_hours="11:00-13:30",
        channels="system,email",
    )
    await add_user(api.app, "bob", email="bob@example.com", channels="system,email")
    await add_user(api.app, "carol", email="carol@example.com", channels="system,email")
    await upsert_group(api.app.sessions, api.app.clock, "db-oncall", ["alice", "bob"])


async def post(api: Api, body: Any, scope: str | None = "ingest") -> Any:
    async with api.client(scope) as client:
        return await client.post(PATH, json=body)


async def alert_count(api: Api) -> int:
    async with api.app.sessions() as session:
        return int((await session.execute(select(func.count()).select_from(Alert))).scalar_one())


async def email_rows(api: Api, alert_id: int) -> dict[str, tuple[str, str | None, bool]]:
    async with api.app.sessions() as session:
        found = await session.execute(
            select(Notification, col(Recipient.username))
            .join(Recipient, col(Recipient.id) == col(Notification.recipient_id))
            .where(col(Notification.alert_id) == alert_id, col(Notification.channel) == "email")
        )
        return {user: (n.state, n.last_reason, n.deferred) for n, user in found}


async def test_a_firing_alert_becomes_an_alert_for_its_team_at_once(am: Api) -> None:
    answer = await post(
        am,
        notification(
            am_alert(
                labels={"team": "db-oncall", "recipients": "carol", "severity": "page"},
                annotations={"summary": "Disk full on db-2", "description": "98% used"},
            )
        ),
    )
    assert answer.status_code == 200, answer.text
    summary = answer.json()
    assert (summary["created"], summary["repeated"], summary["skipped"]) == (1, 0, 0)
    (result,) = summary["alerts"]
    assert result["outcome"] == "created" and result["fingerprint"] == "c0ffee0000000001"
    async with am.app.sessions() as session:
        alert = await session.get(Alert, result["alert_id"])
        recipients = await session.execute(
            select(col(Recipient.username))
            .join(AlertRecipient, col(AlertRecipient.recipient_id) == col(Recipient.id))
            .where(col(AlertRecipient.alert_id) == result["alert_id"])
        )
    assert alert is not None
    assert (alert.title, alert.body, alert.severity) == (
        "Disk full on db-2",
        "98% used",
        "critical",
    )
    assert alert.processed_at is not None  # expanded at once, not at the next hourly pass
    assert sorted(recipients.scalars()) == ["alice", "bob", "carol"]


async def test_repeats_and_ha_duplicates_create_nothing_new(am: Api) -> None:
    body = notification(am_alert(labels={"team": "db-oncall"}))
    first = (await post(am, body)).json()
    # Alertmanager's repeat, then two HA peers posting the same notification at once.
    repeat = (await post(am, body)).json()
    peers = await asyncio.gather(post(am, body), post(am, body))
    assert first["created"] == 1
    assert repeat["repeated"] == 1 and repeat["created"] == 0
    assert [p.json()["repeated"] for p in peers] == [1, 1]
    assert {r["alert_id"] for r in (repeat["alerts"][0], first["alerts"][0])} == {
        first["alerts"][0]["alert_id"]
    }
    assert await alert_count(am) == 1
    # A new episode of the same alert (it fired again later) is a new alert.
    again = (
        await post(
            am, notification(am_alert(labels={"team": "db-oncall"}, starts="2026-11-23T04:30:00Z"))
        )
    ).json()
    assert again["created"] == 1
    assert await alert_count(am) == 2


async def test_concurrent_duplicates_on_postgres_make_one_alert(
    postgres_settings: Settings,
) -> None:
    async with running_api(postgres_settings) as api:
        await _people(api)
        body = notification(am_alert(labels={"team": "db-oncall"}))
        answers = await asyncio.gather(*(post(api, body) for _ in range(4)))
        assert [a.status_code for a in answers] == [200] * 4
        assert sorted(a.json()["created"] for a in answers) == [0, 0, 0, 1]
        assert await alert_count(api) == 1


async def test_resolution_suppresses_what_quiet_hours_still_hold(am: Api) -> None:
    fired = (await post(am, notification(am_alert(labels={"team": "db-oncall"})))).json()
    alert_id = fired["alerts"][0]["alert_id"]
    before = await email_rows(am, alert_id)
    assert before["alice"] == (State.PENDING.value, None, True)  # deferred to 13:30
    assert before["bob"][0] == State.PENDING.value and not before["bob"][2]
    # bob's e-mail goes out; alice's is still held when the alert resolves.
    await am.app.relay().tick()
    await am.app.worker().run_until_idle()
    am.app.clock.advance(timedelta(minutes=10))  # type: ignore[attr-defined]
    resolved_alert = am_alert(
        labels={"team": "db-oncall"}, status="resolved", ends="2026-11-23T04:09:00Z"
    )
    resolved = (await post(am, notification(resolved_alert))).json()
    assert resolved["resolved"] == 1 and resolved["alerts"][0]["alert_id"] == alert_id
    after = await email_rows(am, alert_id)
    assert after["alice"][:2] == (State.SUPPRESSED.value, Reason.ALERT_RESOLVED.value)
    assert after["bob"][0] == State.SENT.value
    # Alertmanager (or its HA peer) sending the resolution again changes nothing.
    again = (await post(am, notification(resolved_alert))).json()
    assert (again["resolved"], again["repeated"]) == (0, 1)
    assert await alert_count(am) == 1


async def test_a_resolution_of_an_unknown_episode_is_skipped(am: Api) -> None:
    answer = await post(am, notification(am_alert("0dd", status="resolved", ends=STARTS)))
    assert answer.status_code == 200
    (result,) = answer.json()["alerts"]
    assert (result["outcome"], result["reason"]) == ("skipped", "unknown_alert")


async def test_alerts_reaching_nobody_are_skipped_and_the_rest_stored(am: Api) -> None:
    answer = await post(
        am,
        notification(
            am_alert("a1", labels={"team": "db-oncall"}),
            am_alert("a2", labels={"team": "no-such-team"}),
            am_alert("a3", labels={"recipients": "ghost"}),
            am_alert("a4"),
            am_alert("a5", labels={"recipients": "carol,ghost"}),
            truncated=3,
        ),
    )
    assert answer.status_code == 200
    summary = answer.json()
    assert (summary["created"], summary["skipped"], summary["truncated"]) == (2, 3, 3)
    outcomes = {
        r["fingerprint"]: (r["outcome"], r["reason"], r["detail"]) for r in summary["alerts"]
    }
    assert outcomes["a1"] == ("created", None, None)
    assert outcomes["a2"] == ("skipped", "unknown_recipients", "unknown group(s): no-such-team")
    assert outcomes["a3"] == ("skipped", "unknown_recipients", "unknown user(s): ghost")
    assert outcomes["a4"][:2] == ("skipped", "no_recipients")
    assert outcomes["a5"] == ("created", None, "unknown user(s): ghost")
    assert [r["fingerprint"] for r in summary["alerts"]] == ["a1", "a2", "a3", "a4", "a5"]
    assert await alert_count(am) == 2


async def test_the_labels_are_settings(sqlite_settings: Settings) -> None:
    settings = sqlite_settings.model_copy(
        update={"alertmanager_group_label": "squad", "alertmanager_recipients_label": "notify"}
    )
    async with running_api(settings) as api:
        await _people(api)
        answer = await post(
            api,
            notification(
                am_alert("b1", labels={"squad": "db-oncall"}),
                am_alert("b2", labels={"notify": "carol"}),
                am_alert("b3", labels={"team": "db-oncall", "recipients": "carol"}),
            ),
        )
    reasons = [r["reason"] for r in answer.json()["alerts"]]
    assert reasons == [None, None, "no_recipients"]


def test_label_settings_are_validated() -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, alertmanager_group_label="not a label")
    assert Settings(_env_file=None, alertmanager_group_label="").alertmanager_group_label == ""


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"{", "not valid JSON"),
        (b'{"version": "3", "status": "firing", "alerts": []}', "version"),
        (b'{"version": "4", "status": "firing"}', "alerts"),
        (b"[]", ""),
    ],
)
async def test_a_malformed_payload_is_a_422_problem(am: Api, content: bytes, says: str) -> None:
    async with am.client("ingest") as client:
        answer = await client.post(
            PATH, content=content, headers={"content-type": "application/json"}
        )
    assert answer.status_code == 422
    assert answer.headers["content-type"] == PROBLEM
    assert says in answer.json()["detail"]
    assert await alert_count(am) == 0


@pytest.mark.parametrize(
    ("scope", "status"), [(None, 401), ("read", 403), ("ingest", 200), ("admin", 200)]
)
async def test_scopes(am: Api, scope: str | None, status: int) -> None:
    answer = await post(am, notification(am_alert(labels={"team": "db-oncall"})), scope=scope)
    assert answer.status_code == status
    if status >= 400:
        assert answer.headers["content-type"] == PROBLEM
        assert await alert_count(am) == 0


async def test_a_bad_token_is_401(am: Api) -> None:
    async with am.client(None) as client:
        answer = await client.post(
            PATH, json=notification(am_alert()), headers={"Authorization": "Bearer tocsin_nope"}
        )
    assert answer.status_code == 401


async def test_database_down_is_a_5xx_and_the_retry_stores_once(
    postgres_settings: Settings,
) -> None:
    url = postgres_settings.database_url.get_secret_value()
    async with FaultProxy.to(url) as proxy:
        routed = postgres_settings.model_copy(
            update={
                "database_url": SecretUrl(proxy.route(url)),
                "db_connect_timeout": timedelta(seconds=1),
                "db_command_timeout": timedelta(seconds=2),
            }
        )
        async with running_api(routed) as api:
            await _people(api)
            body = notification(am_alert(labels={"team": "db-oncall"}))
            proxy.refuse()
            down = await post(api, body)
            proxy.pass_through()
            retried = await post(api, body)
            assert await alert_count(api) == 1
    # Alertmanager retries a 5xx (never a 4xx): the database going away must not be a 4xx.
    assert down.status_code >= 500, down.text
    assert down.headers["content-type"] == PROBLEM
    assert retried.status_code == 200 and retried.json()["created"] == 1
