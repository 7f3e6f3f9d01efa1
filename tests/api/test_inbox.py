"""/api/v1/users/{name}/inbox: pages, unread, marking read, and the live stream with resume."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.api import inbox as inbox_api
from pipeline.config import Settings
from tests.integration.cli import Cli, base_env
from tests.support.api import Api, running_api
from tests.support.inbox import EventStream, deliver
from tests.support.pipeline import add_user

PROBLEM = "application/problem+json"
INBOX = "/api/v1/users/alice/inbox"


async def alice_with(api: Api, count: int) -> None:
    await add_user(api.app, "alice", channels="system")
    await add_user(api.app, "bob", channels="system")
    for n in range(count):
        await deliver(api.app, ["alice", "bob"], f"Disk {n}")


async def test_the_inbox_is_paged_newest_first_by_cursor(api: Api) -> None:
    await alice_with(api, 5)
    titles: list[str] = []
    cursor: str | None = None
    pages = 0
    async with api.client("read") as client:
        while True:
            params: dict[str, str | int] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = await client.get(INBOX, params=params)
            assert page.status_code == 200, page.text
            titles += [m["title"] for m in page.json()["items"]]
            pages += 1
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
    assert titles == ["Disk 4", "Disk 3", "Disk 2", "Disk 1", "Disk 0"]
    assert pages == 3


async def test_unread_count_mark_one_and_mark_all(api: Api) -> None:
    await alice_with(api, 3)
    async with api.client("read") as client:
        messages = (await client.get(INBOX)).json()["items"]
        assert (await client.get(f"{INBOX}/unread-count")).json() == {"unread": 3}
        one = await client.post(f"{INBOX}/{messages[1]['id']}/read")
        again = await client.post(f"{INBOX}/{messages[1]['id']}/read")
        unread = (await client.get(INBOX, params={"unread": "true"})).json()["items"]
        count = (await client.get(f"{INBOX}/unread-count")).json()
        everything = await client.post(f"{INBOX}/read-all")
        after = (await client.get(f"{INBOX}/unread-count")).json()
        bob = (await client.get("/api/v1/users/bob/inbox/unread-count")).json()
    assert one.status_code == 200 and one.json()["read"] is True
    assert one.json()["title"] == messages[1]["title"] and one.json()["read_at"]
    assert again.json() == one.json()
    assert [m["id"] for m in unread] == [messages[0]["id"], messages[2]["id"]]
    assert count == {"unread": 2}
    assert everything.json() == {"marked": 2}
    assert after == {"unread": 0} and bob == {"unread": 3}


async def test_unknown_users_and_other_peoples_messages_are_404(api: Api) -> None:
    await alice_with(api, 1)
    async with api.client("read") as client:
        bobs = (await client.get("/api/v1/users/bob/inbox")).json()["items"][0]["id"]
        answers = [
            await client.get("/api/v1/users/nobody/inbox"),
            await client.get("/api/v1/users/nobody/inbox/unread-count"),
            await client.post("/api/v1/users/nobody/inbox/read-all"),
            await client.get("/api/v1/users/nobody/inbox/stream"),
            await client.post(f"{INBOX}/{bobs}/read"),
            await client.post(f"{INBOX}/999999/read"),
        ]
        still_unread = (await client.get("/api/v1/users/bob/inbox/unread-count")).json()
    assert [a.status_code for a in answers] == [404] * 6
    assert all(a.headers["content-type"] == PROBLEM for a in answers)
    assert "nobody" in answers[0].json()["detail"]
    assert still_unread == {"unread": 1}


@pytest.mark.parametrize(
    ("path", "params", "headers"),
    [
        (INBOX, {"cursor": "abc"}, {}),
        (INBOX, {"cursor": "99999999999"}, {}),
        (INBOX, {"limit": 0}, {}),
        (INBOX, {"limit": 201}, {}),
        (f"{INBOX}/stream", {}, {"Last-Event-ID": "x1"}),
        (f"{INBOX}/stream", {"after": "-1"}, {}),
    ],
)
async def test_bad_cursors_limits_and_event_ids_are_422(
    api: Api, path: str, params: dict[str, str | int], headers: dict[str, str]
) -> None:
    await add_user(api.app, "alice", channels="system")
    async with api.client("read") as client:
        answer = await client.get(path, params=params, headers=headers)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == PROBLEM


@pytest.mark.parametrize("message_id", ["0", "3000000000", "abc"])
async def test_message_ids_out_of_range_are_422(api: Api, message_id: str) -> None:
    await add_user(api.app, "alice", channels="system")
    async with api.client("read") as client:
        answer = await client.post(f"{INBOX}/{message_id}/read")
    assert answer.status_code == 422
    assert answer.headers["content-type"] == PROBLEM


ENDPOINTS = [
    ("GET", INBOX),
    ("GET", f"{INBOX}/unread-count"),
    ("POST", f"{INBOX}/read-all"),
    ("POST", f"{INBOX}/1/read"),
    ("GET", f"{INBOX}/stream"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_every_inbox_endpoint_needs_the_read_scope(api: Api, method: str, path: str) -> None:
    async with api.client(None) as anonymous, api.client("ingest") as ingest:
        # Unknown user or not, no token says nothing about who exists.
        missing = await anonymous.request(method, path)
        wrong_scope = await ingest.request(method, path)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert wrong_scope.status_code == 403
    assert missing.headers["content-type"] == wrong_scope.headers["content-type"] == PROBLEM


# --- the stream ----------------------------------------------------------------------------


async def test_the_stream_pushes_new_messages_and_resumes_after_last_event_id(api: Api) -> None:
    await alice_with(api, 1)  # before the stream: not sent without a resume point
    async with api.client("read") as client:
        async with client.stream("GET", f"{INBOX}/stream") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = EventStream(response)
            await events.opened()
            await deliver(api.app, ["alice"], "Disk live")
            written = time.monotonic()
            live = await asyncio.wait_for(events.next(), 5)
            latency = time.monotonic() - written
        assert live is not None and json.loads(live.data)["title"] == "Disk live"
        assert live.id == str(json.loads(live.data)["id"])
        assert latency < 1.0, latency

        # Missed while away: sent first, in order, then live ones; each once.
        for n in (1, 2):
            await deliver(api.app, ["alice", "bob"], f"Disk missed {n}")
        headers = {"Last-Event-ID": live.id}
        async with client.stream("GET", f"{INBOX}/stream", headers=headers) as response:
            events = EventStream(response)
            await events.opened()
            caught_up = [await asyncio.wait_for(events.next(), 5) for _ in range(2)]
            await deliver(api.app, ["alice"], "Disk after")
            await deliver(api.app, ["alice"], "Disk last")
            later = [await asyncio.wait_for(events.next(), 5) for _ in range(2)]
    titles = [json.loads(e.data)["title"] for e in caught_up + later if e is not None]
    assert titles == ["Disk missed 1", "Disk missed 2", "Disk after", "Disk last"]
    ids = [int(e.id or 0) for e in caught_up + later if e is not None]
    assert ids == sorted(ids) and int(live.id or 0) < ids[0]


async def test_after_resumes_like_last_event_id_and_the_header_wins(api: Api) -> None:
    await alice_with(api, 3)
    async with api.client("read") as client:
        ids = [m["id"] for m in (await client.get(INBOX)).json()["items"]][::-1]
        got = {}
        for name, params, headers in (
            ("query", {"after": ids[0]}, {}),
            ("header", {"after": ids[0]}, {"Last-Event-ID": str(ids[1])}),
        ):
            async with client.stream(
                "GET", f"{INBOX}/stream", params=params, headers=headers
            ) as response:
                events = EventStream(response)
                await events.opened()
                got[name] = [
                    int((await asyncio.wait_for(events.next(), 5)).id or 0)  # type: ignore[union-attr]
                    for _ in range(len(ids) - 1 - (name == "header"))
                ]
    assert got == {"query": ids[1:], "header": ids[2:]}


async def test_the_stream_sends_keep_alive_comments(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox_api, "KEEP_ALIVE_SECONDS", 0.2)
    await add_user(api.app, "alice", channels="system")
    async with api.client("read") as client, client.stream("GET", f"{INBOX}/stream") as response:
        events = EventStream(response)
        await events.opened()
        ping = await asyncio.wait_for(events.next(comments=True), 5)
    assert ping is not None and ping.comment is not None and ping.comment.startswith("ping")


async def test_open_streams_end_cleanly_when_the_server_stops(sqlite_settings: Settings) -> None:
    async with running_api(sqlite_settings) as api:
        await add_user(api.app, "alice", channels="system")
        client = api.client("read")
        streams = [client.stream("GET", f"{INBOX}/stream") for _ in range(3)]
        readers = []
        for stream in streams:
            events = EventStream(await stream.__aenter__())
            await events.opened()
            readers.append(asyncio.create_task(events.next()))
        started = time.monotonic()
    stopped_in = time.monotonic() - started
    ends = [await asyncio.wait_for(reader, 5) for reader in readers]
    for stream in streams:
        await stream.__aexit__(None, None, None)
    await client.aclose()
    assert ends == [None, None, None]  # a clean end of stream, not a broken connection
    assert stopped_in < 5, f"stopping took {stopped_in:.1f} s with streams open"


# --- across processes ------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.timeout(300)
async def test_a_worker_in_another_process_reaches_the_stream_within_a_second(
    postgres_settings: Settings, tmp_path: Path
) -> None:
    """`tocsin run --drain` (its own process) writes; the API process pushes it at once."""
    url = postgres_settings.database_url.get_secret_value()
    cli = Cli(base_env(tmp_path, DATABASE_URL=url), tmp_path)
    await cli.ok("users", "upsert", "alice", "--channels", "system")

    async def written_elsewhere(*titles: str) -> None:
        for title in titles:
            await cli.ok("alerts", "create", "--title", title, "--recipient", "alice")
        await cli.ok("run", "--drain")

    async with running_api(postgres_settings) as api, api.client("read") as client:
        async with client.stream("GET", f"{INBOX}/stream") as response:
            events = EventStream(response)
            await events.opened()
            writer = asyncio.create_task(written_elsewhere("Disk 1"))
            first = await asyncio.wait_for(events.next(), 120)
            received = datetime.now(UTC)
            await writer
        assert first is not None
        message = json.loads(first.data)
        # created_at is stamped just before the insert commits: an upper bound of the delay.
        latency = (received - datetime.fromisoformat(message["created_at"])).total_seconds()
        print(f"inbox stream latency across processes on PostgreSQL: {latency * 1000:.0f} ms")
        assert message["title"] == "Disk 1"
        assert latency < 5, latency  # pushed (polled every 0.5 s), not at the next hourly pass

        # Away while two more are written; back with Last-Event-ID, then one more live.
        await written_elsewhere("Disk 2", "Disk 3")
        headers = {"Last-Event-ID": first.id or ""}
        async with client.stream("GET", f"{INBOX}/stream", headers=headers) as response:
            events = EventStream(response)
            await events.opened()
            missed = [await asyncio.wait_for(events.next(), 30) for _ in range(2)]
            writer = asyncio.create_task(written_elsewhere("Disk 4"))
            live = await asyncio.wait_for(events.next(), 120)
            await writer
            # Nothing more: no copy of what the catch-up and the live feed both saw.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(events.next(), 1.5)
    got = [json.loads(e.data)["title"] for e in (*missed, live) if e is not None]
    assert got == ["Disk 2", "Disk 3", "Disk 4"]
