"""The outbound URL policy: every SSRF form is refused where it must be and reaches nobody."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from channels.base import ChannelContext, Delivery
from channels.email import EmailSettings
from channels.errors import DeliveryError, PermanentError, Reason
from channels.wecom import WeComChannel, WeComSettings
from pipeline.config import Settings
from pipeline.models import Recipient, RecipientContact, State
from pipeline.outbound import (
    AllowList,
    Resolver,
    UrlRefused,
    canonical_host,
    check_url,
    pin,
    system_resolver,
)
from pipeline.validation import InputError, validate_robot_url
from tests.channels.conftest import Harness
from tests.support import email_channel
from tests.support.catch_all import CatchAll
from tests.support.channels import pinned
from tests.support.pipeline import add_alert, add_user, cycle, open_app, rows
from tests.support.secrets import assert_no_secret

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
KEY = "SsRf-planted-key-0042"
PATH = f"/cgi-bin/webhook/send?key={KEY}"


class Listeners:
    """Three loopback listeners an attacker would aim at: 127.0.0.1, 127.0.0.2 and [::1]."""

    def __init__(self, one: CatchAll, two: CatchAll, six: CatchAll) -> None:
        self.one, self.two, self.six = one, two, six

    def urls(self) -> list[str]:
        p1, p2, p6 = self.one.port, self.two.port, self.six.port
        qy = "qyapi.weixin.qq.com"
        return [
            f"http://127.0.0.2:{p2}{PATH}",
            f"http://[::1]:{p6}{PATH}",
            f"http://2130706433:{p1}{PATH}",
            f"http://0x7f000001:{p1}{PATH}",
            f"http://0:{p1}{PATH}",
            f"http://127.1:{p1}{PATH}",
            f"http://[::ffff:127.0.0.1]:{p1}{PATH}",
            f"https://{qy}@127.0.0.1:{p1}{PATH}",
            f"http://{qy}:x@127.0.0.1:{p1}{PATH}",
            "http:",
            f"http://{qy}{PATH}",  # plain http to the right host
            f"https://evil.example{PATH}",
            f"https://{qy}/cgi-bin/webhook/send?key=abc&debug=1&msgtype=text",
            f"https://{qy}/cgi-bin/webhook/send?key=A&key=B",
            f"https://{qy}/cgi-bin/webhook/send?key=abc#frag",
            f"https://{qy}/cgi-bin/webhook/send?KEY=x",
            f"https://{qy}/cgi-bin/webhook/send",
            f"https://{qy}/cgi-bin/webhook/send?key=",
            f"https://{qy}/cgi-bin/webhook/send?key={'k' * 129}",
            f"https://{qy}:99999{PATH}",
            f"https://{qy}/other{PATH}",
            # allowlisted origin, but not the robot's path
            f"{self.one.origin}/admin?key={KEY}",
            f"{self.one.origin}/cgi-bin/webhook/send/../../admin?key={KEY}",
        ]

    @property
    def seen(self) -> list[str]:
        return self.one.requests + self.two.requests + self.six.requests


@pytest.fixture
async def listeners() -> AsyncIterator[Listeners]:
    async with CatchAll("127.0.0.1") as one, CatchAll("127.0.0.2") as two, CatchAll("::1") as six:
        yield Listeners(one, two, six)


def allow_one(listeners: Listeners) -> str:
    """The allowlist of the tests: the real WeCom host and the first listener, explicitly."""
    return f"qyapi.weixin.qq.com,{listeners.one.origin}"


def make_delivery(url: str) -> Delivery:
    return email_channel.make_delivery(channel="wecom", username="alice", wecom_webhook=url)


def wecom_settings(**fields: Any) -> WeComSettings:
    return WeComSettings(_env_file=None, **fields)


@pytest.fixture
def wecom_channel(harness: Harness) -> Callable[..., WeComChannel]:
    """Builds WeCom channels allowing some hosts, over the harness's database of budgets."""

    def build(allowed: str, resolver: Resolver = system_resolver) -> WeComChannel:
        settings = wecom_settings(enabled=True, allowed_hosts=allowed)
        context = ChannelContext(harness.sessions, harness.clock, resolver)
        channel = WeComChannel.from_settings(settings, context)
        harness.opened.append(channel)
        return channel

    return build


async def send_error(channel: WeComChannel, url: str) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        await channel.send(channel.render(make_delivery(url)))
    return caught.value


# the global setting: the process refuses to start


async def test_each_ssrf_form_is_refused_as_the_global_setting(listeners: Listeners) -> None:
    for url in listeners.urls():
        with pytest.raises(ValidationError) as caught:
            wecom_settings(webhook_url=url, allowed_hosts=allow_one(listeners))
        message = caught.value.errors()[0]["msg"]
        assert "WECOM_WEBHOOK_URL is refused" in message, url
        assert_no_secret(message, KEY)
    assert listeners.seen == []


# a recipient's webhook: refused when saved


async def test_each_ssrf_form_is_refused_for_a_recipient(listeners: Listeners) -> None:
    allow = AllowList.parse(allow_one(listeners), "WECOM_ALLOWED_HOSTS")
    for url in listeners.urls():
        with pytest.raises(InputError, match="webhook URL") as caught:
            validate_robot_url(url, allow)
        assert_no_secret(str(caught.value), KEY)
    assert listeners.seen == []


async def test_a_refused_recipient_webhook_is_not_saved(
    sqlite_settings: Settings, listeners: Listeners
) -> None:
    async with open_app(sqlite_settings) as app:
        with pytest.raises(InputError, match="not allowed by WECOM_ALLOWED_HOSTS"):
            await add_user(
                app, "mallory", wecom_webhook=f"http://127.0.0.2:{listeners.two.port}{PATH}"
            )
        async with app.sessions() as session:
            assert await session.get(Recipient, 1) is None


# send time: a row written straight into the database, or a payload built by hand


async def test_each_ssrf_form_is_refused_at_send_time(
    listeners: Listeners, wecom_channel: Callable[..., WeComChannel]
) -> None:
    channel = wecom_channel(allow_one(listeners))
    try:
        for url in listeners.urls():
            error = await send_error(channel, url)
            assert isinstance(error, PermanentError), url
            assert error.reason is Reason.URL_REFUSED, url
            assert_no_secret([str(error), error.detail], KEY)
    finally:
        await channel.aclose()
    assert listeners.seen == []


async def test_a_webhook_row_written_around_validation_ends_dead_url_refused(
    sqlite_settings: Settings, listeners: Listeners
) -> None:
    async with open_app(sqlite_settings, channels=pinned(wecom={"enabled": True})) as app:
        mallory = await add_user(app, "mallory", channels="wecom")
        async with app.sessions() as session, session.begin():
            session.add(
                RecipientContact(
                    recipient_id=mallory.id,
                    kind="wecom_webhook",
                    address=listeners.two.origin,
                    secret=KEY,
                )
            )
        await add_alert(app, ["mallory"])
        await app.producer().run()
        await cycle(app)
        row = (await rows(app))["mallory", "wecom"]
    assert row.state == State.DEAD.value
    assert row.last_reason == Reason.URL_REFUSED.value
    assert_no_secret(row.last_error or "", KEY)
    assert listeners.seen == []


async def test_an_allowed_name_that_resolves_inside_is_refused(
    listeners: Listeners, wecom_channel: Callable[..., WeComChannel]
) -> None:
    port = listeners.one.port

    async def inside(host: str, _port: int) -> list[str]:
        return {"qyapi.weixin.qq.com": ["127.0.0.1"], "mixed.example": ["8.8.8.8", "10.0.0.1"]}[
            host
        ]

    channel = wecom_channel(f"qyapi.weixin.qq.com:{port},mixed.example", inside)
    try:
        for url in (
            f"https://qyapi.weixin.qq.com:{port}{PATH}",
            f"https://mixed.example{PATH}",
        ):
            error = await send_error(channel, url)
            assert error.reason is Reason.URL_REFUSED
            assert "resolves to" in error.detail
    finally:
        await channel.aclose()
    assert listeners.seen == []


async def test_the_proxy_environment_is_not_used(
    listeners: Listeners,
    monkeypatch: pytest.MonkeyPatch,
    wecom_channel: Callable[..., WeComChannel],
) -> None:
    proxy = listeners.two.origin
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    channel = wecom_channel(listeners.one.origin)
    try:
        await channel.send(channel.render(make_delivery(f"{listeners.one.origin}{PATH}")))
    finally:
        await channel.aclose()
    assert listeners.two.requests == []
    assert listeners.one.requests == [f"POST {PATH} Host=127.0.0.1:{listeners.one.port}"]


async def test_the_allowlisted_form_delivers(
    listeners: Listeners, wecom_channel: Callable[..., WeComChannel]
) -> None:
    allowed = ",".join(c.origin for c in (listeners.one, listeners.two, listeners.six))
    channel = wecom_channel(allowed)
    try:
        for listener in (listeners.one, listeners.two, listeners.six):
            await channel.send(channel.render(make_delivery(f"{listener.origin}{PATH}")))
    finally:
        await channel.aclose()
    assert [len(c.requests) for c in (listeners.one, listeners.two, listeners.six)] == [1, 1, 1]


async def test_redirects_are_not_followed(
    listeners: Listeners, wecom_channel: Callable[..., WeComChannel]
) -> None:
    from aiohttp import web

    app = web.Application()

    async def redirect(_request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{listeners.two.origin}/stolen")

    app.router.add_post("/cgi-bin/webhook/send", redirect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    origin = f"http://127.0.0.1:{runner.addresses[0][1]}"
    channel = wecom_channel(f"{origin},{listeners.two.origin}")
    try:
        error = await send_error(channel, f"{origin}{PATH}")
    finally:
        await channel.aclose()
        await runner.cleanup()
    assert isinstance(error, PermanentError)
    assert listeners.two.requests == []


# the pieces


@pytest.mark.parametrize(
    "host", ["2130706433", "0", "127.1", "0177.0.0.1", "::FFFF:127.0.0.1", "a..b", "-x.com", ""]
)
def test_non_canonical_hosts_are_refused(host: str) -> None:
    with pytest.raises(UrlRefused):
        canonical_host(host)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("http://example.com", "names its port"),
        ("ftp://example.com:21", "http or https"),
        ("example.com/path", "use host"),
        ("user@example.com", "use host"),
        ("example.com:99999", "invalid"),
    ],
)
def test_bad_allowlist_entries_are_named(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wecom_settings(allowed_hosts=entry)


def test_allowlist_entries_match_scheme_host_and_port() -> None:
    allow = AllowList.parse("qyapi.weixin.qq.com, gw.example:8443, http://10.0.0.5:8080", "X")
    assert check_url("https://QYAPI.weixin.qq.com./x", allow).host == "qyapi.weixin.qq.com"
    assert check_url("https://gw.example:8443/x", allow).port == 8443
    assert check_url("http://10.0.0.5:8080/x", allow).scheme == "http"
    for refused in (
        "https://qyapi.weixin.qq.com:8443/x",
        "https://gw.example/x",
        "https://10.0.0.5:8080/x",
        "http://gw.example:8443/x",
    ):
        with pytest.raises(UrlRefused, match="not allowed by X"):
            check_url(refused, allow)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:8.8.8.8",
        "::",
        "240.0.0.1",
    ],
)
async def test_inside_addresses_are_refused_unless_named(address: str) -> None:
    async def resolve(_host: str, _port: int) -> list[str]:
        return [address]

    destination = check_url("https://gw.example/x", AllowList.parse("gw.example", "X"))
    with pytest.raises(UrlRefused, match="resolves to"):
        await pin(destination, resolve)


async def test_a_public_address_is_pinned_and_a_named_one_is_allowed() -> None:
    async def resolve(_host: str, _port: int) -> list[str]:
        return ["8.8.8.8"]

    allow = AllowList.parse("gw.example,http://10.0.0.5:8080", "X")
    assert str(await pin(check_url("https://gw.example/x", allow), resolve)) == "8.8.8.8"
    assert str(await pin(check_url("http://10.0.0.5:8080/x", allow), resolve)) == "10.0.0.5"


def test_email_plaintext_auth_is_refused_unless_asked_for() -> None:
    plain: dict[str, Any] = {"security": "none", "username": "bot"}
    with pytest.raises(ValidationError, match="EMAIL_ALLOW_PLAINTEXT_AUTH"):
        EmailSettings(_env_file=None, **plain)
    assert EmailSettings(_env_file=None, allow_plaintext_auth=True, **plain).username
    assert EmailSettings(_env_file=None, security="none")
