"""The email channel: text + HTML messages sent over a small pool of reused SMTP connections."""

from __future__ import annotations

import asyncio
import html
import re
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from email.charset import QP, Charset
from email.header import Header
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import compat32
from email.utils import format_datetime, formataddr, parseaddr
from typing import ClassVar

import aiosmtplib

from channels.base import Channel, ChannelContext, ChannelUnavailable, Contacts, Delivery
from channels.errors import (
    DeliveryError,
    PermanentError,
    Reason,
    TransientError,
    classify_smtp,
)
from pipeline.clock import Clock
from pipeline.config import EmailSecurity, Settings
from pipeline.redact import Redactor

_DETAIL_MAX = 300
_FALLBACK_DOMAIN = "tocsin.local"
_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")

# The message is built with the compat32 classes and serialised once, in render(), and
# send() hands those bytes to sendmail: the EmailMessage API cost ~10x more per message.
# Bodies travel 7-bit in lines of at most 78 characters, so any SMTP server accepts them.
_WIRE = compat32.clone(linesep="\r\n")
_LINE_MAX = 78
# Body charsets: short-lined printable ASCII as it is (7bit), else quoted-printable or base64.
_PLAIN = Charset("us-ascii")
_QUOTED = Charset("utf-8")
_QUOTED.body_encoding = QP
_BASE64 = Charset("utf-8")
# Quoted-printable and base64 never contain "=_", so only a plain body can collide with it.
_BOUNDARY = "=_tocsin_alternative_=_"
_PLAIN_TEXT = re.compile(r"[\t\n\x20-\x7e]*")
_PLAIN_HEADER = re.compile(r"[\t\x20-\x7e]*")
_LINE_END = re.compile(r"\r\n?|\n")
# Envelope options for a non-ASCII address (RFC 6531); the header then carries it as UTF-8.
_SMTPUTF8 = ("SMTPUTF8", "BODY=8BITMIME")

# Exceptions without an SMTP reply code, most specific first (SMTPConnectTimeoutError is
# also a TimeoutError, ssl.SSLError also an OSError, SMTPServerDisconnected also an OSError).
_UNCODED: tuple[tuple[type[BaseException], type[DeliveryError], Reason], ...] = (
    (aiosmtplib.SMTPConnectTimeoutError, TransientError, Reason.CONNECT_TIMEOUT),
    (ssl.SSLError, TransientError, Reason.TLS_ERROR),
    (TimeoutError, TransientError, Reason.TIMEOUT),
    (aiosmtplib.SMTPNotSupported, PermanentError, Reason.SMTP_5XX),
    (ValueError, PermanentError, Reason.INVALID_ADDRESS),
    (aiosmtplib.SMTPException, TransientError, Reason.CONNECTION_ERROR),
    (OSError, TransientError, Reason.CONNECTION_ERROR),
)
# What send() turns into a DeliveryError; anything else is a bug and propagates.
SMTP_FAILURES = (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError)


@dataclass(frozen=True)
class EmailPayload:
    """One message, serialised once when rendered, and the SMTP envelope it travels in."""

    data: bytes = field(repr=False)
    sender: str
    recipient: str
    mail_options: tuple[str, ...] = ()


def one_line(text: str) -> str:
    """Returns text with every line break replaced by a space, so it cannot inject headers."""
    return " ".join(text.splitlines())


def message_id_domain(from_address: str) -> str:
    """Returns the domain of the From address, or tocsin.local when it has none usable."""
    _, address = parseaddr(from_address)
    domain = address.rpartition("@")[2]
    return domain if "@" in address and _DOMAIN.match(domain) else _FALLBACK_DOMAIN


def message_id(notification_id: int, from_address: str) -> str:
    """Returns the deterministic Message-ID of a notification, so a resend is recognisable."""
    return _message_id(notification_id, message_id_domain(from_address))


def _message_id(notification_id: int, domain: str) -> str:
    return f"<tocsin.{notification_id}@{domain}>"


def classify_smtp_exception(exc: BaseException, redact: Callable[[str], str]) -> DeliveryError:
    """Maps an aiosmtplib (or socket) failure to a DeliveryError whose detail is redacted."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        return _recipient_refused(exc.recipients[0], redact)
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return _recipient_refused(exc, redact)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return classify_smtp(exc.code, redact(f"{type(exc).__name__}: {exc.message}"))
    detail = redact(f"{type(exc).__name__}: {_message(exc)}")[:_DETAIL_MAX]
    for kind, error, reason in _UNCODED:
        # aiosmtplib wraps a failed TLS handshake in SMTPConnectError.
        if isinstance(exc, kind) or isinstance(exc.__cause__, kind):
            return error(reason, detail)
    return TransientError(Reason.CONNECTION_ERROR, detail)


def _recipient_refused(
    exc: aiosmtplib.SMTPRecipientRefused, redact: Callable[[str], str]
) -> DeliveryError:
    error = classify_smtp(exc.code, redact(f"RCPT refused: {exc.message}"))
    if isinstance(error, PermanentError) and error.reason is Reason.SMTP_5XX:
        return PermanentError(Reason.SMTP_RECIPIENT_REFUSED, error.detail)
    return error


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, aiosmtplib.SMTPException) else str(exc)


class SmtpPool:
    """Lends at most `size` lazily connected SMTP clients and keeps healthy ones for reuse."""

    def __init__(self, factory: Callable[[], aiosmtplib.SMTP], size: int) -> None:
        self._factory = factory
        self._slots = asyncio.Semaphore(size)
        self._idle: list[aiosmtplib.SMTP] = []
        self._lent: set[aiosmtplib.SMTP] = set()

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[aiosmtplib.SMTP]:
        """Yields a client; it goes back to the pool on success and is closed on any error."""
        async with self._slots:
            client = self._idle.pop() if self._idle else self._factory()
            self._lent.add(client)
            try:
                yield client
            except BaseException:
                client.close()
                raise
            else:
                self._idle.append(client)
            finally:
                self._lent.discard(client)

    async def aclose(self) -> None:
        """Says QUIT on idle connections and closes every connection."""
        idle, self._idle = self._idle, []
        for client in idle:
            if client.is_connected:
                with suppress(*SMTP_FAILURES):
                    await client.quit()
            client.close()
        for client in list(self._lent):
            client.close()


class EmailChannel(Channel):
    """Sends notifications as multipart email through the configured SMTP server."""

    name = "email"
    secret_settings = ("email_password",)
    reasons: ClassVar[tuple[Reason, ...]] = (
        Reason.SMTP_4XX,
        Reason.SMTP_5XX,
        Reason.SMTP_AUTH,
        Reason.SMTP_RECIPIENT_REFUSED,
        Reason.CONNECT_TIMEOUT,
        Reason.TIMEOUT,
        Reason.CONNECTION_ERROR,
        Reason.TLS_ERROR,
        Reason.NO_CONTACT,
        Reason.INVALID_ADDRESS,
    )

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        self._sender = parseaddr(settings.email_from)[1] or settings.email_from
        self._from = _from_header(settings.email_from)
        self._domain = message_id_domain(settings.email_from)
        self._redact = Redactor([settings.email_password.get_secret_value()])
        self._pool = SmtpPool(self._new_client, settings.email_pool_size)

    @classmethod
    def from_settings(cls, settings: Settings, context: ChannelContext) -> EmailChannel:
        if not settings.email_enabled or not settings.email_smtp_server:
            raise ChannelUnavailable("set EMAIL_ENABLED=true and EMAIL_SMTP_SERVER")
        return cls(settings, context.clock)

    @classmethod
    def reachable(cls, contacts: Contacts) -> bool:
        return contacts.email is not None

    def render(self, delivery: Delivery) -> EmailPayload:
        recipient = _recipient(delivery)
        message = MIMEMultipart("alternative", boundary=_BOUNDARY)
        message["From"] = self._from
        message["To"] = recipient if recipient.isascii() else _raw_utf8(recipient)
        message["Subject"] = _text_header(
            one_line(f"[{delivery.severity.upper()}] {delivery.title}"), "Subject"
        )
        message["Message-ID"] = _message_id(delivery.notification_id, self._domain)
        message["Date"] = format_datetime(self._clock.now())
        message.attach(_text_part(_text_body(delivery), "plain"))
        message.attach(_text_part(_html_body(delivery), "html"))
        utf8 = not (self._sender + recipient).isascii()
        return EmailPayload(
            data=message.as_bytes(policy=_WIRE),
            sender=self._sender,
            recipient=recipient,
            mail_options=_SMTPUTF8 if utf8 else (),
        )

    async def send(self, payload: EmailPayload) -> None:
        try:
            await self._deliver(payload)
        except SMTP_FAILURES as exc:
            error = classify_smtp_exception(exc, self._redact)
        else:
            return
        # Raised outside the except block so the library exception is not chained to it.
        raise error

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def _deliver(self, payload: EmailPayload) -> None:
        async with self._pool.lease() as client:
            reused = client.is_connected
            try:
                await self._send_on(client, payload)
            except aiosmtplib.SMTPServerDisconnected:
                if not reused:
                    raise
                # The server dropped a pooled connection while it sat idle: one fresh try.
                client.close()
                await self._send_on(client, payload)

    async def _send_on(self, client: aiosmtplib.SMTP, payload: EmailPayload) -> None:
        if not client.is_connected:
            await client.connect()
        await client.sendmail(
            payload.sender, [payload.recipient], payload.data, mail_options=payload.mail_options
        )

    def _new_client(self) -> aiosmtplib.SMTP:
        settings = self._settings
        security = settings.email_security
        return aiosmtplib.SMTP(
            hostname=settings.email_smtp_server,
            port=settings.email_smtp_port,
            username=settings.email_username or None,
            password=settings.email_password.get_secret_value() or None,
            timeout=settings.send_timeout.total_seconds(),
            use_tls=security is EmailSecurity.SSL,
            start_tls=security is EmailSecurity.STARTTLS,
        )


def _recipient(delivery: Delivery) -> str:
    if delivery.email is None:
        raise PermanentError(Reason.NO_CONTACT, f"recipient {delivery.recipient_id} has no email")
    _, address = parseaddr(delivery.email)
    if "@" not in address or one_line(delivery.email) != delivery.email:
        raise PermanentError(
            Reason.INVALID_ADDRESS, f"recipient {delivery.recipient_id} has an invalid email"
        )
    return address


def _raw_utf8(text: str) -> str:
    """Returns text as surrogate escapes, which the compat32 generator writes as raw UTF-8."""
    return text.encode("utf-8").decode("ascii", "surrogateescape")


def _text_header(text: str, name: str) -> str:
    """Returns a one-line header value, as RFC 2047 encoded words unless it is printable ASCII."""
    if _PLAIN_HEADER.fullmatch(text):
        return text
    return Header(text, "utf-8", header_name=name).encode()


def _from_header(from_setting: str) -> str:
    """Returns the From header for EMAIL_FROM, its display name encoded when not ASCII."""
    value = one_line(from_setting)
    name, address = parseaddr(value)
    if not address.isascii():
        return _raw_utf8(value)  # sent with SMTPUTF8, where headers are UTF-8 (RFC 6532)
    if not name or not address:
        return _text_header(value, "From")
    if name.isascii():
        return formataddr((name, address))
    mailbox = Header(name, "utf-8", header_name="From")
    mailbox.append(f" <{address}>", "us-ascii")
    return mailbox.encode()


def _text_part(text: str, subtype: str) -> MIMENonMultipart:
    """Returns a text part whose transfer encoding keeps every line 7-bit and short for SMTP."""
    part = MIMENonMultipart("text", subtype)
    if (
        _PLAIN_TEXT.fullmatch(text)
        and _BOUNDARY not in text
        and max(map(len, text.split("\n"))) <= _LINE_MAX
    ):
        part.set_payload(text, _PLAIN)
        return part
    size = len(text.encode("utf-8"))
    non_ascii = size - len(text.encode("ascii", "ignore"))
    # Quoted-printable triples each non-ASCII byte, base64 grows everything by a third.
    if non_ascii * 6 <= size:
        part.set_payload(text, _QUOTED)
    else:
        # Canonical text (RFC 2045): line breaks are CRLF inside the base64, just as
        # quoted-printable line breaks decode to CRLF.
        part.set_payload(_LINE_END.sub("\r\n", text), _BASE64)
    return part


def _text_body(delivery: Delivery) -> str:
    return (
        f"[{delivery.severity.upper()}] {delivery.title}\n\n{delivery.body}\n\n"
        f"-- \nTocsin notification {delivery.notification_id} (alert {delivery.alert_id})\n"
    )


def _html_body(delivery: Delivery) -> str:
    severity = html.escape(delivery.severity.upper())
    return (
        "<!DOCTYPE html>\n<html><body>\n"
        f"<p><strong>[{severity}]</strong> {html.escape(delivery.title)}</p>\n"
        f'<div style="white-space: pre-wrap">{html.escape(delivery.body)}</div>\n'
        f"<p><small>Tocsin notification {delivery.notification_id} "
        f"(alert {delivery.alert_id})</small></p>\n"
        "</body></html>\n"
    )
