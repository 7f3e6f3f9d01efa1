"""Inbox helpers for tests: deliver in-process, and read a Server-Sent Events stream."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from pipeline.app import App
from tests.support.pipeline import add_alert, cycle


async def deliver(app: App, recipients: Sequence[str], title: str) -> None:
    """Creates an alert for recipients and delivers it (the system channel writes the inbox)."""
    await add_alert(app, recipients, title=title)
    await app.producer().run()
    await cycle(app)


@dataclass(frozen=True)
class Event:
    """One server-sent event (comment set for a comment line, which carries no event)."""

    id: str | None = None
    data: str = ""
    comment: str | None = None


@dataclass
class EventStream:
    """Reads events from a streaming httpx response, as an EventSource would (WHATWG rules)."""

    response: httpx.Response
    comments: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lines = self.response.aiter_lines()

    async def next(self, *, comments: bool = False) -> Event | None:
        """Returns the next event (or comment, if asked); None when the stream ended."""
        event_id: str | None = None
        data: list[str] = []
        while True:
            try:
                line = await anext(self._lines)
            except StopAsyncIteration:
                return None
            if not line:
                if data:
                    return Event(event_id, "\n".join(data))
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                if comments:
                    return Event(comment=line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "id":
                event_id = value

    async def opened(self) -> None:
        """Waits for the stream's first comment, sent once it is subscribed."""
        first = await self.next(comments=True)
        assert first is not None and first.comment is not None, first
