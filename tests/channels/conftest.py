"""Fixtures of the channel tests: WeCom channels over one database of shared budgets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete

from channels.base import ChannelContext
from channels.wecom import WeComChannel, WeComSettings
from channels.wecom_url import ROBOT_PATH
from pipeline.clock import ManualClock
from pipeline.config import Settings
from pipeline.db import SessionFactory, create_engine
from pipeline.db import session_factory as make_session_factory
from pipeline.models import SendBudget, SendBudgetSlot
from tests.support.services import migrated, settings_for

NOW = datetime(2024, 3, 1, 8, 30, tzinfo=UTC)


def make_settings(**overrides: Any) -> WeComSettings:
    fields: dict[str, Any] = {"enabled": True}
    fields.update({key.removeprefix("wecom_"): value for key, value in overrides.items()})
    url = fields.get("webhook_url")
    if url and "allowed_hosts" not in fields:
        # Allow the webhook's own origin, e.g. http://127.0.0.1:PORT for the loopback robot.
        fields["allowed_hosts"] = url.split(ROBOT_PATH, 1)[0]
    return WeComSettings(_env_file=None, **fields)


class Harness:
    """Builds channels sharing one manual clock and one database, and closes them at the end."""

    def __init__(self, sessions: SessionFactory) -> None:
        self.clock = ManualClock(NOW)
        self.sessions = sessions
        self.opened: list[WeComChannel] = []

    def channel(self, **overrides: Any) -> WeComChannel:
        timeout = overrides.pop("send_timeout", timedelta(seconds=5))
        # The database holds the robot keys' shared budgets.
        context = ChannelContext(
            session_factory=self.sessions, clock=self.clock, send_timeout=timeout
        )
        channel = WeComChannel.from_settings(make_settings(**overrides), context)
        self.opened.append(channel)
        return channel


@pytest.fixture(scope="module")
def budget_database(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """One migrated SQLite file for the module; each test starts with empty budgets."""
    return migrated(settings_for(f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('wecom')}/t.db"))


@pytest.fixture
async def harness(budget_database: Settings) -> AsyncIterator[Harness]:
    engine = create_engine(budget_database)
    sessions = make_session_factory(engine)
    async with sessions() as session, session.begin():
        await session.execute(delete(SendBudgetSlot))
        await session.execute(delete(SendBudget))
    built = Harness(sessions)
    yield built
    for channel in built.opened:
        await channel.aclose()
    await engine.dispose()
