"""Mentions: only validated WeCom userids, and the whole group only when a critical alert asks."""

from __future__ import annotations

import pytest
from sqlalchemy import update
from sqlmodel import col
from structlog.testing import capture_logs

from pipeline.config import Settings
from pipeline.models import Alert, RecipientContact, State
from pipeline.recipients import list_recipients
from pipeline.validation import InputError
from tests.support.channels import pinned
from tests.support.pipeline import add_alert, add_user, cycle, open_app, rows
from tests.support.wecom_server import WeComRobot, mentions


@pytest.mark.parametrize("userid", ["all", "@all", "ALL", "bob> <@all", "<@all>", "a b"])
async def test_a_userid_that_could_mention_others_is_refused_on_save(
    sqlite_settings: Settings, userid: str
) -> None:
    async with open_app(sqlite_settings) as app:
        with pytest.raises(InputError, match=r"^wecom_userid "):
            await add_user(app, "bob", wecom_userid=userid)
        assert await list_recipients(app.sessions, app.channels) == []


async def test_a_valid_userid_is_saved_stripped(sqlite_settings: Settings) -> None:
    async with open_app(sqlite_settings) as app:
        record = await add_user(app, "bob", wecom_userid=" bob.li@corp ")
    assert record.contacts["wecom_userid"] == "bob.li@corp"


@pytest.mark.parametrize("severity", ["info", "warning"])
async def test_mention_all_is_refused_below_critical(
    sqlite_settings: Settings, severity: str
) -> None:
    async with open_app(sqlite_settings) as app:
        await add_user(app, "alice")
        with pytest.raises(InputError, match="--mention-all is only allowed on critical alerts"):
            await add_alert(app, ["alice"], severity=severity, mention_all=True)


async def test_the_group_is_mentioned_only_for_a_critical_alert_that_asks(
    sqlite_settings: Settings, wecom_server: WeComRobot
) -> None:
    async with open_app(sqlite_settings, channels=pinned(robot=wecom_server)) as app:
        await add_user(app, "alice", wecom_userid="alice", channels="wecom")
        asked = await add_alert(app, ["alice"], "critical", "asked", mention_all=True)
        await add_alert(app, ["alice"], "critical", "critical")
        sneaked = await add_alert(app, ["alice"], "warning", "sneaked")
        async with app.sessions() as session, session.begin():
            # Written around create_alert: the channel checks the severity again.
            await session.execute(
                update(Alert).where(col(Alert.id) == sneaked.id).values(mention_all=True)
            )
        await app.producer().run()
        assert await cycle(app) == 3
    by_title = {
        content.split("\n", 1)[0]: mentions(content)
        for content in (body["markdown"]["content"] for body in wecom_server.received["k1"])
    }
    assert asked.mention_all
    assert by_title == {
        "## asked": ["all", "alice"],
        "## critical": ["alice"],
        "## sneaked": ["alice"],
    }


async def test_an_invalid_userid_in_the_database_still_notifies_the_group_without_a_mention(
    sqlite_settings: Settings, wecom_server: WeComRobot
) -> None:
    async with open_app(sqlite_settings, channels=pinned(robot=wecom_server)) as app:
        bob = await add_user(app, "bob", channels="wecom")
        async with app.sessions() as session, session.begin():
            # Written around validation, as another program might.
            contact = RecipientContact(
                recipient_id=bob.id, kind="wecom_userid", address="bob> <@all"
            )
            session.add(contact)
        await add_alert(app, ["bob"], "critical")
        await app.producer().run()
        with capture_logs() as logs:
            await cycle(app)
        found = await rows(app)
    [body] = wecom_server.received["k1"]
    assert mentions(body["markdown"]["content"]) == []
    assert found[("bob", "wecom")].state == State.SENT
    assert "wecom_mention_dropped" in [entry["event"] for entry in logs]
