"""A loopback SMTP sink (aiosmtpd) that runs in the test's event loop and can be told to fail."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

STAGES = ("MAIL", "RCPT", "DATA")


@dataclass
class _Rule:
    """A forced reply (or a hang-up when code is None) for the next `times` commands of a stage."""

    code: int | None
    text: str
    times: int | None

    def take(self) -> bool:
        """Uses up one application of the rule; False once it is spent."""
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


class _Handler:
    """aiosmtpd hooks that apply the sink's rules and record accepted messages."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        forced = self._sink._forced("MAIL", server)
        if forced is not None:
            return forced
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        forced = self._sink._forced("RCPT", server)
        if forced is not None:
            return forced
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._sink.quits += 1
        return "221 Bye"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self._sink.data_delay:
            await asyncio.sleep(self._sink.data_delay)
        forced = self._sink._forced("DATA", server)
        if forced is not None:
            return forced
        content = envelope.original_content or envelope.content or b""
        raw = content if isinstance(content, bytes) else content.encode("utf-8")
        message = BytesParser(policy=policy.default).parsebytes(raw)
        assert isinstance(message, EmailMessage)
        self._sink.messages.append(message)
        self._sink.received_at.append(time.monotonic())
        self._sink.envelopes.append((envelope.mail_from or "", list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


class _CountingSMTP(SMTP):
    """The aiosmtpd protocol, counting connections for the sink."""

    def __init__(self, sink: SmtpSink, **kwargs: Any) -> None:
        super().__init__(_Handler(sink), **kwargs)
        self._sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # not the STARTTLS re-entry
            self._sink.connections += 1
            self._sink._transports.add(transport)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.transport is not None:
            self._sink._transports.discard(self.transport)
        super().connection_lost(error)


class SmtpSink:
    """Accepts mail on 127.0.0.1 and records it; respond_with() and hang_up() script failures."""

    def __init__(self, username: str | None = None, password: str | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.messages: list[EmailMessage] = []
        # time.monotonic() when each message was accepted, in the order of messages.
        self.received_at: list[float] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.connections = 0
        self.quits = 0
        # Seconds the server waits before answering DATA (for client timeouts).
        self.data_delay = 0.0
        self.logins: list[str] = []
        self._credentials = (username, password) if username is not None else None
        self._rules: dict[str, _Rule] = {}
        self._transports: set[asyncio.BaseTransport] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> SmtpSink:
        """Starts listening on a free loopback port in the running loop."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Closes every connection and stops listening."""
        for transport in list(self._transports):
            transport.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> SmtpSink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def respond_with(
        self, code: int, text: str, times: int | None = None, stage: str = "DATA"
    ) -> None:
        """Makes `stage` (MAIL, RCPT or DATA) answer `code text` for the next `times` messages."""
        self._rules[_stage(stage)] = _Rule(code, text, times)

    def hang_up(self, times: int | None = 1, stage: str = "MAIL") -> None:
        """Makes the server drop the connection, unanswered, at `stage` for the next `times`."""
        self._rules[_stage(stage)] = _Rule(None, "", times)

    def drop_connections(self) -> None:
        """Closes every open connection from the server side, as an idle timeout would."""
        for transport in list(self._transports):
            transport.close()

    def reset(self) -> None:
        """Forgets every scripted failure and delay."""
        self._rules.clear()
        self.data_delay = 0.0

    def _protocol(self) -> SMTP:
        return _CountingSMTP(
            self,
            hostname="smtp.test",
            loop=asyncio.get_running_loop(),
            auth_require_tls=False,
            authenticator=self._authenticate if self._credentials else None,
        )

    def _forced(self, stage: str, server: SMTP) -> str | None:
        rule = self._rules.get(stage)
        if rule is None or not rule.take():
            return None
        if rule.code is None:
            assert server.transport is not None
            server.transport.close()
            return "421 closing"  # never reaches the client: the transport is closed
        return f"{rule.code} {rule.text}"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self._credentials is not None
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = data.login.decode(), data.password.decode()
        ok = (login, password) == self._credentials
        if ok:
            self.logins.append(login)
        return AuthResult(success=ok, handled=False)


def _stage(stage: str) -> str:
    stage = stage.upper()
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}")
    return stage
