"""Message-IDs: deterministic per notification, never shared by two installations."""

from __future__ import annotations

import re
from pathlib import Path

from channels.base import ChannelContext
from pipeline.config import Settings
from pipeline.models import State
from tests.support.channels import pinned
from tests.support.email_channel import make_delivery, parsed
from tests.support.pipeline import cycle, open_app, produced, rows
from tests.support.services import migrated
from tests.support.smtp_server import SmtpSink

EMAIL_FROM = "Tocsin <ops@alerts.example.org>"


def installation(directory: Path, smtp: SmtpSink) -> Settings:
    """Settings of one installation: its own SQLite file, migrated, and the shared EMAIL_FROM."""
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{directory}/tocsin.db",
        queue_url="memory://",
        metrics_port=-1,
    )
    directory.mkdir()
    return migrated(settings)


async def test_two_installations_never_share_a_message_id(
    tmp_path: Path, smtp_server: SmtpSink
) -> None:
    east, west = (
        installation(tmp_path / "east", smtp_server),
        installation(tmp_path / "west", smtp_server),
    )
    channels = pinned(smtp_server, email={"sender": EMAIL_FROM})
    sent_ids = set()
    for settings in (east, west):
        async with open_app(settings, channels=channels) as app:
            await produced(app, "alice", email="alice@example.com", channels="email")
            assert await cycle(app) == 1
            sent = (await rows(app))[("alice", "email")]
            assert sent.state == State.SENT
            sent_ids.add(sent.id)
    (notification_id,) = sent_ids  # the same notification of each installation
    shape = re.compile(rf"<tocsin\.{notification_id}\.[0-9a-f]{{32}}@alerts\.example\.org>")
    first, second = (str(message["Message-ID"]) for message in smtp_server.messages)
    assert shape.fullmatch(first) and shape.fullmatch(second)
    assert first != second

    # A restarted process renders that notification of the first installation again: same id.
    async with open_app(east, channels=channels) as app:
        context = ChannelContext(app.sessions, app.clock)
        channel = channels.build(context, ["email"])["email"]
        await channel.start()
        again = [channel.render(make_delivery(notification_id=notification_id)) for _ in range(2)]
        await channel.aclose()
    assert {str(parsed(payload)["Message-ID"]) for payload in again} == {first}
