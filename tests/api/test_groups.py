"""/api/v1/groups over a real server: CRUD, unknown members, problems and scopes."""

from __future__ import annotations

import pytest

from tests.support.api import Api
from tests.support.pipeline import add_user

PROBLEM = "application/problem+json"


async def test_put_creates_then_replaces_and_get_lists(api: Api) -> None:
    for name in ("alice", "bob", "carol"):
        await add_user(api.app, name)
    async with api.client("admin") as admin, api.client("read") as reader:
        created = await admin.put("/api/v1/groups/db-oncall", json={"members": ["bob", "alice"]})
        assert created.status_code == 201, created.text
        assert created.json()["members"] == ["alice", "bob"]
        replaced = await admin.put("/api/v1/groups/db-oncall", json={"members": ["carol"]})
        assert replaced.status_code == 200
        assert replaced.json()["members"] == ["carol"]
        await admin.put("/api/v1/groups/web", json={"members": []})
        listed = await reader.get("/api/v1/groups")
        one = await reader.get("/api/v1/groups/db-oncall")
    assert listed.status_code == 200
    assert [(g["name"], g["members"]) for g in listed.json()] == [
        ("db-oncall", ["carol"]),
        ("web", []),
    ]
    assert one.json()["name"] == "db-oncall"
    assert set(one.json()) == {"name", "members", "created_at", "updated_at"}


async def test_unknown_members_are_a_problem_naming_them(api: Api) -> None:
    await add_user(api.app, "alice")
    async with api.client("admin") as admin:
        refused = await admin.put(
            "/api/v1/groups/ops", json={"members": ["alice", "ghost", "phantom"]}
        )
        missing = await admin.get("/api/v1/groups/ops")
    assert refused.status_code == 422
    assert refused.headers["content-type"] == PROBLEM
    assert "ghost, phantom" in refused.json()["detail"]
    assert missing.status_code == 404  # nothing was stored


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({}, "members"),
        ({"members": "alice"}, "members"),
        ({"members": ["not a name"]}, "username"),
    ],
)
async def test_bad_bodies_are_422_problems(api: Api, body: object, says: str) -> None:
    async with api.client("admin") as admin:
        answer = await admin.put("/api/v1/groups/ops", json=body)
    assert answer.status_code == 422
    assert answer.headers["content-type"] == PROBLEM
    assert says in answer.json()["detail"]


async def test_bad_names_and_missing_groups(api: Api) -> None:
    async with api.client("admin") as admin:
        bad = await admin.put("/api/v1/groups/a%20b", json={"members": []})
        long = await admin.get("/api/v1/groups/" + "x" * 65)
        missing = await admin.get("/api/v1/groups/nope")
        gone = await admin.delete("/api/v1/groups/nope")
    assert bad.status_code == 422 and "group name" in bad.json()["detail"]
    assert long.status_code == 422
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM
    assert "nope" in missing.json()["detail"]
    assert gone.status_code == 404


async def test_delete(api: Api) -> None:
    await add_user(api.app, "alice")
    async with api.client("admin") as admin:
        await admin.put("/api/v1/groups/ops", json={"members": ["alice"]})
        deleted = await admin.delete("/api/v1/groups/ops")
        after = await admin.get("/api/v1/groups/ops")
        users_stay = await admin.put("/api/v1/groups/ops2", json={"members": ["alice"]})
    assert deleted.status_code == 204 and deleted.content == b""
    assert after.status_code == 404
    assert users_stay.status_code == 201


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/v1/groups", {"read", "admin"}),
        ("GET", "/api/v1/groups/ops", {"read", "admin"}),
        ("PUT", "/api/v1/groups/ops", {"admin"}),
        ("DELETE", "/api/v1/groups/ops", {"admin"}),
    ],
)
async def test_scopes(api: Api, method: str, path: str, allowed: set[str]) -> None:
    body: dict[str, list[str]] | None = {"members": []} if method == "PUT" else None
    async with api.client(None) as anonymous:
        unauthenticated = await anonymous.request(method, path, json=body)
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["content-type"] == PROBLEM
    for scope in ("ingest", "read", "admin"):
        async with api.client(scope) as client:
            answer = await client.request(method, path, json=body)
        if scope in allowed:
            assert answer.status_code not in (401, 403), (scope, answer.text)
        else:
            assert answer.status_code == 403, (scope, answer.text)
            assert answer.headers["content-type"] == PROBLEM


async def test_groups_are_in_the_openapi_document(api: Api) -> None:
    async with api.client(None) as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    assert set(paths["/api/v1/groups/{name}"]) == {"get", "put", "delete"}
    assert "201" in paths["/api/v1/groups/{name}"]["put"]["responses"]
