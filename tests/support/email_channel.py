"""Builds e-mail channel tests' parts: settings, deliveries, a database naming the installation."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from sqlmodel import SQLModel

from channels.base import ChannelContext, Delivery
from channels.email import EmailPayload, EmailSettings
from pipeline.clock import ManualClock
from pipeline.config import Settings
from pipeline.db import SessionFactory, create_engine, session_factory
from pipeline.models import Installation
from tests.support.smtp_server import SmtpSink

NOW = datetime(2024, 3, 1, 8, 30, tzinfo=UTC)
DELIVERY_FIELDS = {f.name for f in dataclasses.fields(Delivery)}
INSTALLATION = "0b4f3c52-7f4e-4a55-9d4c-1f2e3d4c5b6a"


def make_delivery(**overrides: Any) -> Delivery:
    """Returns a delivery of notification 42 to zhang (zhang@example.com, WeCom zhangsan).

    overrides are Delivery's fields or contact kinds (email="x@example.com"; None drops one).
    """
    fields: dict[str, Any] = {
        "notification_id": 42,
        "channel": "email",
        "attempt": 1,
        "alert_id": 7,
        "title": "Disk full on db-1",
        "body": "Usage is 97% <b>now</b> & rising",
        "severity": "critical",
        "alert_created_at": NOW,
        "recipient_id": 3,
        "username": "zhang",
    }
    contacts = {"email": "zhang@example.com", "wecom_userid": "zhangsan"}
    for key, value in overrides.items():
        if key in DELIVERY_FIELDS:
            fields[key] = value
        elif value is None:
            contacts.pop(key, None)
        else:
            contacts[key] = value
    return Delivery(**fields, contacts=contacts)


def make_settings(sink: SmtpSink | None = None, **overrides: Any) -> EmailSettings:
    """Returns e-mail settings, on and pointed at the sink (or at a closed local port).

    overrides use the field names or the env names in lower case (email_from, email_pool_size).
    """
    fields: dict[str, Any] = {
        "enabled": True,
        "smtp_server": sink.host if sink else "127.0.0.1",
        "smtp_port": sink.port if sink else 25,
        "security": "none",
        "sender": "Tocsin Ops <ops@alerts.example.org>",
    }
    for key, value in overrides.items():
        fields["sender" if key == "email_from" else key.removeprefix("email_")] = value
    unknown = set(fields) - set(EmailSettings.model_fields)
    assert not unknown, f"EmailSettings has no {unknown}"  # extra="ignore" would drop a typo
    return EmailSettings(_env_file=None, **fields)


def make_context(
    sessions: SessionFactory, send_timeout: timedelta = timedelta(seconds=5)
) -> ChannelContext:
    """Returns the context a channel is built with, on a manual clock at NOW."""
    return ChannelContext(
        session_factory=sessions, clock=ManualClock(NOW), send_timeout=send_timeout
    )


@asynccontextmanager
async def installation_database(
    directory: Path, installation: str | None = INSTALLATION
) -> AsyncIterator[SessionFactory]:
    """Yields sessions on a SQLite database made by create_all, naming `installation` if given."""
    settings = Settings(_env_file=None, database_url=f"sqlite+aiosqlite:///{directory}/email.db")
    engine = create_engine(settings)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(SQLModel.metadata.create_all)
        sessions = session_factory(engine)
        if installation is not None:
            async with sessions() as session:
                session.add(Installation(id=1, installation_id=installation, created_at=NOW))
                await session.commit()
        yield sessions
    finally:
        await engine.dispose()


def parsed(payload: EmailPayload) -> EmailMessage:
    """Parses the rendered bytes the way a receiving server does (as the SMTP sink does)."""
    message = BytesParser(policy=policy.default).parsebytes(payload.data)
    assert isinstance(message, EmailMessage)
    return message


def wire_lines(payload: EmailPayload) -> list[bytes]:
    """Returns the lines of the rendered message, which must all end in CRLF."""
    assert payload.data.endswith(b"\r\n")
    lines = payload.data.split(b"\r\n")[:-1]
    assert not any(b"\r" in line or b"\n" in line for line in lines)
    return lines


def header_lines(payload: EmailPayload) -> list[bytes]:
    """Returns the lines of the message's own header block."""
    lines = wire_lines(payload)
    return lines[: lines.index(b"")]


def body_text(message: EmailMessage, subtype: str) -> str:
    """Returns the decoded text of the message's text/<subtype> part."""
    part = message.get_body((subtype,))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content
