"""/api/v1/alerts over a real server: ingest, idempotency, problems, scopes, views, resolve."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from pipeline.config import Settings
from pipeline.groups import upsert_group
from pipeline.models import Alert, AlertKey, AlertRecipient, Notification
from pipeline.tokens import revoke_token
from tests.support.api import Api, running_api
from tests.support.pipeline import add_user

PROBLEM = "application/problem+json"
URL = "/api/v1/alerts"


def alert(**fields: Any) -> dict[str, Any]:
    """A valid alert body for alice, with fields changed."""
    return {
        "title": "Disk 95% on db-1",
        "body": "Volume /data is 95% full.",
        "severity": "warning",
        "recipients": ["alice"],
    } | fields


async def counts(api: Api) -> dict[str, int]:
    """Rows in every table an ingest writes."""
    found: dict[str, int] = {}
    async with api.app.sessions() as session:
        for table in (Alert, AlertKey, AlertRecipient, Notification):
            count = await session.scalar(select(func.count()).select_from(table))
            found[str(table.__tablename__)] = count or 0
    return found


@pytest.fixture
async def users(api: Api) -> Api:
    """The API with alice (e-mail, inbox), bob (inbox only), groups db-oncall and empty."""
    await add_user(api.app, "alice", email="alice@example.com")
    await add_user(api.app, "bob", channels="system")
    await upsert_group(api.app.sessions, api.app.clock, "db-oncall", ["bob", "alice"])
    await upsert_group(api.app.sessions, api.app.clock, "empty", [])
    return api


async def test_a_posted_alert_is_stored_and_expanded_before_the_answer(users: Api) -> None:
    async with users.client("ingest") as client:
        answer = await client.post(URL, json=alert(severity="critical", recipients=["alice"]))
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["created"] is True
    assert body["url"] == f"{URL}/{body['id']}"
    assert answer.headers["location"] == body["url"]
    assert body["processed_at"] is not None
    # No producer pass ran: the rows exist because the POST made them.
    async with users.app.sessions() as session:
        rows = (
            await session.execute(select(Notification).where(Notification.alert_id == body["id"]))
        ).scalars()
        assert sorted((n.channel, n.state) for n in rows) == [
            ("email", "PENDING"),
            ("system", "PENDING"),
            ("wecom", "PENDING"),
        ]


async def test_a_batch_answers_every_alert_in_order(users: Api) -> None:
    batch = {"alerts": [alert(title="one"), alert(title="two", recipients=["alice", "bob"])]}
    async with users.client("ingest") as client:
        answer = await client.post(URL, json=batch)
    assert answer.status_code == 202, answer.text
    assert [(a["title"], a["created"]) for a in answer.json()["alerts"]] == [
        ("one", True),
        ("two", True),
    ]
    assert "location" not in answer.headers
    # alice: inbox, e-mail, WeCom (the group robot); bob: the inbox (the rest opted out)
    assert (await counts(users))["notifications"] == 9


async def test_groups_address_their_members_once(users: Api) -> None:
    async with users.client("admin") as client:
        answer = await client.post(URL, json=alert(recipients=["alice"], groups=["db-oncall"]))
        only_group = await client.post(URL, json=alert(recipients=[], groups=["db-oncall"]))
        shown = [(await client.get(a.json()["url"])).json() for a in (answer, only_group)]
    assert answer.status_code == only_group.status_code == 202, (answer.text, only_group.text)
    for detail in shown:
        assert detail["recipients"] == ["alice", "bob"]
        # A row per channel for each of them once (bob's opted-out ones SUPPRESSED), not twice.
        rows = sorted((n["recipient"], n["channel"]) for n in detail["notifications"])
        assert rows == [(u, c) for u in ("alice", "bob") for c in ("email", "system", "wecom")]


BAD_ALERTS = [
    ("unknown-recipient", alert(recipients=["alice", "ghost"]), "ghost"),
    ("empty-title", alert(title="  "), "title must not be empty"),
    ("crlf-title", alert(title="Disk\r\nBcc: x@example.com"), "single line"),
    ("nul-body", alert(body="a\x00b"), "control character"),
    ("severity", alert(severity="urgent"), "severity 'urgent' is invalid"),
    ("mention-all", alert(mention_all=True), "only allowed on critical"),
    ("expires-in", alert(expires_in="soon"), "expires_in"),
    ("no-recipients", alert(recipients=[]), "at least one recipient or group"),
    ("unknown-group", alert(groups=["db-oncall", "ghosts"]), "no group named 'ghosts'"),
    ("invalid-group", alert(groups=["a b"]), "group name 'a b' is invalid"),
    ("empty-group", alert(recipients=[], groups=["empty"]), "have no members"),
    ("missing-title", {"body": "x", "recipients": ["alice"]}, "title: Field required"),
    ("wrong-type", alert(title=5), "title: Input should be a valid string"),
    ("unknown-field", alert(recipent=["alice"]), "recipent"),
    ("not-an-object", ["alice"], "JSON object"),
]


@pytest.mark.parametrize(("body", "says"), [pytest.param(b, s, id=i) for i, b, s in BAD_ALERTS])
async def test_bad_alerts_are_one_line_problems_and_store_nothing(
    users: Api, body: object, says: str
) -> None:
    before = await counts(users)
    async with users.client("ingest") as client:
        answer = await client.post(URL, json=body)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == PROBLEM
    detail = answer.json()["detail"]
    assert says in detail and "\n" not in detail, detail
    assert await counts(users) == before


async def test_a_bad_alert_in_a_batch_is_named_by_index_and_nothing_is_stored(
    users: Api,
) -> None:
    before = await counts(users)
    good = [alert(title=f"good {i}") for i in range(3)]
    async with users.client("ingest") as client:
        empty = await client.post(URL, json={"alerts": [*good, alert(title="")]})
        unknown = await client.post(URL, json={"alerts": [*good, alert(recipients=["ghost"])]})
        typed = await client.post(URL, json={"alerts": [good[0], alert(severity=1)]})
    assert empty.json()["detail"] == "alerts[3]: title must not be empty"
    assert unknown.json()["detail"].startswith("alerts[3]: unknown recipient(s): ghost")
    assert typed.json()["detail"] == "alerts[1].severity: Input should be a valid string"
    assert {empty.status_code, unknown.status_code, typed.status_code} == {422}
    assert await counts(users) == before


async def test_too_many_alerts_in_one_batch(users: Api) -> None:
    bound = users.app.settings.api_batch_max
    async with users.client("ingest") as client:
        answer = await client.post(URL, json={"alerts": [alert()] * (bound + 1)})
    assert answer.status_code == 422
    assert f"the limit is {bound} (API_BATCH_MAX)" in answer.json()["detail"]
    assert (await counts(users))["alerts"] == 0


async def test_malformed_json_wrong_type_and_oversized_bodies(users: Api) -> None:
    limit = users.app.settings.api_max_body_bytes
    json_type = {"Content-Type": "application/json"}
    async with users.client("ingest") as client:
        malformed = await client.post(URL, content=b'{"title": ', headers=json_type)
        not_utf8 = await client.post(URL, content=b'{"title": "\xff"}', headers=json_type)
        deep = await client.post(URL, content=b"[" * 100_000, headers=json_type)
        text = await client.post(
            URL, content=httpx.Request("POST", "/", json=alert()).content, headers={}
        )
        form = await client.post(URL, data={"title": "x"})
        big = await client.post(URL, json=alert(body="x" * limit))
    for answer, status in (
        (malformed, 422),
        (not_utf8, 422),
        (deep, 422),
        (text, 415),
        (form, 415),
        (big, 413),
    ):
        assert answer.status_code == status, (answer.request.content[:40], answer.text)
        assert answer.headers["content-type"] == PROBLEM
    assert malformed.json()["detail"] == "the body is not valid JSON"
    assert (await counts(users))["alerts"] == 0


# --- auth ------------------------------------------------------------------------------------


async def test_tokens_and_scopes(users: Api) -> None:
    async with users.client("ingest") as ingest:
        posted = (await ingest.post(URL, json=alert())).json()
        shown_by_ingest = await ingest.get(f"{URL}/{posted['id']}")
        listed_by_ingest = await ingest.get(URL)
    async with users.client(None) as anonymous:
        anonymous_post = await anonymous.post(URL, json=alert())
        anonymous_get = await anonymous.get(URL)
    async with users.client("read") as reader:
        read_post = await reader.post(URL, json=alert())
        read_resolve = await reader.post(f"{URL}/{posted['id']}/resolve")
        read_get = await reader.get(f"{URL}/{posted['id']}")
    async with users.client("admin") as admin:
        everything = [
            await admin.post(URL, json=alert()),
            await admin.get(URL),
            await admin.get(f"{URL}/{posted['id']}"),
            await admin.post(f"{URL}/{posted['id']}/resolve"),
        ]
    for answer in (anonymous_post, anonymous_get):
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.headers["content-type"] == PROBLEM
    for answer in (shown_by_ingest, listed_by_ingest, read_post, read_resolve):
        assert answer.status_code == 403, answer.text
        assert answer.headers["content-type"] == PROBLEM
    assert read_get.status_code == 200
    assert [a.status_code for a in everything] == [202, 200, 200, 200]
    assert (await counts(users))["alerts"] == 2  # ingest's and admin's


async def test_a_revoked_token_is_401(users: Api) -> None:
    await revoke_token(users.app.sessions, users.app.clock, "test-ingest")
    async with users.client("ingest") as client:
        answer = await client.post(URL, json=alert())
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert (await counts(users))["alerts"] == 0


# --- idempotency -----------------------------------------------------------------------------


async def test_the_same_idempotency_key_twice_is_one_alert(users: Api) -> None:
    key = {"Idempotency-Key": "disk-db1-2026-12-02T10"}
    async with users.client("ingest") as client:
        first = await client.post(URL, json=alert(), headers=key)
        second = await client.post(URL, json=alert(title="changed"), headers=key)
        other = await client.post(URL, json=alert(), headers={"Idempotency-Key": "other"})
    assert (first.status_code, first.json()["created"]) == (202, True)
    assert (second.status_code, second.json()["created"]) == (200, False)
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["title"] == "Disk 95% on db-1"  # the first alert, not the repeat
    assert second.headers["location"] == first.headers["location"]
    assert other.json()["id"] != first.json()["id"]
    assert (await counts(users))["alerts"] == 2


async def test_two_concurrent_posts_with_one_key_make_one_alert(users: Api) -> None:
    key = {"Idempotency-Key": "concurrent-1"}
    async with users.client("ingest") as one, users.client("ingest") as two:
        answers = await asyncio.gather(
            one.post(URL, json=alert(), headers=key), two.post(URL, json=alert(), headers=key)
        )
    assert all(a.status_code in (200, 202) for a in answers), [a.text for a in answers]
    assert sorted(a.json()["created"] for a in answers) == [False, True]
    assert answers[0].json()["id"] == answers[1].json()["id"]
    assert (await counts(users))["alerts"] == 1


async def test_concurrent_posts_with_one_key_on_postgresql(postgres_settings: Settings) -> None:
    async with running_api(postgres_settings) as served:
        await add_user(served.app, "alice")
        key = {"Idempotency-Key": "concurrent-pg"}
        clients = [served.client("ingest") for _ in range(5)]
        try:
            answers = await asyncio.gather(
                *(client.post(URL, json=alert(), headers=key) for client in clients)
            )
        finally:
            for client in clients:
                await client.aclose()
        assert sorted(a.json()["created"] for a in answers) == [False] * 4 + [True]
        assert len({a.json()["id"] for a in answers}) == 1
        assert (await counts(served))["alerts"] == 1
        assert (await counts(served))["notifications"] == 3


async def test_a_batch_repeated_with_its_key_stores_nothing_new(users: Api) -> None:
    key = {"Idempotency-Key": "batch-7"}
    batch = {"alerts": [alert(title="one"), alert(title="two")]}
    async with users.client("ingest") as client:
        first = await client.post(URL, json=batch, headers=key)
        again = await client.post(URL, json=batch, headers=key)
    assert first.status_code == 202 and again.status_code == 200
    assert [a["id"] for a in again.json()["alerts"]] == [a["id"] for a in first.json()["alerts"]]
    assert [a["created"] for a in again.json()["alerts"]] == [False, False]
    assert (await counts(users))["alerts"] == 2


async def test_a_dedup_key_without_a_header_returns_the_first_alert(users: Api) -> None:
    async with users.client("ingest") as client:
        first = await client.post(URL, json=alert(dedup_key="disk-db1"))
        again = await client.post(URL, json=alert(dedup_key=" disk-db1 "))
    assert again.status_code == 200
    assert (again.json()["id"], again.json()["created"]) == (first.json()["id"], False)
    assert (await counts(users))["alerts"] == 1


@pytest.mark.parametrize("key", ["x" * 201, "tab\there"])
async def test_a_bad_idempotency_key_is_refused(users: Api, key: str) -> None:
    async with users.client("ingest") as client:
        answer = await client.post(URL, json=alert(), headers={"Idempotency-Key": key})
    assert answer.status_code == 422
    assert "Idempotency-Key must be 1-200 printable characters" in answer.json()["detail"]
    assert (await counts(users))["alerts"] == 0


# --- reading and resolving -------------------------------------------------------------------


async def test_an_alert_shows_every_notification_and_why(api: Api) -> None:
    # 12:00 in Shanghai: alice's quiet hours hold her e-mail back; bob turned e-mail off.
    await add_user(
        api.app,
        "alice",
        email="alice@example.com",
        timezone="Asia/Shanghai",
        quiet_hours="11:00-13:00",
    )
    await add_user(api.app, "bob", email="bob@example.com", channels="system")
    async with api.client("ingest") as ingest, api.client("read") as reader:
        posted = (await ingest.post(URL, json=alert(recipients=["bob", "alice"]))).json()
        shown = await reader.get(posted["url"])
        missing = await reader.get(f"{URL}/999999")
        too_big = await reader.get(f"{URL}/99999999999")
    assert shown.status_code == 200
    view = shown.json()
    assert (view["title"], view["body"], view["recipients"]) == (
        "Disk 95% on db-1",
        "Volume /data is 95% full.",
        ["alice", "bob"],
    )
    rows = {(n["recipient"], n["channel"]): n for n in view["notifications"]}
    assert len(rows) == 6
    assert rows[("alice", "email")]["deferred"] is True
    assert rows[("alice", "email")]["not_before"] == "2026-11-23T05:00:00Z"
    assert (rows[("bob", "email")]["state"], rows[("bob", "email")]["reason"]) == (
        "SUPPRESSED",
        "opted_out",
    )
    assert rows[("bob", "wecom")]["reason"] == "opted_out"
    assert rows[("alice", "wecom")]["deferred"] is True
    assert rows[("bob", "system")]["attempts"] == 0
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM
    assert missing.json()["detail"] == "no alert 999999"
    assert too_big.status_code == 422


async def test_resolve_suppresses_what_is_not_sent_and_is_idempotent(api: Api) -> None:
    await add_user(
        api.app, "alice", email="alice@example.com", timezone="UTC", quiet_hours="03:00-05:00"
    )
    async with api.client("ingest") as client:
        posted = (await client.post(URL, json=alert())).json()
        resolved = await client.post(f"{posted['url']}/resolve")
        again = await client.post(f"{posted['url']}/resolve")
        missing = await client.post(f"{URL}/424242/resolve")
    assert resolved.status_code == 200, resolved.text
    view = resolved.json()
    assert view["resolved_at"] is not None
    states = {n["channel"]: (n["state"], n["reason"]) for n in view["notifications"]}
    assert states["email"] == ("SUPPRESSED", "alert_resolved")  # was deferred by quiet hours
    assert states["system"] == ("SUPPRESSED", "alert_resolved")
    assert again.status_code == 200 and again.json()["resolved_at"] == view["resolved_at"]
    assert missing.status_code == 404


async def test_the_list_is_newest_first_paged_and_filtered(users: Api) -> None:
    async with users.client("ingest") as client:
        for number in range(5):
            severity = "critical" if number % 2 else "warning"
            await client.post(URL, json=alert(title=f"alert {number}", severity=severity))
    async with users.client("read") as reader:
        first = (await reader.get(URL, params={"limit": 2})).json()
        second = (await reader.get(URL, params={"limit": 2, "cursor": first["next_cursor"]})).json()
        third = (await reader.get(URL, params={"limit": 2, "cursor": second["next_cursor"]})).json()
        critical = (await reader.get(URL, params={"severity": "CRITICAL"})).json()
        async with users.client("ingest") as client:
            await client.post(f"{URL}/{critical['items'][0]['id']}/resolve")
        resolved = (await reader.get(URL, params={"resolved": "true"})).json()
        open_ = (await reader.get(URL, params={"resolved": "false"})).json()
        bad = [
            await reader.get(URL, params={"severity": "urgent"}),
            await reader.get(URL, params={"cursor": "abc"}),
            await reader.get(URL, params={"limit": 501}),
            await reader.get(URL, params={"limit": 0}),
        ]
    titles = [a["title"] for page in (first, second, third) for a in page["items"]]
    assert titles == [f"alert {n}" for n in (4, 3, 2, 1, 0)]
    assert third["next_cursor"] is None
    assert [a["title"] for a in critical["items"]] == ["alert 3", "alert 1"]
    assert [a["title"] for a in resolved["items"]] == ["alert 3"]
    assert len(open_["items"]) == 4
    assert [answer.status_code for answer in bad] == [422] * 4
    assert all(answer.headers["content-type"] == PROBLEM for answer in bad)


async def test_the_openapi_document_describes_the_alert_routes(api: Api) -> None:
    async with api.client(None) as client:
        document = (await client.get("/openapi.json")).json()
    create = document["paths"][URL]["post"]
    assert {"202", "200", "401", "403", "413", "415", "422"} <= set(create["responses"])
    assert len(create["requestBody"]["content"]["application/json"]["schema"]["oneOf"]) == 2
    assert "Idempotency-Key" in [p["name"] for p in create["parameters"]]
    shown = document["paths"][f"{URL}/{{alert_id}}"]["get"]["responses"]["200"]
    assert shown["content"]["application/json"]["schema"]["$ref"].endswith("/AlertDetail")
