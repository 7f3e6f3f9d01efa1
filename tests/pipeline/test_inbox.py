"""The inbox queries: pages by cursor, unread, marking read, reading since an id, in id order."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select
from sqlmodel import col

from channels.base import ChannelContext
from channels.system import INBOX_ORDER_LOCK, SystemChannel
from pipeline.app import App
from pipeline.config import Settings
from pipeline.inbox import (
    inbox_page,
    mark_all_read,
    mark_one_read,
    messages_after,
    newest_id,
    owner_id,
    read_since,
    unread_count,
)
from pipeline.models import InboxMessage, Notification
from pipeline.sql import first_ints, insert_ignoring_duplicates
from tests.support.inbox import deliver
from tests.support.pipeline import add_alert, add_user, open_app


async def inbox_ids(app: App, recipient_id: int) -> list[int]:
    async with app.sessions() as session:
        found = await session.execute(
            select(col(InboxMessage.id))
            .where(col(InboxMessage.recipient_id) == recipient_id)
            .order_by(col(InboxMessage.id))
        )
        return first_ints(found)


async def test_pages_go_newest_first_until_the_cursor_runs_out(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        await add_user(app, "alice", channels="system")
        for n in range(5):
            await deliver(app, ["alice"], f"Disk {n}")
        alice = await owner_id(app.sessions, "alice")
        assert alice is not None
        first = await inbox_page(app.sessions, alice, limit=2)
        second = await inbox_page(app.sessions, alice, limit=2, before=first.next_cursor)
        third = await inbox_page(app.sessions, alice, limit=2, before=second.next_cursor)
        exact = await inbox_page(app.sessions, alice, limit=5)
    titles = [[i.title for i in page.items] for page in (first, second, third)]
    assert titles == [["Disk 4", "Disk 3"], ["Disk 2", "Disk 1"], ["Disk 0"]]
    assert first.next_cursor == first.items[-1].id
    assert third.next_cursor is None
    assert len(exact.items) == 5 and exact.next_cursor is None


async def test_unread_count_and_marking_read(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        await add_user(app, "alice", channels="system")
        await add_user(app, "bob", channels="system")
        for n in range(3):
            await deliver(app, ["alice", "bob"], f"Disk {n}")
        alice = await owner_id(app.sessions, "alice")
        bob = await owner_id(app.sessions, "bob")
        assert alice is not None and bob is not None
        oldest, middle, newest = await inbox_ids(app, alice)
        bobs = await inbox_ids(app, bob)

        marked = await mark_one_read(app.sessions, app.clock, alice, middle)
        first_read_at = marked.read_at if marked else None
        app.clock.advance(timedelta(minutes=5))  # type: ignore[attr-defined]
        again = await mark_one_read(app.sessions, app.clock, alice, middle)
        not_hers = await mark_one_read(app.sessions, app.clock, alice, bobs[0])
        missing = await mark_one_read(app.sessions, app.clock, alice, 10_000)
        unread = await inbox_page(app.sessions, alice, unread_only=True)
        counts = (await unread_count(app.sessions, alice), await unread_count(app.sessions, bob))
        all_marked = await mark_all_read(app.sessions, app.clock, alice)
        after = await unread_count(app.sessions, alice)
        bob_after = await unread_count(app.sessions, bob)
    assert marked is not None and marked.read and marked.id == middle
    assert again is not None and again.read_at == first_read_at  # read once, not re-stamped
    assert not_hers is None and missing is None
    assert [i.id for i in unread.items] == [newest, oldest]
    assert counts == (2, 3)
    assert (all_marked, after, bob_after) == (2, 0, 3)


async def test_read_since_returns_what_came_after_oldest_first(db_settings: Settings) -> None:
    async with open_app(db_settings) as app:
        await add_user(app, "alice", channels="system")
        await add_user(app, "bob", channels="system")
        for n in range(4):
            await deliver(app, ["alice", "bob"], f"Disk {n}")
        alice = await owner_id(app.sessions, "alice")
        assert alice is not None
        ids = await inbox_ids(app, alice)
        since = await read_since(app.sessions, alice, ids[1])
        limited = await read_since(app.sessions, alice, 0, limit=3)
    assert [i.id for i in since] == ids[2:]
    assert [i.id for i in limited] == ids[:3]


async def test_messages_after_names_recipients_and_still_learns_the_newest_id(
    db_settings: Settings,
) -> None:
    async with open_app(db_settings) as app:
        await add_user(app, "alice", channels="system")
        await add_user(app, "bob", channels="system")
        await deliver(app, ["alice"], "Disk 0")
        await deliver(app, ["bob"], "Disk 1")
        await deliver(app, ["alice"], "Disk 2")
        await deliver(app, ["bob"], "Disk 3")
        alice = await owner_id(app.sessions, "alice")
        bob = await owner_id(app.sessions, "bob")
        assert alice is not None and bob is not None
        top = await newest_id(app.sessions)
        for_alice = await messages_after(app.sessions, 0, [alice], limit=100)
        everyone = await messages_after(app.sessions, 0, None, limit=100)
        nothing_new = await messages_after(app.sessions, top, [alice], limit=100)
    # Alice's messages, and Bob's newest only to tell how far the inbox goes.
    assert [(r, i.title) for r, i in for_alice] == [
        (alice, "Disk 0"),
        (alice, "Disk 2"),
        (bob, "Disk 3"),
    ]
    assert for_alice[-1][1].id == top
    assert [i.title for _, i in everyone] == ["Disk 0", "Disk 1", "Disk 2", "Disk 3"]
    assert nothing_new == []


async def test_names_that_cannot_exist_have_no_inbox(sqlite_settings: Settings) -> None:
    async with open_app(sqlite_settings) as app:
        await add_user(app, "alice", channels="system")
        assert await owner_id(app.sessions, "alice") is not None
        for name in ("nobody", "", "a" * 500, "al\x00ice", "alice "):
            expected = await owner_id(app.sessions, name.strip()) if name == "alice " else None
            assert await owner_id(app.sessions, name) == expected


async def test_postgres_inbox_writers_take_turns_so_ids_appear_in_order(
    postgres_settings: Settings,
) -> None:
    """A later writer draws its ids only after the earlier one is visible (no id overtaken)."""
    async with open_app(postgres_settings) as app:
        await add_user(app, "alice", channels="system")
        await add_alert(app, ["alice"], title="Disk 0")
        await add_alert(app, ["alice"], title="Disk 1")
        await app.producer().run()
        notifications = await _system_notifications(app)
        channel = SystemChannel(ChannelContext(app.sessions, app.clock))
        first, second = (_payload(app, n) for n in notifications)

        async with app.sessions() as early, early.begin():
            await early.execute(INBOX_ORDER_LOCK)
            await early.execute(insert_ignoring_duplicates(early, InboxMessage), [first])
            later = asyncio.create_task(channel.send(second))
            await asyncio.sleep(0.5)
            waited = not later.done()
        await asyncio.wait_for(later, 10)
        await channel.aclose()
        async with app.sessions() as session:
            rows = (
                await session.execute(select(InboxMessage).order_by(col(InboxMessage.id)))
            ).scalars()
            order = [m.notification_id for m in rows]
    assert waited, "the second writer did not wait for the first to commit"
    assert order == [first["notification_id"], second["notification_id"]]


async def _system_notifications(app: App) -> list[tuple[int, int, int]]:
    async with app.sessions() as session:
        found = await session.execute(
            select(col(Notification.id), col(Notification.alert_id), col(Notification.recipient_id))
            .where(col(Notification.channel) == "system")
            .order_by(col(Notification.id))
        )
        return [(row[0] or 0, row[1], row[2]) for row in found]


def _payload(app: App, notification: tuple[int, int, int]) -> dict[str, object]:
    notification_id, alert_id, recipient_id = notification
    return {
        "recipient_id": recipient_id,
        "notification_id": notification_id,
        "alert_id": alert_id,
        "title": f"message {notification_id}",
        "body": "body",
        "severity": "warning",
        "created_at": app.clock.now(),
    }
