"""The email channel: text + HTML messages sent over a small pool of reused SMTP connections."""

from __future__ import annotations

import asyncio
import html
import re
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from email.contentmanager import _encode_text  # type: ignore[attr-defined]
from email.headerregistry import Address, BaseHeader
from email.message import EmailMessage
from email.policy import EmailPolicy
from enum import StrEnum
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

import aiosmtplib
from pydantic import AliasChoices, Field, SecretStr, model_validator

from channels.base import (
    Channel,
    ChannelContext,
    ChannelSettings,
    ChannelUnavailable,
    Contact,
    Contacts,
    Delivery,
)
from channels.email_headers import (
    WIRE,
    WIRE_UTF8,
    AddressError,
    HeaderBroken,
    header_text,
    recipient_address,
    sender_mailbox,
)
from channels.errors import (
    DeliveryError,
    PermanentError,
    Reason,
    TransientError,
    classify_smtp,
)
from pipeline.clock import Clock
from pipeline.installation import installation_id
from pipeline.redact import Redactor
from pipeline.validation import validate_email

if TYPE_CHECKING:
    from pipeline.db import SessionFactory


class EmailSecurity(StrEnum):
    """How the SMTP connection is protected."""

    STARTTLS = "starttls"
    SSL = "ssl"
    NONE = "none"


class EmailSettings(ChannelSettings):
    """EMAIL_*: the SMTP server, its credentials and the sender."""

    enabled: bool = Field(False, validation_alias=AliasChoices("EMAIL_ENABLED"))
    smtp_server: str = Field("", validation_alias=AliasChoices("EMAIL_SMTP_SERVER"))
    smtp_port: int = Field(587, ge=1, le=65535, validation_alias=AliasChoices("EMAIL_SMTP_PORT"))
    username: str = Field("", validation_alias=AliasChoices("EMAIL_USERNAME"))
    password: SecretStr = Field(SecretStr(""), validation_alias=AliasChoices("EMAIL_PASSWORD"))
    sender: str = Field("Tocsin <tocsin@localhost>", validation_alias=AliasChoices("EMAIL_FROM"))
    security: EmailSecurity = Field(
        EmailSecurity.STARTTLS, validation_alias=AliasChoices("EMAIL_SECURITY")
    )
    # AUTH over a connection without TLS sends the password in clear: refused unless asked for.
    allow_plaintext_auth: bool = Field(
        False, validation_alias=AliasChoices("EMAIL_ALLOW_PLAINTEXT_AUTH")
    )
    pool_size: int = Field(4, ge=1, validation_alias=AliasChoices("EMAIL_POOL_SIZE"))

    @model_validator(mode="after")
    def _no_clear_password(self) -> EmailSettings:
        if self.security is EmailSecurity.NONE and self.username and not self.allow_plaintext_auth:
            raise ValueError(
                "EMAIL_SECURITY=none with EMAIL_USERNAME would send the password in clear: "
                "use starttls or ssl, or set EMAIL_ALLOW_PLAINTEXT_AUTH=true"
            )
        return self


def _check_email(address: str, _settings: Any) -> str:
    return validate_email(address)


EMAIL = Contact("email", "an e-mail address", _check_email, max_length=320)

_DETAIL_MAX = 300
_FALLBACK_DOMAIN = "tocsin.local"
_DOMAIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")
_SMTPUTF8 = ("SMTPUTF8", "BODY=8BITMIME")
_LINE_MAX = 78
# 7bit only for printable ASCII: NUL and the other controls are not 7bit data (RFC 2045 2.7).
_PLAIN_TEXT = re.compile(r"[\t\n\x20-\x7e]*")
# Quoted-printable and base64 never contain "=_", so only a 7bit body could collide with it,
# and a body that holds it is sent quoted-printable.
_BOUNDARY = "=_tocsin_alternative_=_"
_LINE_ENDS = re.compile(r"\r\n|\r|\n")

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


def message_id_domain(from_address: str) -> str:
    """Returns the domain of the From address, or tocsin.local when it has none usable."""
    try:
        domain = sender_mailbox(from_address).domain
    except AddressError:
        return _FALLBACK_DOMAIN
    return domain if _DOMAIN.match(domain) else _FALLBACK_DOMAIN


def message_id(notification_id: int, installation: str, from_address: str) -> str:
    """Returns the Message-ID of a notification: the same on a resend, unique per installation."""
    return _message_id(notification_id, installation, message_id_domain(from_address))


def _message_id(notification_id: int, installation: str, domain: str) -> str:
    # The installation's UUID as 32 hex digits keeps the header within 78 characters.
    return f"<tocsin.{notification_id}.{uuid.UUID(installation).hex}@{domain}>"


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


class EmailChannel(Channel[EmailSettings]):
    """Sends notifications as multipart email through the configured SMTP server."""

    name = "email"
    settings_class = EmailSettings
    contacts = (EMAIL,)
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
        Reason.RENDER_ERROR,
    )

    def __init__(
        self,
        settings: EmailSettings,
        clock: Clock,
        sessions: SessionFactory,
        send_timeout: timedelta = timedelta(seconds=30),
    ) -> None:
        self._settings = settings
        self._send_timeout = send_timeout
        self._clock = clock
        self._sessions = sessions
        try:
            self._from: _Mailbox | None = _mailbox("From", sender_mailbox(settings.sender))
        except AddressError:
            self._from = None  # refused at render, so the reason is recorded per notification
        self._domain = message_id_domain(settings.sender)
        self._installation: str | None = None
        self._redact = Redactor([settings.password.get_secret_value()])
        self._pool = SmtpPool(self._new_client, settings.pool_size)

    @classmethod
    def from_settings(cls, settings: EmailSettings, context: ChannelContext) -> EmailChannel:
        if not settings.enabled or not settings.smtp_server:
            raise ChannelUnavailable("set EMAIL_ENABLED=true and EMAIL_SMTP_SERVER")
        return cls(settings, context.clock, context.session_factory, context.send_timeout)

    @classmethod
    def reachable(cls, contacts: Contacts) -> bool:
        return bool(contacts.get(EMAIL.kind))

    async def start(self) -> None:
        """Loads this installation's id, which every Message-ID carries."""
        if self._installation is None:
            self._installation = await installation_id(self._sessions, self._clock.now())

    def render(self, delivery: Delivery) -> EmailPayload:
        msg_id = self._message_id(delivery.notification_id)
        sender = self._sender()
        recipient = _recipient(delivery)
        utf8 = not (sender.addr_spec + recipient.addr_spec).isascii()
        policy = WIRE_UTF8 if utf8 else WIRE
        # The stdlib writes the headers people can put text in (names, subject): its folding
        # and encoded-words, and the wire policy's refusal to break a line.
        head = EmailMessage(policy=policy)
        head["From"] = sender.header
        head["To"] = recipient.header
        head["Subject"] = header_text(f"[{delivery.severity.upper()}] {delivery.title}")
        head["Message-ID"] = msg_id
        head["Date"] = self._clock.now()
        try:
            headers = bytes(head)[: -len(_CRLF)]
        except HeaderBroken as exc:
            raise PermanentError(Reason.RENDER_ERROR, f"the {exc} header would break") from None
        data = b"".join(
            (
                headers,
                _ALTERNATIVE_HEAD,
                _part("plain", _text_body(delivery), policy),
                _part("html", _html_body(delivery), policy),
                _ALTERNATIVE_END,
            )
        )
        return EmailPayload(
            data=data,
            sender=sender.addr_spec,
            recipient=recipient.addr_spec,
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

    def _message_id(self, notification_id: int) -> str:
        if self._installation is None:
            raise RuntimeError(
                "EmailChannel.render() before `await channel.start()`: "
                "the Message-ID needs this installation's id"
            )
        return _message_id(notification_id, self._installation, self._domain)

    def _sender(self) -> _Mailbox:
        if self._from is None:
            raise PermanentError(
                Reason.INVALID_ADDRESS, "EMAIL_FROM is not one address (Name <user@host>)"
            )
        return self._from

    def _new_client(self) -> aiosmtplib.SMTP:
        settings = self._settings
        security = settings.security
        return aiosmtplib.SMTP(
            hostname=settings.smtp_server,
            port=settings.smtp_port,
            username=settings.username or None,
            password=settings.password.get_secret_value() or None,
            timeout=self._send_timeout.total_seconds(),
            use_tls=security is EmailSecurity.SSL,
            start_tls=security is EmailSecurity.STARTTLS,
        )


@dataclass(frozen=True)
class _Mailbox:
    """An address checked once, and its header value parsed once, ready for every message."""

    addr_spec: str
    header: BaseHeader


def _mailbox(name: str, address: Address) -> _Mailbox:
    return _Mailbox(address.addr_spec, WIRE.header_factory(name, address))


@lru_cache(maxsize=4096)
def _to(email: str) -> _Mailbox:
    # Cached: parsing an address header costs about as much as the rest of a render.
    return _mailbox("To", recipient_address(email))


def _recipient(delivery: Delivery) -> _Mailbox:
    email = delivery.contacts.get(EMAIL.kind)
    if email is None:
        raise PermanentError(Reason.NO_CONTACT, f"recipient {delivery.recipient_id} has no email")
    try:
        return _to(email)
    except AddressError:
        raise PermanentError(
            Reason.INVALID_ADDRESS, f"recipient {delivery.recipient_id} has an invalid email"
        ) from None


_CRLF = b"\r\n"
# The multipart skeleton is fixed (headers we write, not people): built once as bytes instead
# of by EmailMessage per message, which cost about 1 ms of a worker's CPU per e-mail.
_ALTERNATIVE_HEAD = (
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="' + _BOUNDARY.encode() + b'"\r\n\r\n'
)
_DELIMITER = b"--" + _BOUNDARY.encode() + _CRLF
_ALTERNATIVE_END = b"--" + _BOUNDARY.encode() + b"--" + _CRLF


def _part(subtype: str, text: str, policy: EmailPolicy) -> bytes:
    """One text/* part of the alternative, its body encoded as EmailMessage.set_content does."""
    cte = _transfer_encoding(text)
    # The stdlib's own encoder (set_content's), so the bytes are what EmailMessage wrote.
    _, body = _encode_text(text, "utf-8", cte, policy)
    return b"".join(
        (
            _DELIMITER,
            f'Content-Type: text/{subtype}; charset="utf-8"\r\n'.encode(),
            f"Content-Transfer-Encoding: {cte}\r\n\r\n".encode(),
            _LINE_ENDS.sub("\r\n", body).encode("ascii"),
            _CRLF,
        )
    )


def _transfer_encoding(text: str) -> str:
    """Returns a transfer encoding that keeps every body line 7-bit and short for SMTP."""
    if (
        _PLAIN_TEXT.fullmatch(text)
        and _BOUNDARY not in text
        and max(map(len, text.split("\n"))) <= _LINE_MAX
    ):
        return "7bit"
    size = len(text.encode("utf-8", "surrogatepass"))
    non_ascii = size - len(text.encode("ascii", "ignore"))
    # Quoted-printable triples each non-ASCII byte, base64 grows everything by a third.
    return "quoted-printable" if non_ascii * 6 <= size else "base64"


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
