"""The email channel against a real loopback SMTP server: content, pooling and failure classes."""

from __future__ import annotations

import asyncio
import html
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP as SMTPProtocol

from channels.base import ChannelUnavailable, Delivery
from channels.email import (
    EmailChannel,
    EmailPayload,
    classify_smtp_exception,
    message_id,
    message_id_domain,
)
from channels.errors import DeliveryError, PermanentError, Reason, TransientError
from pipeline.db import SessionFactory
from tests.support.email_channel import (
    INSTALLATION,
    body_text,
    header_lines,
    installation_database,
    make_context,
    make_delivery,
    make_settings,
    parsed,
    wire_lines,
)
from tests.support.ports import free_port
from tests.support.secrets import assert_no_secret
from tests.support.smtp_server import SmtpSink

PASSWORD = "pw-Zq81-unguessable"
INSTALLATION_HEX = INSTALLATION.replace("-", "")
# The loopback sink speaks no TLS, so logging in to it needs plaintext AUTH allowed.
PLAIN_AUTH: dict[str, Any] = {"email_allow_plaintext_auth": True}
ChannelFor = Callable[..., Awaitable[EmailChannel]]


def mid(notification_id: int, domain: str = "alerts.example.org") -> str:
    """The Message-ID the test installation gives a notification."""
    return f"<tocsin.{notification_id}.{INSTALLATION_HEX}@{domain}>"


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[SessionFactory]:
    async with installation_database(tmp_path) as factory:
        yield factory


@pytest.fixture
async def channel_for(sessions: SessionFactory) -> AsyncIterator[ChannelFor]:
    """Builds started channels (as the worker starts them) and closes them after the test."""
    opened: list[EmailChannel] = []

    async def build(sink: SmtpSink | None = None, **overrides: Any) -> EmailChannel:
        timeout = overrides.pop("send_timeout", timedelta(seconds=5))
        channel = EmailChannel.from_settings(
            make_settings(sink, **overrides), make_context(sessions, timeout)
        )
        opened.append(channel)
        await channel.start()
        return channel

    yield build
    for channel in opened:
        await channel.aclose()


async def deliver(channel: EmailChannel, delivery: Delivery | None = None) -> None:
    await channel.send(channel.render(delivery or make_delivery()))


async def send_error(channel: EmailChannel, delivery: Delivery | None = None) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        await deliver(channel, delivery)
    return caught.value


# configuration


@pytest.mark.parametrize(
    "overrides",
    [{"email_enabled": False}, {"email_smtp_server": ""}],
    ids=["disabled", "no-server"],
)
def test_unconfigured_channel_is_unavailable(
    overrides: dict[str, Any], sessions: SessionFactory
) -> None:
    with pytest.raises(ChannelUnavailable, match="EMAIL_ENABLED=true and EMAIL_SMTP_SERVER"):
        EmailChannel.from_settings(make_settings(**overrides), make_context(sessions))


def test_reachable_only_with_an_address() -> None:
    assert EmailChannel.reachable({"email": "a@example.com"})
    assert not EmailChannel.reachable({"wecom_userid": "zhang"})


def test_reasons_are_unique_and_cover_every_failure_class() -> None:
    assert len(set(EmailChannel.reasons)) == len(EmailChannel.reasons)
    assert {Reason.SMTP_4XX, Reason.SMTP_5XX, Reason.CONNECTION_ERROR} <= set(EmailChannel.reasons)


# rendering


async def test_render_builds_headers_and_both_parts(channel_for: ChannelFor) -> None:
    payload = (await channel_for()).render(make_delivery())
    message = parsed(payload)
    assert payload.sender == "ops@alerts.example.org"
    assert payload.recipient == "zhang@example.com"
    assert payload.mail_options == ()
    assert message["From"] == "Tocsin Ops <ops@alerts.example.org>"
    assert message["To"] == "zhang@example.com"
    assert message["Subject"] == "[CRITICAL] Disk full on db-1"
    assert message["Message-ID"] == mid(42)
    assert message["Date"] == "Fri, 01 Mar 2024 08:30:00 +0000"
    assert message.get_content_type() == "multipart/alternative"
    assert "Usage is 97% <b>now</b> & rising" in body_text(message, "plain")
    html_part = body_text(message, "html")
    assert "Usage is 97% &lt;b&gt;now&lt;/b&gt; &amp; rising" in html_part
    assert "<strong>[CRITICAL]</strong>" in html_part


async def test_message_id_is_deterministic_per_notification(
    channel_for: ChannelFor,
) -> None:
    channel = await channel_for()
    first = parsed(channel.render(make_delivery(attempt=1)))["Message-ID"]
    again = parsed(channel.render(make_delivery(attempt=3)))["Message-ID"]
    other = parsed(channel.render(make_delivery(notification_id=43)))["Message-ID"]
    assert first == again == mid(42)
    assert other == mid(43)


async def test_render_before_start_fails_loudly(sessions: SessionFactory) -> None:
    channel = EmailChannel.from_settings(make_settings(), make_context(sessions))
    with pytest.raises(RuntimeError, match=r"before `await channel.start\(\)`"):
        channel.render(make_delivery())
    await channel.start()
    await channel.start()  # idempotent
    assert parsed(channel.render(make_delivery()))["Message-ID"] == mid(42)
    await channel.aclose()


async def test_start_names_an_installation_whose_database_has_no_row(tmp_path: Path) -> None:
    # A database made by create_all (no migration) has no installation row: start() stores one.
    async with installation_database(tmp_path, installation=None) as factory:
        first = EmailChannel.from_settings(make_settings(), make_context(factory))
        again = EmailChannel.from_settings(make_settings(), make_context(factory))
        await asyncio.gather(first.start(), again.start())
        ids = {parsed(c.render(make_delivery()))["Message-ID"] for c in (first, again)}
    assert len(ids) == 1
    assert INSTALLATION_HEX not in ids.pop()


@pytest.mark.parametrize(
    ("from_address", "domain"),
    [
        ("Ops <ops@example.org>", "example.org"),
        ("ops@mail.example.org", "mail.example.org"),
        ("Tocsin <tocsin@localhost>", "localhost"),
        ("no address here", "tocsin.local"),
        ("", "tocsin.local"),
        ("ops@", "tocsin.local"),
        ("ops@under_score.org", "tocsin.local"),
        ("ops@-dash.org", "tocsin.local"),
    ],
)
def test_message_id_domain(from_address: str, domain: str) -> None:
    assert message_id_domain(from_address) == domain
    assert message_id(5, INSTALLATION, from_address) == f"<tocsin.5.{INSTALLATION_HEX}@{domain}>"


@pytest.mark.parametrize("title", ["a\r\nBcc: evil@example.com", "a\nBcc: x", "a\rb", "a\u2028b"])
async def test_subject_cannot_carry_line_breaks(channel_for: ChannelFor, title: str) -> None:
    payload = (await channel_for()).render(make_delivery(title=title))
    message = parsed(payload)
    subject = message["Subject"]
    assert "\r" not in subject and "\n" not in subject and "\u2028" not in subject
    assert message["Bcc"] is None
    assert not any(line.lower().startswith(b"bcc") for line in header_lines(payload))


def expected_text(body: str, title: str = "Disk full on db-1") -> str:
    """The text part of make_delivery(title=title, body=body), with LF line breaks."""
    return f"[CRITICAL] {title}\n\n{body}\n\n-- \nTocsin notification 42 (alert 7)\n"


def crlf_to_lf(text: str) -> str:
    return text.replace("\r\n", "\n")


@pytest.mark.parametrize(
    "body",
    [
        "short ascii line",
        "x" * 2000,
        "磁盘已满，" * 400,
        "Zoë — 97% " * 200,
        "line 1\n\nline 3  \n. \n..\nFrom here\n=3D and = and =\n\t tab",
        "controls \x00\x07\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029 end",
        "--=_tocsin_alternative_=_\n--=_tocsin_alternative_=_--",
    ],
    ids=["short", "ascii-2000", "cjk-2000", "mostly-ascii", "lines", "controls", "boundary"],
)
async def test_bodies_travel_7bit_in_short_lines_and_decode_unchanged(
    channel_for: ChannelFor, body: str
) -> None:
    payload = (await channel_for()).render(make_delivery(body=body))
    lines = wire_lines(payload)
    assert payload.data.isascii()
    assert max(len(line) for line in lines) <= 78
    message = parsed(payload)
    assert not message.defects
    assert [part.get_content_type() for part in message.iter_parts()] == [
        "text/plain",
        "text/html",
    ]
    assert crlf_to_lf(body_text(message, "plain")) == expected_text(body)
    assert html.escape(body) in crlf_to_lf(body_text(message, "html"))


@pytest.mark.parametrize(
    ("email_from", "display_name", "address"),
    [
        ("Tocsin Ops <ops@alerts.example.org>", "Tocsin Ops", "ops@alerts.example.org"),
        ('"Ops, Team" <ops@example.org>', "Ops, Team", "ops@example.org"),
        ("运维告警 <ops@example.org>", "运维告警", "ops@example.org"),
        ("Zoë Ops <ops@example.org>", "Zoë Ops", "ops@example.org"),
        ("ops@example.org", "", "ops@example.org"),
    ],
)
async def test_from_header_keeps_the_display_name(
    channel_for: ChannelFor, email_from: str, display_name: str, address: str
) -> None:
    payload = (await channel_for(email_from=email_from)).render(make_delivery())
    assert payload.data.isascii()
    (mailbox,) = parsed(payload)["From"].addresses
    assert (mailbox.display_name, mailbox.addr_spec) == (display_name, address)
    assert payload.sender == address


@pytest.mark.parametrize(
    "email_from",
    [
        "Ops <ops@example.org>\r\nBcc: evil@example.com",
        "Ops <ops@example.org>, Bob <bob@evil.com>",
        "ops@example.org, bob@evil.com",
        '"ops@example.org"@evil.com',
        "ops@example.org (Ops)",
        "alice@example.org <ops@evil.com>",
        "=?utf-8?q?Ops=0D=0ABcc:_x?= <ops@example.org>",
        "Ops <ops@example.org",
        "no address here",
        "",
    ],
)
async def test_email_from_that_is_not_one_mailbox_is_refused(
    channel_for: ChannelFor, email_from: str
) -> None:
    channel = await channel_for(email_from=email_from)
    with pytest.raises(PermanentError) as caught:
        channel.render(make_delivery())
    assert caught.value.reason is Reason.INVALID_ADDRESS
    assert "evil" not in caught.value.detail and "ops@" not in caught.value.detail


async def test_non_ascii_subject_is_encoded(channel_for: ChannelFor) -> None:
    title = "磁盘已满 on db-1 " + "很长的标题" * 30
    payload = (await channel_for()).render(make_delivery(title=title))
    assert payload.data.isascii()
    assert max(len(line) for line in wire_lines(payload)) <= 78
    assert parsed(payload)["Subject"] == f"[CRITICAL] {title}"


async def test_non_ascii_address_asks_for_smtputf8(channel_for: ChannelFor) -> None:
    payload = (await channel_for()).render(make_delivery(email="张@example.com"))
    assert payload.recipient == "张@example.com"
    assert payload.mail_options == ("SMTPUTF8", "BODY=8BITMIME")
    assert b"To: \xe5\xbc\xa0@example.com\r\n" in payload.data  # UTF-8 header (RFC 6532)
    assert parsed(payload)["To"] == "张@example.com"


async def test_render_without_address_is_no_contact(channel_for: ChannelFor) -> None:
    with pytest.raises(PermanentError) as caught:
        (await channel_for()).render(make_delivery(email=None))
    assert caught.value.reason is Reason.NO_CONTACT


@pytest.mark.parametrize(
    "address",
    [
        "not-an-address",
        "a@example.com\r\nBcc: b@example.com",
        '"alice@example.com"@evil.com',
        "alice@example.com, bob@evil.com",
        "Alice <alice@example.com>",
        "alice@example.com (comment)",
        "alice@example.com\x00",
        " alice@example.com",
        "alice@[127.0.0.1]",
        "=?utf-8?q?=0D=0ABcc=3A_x=40evil.com?=@evil.com",
    ],
)
async def test_render_rejects_invalid_address(channel_for: ChannelFor, address: str) -> None:
    with pytest.raises(PermanentError) as caught:
        (await channel_for()).render(make_delivery(email=address))
    assert caught.value.reason is Reason.INVALID_ADDRESS


# sending


async def test_send_delivers_the_message(smtp_server: SmtpSink, channel_for: ChannelFor) -> None:
    await deliver(await channel_for(smtp_server), make_delivery(title="磁盘已满 on db-1"))
    assert len(smtp_server.messages) == 1
    received = smtp_server.messages[0]
    assert received["Subject"] == "[CRITICAL] 磁盘已满 on db-1"
    assert received["Message-ID"] == mid(42)
    assert "Usage is 97%" in body_text(received, "plain")
    assert "&lt;b&gt;" in body_text(received, "html")
    assert smtp_server.envelopes == [("ops@alerts.example.org", ["zhang@example.com"])]


async def test_long_cjk_line_and_non_ascii_display_name_arrive_intact(
    smtp_server: SmtpSink, channel_for: ChannelFor
) -> None:
    body = "磁盘已满，" * 400  # 2000 characters, 6000 UTF-8 bytes, no line break
    channel = await channel_for(smtp_server, email_from="运维告警 <ops@alerts.example.org>")
    await deliver(channel, make_delivery(title="磁盘已满 on db-1", body=body))
    (received,) = smtp_server.messages
    assert received["Subject"] == "[CRITICAL] 磁盘已满 on db-1"
    (sender,) = received["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("运维告警", "ops@alerts.example.org")
    plain = body_text(received, "plain")
    assert crlf_to_lf(plain) == expected_text(body, "磁盘已满 on db-1")
    assert plain.splitlines()[2] == body
    assert f">{body}</div>" in body_text(received, "html")
    assert smtp_server.envelopes == [("ops@alerts.example.org", ["zhang@example.com"])]


class Utf8SmtpSink(SmtpSink):
    """The sink, announcing SMTPUTF8."""

    def _protocol(self) -> SMTPProtocol:
        protocol = super()._protocol()
        protocol.enable_SMTPUTF8 = True
        return protocol


async def test_non_ascii_addresses_are_sent_with_smtputf8(
    channel_for: ChannelFor,
) -> None:
    async with Utf8SmtpSink() as sink:
        channel = await channel_for(sink, email_from="运维 <ops@例子.中国>")
        await deliver(channel, make_delivery(email="张@example.com"))
        await channel.aclose()
    assert sink.envelopes == [("ops@例子.中国", ["张@example.com"])]
    (received,) = sink.messages
    assert received["To"] == "张@example.com"
    assert received["From"] == "运维 <ops@例子.中国>"
    assert "Usage is 97%" in body_text(received, "plain")


async def test_non_ascii_address_without_smtputf8_is_permanent(
    smtp_server: SmtpSink, channel_for: ChannelFor
) -> None:
    error = await send_error(await channel_for(smtp_server), make_delivery(email="张@example.com"))
    assert isinstance(error, PermanentError)
    assert error.reason is Reason.SMTP_5XX
    assert smtp_server.messages == []


async def test_sequential_sends_reuse_one_connection(
    smtp_server: SmtpSink, channel_for: ChannelFor
) -> None:
    channel = await channel_for(smtp_server)
    for n in range(10):
        await deliver(channel, make_delivery(notification_id=n))
    assert len(smtp_server.messages) == 10
    assert smtp_server.connections == 1


async def test_concurrent_sends_use_at_most_pool_size_connections(
    smtp_server: SmtpSink, channel_for: ChannelFor
) -> None:
    channel = await channel_for(smtp_server, email_pool_size=2)
    await asyncio.gather(*(deliver(channel, make_delivery(notification_id=n)) for n in range(20)))
    ids = {m["Message-ID"] for m in smtp_server.messages}
    assert ids == {mid(n) for n in range(20)}
    assert 1 <= smtp_server.connections <= 2


async def test_aclose_quits_pooled_connections(
    smtp_server: SmtpSink, channel_for: ChannelFor
) -> None:
    channel = await channel_for(smtp_server)
    await deliver(channel)
    await channel.aclose()
    assert smtp_server.quits == 1


@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA"])
async def test_421_is_transient_and_the_next_send_uses_a_fresh_connection(
    smtp_server: SmtpSink, channel_for: ChannelFor, stage: str
) -> None:
    channel = await channel_for(smtp_server)
    await deliver(channel)
    smtp_server.respond_with(421, "4.3.2 Service shutting down", times=1, stage=stage)
    error = await send_error(channel)
    assert isinstance(error, TransientError)
    assert error.reason is Reason.SMTP_4XX
    assert "421" in error.detail
    await deliver(channel)
    assert len(smtp_server.messages) == 2
    assert smtp_server.connections == 2


@pytest.mark.parametrize(
    ("stage", "code", "reason"),
    [
        ("MAIL", 550, Reason.SMTP_5XX),
        ("RCPT", 550, Reason.SMTP_RECIPIENT_REFUSED),
        ("RCPT", 553, Reason.SMTP_RECIPIENT_REFUSED),
        ("RCPT", 530, Reason.SMTP_AUTH),
        ("DATA", 550, Reason.SMTP_5XX),
        ("DATA", 554, Reason.SMTP_5XX),
    ],
)
async def test_5xx_is_permanent(
    smtp_server: SmtpSink,
    channel_for: ChannelFor,
    stage: str,
    code: int,
    reason: Reason,
) -> None:
    smtp_server.respond_with(code, "5.7.1 Rejected", stage=stage)
    error = await send_error(await channel_for(smtp_server))
    assert isinstance(error, PermanentError)
    assert error.reason is reason
    assert smtp_server.messages == []


@pytest.mark.parametrize("stage", ["RCPT", "DATA"])
async def test_4xx_at_any_stage_is_transient(
    smtp_server: SmtpSink, channel_for: ChannelFor, stage: str
) -> None:
    smtp_server.respond_with(451, "4.7.1 Greylisted", stage=stage)
    error = await send_error(await channel_for(smtp_server))
    assert isinstance(error, TransientError)
    assert error.reason is Reason.SMTP_4XX


async def test_connection_refused_is_transient(
    channel_for: ChannelFor,
) -> None:
    channel = await channel_for(email_smtp_server="127.0.0.1", email_smtp_port=free_port())
    error = await send_error(channel)
    assert isinstance(error, TransientError)
    assert error.reason is Reason.CONNECTION_ERROR
    assert error.__context__ is None and error.__cause__ is None


async def test_slow_server_times_out_as_transient(
    smtp_server: SmtpSink, channel_for: ChannelFor
) -> None:
    smtp_server.data_delay = 2.0
    error = await send_error(await channel_for(smtp_server, send_timeout=timedelta(seconds=0.2)))
    assert isinstance(error, TransientError)
    assert error.reason is Reason.TIMEOUT


async def test_pooled_connection_dropped_by_server_is_retried_once(
    smtp_server: SmtpSink, channel_for: ChannelFor
) -> None:
    channel = await channel_for(smtp_server)
    await deliver(channel)
    smtp_server.hang_up(times=1, stage="MAIL")
    await deliver(channel, make_delivery(notification_id=2))
    assert [m["Message-ID"] for m in smtp_server.messages][-1] == mid(2)
    assert smtp_server.connections == 2


async def test_pooled_connection_dropped_twice_gives_up_as_transient(
    smtp_server: SmtpSink, channel_for: ChannelFor
) -> None:
    channel = await channel_for(smtp_server)
    await deliver(channel)
    smtp_server.hang_up(times=2, stage="MAIL")
    error = await send_error(channel)
    assert isinstance(error, TransientError)
    assert error.reason is Reason.CONNECTION_ERROR
    assert len(smtp_server.messages) == 1


async def test_fresh_connection_dropped_is_not_retried(
    smtp_server: SmtpSink, channel_for: ChannelFor
) -> None:
    smtp_server.hang_up(times=1, stage="MAIL")
    error = await send_error(await channel_for(smtp_server))
    assert isinstance(error, TransientError)
    assert error.reason is Reason.CONNECTION_ERROR
    assert smtp_server.connections == 1


async def test_idle_connection_closed_by_server_reconnects(
    smtp_server: SmtpSink, channel_for: ChannelFor
) -> None:
    channel = await channel_for(smtp_server)
    await deliver(channel)
    smtp_server.drop_connections()
    await asyncio.sleep(0.05)  # lets the client see the close, as it would after an idle timeout
    await deliver(channel)
    assert len(smtp_server.messages) == 2
    assert smtp_server.connections == 2


# authentication and secrets


async def test_login_with_username_and_password(channel_for: ChannelFor) -> None:
    async with SmtpSink(username="bot", password=PASSWORD) as sink:
        channel = await channel_for(
            sink, email_username="bot", email_password=PASSWORD, **PLAIN_AUTH
        )
        await deliver(channel)
        await deliver(channel)
        await channel.aclose()
    assert sink.logins == ["bot"]
    assert len(sink.messages) == 2


async def test_wrong_password_is_permanent_auth_failure_without_the_password(
    channel_for: ChannelFor,
) -> None:
    async with SmtpSink(username="bot", password="right-password") as sink:
        channel = await channel_for(
            sink, email_username="bot", email_password=PASSWORD, **PLAIN_AUTH
        )
        error = await send_error(channel)
        await channel.aclose()
    assert isinstance(error, PermanentError)
    assert error.reason is Reason.SMTP_AUTH
    assert_no_secret([str(error), repr(error), error.detail], PASSWORD)
    assert sink.messages == []


# classification of library exceptions (pure)


def _refused(code: int) -> aiosmtplib.SMTPRecipientsRefused:
    return aiosmtplib.SMTPRecipientsRefused(
        [aiosmtplib.SMTPRecipientRefused(code, "no", "a@example.com")]
    )


EXCEPTION_TABLE: list[tuple[BaseException, type[DeliveryError], Reason]] = [
    (aiosmtplib.SMTPConnectTimeoutError("slow"), TransientError, Reason.CONNECT_TIMEOUT),
    (aiosmtplib.SMTPReadTimeoutError("slow"), TransientError, Reason.TIMEOUT),
    (aiosmtplib.SMTPTimeoutError("slow"), TransientError, Reason.TIMEOUT),
    (TimeoutError(), TransientError, Reason.TIMEOUT),
    (aiosmtplib.SMTPConnectError("refused"), TransientError, Reason.CONNECTION_ERROR),
    (aiosmtplib.SMTPServerDisconnected("gone"), TransientError, Reason.CONNECTION_ERROR),
    (ConnectionResetError(), TransientError, Reason.CONNECTION_ERROR),
    (ssl.SSLError("bad cert"), TransientError, Reason.TLS_ERROR),
    (aiosmtplib.SMTPConnectResponseError(421, "busy"), TransientError, Reason.SMTP_4XX),
    (aiosmtplib.SMTPConnectResponseError(554, "go away"), PermanentError, Reason.SMTP_5XX),
    (aiosmtplib.SMTPHeloError(501, "bad helo"), PermanentError, Reason.SMTP_5XX),
    (aiosmtplib.SMTPAuthenticationError(535, "bad"), PermanentError, Reason.SMTP_AUTH),
    (aiosmtplib.SMTPAuthenticationError(454, "later"), TransientError, Reason.SMTP_4XX),
    (aiosmtplib.SMTPSenderRefused(451, "later", "x@y"), TransientError, Reason.SMTP_4XX),
    (aiosmtplib.SMTPDataError(552, "too big"), PermanentError, Reason.SMTP_5XX),
    (_refused(550), PermanentError, Reason.SMTP_RECIPIENT_REFUSED),
    (_refused(450), TransientError, Reason.SMTP_4XX),
    (aiosmtplib.SMTPNotSupported("no STARTTLS"), PermanentError, Reason.SMTP_5XX),
    (aiosmtplib.SMTPException("odd"), TransientError, Reason.CONNECTION_ERROR),
    (ValueError("bad address"), PermanentError, Reason.INVALID_ADDRESS),
]


@pytest.mark.parametrize(("exc", "kind", "reason"), EXCEPTION_TABLE, ids=repr)
def test_classify_smtp_exception(
    exc: BaseException, kind: type[DeliveryError], reason: Reason
) -> None:
    error = classify_smtp_exception(exc, lambda text: text)
    assert type(error) is kind
    assert error.reason is reason


def test_classify_smtp_exception_redacts_the_detail() -> None:
    exc = aiosmtplib.SMTPAuthenticationError(535, f"rejected {PASSWORD}")
    error = classify_smtp_exception(exc, lambda text: text.replace(PASSWORD, "***"))
    assert_no_secret([str(error), error.detail], PASSWORD)
    assert "***" in error.detail


async def test_payload_holds_the_serialised_message_and_envelope(
    channel_for: ChannelFor,
) -> None:
    payload = (await channel_for()).render(make_delivery())
    assert isinstance(payload, EmailPayload)
    assert isinstance(payload.data, bytes)
    assert (payload.sender, payload.recipient) == ("ops@alerts.example.org", "zhang@example.com")
    assert "data" not in repr(payload)  # a 64 KiB body stays out of logs and tracebacks


@pytest.mark.parametrize(
    ("security", "reason"),
    [("starttls", Reason.CONNECTION_ERROR), ("ssl", Reason.TLS_ERROR)],
)
async def test_required_tls_against_a_plain_server_fails_transiently(
    smtp_server: SmtpSink,
    channel_for: ChannelFor,
    security: str,
    reason: Reason,
) -> None:
    channel = await channel_for(
        smtp_server, email_security=security, send_timeout=timedelta(seconds=2)
    )
    error = await send_error(channel)
    assert isinstance(error, TransientError)
    assert error.reason is reason
    assert smtp_server.messages == []


def test_tls_handshake_failure_inside_connect_error_is_tls_error() -> None:
    exc = aiosmtplib.SMTPConnectError("Error connecting: [SSL: WRONG_VERSION_NUMBER]")
    exc.__cause__ = ssl.SSLError("wrong version number")
    assert classify_smtp_exception(exc, lambda text: text).reason is Reason.TLS_ERROR
