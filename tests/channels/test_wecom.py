"""The WeCom channel against a real loopback robot server: rendering, limits, errcodes, secrets."""

from __future__ import annotations

import logging
import re
import socket
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.base import ChannelUnavailable, Delivery
from channels.errors import (
    DeliveryError,
    PermanentError,
    RateLimited,
    Reason,
    TransientError,
)
from channels.http import transport_error
from channels.wecom import WeComChannel, WeComPayload, WeComSettings
from channels.wecom_markdown import (
    MARKDOWN_MAX_BYTES,
    TEXT_MAX_BYTES,
    TRUNCATION_MARK,
    render_markdown,
    severity_colour,
    truncate_utf8,
)
from channels.wecom_url import robot_key
from pipeline.outbound import UrlRefused
from tests.channels.conftest import Harness
from tests.channels.test_errors import WECOM_TABLE
from tests.support import email_channel
from tests.support.secrets import assert_no_secret
from tests.support.wecom_server import WeComRobot

BODY = "Usage is 97% and rising"
SECRET_KEY = "SeCrEt-7f3a91c2-d4e8-robot-key"


def make_delivery(**overrides: Any) -> Delivery:
    return email_channel.make_delivery(**({"channel": "wecom", "body": BODY} | overrides))


@pytest.fixture
def robot_channel(wecom_server: WeComRobot, harness: Harness) -> Callable[..., WeComChannel]:
    def build(**overrides: Any) -> WeComChannel:
        overrides.setdefault("wecom_webhook_url", wecom_server.webhook_url("k1"))
        return harness.channel(**overrides)

    return build


async def deliver(channel: WeComChannel, delivery: Delivery | None = None) -> None:
    await channel.send(channel.render(delivery or make_delivery()))


async def send_error(channel: WeComChannel, delivery: Delivery | None = None) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        await deliver(channel, delivery)
    return caught.value


def content_of(body: dict[str, Any]) -> str:
    content = body[body["msgtype"]]["content"]
    assert isinstance(content, str)
    return content


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# configuration


def test_disabled_channel_is_unavailable(harness: Harness) -> None:
    with pytest.raises(ChannelUnavailable, match="WECOM_ENABLED=true"):
        harness.channel(wecom_enabled=False)


def test_no_webhook_anywhere_is_channel_disabled(harness: Harness) -> None:
    channel = harness.channel()
    with pytest.raises(PermanentError, match="no WeCom webhook configured") as caught:
        channel.render(make_delivery())
    assert caught.value.reason is Reason.CHANNEL_DISABLED


@pytest.mark.parametrize("url", ["ftp://example.com/send?key=abc", "not a url", "https:///x"])
def test_non_http_webhook_is_refused(harness: Harness, url: str) -> None:
    with pytest.raises(PermanentError) as caught:
        harness.channel().render(make_delivery(wecom_webhook=url))
    assert caught.value.reason is Reason.URL_REFUSED


def test_every_recipient_is_reachable_through_the_group_robot() -> None:
    assert WeComChannel.reachable({})
    assert WeComChannel.reachable({"wecom_userid": "zhangsan"})


@pytest.mark.parametrize(
    ("env", "shown"),
    [
        ({"WECOM_RATE_LIMIT": "30/2m"}, "30/2m"),
        ({"WECOM_RATE_PER_MINUTE": "12"}, "12/1m"),
        ({}, "20/1m"),
    ],
)
def test_the_rate_limit_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], shown: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert str(WeComSettings(_env_file=None).rate_limit) == shown


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"WECOM_RATE_LIMIT": "lots"}, "is not COUNT/WINDOW"),
        ({"WECOM_MAX_PARTS": "0"}, "WECOM_MAX_PARTS"),
        ({"WECOM_FULL_TEXT_URL": "https://portal.example/alerts"}, "with {alert_id}"),
        ({"WECOM_FULL_TEXT_URL": "javascript:alert({alert_id})"}, "http(s) URL"),
    ],
)
def test_bad_robot_settings_say_what_is_wrong(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(needle)):
        WeComSettings(_env_file=None)


def test_robot_key() -> None:
    assert robot_key("key=abc-1") == "abc-1"
    for query in ("", "key=", "KEY=x", "key=a&key=b", "key=a&debug=1", "key=a b", "k=a"):
        with pytest.raises(UrlRefused):
            robot_key(query)


# rendering


def test_render_markdown_with_heading_colour_body_and_mention(harness: Harness) -> None:
    channel = harness.channel(
        wecom_webhook_url="https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc"
    )
    payload = channel.render(make_delivery())
    [body] = payload.bodies
    assert body["msgtype"] == "markdown"
    content = content_of(body)
    assert content.startswith("## Disk full on db-1\n")
    assert '<font color="warning">CRITICAL</font>' in content
    assert "Usage is 97% and rising" in content
    assert content.endswith("<@zhangsan>")
    assert list(payload.urls) == ["abc"]


def test_render_without_userid_mentions_nobody() -> None:
    assert "<@" not in render_markdown(make_delivery(wecom_userid=None))


def test_render_keeps_title_on_its_heading_line() -> None:
    content = render_markdown(make_delivery(title="one\ntwo\r\n## three"))
    assert content.splitlines()[0] == "## one two \\#\\# three"


@pytest.mark.parametrize(
    ("severity", "colour"),
    [
        ("critical", "warning"),
        ("CRITICAL", "warning"),
        ("error", "warning"),
        ("warning", "comment"),
        ("info", "info"),
        ("unknown", "info"),
    ],
)
def test_severity_colour(severity: str, colour: str) -> None:
    assert severity_colour(severity) == colour


def test_recipient_webhook_wins_over_the_global_one(
    wecom_server: WeComRobot, harness: Harness
) -> None:
    channel = harness.channel(wecom_webhook_url=wecom_server.webhook_url("k1"))
    payload = channel.render(make_delivery(wecom_webhook=wecom_server.webhook_url("k2")))
    assert payload.urls == {"k2": wecom_server.webhook_url("k2")}


# truncation


@settings(database=None, max_examples=300)
@given(
    text=st.text(alphabet=st.sampled_from("aZ9 é中文字🚨\n…"), max_size=300),
    max_bytes=st.integers(min_value=0, max_value=400),
)
def test_truncate_utf8_property(text: str, max_bytes: int) -> None:
    result = truncate_utf8(text, max_bytes)
    encoded = result.encode("utf-8")
    assert len(encoded) <= max_bytes
    encoded.decode("utf-8")  # valid UTF-8: never half a character
    if len(text.encode("utf-8")) <= max_bytes:
        assert result == text
        return
    mark_fits = max_bytes >= len(TRUNCATION_MARK.encode("utf-8"))
    prefix = result.removesuffix(TRUNCATION_MARK) if mark_fits else result
    assert result.endswith(TRUNCATION_MARK) or not mark_fits
    assert text.startswith(prefix)
    # The longest prefix that fits: one more character would not.
    room = max_bytes - (len(TRUNCATION_MARK.encode("utf-8")) if mark_fits else 0)
    assert len(text[: len(prefix) + 1].encode("utf-8")) > room


@pytest.mark.parametrize(
    ("text", "max_bytes", "expected"),
    [
        ("中文字", 9, "中文字"),
        ("中文字", 8, "中…"),
        ("中文字", 6, "中…"),
        ("中文字", 5, "…"),
        ("中文字", 2, ""),
        ("abcdef", 5, "ab…"),
        ("", 0, ""),
    ],
)
def test_truncate_utf8_examples(text: str, max_bytes: int, expected: str) -> None:
    assert truncate_utf8(text, max_bytes) == expected


def test_truncate_utf8_rejects_negative_limits() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        truncate_utf8("x", -1)


def test_long_cjk_body_in_one_part_is_cut_and_keeps_the_mention() -> None:
    content = render_markdown(make_delivery(body="磁盘已满" * 2000))
    assert len(content.encode("utf-8")) <= MARKDOWN_MAX_BYTES
    assert len(content.encode("utf-8")) > MARKDOWN_MAX_BYTES - 16
    assert f"{TRUNCATION_MARK}\n\n(Cut short: the full text is alert 7 in Tocsin.)" in content
    assert content.startswith("## Disk full on db-1")
    assert content.endswith("\n\n<@zhangsan>")


async def test_robot_accepts_every_part_of_a_long_cjk_post_in_order(
    wecom_server: WeComRobot, robot_channel: Callable[..., WeComChannel]
) -> None:
    body = "".join(f"第{n}行：磁盘使用率过高\n" for n in range(900))  # about 26 KB
    await deliver(robot_channel(wecom_max_parts=10), make_delivery(body=body))
    received = [content_of(b) for b in wecom_server.received["k1"]]
    assert 6 <= len(received) <= 10
    assert all(len(part.encode("utf-8")) <= MARKDOWN_MAX_BYTES for part in received)
    assert [part.split("\n", 1)[0] for part in received] == [
        f"({n}/{len(received)})" for n in range(1, len(received) + 1)
    ]
    # Split between lines: every line arrives whole, once, in order.
    lines = [line for part in received for line in part.split("\n") if line.startswith("第")]
    assert lines == [f"第{n}行：磁盘使用率过高" for n in range(900)]
    assert received[-1].endswith("<@zhangsan>")


async def test_a_post_past_its_parts_is_cut_with_a_link_to_the_full_text(
    wecom_server: WeComRobot, robot_channel: Callable[..., WeComChannel]
) -> None:
    link = "https://tocsin.example.com/alerts/{alert_id}"
    channel = robot_channel(wecom_max_parts=2, wecom_full_text_url=link)
    await deliver(channel, make_delivery(body="告警" * 3000))
    received = [content_of(b) for b in wecom_server.received["k1"]]
    assert len(received) == 2
    assert all(len(part.encode("utf-8")) <= MARKDOWN_MAX_BYTES for part in received)
    assert "[Full text](https://tocsin.example.com/alerts/7)" in received[0]
    assert received[1] == "(2/2)\n<@zhangsan>"


async def test_robot_accepts_text_truncated_to_its_limit(
    wecom_server: WeComRobot, robot_channel: Callable[..., WeComChannel]
) -> None:
    channel = robot_channel()
    content = truncate_utf8("中" * 700, TEXT_MAX_BYTES)  # 2100 B before truncation
    body = {"msgtype": "text", "text": {"content": content}}
    await channel.send(WeComPayload({"k1": wecom_server.webhook_url("k1")}, (body,)))
    assert wecom_server.received["k1"] == [body]


# sending


async def test_send_posts_markdown_to_the_robot(
    wecom_server: WeComRobot, robot_channel: Callable[..., WeComChannel]
) -> None:
    await deliver(robot_channel())
    [body] = wecom_server.received["k1"]
    assert body["msgtype"] == "markdown"
    assert "Disk full on db-1" in content_of(body)
    assert wecom_server.requests == 1


WECOM_ERRCODES = WECOM_TABLE


@pytest.mark.parametrize(("errcode", "kind", "reason"), WECOM_ERRCODES)
async def test_errcode_decides_the_error(
    wecom_server: WeComRobot,
    robot_channel: Callable[..., WeComChannel],
    errcode: int,
    kind: type[DeliveryError],
    reason: Reason,
) -> None:
    wecom_server.fail_with(errcode, times=1)
    error = await send_error(robot_channel())
    assert type(error) is kind
    assert error.reason is reason
    assert wecom_server.received == {}


async def test_45009_closes_the_key_for_a_window_without_another_request(
    wecom_server: WeComRobot, harness: Harness, robot_channel: Callable[..., WeComChannel]
) -> None:
    # Someone else posts to the robot too: WeCom refuses before our own budget is spent.
    wecom_server.clock = lambda: harness.clock.now().timestamp()
    channel = robot_channel(wecom_rate_limit="100/60s")
    for n in range(20):
        await deliver(channel, make_delivery(notification_id=n))
    error = await send_error(channel)
    assert isinstance(error, RateLimited)
    assert error.reason is Reason.WECOM_45009
    assert error.retry_after == timedelta(seconds=60)
    harness.clock.advance(timedelta(seconds=59))
    closed = await send_error(channel)
    assert isinstance(closed, RateLimited) and closed.reason is Reason.RATE_LIMITED
    assert closed.retry_after == timedelta(seconds=1)
    assert wecom_server.requests == 21
    harness.clock.advance(timedelta(seconds=1))
    await deliver(channel)
    assert wecom_server.requests == 22


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"msgtype": "markdown", "markdown": {"content": ""}}, Reason.WECOM_44004),
        ({"msgtype": "markdown", "markdown": {"content": "中" * 1366}}, Reason.WECOM_45002),
        ({"msgtype": "text", "text": {"content": "a" * 2049}}, Reason.WECOM_45002),
        ({"msgtype": "markdown_v3", "markdown_v3": {"content": "x"}}, Reason.WECOM_40008),
    ],
    ids=["empty", "markdown-too-big", "text-too-big", "bad-msgtype"],
)
async def test_robot_validation_errors_are_permanent(
    wecom_server: WeComRobot,
    robot_channel: Callable[..., WeComChannel],
    body: dict[str, Any],
    reason: Reason,
) -> None:
    payload = WeComPayload({"k1": wecom_server.webhook_url("k1")}, (body,))
    with pytest.raises(PermanentError) as caught:
        await robot_channel().send(payload)
    assert caught.value.reason is reason


async def test_removed_robot_is_permanent(
    wecom_server: WeComRobot, robot_channel: Callable[..., WeComChannel]
) -> None:
    channel = robot_channel()
    await deliver(channel)
    wecom_server.remove_key("k1")
    error = await send_error(channel)
    assert isinstance(error, PermanentError)
    assert error.reason is Reason.WECOM_93000


@pytest.mark.parametrize(
    ("status", "kind", "reason"),
    [
        (500, TransientError, Reason.HTTP_5XX),
        (502, TransientError, Reason.HTTP_5XX),
        (503, TransientError, Reason.HTTP_5XX),
        (404, PermanentError, Reason.HTTP_4XX),
        (200, TransientError, Reason.BAD_RESPONSE),
    ],
)
async def test_http_status_classification(
    wecom_server: WeComRobot,
    robot_channel: Callable[..., WeComChannel],
    status: int,
    kind: type[DeliveryError],
    reason: Reason,
) -> None:
    wecom_server.http_status(status, times=1)
    error = await send_error(robot_channel())
    assert type(error) is kind
    assert error.reason is reason


async def test_429_with_retry_after_is_rate_limited_for_that_long(
    wecom_server: WeComRobot, robot_channel: Callable[..., WeComChannel]
) -> None:
    wecom_server.http_status(429, times=1, retry_after="17")
    error = await send_error(robot_channel())
    assert isinstance(error, RateLimited)
    assert error.reason is Reason.HTTP_429
    assert error.retry_after == timedelta(seconds=17)


async def test_slow_robot_times_out_as_transient(
    wecom_server: WeComRobot, robot_channel: Callable[..., WeComChannel]
) -> None:
    wecom_server.delay(5)
    error = await send_error(robot_channel(send_timeout=timedelta(seconds=0.2)))
    assert isinstance(error, TransientError)
    assert error.reason is Reason.TIMEOUT


async def test_connection_refused_is_transient(harness: Harness) -> None:
    url = f"http://127.0.0.1:{closed_port()}/cgi-bin/webhook/send?key=k1"
    error = await send_error(harness.channel(wecom_webhook_url=url))
    assert isinstance(error, TransientError)
    assert error.reason is Reason.CONNECTION_ERROR


TRANSPORT_TABLE: list[tuple[Exception, type[DeliveryError], Reason]] = [
    (httpx.ConnectTimeout("t"), TransientError, Reason.CONNECT_TIMEOUT),
    (httpx.ReadTimeout("t"), TransientError, Reason.TIMEOUT),
    (httpx.WriteTimeout("t"), TransientError, Reason.TIMEOUT),
    (httpx.PoolTimeout("t"), TransientError, Reason.TIMEOUT),
    (httpx.ConnectError("c"), TransientError, Reason.CONNECTION_ERROR),
    (httpx.RemoteProtocolError("p"), TransientError, Reason.CONNECTION_ERROR),
    (httpx.ReadError("r"), TransientError, Reason.CONNECTION_ERROR),
    (httpx.DecodingError("d"), TransientError, Reason.BAD_RESPONSE),
    (httpx.InvalidURL("u"), PermanentError, Reason.INVALID_ADDRESS),
]


@pytest.mark.parametrize(("exc", "kind", "reason"), TRANSPORT_TABLE, ids=repr)
def test_transport_error(exc: Any, kind: type[DeliveryError], reason: Reason) -> None:
    error = transport_error(exc)
    assert type(error) is kind
    assert error.reason is reason
    assert error.detail == type(exc).__name__


# the shared rate limit (pipeline/budget.py; tests/pipeline/test_budget.py has its own)


async def test_client_limit_stops_the_21st_send_before_the_server(
    wecom_server: WeComRobot, harness: Harness, robot_channel: Callable[..., WeComChannel]
) -> None:
    channel = robot_channel()
    for n in range(20):
        await deliver(channel, make_delivery(notification_id=n))
        harness.clock.advance(timedelta(seconds=1))
    error = await send_error(channel)
    assert isinstance(error, RateLimited)
    assert error.reason is Reason.RATE_LIMITED
    # The first send was 20 s ago; its slot frees 60 s after it.
    assert error.retry_after == timedelta(seconds=40)
    assert wecom_server.requests == 20
    assert len(wecom_server.received["k1"]) == 20


async def test_client_limit_frees_a_slot_as_the_window_slides(
    wecom_server: WeComRobot, harness: Harness, robot_channel: Callable[..., WeComChannel]
) -> None:
    wecom_server.clock = lambda: harness.clock.now().timestamp()
    channel = robot_channel()
    for n in range(20):
        await deliver(channel, make_delivery(notification_id=n))
    harness.clock.advance(timedelta(seconds=59))
    await send_error(channel)
    harness.clock.advance(timedelta(seconds=1))
    await deliver(channel)
    assert wecom_server.requests == 21


async def test_client_limit_is_per_robot_key(
    wecom_server: WeComRobot,
    robot_channel: Callable[..., WeComChannel],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WECOM_RATE_PER_MINUTE", "2")  # the seed system's name: 2 a minute
    channel = robot_channel()
    for _ in range(2):
        await deliver(channel)
    await send_error(channel)
    await deliver(channel, make_delivery(wecom_webhook=wecom_server.webhook_url("k2")))
    assert len(wecom_server.received["k2"]) == 1


async def test_two_channels_share_one_budget_like_two_replicas(
    wecom_server: WeComRobot, robot_channel: Callable[..., WeComChannel]
) -> None:
    first, second = robot_channel(wecom_rate_limit="3/1m"), robot_channel(wecom_rate_limit="3/1m")
    for channel in (first, second, first):
        await deliver(channel)
    assert isinstance(await send_error(second), RateLimited)
    assert len(wecom_server.received["k1"]) == 3


async def test_a_pool_of_keys_takes_turns_and_raises_the_ceiling(
    wecom_server: WeComRobot, robot_channel: Callable[..., WeComChannel]
) -> None:
    wecom_server.add_key("k2")
    pool = f"{wecom_server.webhook_url('k1')},{wecom_server.webhook_url('k2')}"
    channel = robot_channel(wecom_webhook_url=pool, wecom_rate_limit="2/1m")
    for n in range(4):
        await deliver(channel, make_delivery(notification_id=n))
    error = await send_error(channel)
    assert isinstance(error, RateLimited) and error.reason is Reason.RATE_LIMITED
    assert {key: len(posts) for key, posts in wecom_server.received.items()} == {"k1": 2, "k2": 2}


# secrets


async def collect_failures(robot: WeComRobot, channel: WeComChannel) -> list[DeliveryError]:
    errors = []
    robot.http_status(500, times=1)
    errors.append(await send_error(channel))
    robot.http_status(429, times=1, retry_after="3")
    errors.append(await send_error(channel))
    robot.http_status(200, times=1)
    errors.append(await send_error(channel))
    robot.fail_with(-1, times=1)
    errors.append(await send_error(channel))
    robot.delay(5)
    errors.append(await send_error(channel))
    robot.reset()
    robot.remove_key(SECRET_KEY)
    errors.append(await send_error(channel))
    return errors


def texts_of(error: BaseException) -> list[str]:
    shown = [str(error), repr(error), "".join(traceback.format_exception(error))]
    return [*shown, getattr(error, "detail", "")]


async def test_webhook_key_never_leaks(
    wecom_server: WeComRobot, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    wecom_server.add_key(SECRET_KEY)
    url = wecom_server.webhook_url(SECRET_KEY)
    channel = harness.channel(
        wecom_webhook_url=url, wecom_rate_limit="6/1m", send_timeout=timedelta(seconds=0.2)
    )
    payload = channel.render(make_delivery())
    assert payload.urls == {SECRET_KEY: url}  # the secret is really there to leak
    caplog.set_level(logging.INFO)

    errors = await collect_failures(wecom_server, channel)
    errors.append(await send_error(channel))  # the client-side limit
    refused = harness.channel(wecom_webhook_url=url.replace(str(wecom_server.port), "1"))
    errors.append(await send_error(refused))

    assert [e.reason for e in errors] == [
        Reason.HTTP_5XX,
        Reason.HTTP_429,
        Reason.BAD_RESPONSE,
        Reason.WECOM_BUSY,
        Reason.TIMEOUT,
        Reason.WECOM_93000,
        Reason.RATE_LIMITED,
        Reason.CONNECTION_ERROR,
    ]
    assert all(e.__context__ is None and e.__cause__ is None for e in errors)
    logged = [record.getMessage() for record in caplog.records]
    assert any("HTTP Request" in line for line in logged)
    assert_no_secret([text for e in errors for text in texts_of(e)], SECRET_KEY, url)
    assert_no_secret([repr(payload), str(payload), *logged], SECRET_KEY)
    assert_no_secret(repr(make_delivery(wecom_webhook=url)), SECRET_KEY)


def test_assert_no_secret_catches_a_leak() -> None:
    with pytest.raises(AssertionError, match="secret #1 leaked"):
        assert_no_secret(["fine", f"oops {SECRET_KEY}"], SECRET_KEY)
    with pytest.raises(ValueError, match="non-empty"):
        assert_no_secret("text", "")
