"""/api/v1/users and the settings endpoints through the real server: success, every documented
error, scopes, the all-or-nothing bulk upsert, and a robot key that never comes back out.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from pipeline.config import Settings
from pipeline.models import Recipient
from tests.support.api import Api, running_api
from tests.support.pipeline import add_alert, add_user
from tests.support.secrets import assert_no_secret

PROBLEM = "application/problem+json"
KEY = "rObOtKey-0123456789abcdef"
ROBOT = f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={KEY}"


async def user_count(api: Api) -> int:
    async with api.app.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Recipient)) or 0)


def assert_problem(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert "\n" not in body["detail"]
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


async def test_put_creates_then_updates_and_get_shows_the_user(api: Api) -> None:
    async with api.client() as client:
        created = await client.put(
            "/api/v1/users/alice",
            json={
                "contacts": {"email": "alice@example.com"},
                "timezone": "Asia/Shanghai",
                "quiet_hours": "22:00-7:00",
                "channels": ["email", "system"],
            },
        )
        updated = await client.put(
            "/api/v1/users/alice", json={"contacts": {"wecom_userid": "alice.w"}}
        )
        shown = await client.get("/api/v1/users/alice")
    assert created.status_code == 201
    assert updated.status_code == 200
    assert (
        shown.json()
        == updated.json()
        == {
            "username": "alice",
            "contacts": {"email": "alice@example.com", "wecom_userid": "alice.w"},
            "channels": ["email", "system"],
            "timezone": "Asia/Shanghai",
            "quiet_hours": "22:00-07:00",
        }
    )
    assert created.json()["contacts"] == {"email": "alice@example.com"}


async def test_an_empty_string_clears_a_field_and_null_leaves_it(api: Api) -> None:
    async with api.client() as client:
        await client.put(
            "/api/v1/users/bob",
            json={"contacts": {"email": "bob@example.com"}, "quiet_hours": "22:00-07:00"},
        )
        cleared = await client.put(
            "/api/v1/users/bob",
            json={"contacts": {"email": ""}, "quiet_hours": "", "timezone": None},
        )
    assert cleared.json()["contacts"] == {}
    assert cleared.json()["quiet_hours"] is None
    assert cleared.json()["timezone"] == "UTC"


async def test_the_list_is_paged_by_name(api: Api) -> None:
    for name in ("erin", "carol", "dave", "alice", "bob"):
        await add_user(api.app, name)
    seen: list[str] = []
    cursor = None
    async with api.client("read") as client:
        for _ in range(5):
            params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = (await client.get("/api/v1/users", params=params)).json()
            seen += [user["username"] for user in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        everyone = (await client.get("/api/v1/users")).json()
        too_many = await client.get("/api/v1/users", params={"limit": 1001})
    assert seen == ["alice", "bob", "carol", "dave", "erin"]
    assert [u["username"] for u in everyone["items"]] == seen
    assert everyone["next_cursor"] is None
    assert_problem(too_many, 422, "limit")


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"timezone": "Mars/Olympus"}, ("unknown time zone", "IANA")),
        ({"timezone": ""}, ("timezone must not be empty",)),
        ({"quiet_hours": "late"}, ("quiet hours must look like 22:00-07:00",)),
        ({"quiet_hours": "25:00-07:00"}, ("quiet",)),
        ({"contacts": {"email": "not an address"}}, ("email",)),
        ({"channels": ["email", "pager"]}, ("unknown channel 'pager'",)),
        ({"channels": []}, ("channels must name at least one",)),
        ({"contacts": {"wecom_userid": "@all"}}, ("reserved",)),
        ({"contacts": {"emial": "typo@example.com"}}, ("unknown contact 'emial'", "email")),
        ({"email": "alice@example.com"}, ("email",)),  # contacts go in "contacts"
        ({"contacts": {"email": 7}}, ("email",)),
        ({"contacts": ["alice@example.com"]}, ("contacts",)),
    ],
)
async def test_invalid_fields_are_422_and_nothing_is_stored(
    api: Api, fields: dict[str, Any], words: tuple[str, ...]
) -> None:
    async with api.client() as client:
        refused = await client.put("/api/v1/users/alice", json=fields)
    assert_problem(refused, 422, *words)
    assert await user_count(api) == 0


async def test_an_invalid_username_is_422(api: Api) -> None:
    async with api.client() as client:
        refused = await client.put("/api/v1/users/al%20ice", json={})
        too_long = await client.put(f"/api/v1/users/{'a' * 65}", json={})
    assert_problem(refused, 422, "username")
    assert_problem(too_long, 422)
    assert await user_count(api) == 0


async def test_a_robot_webhook_is_stored_but_only_ever_shown_masked(api: Api) -> None:
    texts: list[str] = []
    async with api.client() as client:
        saved = await client.put("/api/v1/users/alice", json={"contacts": {"wecom_webhook": ROBOT}})
        texts += [saved.text]
        for path in ("/api/v1/users/alice", "/api/v1/users", "/api/v1/users/alice/settings"):
            texts.append((await client.get(path)).text)
        texts.append((await client.get("/api/v1/notifications/settings?user=alice")).text)
        bulk = await client.put(
            "/api/v1/users", json=[{"username": "bob", "contacts": {"wecom_webhook": ROBOT}}]
        )
        texts.append(bulk.text)
        texts.append((await client.get("/api/v1/users/bob")).text)
    assert saved.json()["contacts"] == {
        "wecom_webhook": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=***"
    }
    assert_no_secret(texts, KEY)


@pytest.mark.parametrize(
    "url",
    [
        f"http://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={KEY}",
        f"https://evil.example/cgi-bin/webhook/send?key={KEY}",
        f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={KEY}&debug=1",
        f"https://127.0.0.1/cgi-bin/webhook/send?key={KEY}",
    ],
)
async def test_a_webhook_the_policy_refuses_is_422_without_the_url(api: Api, url: str) -> None:
    async with api.client() as client:
        refused = await client.put("/api/v1/users/alice", json={"contacts": {"wecom_webhook": url}})
        in_bulk = await client.put(
            "/api/v1/users", json=[{"username": "x", "contacts": {"wecom_webhook": url}}]
        )
    assert_problem(refused, 422, "webhook URL is refused")
    assert_problem(in_bulk, 422)
    assert_no_secret([refused.text, in_bulk.text], KEY, url)
    assert await user_count(api) == 0


async def test_settings_read_and_change_an_existing_user_only(api: Api) -> None:
    await add_user(api.app, "alice", email="alice@example.com")
    async with api.client() as client:
        before = await client.get("/api/v1/users/alice/settings")
        changed = await client.put(
            "/api/v1/users/alice/settings",
            json={
                "channels": ["system"],
                "timezone": "Europe/Berlin",
                "quiet_hours": "23:00-06:30",
            },
        )
        unknown = await client.put("/api/v1/users/nobody/settings", json={"channels": ["email"]})
        unknown_get = await client.get("/api/v1/users/nobody/settings")
        bad_zone = await client.put(
            "/api/v1/users/alice/settings", json={"timezone": "Europe/Atlantis"}
        )
        bad_quiet = await client.put(
            "/api/v1/users/alice/settings", json={"quiet_hours": "22:00 to 07:00"}
        )
        contacts = await client.put(
            "/api/v1/users/alice/settings", json={"contacts": {"email": "x@y.z"}}
        )
        user = await client.get("/api/v1/users/alice")
    assert before.json() == {
        "channels": ["email", "system", "wecom"],
        "timezone": "UTC",
        "quiet_hours": None,
    }
    assert changed.json() == {
        "channels": ["system"],
        "timezone": "Europe/Berlin",
        "quiet_hours": "23:00-06:30",
    }
    assert_problem(unknown, 404, "nobody")
    assert_problem(unknown_get, 404)
    assert_problem(bad_zone, 422, "unknown time zone")
    assert_problem(bad_quiet, 422, "quiet hours")
    assert_problem(contacts, 422, "contacts")  # settings are not contacts
    assert user.json()["contacts"] == {"email": "alice@example.com"}
    assert await user_count(api) == 1


async def test_the_seed_settings_alias_keeps_its_shape(api: Api) -> None:
    await add_user(api.app, "alice", timezone="Asia/Shanghai", quiet_hours="22:00-07:00")
    async with api.client() as client:
        shown = await client.get("/api/v1/notifications/settings", params={"user": "alice"})
        changed = await client.put(
            "/api/v1/notifications/settings",
            params={"user": "alice"},
            json={"wechat_enabled": False, "quiet_hours_start": "", "quiet_hours_end": ""},
        )
        quiet = await client.put(
            "/api/v1/notifications/settings?user=alice",
            json={"quiet_hours_start": "21:30", "quiet_hours_end": "06:00", "email_enabled": False},
        )
        sms = await client.put(
            "/api/v1/notifications/settings?user=alice", json={"sms_enabled": True}
        )
        half = await client.put(
            "/api/v1/notifications/settings?user=alice", json={"quiet_hours_start": "22:00"}
        )
        none_left = await client.put(
            "/api/v1/notifications/settings?user=alice",
            json={"system_enabled": False, "wechat_enabled": False},
        )
        unknown = await client.get("/api/v1/notifications/settings?user=nobody")
        unknown_put = await client.put(
            "/api/v1/notifications/settings?user=nobody", json={"email_enabled": True}
        )
        missing_user = await client.get("/api/v1/notifications/settings")
        native = await client.get("/api/v1/users/alice/settings")
    assert shown.json() == {
        "user": "alice",
        "system_enabled": True,
        "email_enabled": True,
        "wechat_enabled": True,
        "sms_enabled": False,
        "quiet_hours_start": "22:00",
        "quiet_hours_end": "07:00",
        "timezone": "Asia/Shanghai",
    }
    assert changed.json()["wechat_enabled"] is False
    assert changed.json()["quiet_hours_start"] is None
    assert quiet.json()["quiet_hours_start"] == "21:30"
    assert quiet.json()["email_enabled"] is False
    assert_problem(sms, 422, "SMS")
    assert_problem(half, 422, "together")
    assert_problem(none_left, 422, "at least one")
    assert_problem(unknown, 404, "nobody")
    assert_problem(unknown_put, 404)
    assert_problem(missing_user, 422, "user")
    assert native.json() == {
        "channels": ["system"],
        "timezone": "Asia/Shanghai",
        "quiet_hours": "21:30-06:00",
    }


async def test_delete_removes_an_unreferenced_user_and_refuses_a_referenced_one(api: Api) -> None:
    await add_user(api.app, "alice", quiet_hours="22:00-07:00")
    await add_user(api.app, "bob")
    await add_alert(api.app, ["bob"])
    async with api.client() as client:
        gone = await client.delete("/api/v1/users/alice")
        again = await client.delete("/api/v1/users/alice")
        after = await client.get("/api/v1/users/alice")
        kept = await client.delete("/api/v1/users/bob")
        still = await client.get("/api/v1/users/bob")
    assert gone.status_code == 204
    assert_problem(again, 404)
    assert_problem(after, 404)
    assert_problem(kept, 409, "bob", "1 alert(s)")
    assert still.status_code == 200


async def test_bulk_put_stores_all_and_reports_created_and_updated(api: Api) -> None:
    await add_user(api.app, "alice", email="old@example.com")
    entries = [
        {"username": "alice", "contacts": {"email": "alice@example.com"}},
        {"username": "bob", "channels": ["email"], "timezone": "Asia/Tokyo"},
        {
            "username": "carol",
            "quiet_hours": "22:00-07:00",
            "contacts": {"email": "carol@example.com"},
        },
    ]
    async with api.client() as client:
        stored = await client.put("/api/v1/users", json=entries)
        users = (await client.get("/api/v1/users")).json()["items"]
    assert stored.status_code == 200
    assert stored.json() == {"created": 2, "updated": 1}
    by_name = {user["username"]: user for user in users}
    assert by_name["alice"]["contacts"] == {"email": "alice@example.com"}
    assert by_name["bob"]["channels"] == ["email"]
    assert by_name["bob"]["timezone"] == "Asia/Tokyo"
    assert by_name["carol"]["quiet_hours"] == "22:00-07:00"


async def test_bulk_put_with_bad_entries_lists_them_by_index_and_stores_nothing(api: Api) -> None:
    await add_user(api.app, "alice", email="alice@example.com")
    entries: list[Any] = [
        {"username": "alice", "contacts": {"email": "changed@example.com"}},  # fine, not stored
        {"username": "bob", "timezone": "Nowhere/City"},
        {"username": "carol"},
        {"username": "dave", "quiet_hours": "all night"},
        "erin",
        {"username": "bob"},  # repeats entry 1 (valid on its own)
        {"username": "bad name"},
        {"username": "frank", "channels": ["pager"]},
        {"contacts": {"email": "nobody@example.com"}},
        {
            "username": "gina",
            "contacts": {"wecom_webhook": "https://evil.example/cgi-bin/webhook/send?key=k"},
        },
    ]
    async with api.client() as client:
        refused = await client.put("/api/v1/users", json=entries)
        alice = (await client.get("/api/v1/users/alice")).json()
    body = assert_problem(refused, 422, "nothing was stored")
    indexes = [error["index"] for error in body["errors"]]
    assert indexes == [1, 3, 4, 5, 6, 7, 8, 9]
    details = {error["index"]: error["detail"] for error in body["errors"]}
    assert "time zone" in details[1]
    assert "quiet hours" in details[3]
    assert "object" in details[4]
    assert "repeats entry 1" in details[5]
    assert "username" in details[6]
    assert "pager" in details[7]
    assert "username" in details[8]
    assert "refused" in details[9]
    assert "evil.example/cgi-bin" not in refused.text
    assert await user_count(api) == 1
    assert alice["contacts"] == {"email": "alice@example.com"}


async def test_bulk_put_bounds_its_size(api: Api) -> None:
    async with api.client() as client:
        too_many = await client.put(
            "/api/v1/users", json=[{"username": f"u{i}"} for i in range(10_001)]
        )
        not_a_list = await client.put("/api/v1/users", json={"username": "alice"})
        # Past 1 MiB: only the bulk upsert has the larger bound.
        one_too_big = await client.put(
            "/api/v1/users/alice", json={"email": "a@example.com", "pad": " " * 2**20}
        )
    assert_problem(too_many, 422, "10000")
    assert_problem(not_a_list, 422)
    assert_problem(one_too_big, 413)
    assert await user_count(api) == 0
    assert await declared_length_answer(api, 16 * 2**20) != 413
    assert await declared_length_answer(api, 16 * 2**20 + 1) == 413


async def declared_length_answer(api: Api, length: int) -> int:
    """The status a bulk PUT declaring length bytes gets before any body is sent."""
    host, port = api.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"PUT /api/v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {api.tokens['admin']}\r\n"
            f"Content-Length: {length}\r\n\r\n".encode()
        )
        await writer.drain()
        try:
            # Long enough for a busy server to refuse; an accepted length is never answered.
            head = await asyncio.wait_for(reader.readline(), timeout=5)
        except TimeoutError:
            return 0  # the server waits for the body: the length was accepted
    finally:
        writer.close()
    return int(head.split()[1])


def ten_thousand() -> list[dict[str, Any]]:
    return [
        {
            "username": f"user-{number:05d}",
            "contacts": {"email": f"user-{number:05d}@example.com"},
            "timezone": "Asia/Shanghai",
            "quiet_hours": "22:00-07:00",
            "channels": ["system", "email"],
        }
        for number in range(10_000)
    ]


async def bulk_ten_thousand(api: Api, capsys: pytest.CaptureFixture[str], db: str) -> None:
    entries = ten_thousand()
    async with api.client() as client:
        started = time.perf_counter()
        stored = await client.put("/api/v1/users", json=entries)
        took = time.perf_counter() - started
        again_started = time.perf_counter()
        again = await client.put("/api/v1/users", json=entries)
        again_took = time.perf_counter() - again_started
        last = await client.get("/api/v1/users/user-09999")
    assert stored.status_code == 200, stored.text
    assert stored.json() == {"created": 10_000, "updated": 0}
    assert again.json() == {"created": 0, "updated": 10_000}
    assert await user_count(api) == 10_000
    assert last.json()["quiet_hours"] == "22:00-07:00"
    with capsys.disabled():
        print(
            f"\nbulk PUT of 10,000 users on {db}: {took:.2f} s created, {again_took:.2f} s updated"
        )


async def test_ten_thousand_users_in_one_bulk_put(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(httpx.Request("PUT", "/", json=ten_thousand()).content) > 2**20  # past 1 MiB
    await bulk_ten_thousand(api, capsys, "SQLite")


@pytest.mark.postgres
async def test_ten_thousand_users_in_one_bulk_put_on_postgres(
    postgres_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_api(postgres_settings) as api:
        await bulk_ten_thousand(api, capsys, "PostgreSQL")


@pytest.mark.parametrize(
    ("method", "path", "body", "scope"),
    [
        ("GET", "/api/v1/users", None, "read"),
        ("GET", "/api/v1/users/alice", None, "read"),
        ("GET", "/api/v1/users/alice/settings", None, "read"),
        ("GET", "/api/v1/notifications/settings?user=alice", None, "read"),
        ("PUT", "/api/v1/users/alice", {}, "admin"),
        ("PUT", "/api/v1/users", [], "admin"),
        ("DELETE", "/api/v1/users/alice", None, "admin"),
        ("PUT", "/api/v1/users/alice/settings", {}, "admin"),
        ("PUT", "/api/v1/notifications/settings?user=alice", {}, "admin"),
    ],
)
async def test_every_endpoint_needs_a_token_of_its_scope(
    api: Api, method: str, path: str, body: Any, scope: str
) -> None:
    await add_user(api.app, "bystander")
    lesser = {"read": ["ingest"], "admin": ["ingest", "read"]}[scope]
    async with api.client(None) as anonymous:
        missing = await anonymous.request(method, path, json=body)
        wrong = await anonymous.request(
            method, path, json=body, headers={"Authorization": "Bearer not-a-token"}
        )
    assert_problem(missing, 401)
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_problem(wrong, 401)
    for other in lesser:
        async with api.client(other) as client:
            assert_problem(await client.request(method, path, json=body), 403, scope)
    async with api.client(scope) as client:
        allowed = await client.request(method, path, json=body)
    assert allowed.status_code not in (401, 403)
    assert await user_count(api) >= 1  # nothing refused removed or added anyone
