"""The inbox feed: one poll per process for every subscriber, each gets its own, in order."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

from sqlalchemy import event

from pipeline.config import Settings
from pipeline.inbox import InboxItem, owner_id
from pipeline.inbox_feed import InboxFeed, Subscription
from tests.support.inbox import deliver
from tests.support.pipeline import add_user, open_app


async def test_one_query_per_poll_whatever_the_number_of_subscribers(
    db_settings: Settings,
) -> None:
    async with open_app(db_settings) as app:
        names = [f"user{n}" for n in range(20)]
        for name in names:
            await add_user(app, name, channels="system")
        ids = [await owner_id(app.sessions, name) for name in names]
        feed = InboxFeed(app.sessions, interval=3600)  # polled by hand below
        statements: list[str] = []

        def count(*args: Any) -> None:
            statements.append(str(args[2]))

        async with AsyncExitStack() as stack:
            subscriptions = [
                await stack.enter_async_context(feed.subscription(i)) for i in ids if i
            ]
            await deliver(app, names, "Disk full")
            event.listen(app.engine.sync_engine, "before_cursor_execute", count)
            try:
                await feed.poll()
                await feed.poll()
            finally:
                event.remove(app.engine.sync_engine, "before_cursor_execute", count)
            received = [await asyncio.wait_for(s.next(), 1) for s in subscriptions]
        await feed.close()
    assert len([s for s in statements if "inbox_messages" in s]) == 2, statements
    assert [[m.title for m in items] for items in received] == [["Disk full"]] * 20


async def test_each_subscriber_gets_only_its_own_messages_in_order(
    sqlite_settings: Settings,
) -> None:
    async with open_app(sqlite_settings) as app:
        await add_user(app, "alice", channels="system")
        await add_user(app, "bob", channels="system")
        await deliver(app, ["alice"], "before anyone listened")
        alice = await owner_id(app.sessions, "alice")
        assert alice is not None
        feed = InboxFeed(app.sessions, interval=0.05)
        async with feed.subscription(alice) as live, feed.subscription(alice) as second_tab:
            for title in ("one", "for bob", "two"):
                await deliver(app, ["bob"] if title == "for bob" else ["alice"], title)
            got = await _collect(live, 2)
            tab = await _collect(second_tab, 2)
        await feed.close()
    assert [m.title for m in got] == ["one", "two"] == [m.title for m in tab]
    assert got[0].id < got[1].id


async def test_close_ends_every_subscription_and_later_ones_at_once(
    sqlite_settings: Settings,
) -> None:
    async with open_app(sqlite_settings) as app:
        await add_user(app, "alice", channels="system")
        alice = await owner_id(app.sessions, "alice")
        assert alice is not None
        feed = InboxFeed(app.sessions, interval=0.05)
        async with feed.subscription(alice) as live:
            waiting = asyncio.create_task(live.next())
            await asyncio.sleep(0.1)
            await feed.close()
            assert await asyncio.wait_for(waiting, 1) == []
        async with feed.subscription(alice) as late:
            assert late.ended and await late.next() == []


async def test_a_subscriber_too_far_behind_is_ended_to_resume_from_the_database(
    sqlite_settings: Settings,
) -> None:
    async with open_app(sqlite_settings) as app:
        await add_user(app, "alice", channels="system")
        alice = await owner_id(app.sessions, "alice")
        assert alice is not None
        feed = InboxFeed(app.sessions, interval=3600, backlog=2)
        async with feed.subscription(alice) as live:
            for n in range(3):
                await deliver(app, ["alice"], f"Disk {n}")
            await feed.poll()
            assert live.ended and await live.next() == []
        await feed.close()


async def test_polling_stops_when_the_last_subscriber_leaves(sqlite_settings: Settings) -> None:
    async with open_app(sqlite_settings) as app:
        await add_user(app, "alice", channels="system")
        alice = await owner_id(app.sessions, "alice")
        assert alice is not None
        feed = InboxFeed(app.sessions, interval=0.05)
        async with feed.subscription(alice):
            task = feed._task
            assert task is not None and not task.done()
        await asyncio.wait_for(task, 1)
        # A new subscriber starts it again, from what exists now.
        await deliver(app, ["alice"], "while nobody listened")
        async with feed.subscription(alice) as live:
            await deliver(app, ["alice"], "live")
            got = await _collect(live, 1)
        await feed.close()
    assert [m.title for m in got] == ["live"]


async def _collect(subscription: Subscription, count: int) -> list[InboxItem]:
    got: list[InboxItem] = []
    while len(got) < count:
        got += await asyncio.wait_for(subscription.next(), 5)
    return got
