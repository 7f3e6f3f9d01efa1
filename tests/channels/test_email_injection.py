"""E-mail injection: alert data and stored addresses never add, drop or change a header."""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.email import EmailChannel, EmailPayload
from channels.email import _html_body as html_body
from channels.email import _text_body as text_body
from channels.email import _transfer_encoding as transfer_encoding
from channels.email_headers import WIRE
from channels.errors import PermanentError, Reason
from pipeline.clock import ManualClock
from pipeline.db import SessionFactory
from pipeline.models import Outcome
from pipeline.redact import Redactor
from tests.support.email_channel import (
    INSTALLATION,
    NOW,
    body_text,
    header_lines,
    installation_database,
    make_context,
    make_delivery,
    make_settings,
    parsed,
    wire_lines,
)
from tests.support.pipeline import attempt_one
from tests.support.smtp_server import SmtpSink

MESSAGE_ID = f"<tocsin.42.{INSTALLATION.replace('-', '')}@alerts.example.org>"
HEADERS = ["content-type", "date", "from", "message-id", "mime-version", "subject", "to"]
# What the HTML template itself writes; anything else with < or > came from alert data.
TEMPLATE_TAGS = re.compile(
    r'<!DOCTYPE html>|</?(?:html|body|p|strong|small|div)>|<div style="white-space: pre-wrap">'
)
# Pieces that have broken mail headers or markup somewhere, mixed with arbitrary text.
FRAGMENTS = [
    "\r",
    "\n",
    "\r\n",
    "\r\n\r\n",
    "\x00",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x7f",
    "\x85",
    "\u2028",
    "\u2029",
    "\t",
    " ",
    "<script>",
    "</div>",
    "&lt;",
    '"x" <evil@x>',
    "Bcc: evil@example.com",
    "\r\nBcc: evil@example.com",
    "To: x@evil.com",
    "=?",
    "?=",
    "=?utf-8?q?=0D=0ABcc:_evil@example.com?=",
    "=?utf-8?b?DQpCY2M6IGV2aWxAZXhhbXBsZS5jb20=?=",
    "--=_tocsin_alternative_=_",
    ".",
    "\r\n.\r\n",
    "From ",
    "é",
    "磁盘",
    "🚨",
]
alert_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=12)), max_size=12).map(
    "".join
)
ADDRESS_FRAGMENTS = [
    "alice",
    "@",
    "example.com",
    "evil.com",
    '"',
    "<",
    ">",
    ",",
    " ",
    "(",
    ")",
    "\r\n",
    "\x00",
    "Bcc:",
    "=?utf-8?q?",
    "?=",
    "=0D=0A",
    ".",
    "张",
    "\\",
]
address_text = st.lists(st.sampled_from(ADDRESS_FRAGMENTS), min_size=1, max_size=10).map("".join)
fixture_ok = settings(
    database=None, max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[SessionFactory]:
    async with installation_database(tmp_path) as factory:
        yield factory


@pytest.fixture
async def channel(sessions: SessionFactory) -> AsyncIterator[EmailChannel]:
    built = EmailChannel.from_settings(make_settings(), make_context(sessions))
    await built.start()
    yield built
    await built.aclose()


def lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def header_names(payload: EmailPayload) -> Counter[str]:
    """Counts the headers of the message's own header block, as a receiver splits them."""
    starts = [line for line in header_lines(payload) if line[:1] not in (b" ", b"\t")]
    return Counter(line.split(b":", 1)[0].decode("ascii").lower() for line in starts)


def assert_one_of_each_header(payload: EmailPayload) -> None:
    assert sorted(header_names(payload).elements()) == HEADERS
    message = parsed(payload)
    assert sorted(key.lower() for key in message) == HEADERS
    assert message["Message-ID"] == MESSAGE_ID


@fixture_ok
@given(title=alert_text, body=alert_text, severity=alert_text)
def test_alert_data_never_changes_the_headers(
    channel: EmailChannel, title: str, body: str, severity: str
) -> None:
    payload = channel.render(make_delivery(title=title, body=body, severity=severity))
    assert payload.data.isascii()
    assert max(len(line) for line in wire_lines(payload)) <= 998
    assert_one_of_each_header(payload)
    message = parsed(payload)
    (to,) = message["To"].addresses
    assert to.addr_spec == "zhang@example.com"
    (sender,) = message["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Tocsin Ops", "ops@alerts.example.org")
    subject = str(message["Subject"])
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", subject)
    assert "=?" not in subject  # shown as typed, never decoded as an encoded-word
    markup = TEMPLATE_TAGS.sub("", body_text(message, "html"))
    assert "<" not in markup and ">" not in markup
    # Bodies travel as canonical text: every line break arrives as CRLF.
    assert lf(html.escape(title)) in lf(body_text(message, "html"))
    assert lf(body) in lf(body_text(message, "plain"))


def stdlib_body(text: str, markup: str) -> bytes:
    """MIME-Version onwards, as EmailMessage itself builds the alternative of these bodies."""
    message = EmailMessage(policy=WIRE)
    message.set_content(text, cte=transfer_encoding(text))
    message.make_alternative(boundary="=_tocsin_alternative_=_")
    message.add_alternative(markup, subtype="html", cte=transfer_encoding(markup))
    # The stdlib repeats MIME-Version in the second part, where it means nothing.
    return re.sub(
        rb"(Content-Type: text/html;[^\r]*\r\nContent-Transfer-Encoding: [^\r]*\r\n)"
        rb"MIME-Version: 1\.0\r\n",
        rb"\1",
        bytes(message),
    )


@fixture_ok
@given(title=alert_text, body=st.one_of(alert_text, st.text(max_size=400)))
def test_the_message_is_byte_for_byte_what_emailmessage_writes(
    channel: EmailChannel, title: str, body: str
) -> None:
    """The multipart skeleton is written as bytes for speed; the stdlib stays the oracle."""
    delivery = make_delivery(title=title, body=body)
    try:
        payload = channel.render(delivery)
    except PermanentError:
        return
    # The headers before it are EmailMessage's own (the same code as before).
    _, mime = payload.data.split(b"\r\nMIME-Version: ", 1)
    assert b"MIME-Version: " + mime == stdlib_body(text_body(delivery), html_body(delivery))


@fixture_ok
@given(address=address_text)
def test_a_stored_address_is_one_recipient_or_refused(channel: EmailChannel, address: str) -> None:
    try:
        payload = channel.render(make_delivery(email=address))
    except PermanentError as error:
        assert error.reason is Reason.INVALID_ADDRESS
        assert error.detail == "recipient 3 has an invalid email"  # the value is never echoed
        return
    assert_one_of_each_header(payload)
    (to,) = parsed(payload)["To"].addresses
    assert to.addr_spec == payload.recipient
    assert to.addr_spec == address and "@" not in to.username and not to.display_name


@fixture_ok
@given(email_from=st.one_of(address_text, st.tuples(address_text, address_text).map(" <".join)))
async def test_email_from_is_one_mailbox_or_refused(
    sessions: SessionFactory, email_from: str
) -> None:
    built = EmailChannel.from_settings(make_settings(email_from=email_from), make_context(sessions))
    await built.start()
    try:
        payload = built.render(make_delivery())
    except PermanentError as error:
        assert error.reason is Reason.INVALID_ADDRESS
        return
    names = header_names(payload)
    assert names["from"] == names["to"] == 1 and "bcc" not in names
    (sender,) = parsed(payload)["From"].addresses
    assert sender.addr_spec == payload.sender


@pytest.mark.parametrize(
    "address",
    [
        '"alice@example.com"@evil.com',
        "alice@example.com, bob@evil.com",
        "alice@example.com\r\nBcc: x@evil.com",
        "alice@example.com\nBcc: x@evil.com",
        "Alice <alice@example.com>",
        "alice@example.com <bob@evil.com>",
        "alice@example.com (Alice)",
        "alice(comment)@example.com",
        "alice@example.com\x00",
        "alice\u2028@example.com",
        "alice@example.com ",
        "alice@[127.0.0.1]",
        "@evil.com:alice@example.com",
        "alice@example.com;bob@evil.com",
        "=?utf-8?q?=0D=0ABcc=3A_x=40evil.com?=@evil.com",
        "alice@@example.com",
        "",
    ],
)
async def test_refused_addresses_never_reach_the_smtp_server(
    smtp_server: SmtpSink, sessions: SessionFactory, address: str
) -> None:
    channel = EmailChannel.from_settings(make_settings(smtp_server), make_context(sessions))
    await channel.start()
    # The worker's own step: render and send, every failure turned into a recorded result.
    result = await attempt_one(
        channel, make_delivery(email=address), ManualClock(NOW), 5.0, Redactor([])
    )
    await channel.aclose()
    assert (result.outcome, result.reason) == (Outcome.PERMANENT, Reason.INVALID_ADDRESS)
    assert "evil" not in (result.detail or "")
    assert smtp_server.messages == [] and smtp_server.connections == 0
