"""The outbound webhook channel against a real loopback receiver that verifies its signature."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from channels.errors import Reason
from channels.webhook import WebhookSettings, signature
from pipeline.config import Settings
from pipeline.models import State
from pipeline.validation import InputError
from tests.support.channels import pinned
from tests.support.http_server import serve
from tests.support.pipeline import START, add_alert, add_user, cycle, open_app, rows
from tests.support.secrets import assert_no_secret

SECRET = "Planted-Webhook-Secret-4c1d"
TOKEN = "Planted-Path-Token-9e2f"


@dataclass
class Receiver:
    """Accepts POST /hooks/{name} like a service that takes Tocsin's webhook would."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    received: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    origin: str = ""

    async def hook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.received.append(
            (request.path, json.loads(raw), verify(request.headers, raw, SECRET.encode()))
        )
        return web.Response(status=self.status, headers=self.headers)

    def url(self, name: str = "team") -> str:
        return f"{self.origin}/hooks/{name}"


def verify(headers: Any, raw: bytes, secret: bytes) -> str:
    """What a receiver does: recompute the HMAC over "<t>." + body, compare in constant time."""
    fields = dict(part.split("=", 1) for part in headers["X-Tocsin-Signature"].split(","))
    expected = hmac.new(secret, f"{fields['t']}.".encode() + raw, hashlib.sha256).hexdigest()
    return "valid" if hmac.compare_digest(expected, fields["v1"]) else "forged"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    served = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/{name}", served.hook)
    runner, port = await serve(app)
    served.origin = f"http://127.0.0.1:{port}"
    yield served
    await runner.cleanup()


def webhook(receiver: Receiver, **fields: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "url": receiver.url(),
        "secret": SECRET,
        "allowed_hosts": receiver.origin,
    } | fields


async def test_a_notification_is_posted_as_signed_json(
    db_settings: Settings, receiver: Receiver
) -> None:
    async with open_app(db_settings, channels=pinned(webhook=webhook(receiver))) as app:
        await add_user(app, "alice", channels="webhook,system")
        alert = await add_alert(app, ["alice"], "critical", "Disk 95% on db-1")
        await app.producer().run()
        await cycle(app)
        row = (await rows(app))[("alice", "webhook")]
    [(path, body, verdict)] = receiver.received
    assert (path, verdict) == ("/hooks/team", "valid")
    assert body == {
        "id": row.id,
        "attempt": 1,
        "alert": {
            "id": alert.id,
            "title": "Disk 95% on db-1",
            "body": "Disk 95% on db-1: details",
            "severity": "critical",
            "created_at": START.isoformat(),
        },
        "recipient": "alice",
    }
    assert row.state == State.SENT


def test_the_signature_covers_the_timestamp_and_the_exact_body() -> None:
    header = signature(SECRET.encode(), 1700000000, b'{"id":1}')
    assert header.startswith("t=1700000000,v1=")
    headers = {"X-Tocsin-Signature": header}
    assert verify(headers, b'{"id":1}', SECRET.encode()) == "valid"
    assert verify(headers, b'{"id":2}', SECRET.encode()) == "forged"
    assert verify({"X-Tocsin-Signature": header.replace("t=17", "t=18")}, b'{"id":1}', b"x") == (
        "forged"
    )


async def test_an_own_url_wins_and_is_only_ever_shown_masked(
    sqlite_settings: Settings, receiver: Receiver
) -> None:
    own = f"{receiver.url('alice')}?token={TOKEN}"
    async with open_app(sqlite_settings, channels=pinned(webhook=webhook(receiver))) as app:
        record = await add_user(app, "alice", channels="webhook", webhook_url=own)
        await add_alert(app, ["alice"])
        await app.producer().run()
        await cycle(app)
    assert [path for path, _, _ in receiver.received] == ["/hooks/alice"]
    assert record.contacts == {"webhook_url": f"{receiver.origin}/***"}
    assert_no_secret(repr(record), TOKEN)


@pytest.mark.parametrize(
    ("status", "headers", "state", "attempts", "reason", "wait"),
    [
        (503, {"Retry-After": "1800"}, State.PENDING, 1, Reason.HTTP_5XX, timedelta(minutes=30)),
        (500, {}, State.PENDING, 1, Reason.HTTP_5XX, timedelta(minutes=5)),
        (429, {"Retry-After": "120"}, State.PENDING, 0, Reason.HTTP_429, timedelta(minutes=2)),
        (404, {}, State.DEAD, 1, Reason.HTTP_4XX, None),
        (301, {"Location": "http://169.254.169.254/"}, State.DEAD, 1, Reason.HTTP_4XX, None),
    ],
)
async def test_statuses_retry_wait_or_fail_as_documented(
    sqlite_settings: Settings,
    receiver: Receiver,
    status: int,
    headers: dict[str, str],
    state: State,
    attempts: int,
    reason: Reason,
    wait: timedelta | None,
) -> None:
    receiver.status, receiver.headers = status, headers
    async with open_app(sqlite_settings, channels=pinned(webhook=webhook(receiver))) as app:
        await add_user(app, "alice", channels="webhook")
        await add_alert(app, ["alice"])
        await app.producer().run()
        await cycle(app)
        row = (await rows(app))[("alice", "webhook")]
    assert (row.state, row.attempts, row.last_reason) == (state, attempts, reason)
    if wait is not None:
        assert row.not_before == START + wait
    assert len(receiver.received) == 1  # a redirect is never followed


async def test_a_url_outside_the_allowlist_is_refused_when_set_saved_or_sent(
    sqlite_settings: Settings, receiver: Receiver
) -> None:
    elsewhere = "http://127.0.0.2:9/hooks/x"
    with pytest.raises(ValidationError, match="WEBHOOK_URL is refused") as caught:
        WebhookSettings(url=elsewhere, allowed_hosts=receiver.origin)
    assert elsewhere not in str(caught.value)
    async with open_app(sqlite_settings, channels=pinned(webhook=webhook(receiver))) as app:
        with pytest.raises(InputError, match=r"^webhook_url is invalid: refused: ") as refused:
            await add_user(app, "mallory", channels="webhook", webhook_url=elsewhere)
        assert elsewhere not in str(refused.value)
    # Saved under a wider policy, sent under this one: refused at send time, nothing posted.
    wide = pinned(webhook=webhook(receiver, allowed_hosts=f"{receiver.origin},http://127.0.0.2:9"))
    async with open_app(sqlite_settings, channels=wide) as app:
        await add_user(app, "mallory", channels="webhook", webhook_url=elsewhere)
    async with open_app(sqlite_settings, channels=pinned(webhook=webhook(receiver))) as app:
        await add_alert(app, ["mallory"])
        await app.producer().run()
        await cycle(app)
        row = (await rows(app))[("mallory", "webhook")]
    assert (row.state, row.last_reason) == (State.DEAD, Reason.URL_REFUSED)
    assert receiver.received == []


async def test_it_is_opt_in_and_off_without_its_secret(
    sqlite_settings: Settings, receiver: Receiver
) -> None:
    async with open_app(sqlite_settings, channels=pinned(webhook=webhook(receiver))) as app:
        await add_user(app, "bob")  # never chose channels: the defaults leave webhook out
        await add_alert(app, ["bob"])
        await app.producer().run()
        assert ("bob", "system") in await rows(app)
        assert ("bob", "webhook") not in await rows(app)  # opt-in: not even a suppressed row
    no_secret = pinned(webhook=webhook(receiver, secret=""))
    async with open_app(sqlite_settings, channels=no_secret) as app:
        await add_user(app, "alice", channels="webhook")
        await add_alert(app, ["alice"])
        await app.producer().run()
        await cycle(app)
        row = (await rows(app))[("alice", "webhook")]
    assert (row.state, row.last_reason) == (State.DEAD, Reason.CHANNEL_DISABLED)
    assert "WEBHOOK_SECRET" in (row.last_error or "")
    assert receiver.received == []
