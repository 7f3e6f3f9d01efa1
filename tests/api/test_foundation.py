"""The API's frame: health without a token, problem+json for every error, bounded bodies."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx

from pipeline.config import Settings
from pipeline.secret_url import SecretUrl
from tests.support.api import Api, running_api
from tests.support.proxy import FaultProxy

PROBLEM = "application/problem+json"


async def test_health_and_readiness_need_no_token(api: Api) -> None:
    async with api.client(None) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "database": "ok", "queue": "ok"}


async def test_readiness_and_every_call_are_503_while_the_database_does_not_answer(
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
        async with running_api(routed) as served, served.client() as client:
            assert (await client.get("/readyz")).status_code == 200
            proxy.blackhole()
            proxy.close_all()
            ready = await client.get("/readyz")
            assert (await client.get("/healthz")).status_code == 200
            # The token check reads the database too: a retry-able 503, never a 500.
            calls = [
                await client.get("/api/v1/alerts"),
                await client.post(
                    "/api/v1/integrations/alertmanager",
                    json={"version": "4", "status": "firing", "alerts": []},
                ),
            ]
            proxy.pass_through()
    assert ready.status_code == 503
    assert ready.json()["database"].startswith("unavailable")
    assert ready.json()["queue"] == "ok"
    for call in calls:
        assert call.status_code == 503, call.text
        assert call.headers["content-type"] == PROBLEM
        assert call.headers["retry-after"] == "10"


async def test_unknown_paths_are_problems(api: Api) -> None:
    async with api.client(None) as client:
        missing = await client.get("/api/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM
    assert missing.json()["status"] == 404


async def test_an_oversized_body_is_refused_before_it_is_read(api: Api) -> None:
    limit = api.app.settings.api_max_body_bytes
    async with api.client(None) as client:
        big = await client.post("/healthz", content=b"x" * (limit + 1))
    assert big.status_code == 413
    assert big.headers["content-type"] == PROBLEM
    assert str(limit) in big.json()["detail"]


async def test_a_slow_body_is_cut_off(api: Api) -> None:
    host, port = api.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        # The server answers (408) or closes within the body timeout, never holds on.
        head = await asyncio.wait_for(reader.read(200), timeout=60)
    finally:
        writer.close()
    assert head == b"" or b"408" in head.split(b"\r\n", 1)[0], head


async def test_the_openapi_document_is_served(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url, trust_env=False) as client:
        document = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    assert document["info"]["title"] == "Tocsin"
    assert "/healthz" in document["paths"]
    assert docs.status_code == 200


async def test_every_body_route_answers_422_to_a_body_that_is_not_utf8(api: Api) -> None:
    async with api.client() as client:
        document = (await client.get("/openapi.json")).json()
        routes = [
            (method, path.replace("{name}", "alice").replace("{alert_id}", "1"))
            for path, item in document["paths"].items()
            for method, operation in item.items()
            if "requestBody" in operation
        ]
        headers = {"Content-Type": "application/json"}
        body = b'{"title": "\xff\xfe"}'
        answers = [
            await client.request(method, path, content=body, headers=headers)
            for method, path in routes
        ]
    assert len(routes) >= 5, routes
    for (method, path), answer in zip(routes, answers, strict=True):
        assert answer.status_code == 422, (method, path, answer.text)
        assert answer.headers["content-type"] == PROBLEM


async def test_a_cursor_that_is_not_ascii_digits_is_a_422_everywhere(api: Api) -> None:
    # '²' passes str.isdigit() and fails int(): once a 500.
    async with api.client() as client:
        await client.put("/api/v1/users/alice", json={"channels": ["system"]})
        answers = {
            (path, cursor): await client.get(path, params={"cursor": cursor})
            for path in ("/api/v1/alerts", "/api/v1/audit", "/api/v1/users/alice/inbox")
            for cursor in ("²", "٣", "-1", "99999999999")
        }
    for where, answer in answers.items():
        assert answer.status_code == 422, (where, answer.text)
        assert answer.headers["content-type"] == PROBLEM
