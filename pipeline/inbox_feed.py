"""Fans new inbox messages out to live subscribers: one poll per process for all of them.

Whoever wrote the message (a worker in this process, another process or another host), the
next poll sees it: one indexed query every `interval` while anyone is subscribed, none otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

import structlog

from pipeline.db import SessionFactory
from pipeline.inbox import InboxItem, messages_after, newest_id

log = structlog.get_logger("tocsin.inbox")

# Above this many recipients the poll reads everyone's new messages instead of naming them all.
_FILTER_MAX = 500
_RETRY_MAX = 5.0  # seconds between polls while the database does not answer


class Subscription:
    """New messages of one recipient since start_id, as the feed saw them; ends on close."""

    def __init__(self, recipient_id: int, start_id: int, backlog: int) -> None:
        self.recipient_id = recipient_id
        self.start_id = start_id
        self._backlog = backlog
        self._pending: deque[InboxItem] = deque()
        self._ready = asyncio.Event()
        self.ended = False

    def push(self, item: InboxItem) -> None:
        """Queues item; a subscriber that fell backlog messages behind is ended instead."""
        if len(self._pending) >= self._backlog:
            self.end()  # it resumes from the database when it reconnects with Last-Event-ID
            return
        self._pending.append(item)
        self._ready.set()

    def end(self) -> None:
        """Ends the subscription; next() returns [] from now on."""
        self.ended = True
        self._pending.clear()
        self._ready.set()

    async def next(self) -> list[InboxItem]:
        """Waits for new messages and returns them oldest first; [] once ended."""
        while not self._pending and not self.ended:
            self._ready.clear()
            await self._ready.wait()
        if self.ended:
            return []
        items = list(self._pending)
        self._pending.clear()
        return items


class InboxFeed:
    """Polls the inbox once per interval for every subscriber of this process together."""

    def __init__(
        self,
        sessions: SessionFactory,
        *,
        interval: float = 0.5,
        batch: int = 500,
        backlog: int = 1000,
    ) -> None:
        self._sessions = sessions
        self._interval = interval
        self._batch = batch
        self._backlog = backlog
        self._subscribers: dict[int, set[Subscription]] = {}
        self._high = 0  # every message up to this id has been fanned out
        self._task: asyncio.Task[None] | None = None
        # Subscribing and polling take turns: a subscriber joins between two polls, so the next
        # poll already names it and it misses nothing after its start_id.
        self._turn = asyncio.Lock()
        self._closed = False

    @contextlib.asynccontextmanager
    async def subscription(self, recipient_id: int) -> AsyncIterator[Subscription]:
        """Subscribes to recipient_id's new messages for the duration of the block."""
        subscription = await self._subscribe(recipient_id)
        try:
            yield subscription
        finally:
            self._unsubscribe(subscription)

    async def close(self) -> None:
        """Ends every subscription and stops polling; later subscriptions end at once."""
        self._closed = True
        for subscriptions in self._subscribers.values():
            for subscription in subscriptions:
                subscription.end()
        self._subscribers.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _subscribe(self, recipient_id: int) -> Subscription:
        async with self._turn:
            if self._closed:
                subscription = Subscription(recipient_id, self._high, self._backlog)
                subscription.end()
                return subscription
            if self._task is None or self._task.done():
                # Nobody was listening: start from what exists now, not from the last run.
                self._high = await newest_id(self._sessions)
                self._task = asyncio.create_task(self._run(), name="inbox-feed")
            subscription = Subscription(recipient_id, self._high, self._backlog)
            self._subscribers.setdefault(recipient_id, set()).add(subscription)
            return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        subscriptions = self._subscribers.get(subscription.recipient_id)
        if subscriptions is not None:
            subscriptions.discard(subscription)
            if not subscriptions:
                del self._subscribers[subscription.recipient_id]

    async def _run(self) -> None:
        failures = 0
        while self._subscribers:
            try:
                more = await self.poll()
                failures = 0
            except Exception as exc:  # the database is away: keep the streams, try again later
                failures += 1
                if failures == 1:
                    log.warning("inbox_poll_failed", error=type(exc).__name__)
                more = False
            if not more:
                await asyncio.sleep(min(self._interval * 2**failures, _RETRY_MAX))

    async def poll(self) -> bool:
        """Fans out the messages written since the last poll; True if there may be more."""
        async with self._turn:
            named = list(self._subscribers) if len(self._subscribers) <= _FILTER_MAX else None
            rows = await messages_after(self._sessions, self._high, named, self._batch)
            for recipient_id, item in rows:
                for subscription in self._subscribers.get(recipient_id, ()):
                    subscription.push(item)
            if rows:
                self._high = rows[-1][1].id
            return len(rows) == self._batch
