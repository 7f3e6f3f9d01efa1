"""/api/v1/users/{name}/inbox: the in-app inbox, its unread count, marking read, a live stream.

The read scope suffices for all of it, marking read included: that is the user's own action on
their own view, done by the app that shows the inbox, and changes nothing that is delivered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent

from pipeline.api.auth import Read
from pipeline.api.deps import tocsin
from pipeline.api.ids import ID_MAX, parse_id
from pipeline.api.problems import responses
from pipeline.app import App
from pipeline.db import SessionFactory
from pipeline.inbox import (
    InboxItem,
    inbox_page,
    mark_all_read,
    mark_one_read,
    owner_id,
    read_since,
    unread_count,
)
from pipeline.inbox_feed import InboxFeed

router = APIRouter(prefix="/users/{name}/inbox", tags=["inbox"])

KEEP_ALIVE_SECONDS = 15
_CATCH_UP_BATCH = 500

Tocsin = Annotated[App, Depends(tocsin)]
UserName = Annotated[
    str, Path(description="The user whose inbox it is.", max_length=64, examples=["alice"])
]


class InboxMessage(BaseModel):
    """One message of the in-app inbox."""

    id: int
    alert_id: int
    title: str
    body: str
    severity: str
    created_at: datetime
    read: bool
    read_at: datetime | None

    @classmethod
    def of(cls, item: InboxItem) -> InboxMessage:
        """The API view of a stored message."""
        return cls(
            id=item.id,
            alert_id=item.alert_id,
            title=item.title,
            body=item.body,
            severity=item.severity,
            created_at=item.created_at,
            read=item.read,
            read_at=item.read_at,
        )


class InboxPage(BaseModel):
    """Messages newest first; pass next_cursor as `cursor` for the next page (null: no more)."""

    items: list[InboxMessage]
    next_cursor: str | None


class UnreadCount(BaseModel):
    """How many messages are unread."""

    unread: int


class MarkedRead(BaseModel):
    """How many messages this call marked read."""

    marked: int


async def inbox_owner(name: UserName, app: Tocsin, _token: Read) -> int:
    """Returns the id of the user whose inbox it is; 404 for an unknown user."""
    recipient_id = await owner_id(app.sessions, name)
    if recipient_id is None:
        raise HTTPException(404, f"there is no user named {name!r}")
    return recipient_id


Owner = Annotated[int, Depends(inbox_owner)]


@router.get("", response_model=InboxPage, responses=responses(401, 403, 404, 422))
async def inbox_list(
    recipient_id: Owner,
    app: Tocsin,
    limit: Annotated[int, Query(ge=1, le=200, description="At most this many messages.")] = 50,
    cursor: Annotated[
        str | None, Query(max_length=40, description="next_cursor of the previous page.")
    ] = None,
    unread: Annotated[bool, Query(description="Only unread messages.")] = False,
) -> InboxPage:
    """Lists the inbox newest first, a page at a time."""
    page = await inbox_page(
        app.sessions,
        recipient_id,
        unread_only=unread,
        limit=limit,
        before=parse_id(cursor, "cursor"),
    )
    return InboxPage(
        items=[InboxMessage.of(item) for item in page.items],
        next_cursor=None if page.next_cursor is None else str(page.next_cursor),
    )


@router.get("/unread-count", response_model=UnreadCount, responses=responses(401, 403, 404))
async def inbox_unread_count(recipient_id: Owner, app: Tocsin) -> UnreadCount:
    """Counts the unread messages (for a badge)."""
    return UnreadCount(unread=await unread_count(app.sessions, recipient_id))


@router.post("/read-all", response_model=MarkedRead, responses=responses(401, 403, 404))
async def inbox_read_all(recipient_id: Owner, app: Tocsin) -> MarkedRead:
    """Marks every unread message read."""
    return MarkedRead(marked=await mark_all_read(app.sessions, app.clock, recipient_id))


@router.post(
    "/{message_id}/read", response_model=InboxMessage, responses=responses(401, 403, 404, 422)
)
async def inbox_read_one(
    recipient_id: Owner,
    app: Tocsin,
    message_id: Annotated[int, Path(ge=1, le=ID_MAX, description="The message's id.")],
) -> InboxMessage:
    """Marks one of the user's messages read (again: no change) and returns it."""
    item = await mark_one_read(app.sessions, app.clock, recipient_id, message_id)
    if item is None:
        raise HTTPException(404, f"the user has no inbox message {message_id}")
    return InboxMessage.of(item)


_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "Server-Sent Events: one `data:` JSON InboxMessage per new message, its `id:` the "
            f"message id; a keep-alive comment every {KEEP_ALIVE_SECONDS} s."
        ),
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **responses(401, 403, 404, 422),
}


@router.get("/stream", response_class=EventSourceResponse, responses=_STREAM_DOC)
async def inbox_stream(
    recipient_id: Owner,
    app: Tocsin,
    request: Request,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=40,
            description="Resume: every message after this id is sent first.",
        ),
    ] = None,
    after: Annotated[
        str | None,
        Query(max_length=40, description="Resume after this message id (the header wins)."),
    ] = None,
) -> EventSourceResponse:
    """Streams new messages as they arrive; resumes after Last-Event-ID without a gap."""
    resume = parse_id(last_event_id, "Last-Event-ID")
    if resume is None:
        resume = parse_id(after, "after")
    feed: InboxFeed = request.app.state.inbox_feed
    return EventSourceResponse(
        _events(feed, app.sessions, recipient_id, resume),
        ping=KEEP_ALIVE_SECONDS,
        sep="\n",
    )


async def _events(
    feed: InboxFeed, sessions: SessionFactory, recipient_id: int, resume: int | None
) -> AsyncIterator[ServerSentEvent]:
    """Yields the messages after resume from the database, then live ones, each once, in order."""
    async with feed.subscription(recipient_id) as live:
        yield ServerSentEvent(comment="subscribed")  # from here on nothing new is missed
        # Subscribed first, read second: a message written in between is in both, and `last`
        # drops the second copy (ids arrive in increasing order, see pipeline/inbox.py).
        last = live.start_id if resume is None else resume
        if resume is not None:
            while batch := await read_since(sessions, recipient_id, last, _CATCH_UP_BATCH):
                for item in batch:
                    yield _event(item)
                    last = item.id
        while items := await live.next():  # [] when the server shuts down
            for item in items:
                if item.id > last:
                    yield _event(item)
                    last = item.id


def _event(item: InboxItem) -> ServerSentEvent:
    return ServerSentEvent(data=InboxMessage.of(item).model_dump_json(), id=str(item.id))
