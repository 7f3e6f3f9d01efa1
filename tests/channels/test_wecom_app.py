"""WeCom app messages against a loopback application API: tokens, touser, errcodes, budgets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from channels.base import ChannelContext, ChannelUnavailable, Delivery
from channels.errors import DeliveryError, PermanentError, RateLimited, Reason, TransientError
from channels.wecom_app import AppPayload, WeComAppChannel, WeComAppSettings
from pipeline.config import Settings
from pipeline.models import State
from tests.channels.conftest import Harness
from tests.channels.test_wecom import make_delivery
from tests.support.channels import pinned
from tests.support.pipeline import add_alert, add_user, open_app, rows
from tests.support.secrets import assert_no_secret
from tests.support.wecom_app_server import AGENT_ID, CORP_ID, WeComApp

SECRET = "App-SeCrEt-5d1c9e2a7b"
USERS = [f"user{n:03d}" for n in range(150)]


@pytest.fixture
async def server() -> AsyncIterator[WeComApp]:
    async with WeComApp(SECRET, USERS) as running:
        yield running


def app_fields(server: WeComApp) -> dict[str, Any]:
    return {
        "enabled": True,
        "corp_id": CORP_ID,
        "agent_id": AGENT_ID,
        "secret": SECRET,
        "api_base": server.base_url,
        "allowed_hosts": server.base_url,
    }


def app_settings(server: WeComApp, **fields: Any) -> WeComAppSettings:
    return WeComAppSettings(_env_file=None, **(app_fields(server) | fields))


@pytest.fixture
def app_channel(harness: Harness, server: WeComApp) -> Callable[..., WeComAppChannel]:
    def build(**fields: Any) -> WeComAppChannel:
        context = ChannelContext(harness.sessions, harness.clock, send_timeout=timedelta(seconds=5))
        channel = WeComAppChannel.from_settings(app_settings(server, **fields), context)
        harness.opened.append(channel)  # type: ignore[arg-type]
        return channel

    return build


def to(userid: str | None, n: int = 1, **fields: Any) -> Delivery:
    return make_delivery(
        channel="wecom_app", notification_id=n, recipient_id=n, wecom_userid=userid, **fields
    )


async def send(channel: WeComAppChannel, *deliveries: Delivery) -> dict[int, DeliveryError]:
    failures: dict[int, DeliveryError] = {}
    for message in channel.render_group(deliveries):
        failures |= await channel.send(message.payload)
    return failures


# tokens


async def test_the_token_is_fetched_once_for_a_hundred_sends(
    server: WeComApp, app_channel: Callable[..., WeComAppChannel]
) -> None:
    channel = app_channel()
    results = await asyncio.gather(*(send(channel, to(USERS[n], n)) for n in range(100)))
    assert results == [{}] * 100
    assert server.token_fetches == 1
    assert len(server.received) == 100


async def test_a_refused_token_is_fetched_again_once_and_the_sends_succeed(
    server: WeComApp, app_channel: Callable[..., WeComAppChannel]
) -> None:
    channel = app_channel()
    assert await send(channel, to("user000")) == {}
    server.expire_tokens()  # WeCom answers 42001 to the cached token from now on
    results = await asyncio.gather(*(send(channel, to(USERS[n], n)) for n in range(1, 11)))
    assert results == [{}] * 10
    assert server.token_fetches == 2
    assert len(server.received) == 11


async def test_the_token_is_renewed_shortly_before_it_expires(
    server: WeComApp, harness: Harness, app_channel: Callable[..., WeComAppChannel]
) -> None:
    server.token_lifetime = 600
    channel = app_channel()
    await send(channel, to("user000"))
    harness.clock.advance(timedelta(seconds=530))
    await send(channel, to("user001", 2))
    assert server.token_fetches == 1
    harness.clock.advance(timedelta(seconds=15))  # within the margin: renewed before use
    await send(channel, to("user002", 3))
    assert server.token_fetches == 2


async def test_a_wrong_secret_is_a_permanent_credentials_error_that_never_shows_it(
    server: WeComApp, app_channel: Callable[..., WeComAppChannel], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    channel = app_channel(secret="Wrong-App-Secret-77aa")
    [error] = (await send(channel, to("user000"))).values()
    assert isinstance(error, PermanentError) and error.reason is Reason.WECOM_CREDENTIALS
    logged = [record.getMessage() for record in caplog.records]
    assert any("gettoken" in line for line in logged)  # httpx logged the request, masked
    texts = [str(error), repr(error), error.detail, *logged]
    assert_no_secret(texts, "Wrong-App-Secret-77aa")


# one call per alert


async def test_an_alerts_recipients_share_one_message(
    server: WeComApp, app_channel: Callable[..., WeComAppChannel]
) -> None:
    channel = app_channel()
    deliveries = [to(USERS[n], n) for n in range(3)]
    [message] = channel.render_group(deliveries)
    assert await channel.send(message.payload) == {}
    [received] = server.received
    assert received.touser == USERS[:3]
    assert received.duplicate_check
    assert received.content.startswith("## Disk full on db-1")
    assert "<@" not in received.content  # a direct message mentions nobody


def test_more_than_a_thousand_recipients_are_several_calls(
    app_channel: Callable[..., WeComAppChannel],
) -> None:
    deliveries = [to(f"u{n:05d}", n) for n in range(2500)]
    messages = app_channel().render_group(deliveries)
    sizes = [len(cast_payload(m.payload).users) for m in messages]
    assert sizes == [1000, 1000, 500]
    assert sum(len(m.deliveries) for m in messages) == 2500


def cast_payload(payload: Any) -> AppPayload:
    assert isinstance(payload, AppPayload)
    return payload


async def test_invaliduser_fails_those_users_alone(
    server: WeComApp, app_channel: Callable[..., WeComAppChannel]
) -> None:
    failures = await send(app_channel(), to("user001", 1), to("nobody-here", 2), to("user003", 3))
    assert list(failures) == [2]
    assert isinstance(failures[2], PermanentError)
    assert failures[2].reason is Reason.WECOM_INVALID_USER
    assert server.received[0].touser == ["user001", "user003"]


def test_a_recipient_without_a_userid_is_refused_alone(
    app_channel: Callable[..., WeComAppChannel],
) -> None:
    channel = app_channel()
    assert channel.group_key(to(None)) is None
    with pytest.raises(PermanentError) as caught:
        channel.render(to(None))
    assert caught.value.reason is Reason.NO_CONTACT
    assert not WeComAppChannel.reachable({})
    assert WeComAppChannel.reachable({"wecom_userid": "user001"})


def test_long_content_is_cut_to_the_app_limit(app_channel: Callable[..., WeComAppChannel]) -> None:
    payload = app_channel().render(to("user001", body="磁盘已满" * 1000))
    assert len(payload.content.encode("utf-8")) <= 2048
    assert "the full text is alert 7" in payload.content


# errcodes


@pytest.mark.parametrize(
    ("errcode", "kind", "reason"),
    [
        (-1, TransientError, Reason.WECOM_BUSY),
        (45009, RateLimited, Reason.WECOM_45009),
        (45033, RateLimited, Reason.WECOM_45033),
        (60020, PermanentError, Reason.WECOM_60020),
        (40056, PermanentError, Reason.WECOM_CREDENTIALS),
        (81013, PermanentError, Reason.WECOM_NO_RECIPIENT),
        (82001, PermanentError, Reason.WECOM_NO_RECIPIENT),
        (45002, PermanentError, Reason.WECOM_45002),
        (42001, TransientError, Reason.WECOM_TOKEN),
        (12345, PermanentError, Reason.WECOM_OTHER),
    ],
)
async def test_errcodes_are_classified(
    server: WeComApp,
    app_channel: Callable[..., WeComAppChannel],
    errcode: int,
    kind: type[DeliveryError],
    reason: Reason,
) -> None:
    # A token error twice: the one renewal is spent, so it stays an error.
    server.fail_next(*([errcode, errcode] if errcode == 42001 else [errcode]))
    [error] = (await send(app_channel(), to("user001"))).values()
    assert type(error) is kind
    assert error.reason is reason


# the member budget


async def test_a_members_budget_holds_their_messages_back_and_wecom_drops_none(
    server: WeComApp, app_channel: Callable[..., WeComAppChannel]
) -> None:
    server.member_limit = 2
    channel = app_channel(member_limits="2/1m,5/1h")
    for n in range(2):
        assert await send(channel, to("user001", n, title=f"alert {n}")) == {}
    failures = await send(channel, to("user001", 5, title="alert 5"), to("user002", 6))
    assert list(failures) == [5]
    assert isinstance(failures[5], RateLimited) and failures[5].reason is Reason.RATE_LIMITED
    assert failures[5].retry_after == timedelta(minutes=1)
    assert server.dropped_over_limit == 0
    assert server.received[-1].touser == ["user002"]


# settings


def test_an_unconfigured_app_says_what_to_set(harness: Harness, server: WeComApp) -> None:
    settings = app_settings(server, corp_id="", secret="")
    context = ChannelContext(harness.sessions, harness.clock)
    with pytest.raises(ChannelUnavailable, match="WECOM_APP_CORP_ID, WECOM_APP_SECRET"):
        WeComAppChannel.from_settings(settings, context)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"api_base": "https://evil.example"}, "WECOM_APP_API_BASE is refused"),
        ({"api_base": "SERVER/cgi-bin"}, "without a path"),
        ({"member_limits": "30/1m,lots"}, "is not COUNT/WINDOW"),
        ({"duplicate_check": "5h"}, "less than or equal to 4 hours"),
    ],
)
def test_bad_app_settings_name_the_problem(
    server: WeComApp, fields: dict[str, str], needle: str
) -> None:
    given = {k: v.replace("SERVER", server.base_url) for k, v in fields.items()}
    with pytest.raises(ValidationError, match=needle):
        app_settings(server, **given)


# through a worker


async def test_an_alert_to_three_people_is_one_call_and_an_unknown_userid_dies_alone(
    db_settings: Settings, server: WeComApp
) -> None:
    channels = pinned(wecom_app=app_fields(server))
    async with open_app(db_settings, channels=channels) as app:
        for name, userid in (
            ("alice", "user001"),
            ("bob", "left-the-company"),
            ("carol", "user003"),
        ):
            await add_user(app, name, channels="wecom_app", wecom_userid=userid)
        await add_alert(app, ["alice", "bob", "carol"])
        await app.producer().run()
        await app.relay().tick()
        assert await app.worker(["wecom_app"]).run_until_idle() == 3
        found = await rows(app)
    [received] = server.received
    assert received.touser == ["user001", "user003"]
    assert server.token_fetches == 1
    states = {name: (found[(name, "wecom_app")].state, found[(name, "wecom_app")].last_reason)
              for name in ("alice", "bob", "carol")}  # fmt: skip
    assert states == {
        "alice": (State.SENT, None),
        "bob": (State.DEAD, Reason.WECOM_INVALID_USER),
        "carol": (State.SENT, None),
    }


def test_an_app_that_is_off_never_stops_a_deployment_allowing_other_hosts() -> None:
    settings = WeComAppSettings(_env_file=None, allowed_hosts="http://127.0.0.1:8080")
    assert not settings.enabled
