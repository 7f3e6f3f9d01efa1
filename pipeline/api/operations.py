"""Operations over HTTP: notifications, dead letters and their replay, and the audit log.

The same queries and rules as `tocsin notifications|dlq|audit`, from the same functions.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from pipeline.api.auth import Admin
from pipeline.api.deps import tocsin
from pipeline.api.ids import ID_MAX, parse_id
from pipeline.api.problems import responses
from pipeline.app import App
from pipeline.audit import Audit, list_records
from pipeline.durations import parse_rate
from pipeline.notifications import (
    NotificationFilter,
    get_notification,
    list_notifications,
    notification_filter,
)
from pipeline.validation import InputError
from workers.dead_letters import DEFAULT_RATE, dead, replay

router = APIRouter(tags=["operations"])

PAGE_MAX = 1000
# At most this many ids in one replay (the rest of a bigger set: filters, or several calls).
REPLAY_IDS_MAX = 10_000

Id = Annotated[int, Field(ge=1, le=ID_MAX)]
Limit = Annotated[int, Query(ge=1, le=PAGE_MAX, description="Rows per page.")]
Cursor = Annotated[
    str | None, Query(max_length=20, description="next_cursor of the previous page.")
]
ChannelQuery = Annotated[
    str | None, Query(max_length=32, description="Only this channel, e.g. email.")
]
ReasonQuery = Annotated[str | None, Query(max_length=64, description="Only this reason.")]
AlertQuery = Annotated[int | None, Query(ge=1, le=ID_MAX, description="Only this alert id.")]
SinceQuery = Annotated[
    str | None,
    Query(max_length=64, description="Only rows changed since: an ISO time or an age (2h)."),
]


class Notification(BaseModel):
    """A notification and where it stands."""

    id: int
    alert_id: int
    recipient: str
    channel: str
    state: str
    attempts: int
    not_before: datetime
    deferred: bool
    reason: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    fallback_of: int | None = Field(
        description="The notification this one stands in for (FALLBACK_<CHANNEL>), if any."
    )


class FallbackLink(BaseModel):
    """A notification created to stand in for this one when it died."""

    id: int
    channel: str
    state: str


class Attempt(BaseModel):
    """One recorded attempt to deliver a notification."""

    attempt: int
    started_at: str
    duration_seconds: float
    outcome: str
    reason: str | None
    detail: str | None
    worker: str | None


class NotificationDetail(Notification):
    """A notification with every attempt made to deliver it, oldest first."""

    attempt_log: list[Attempt]
    fell_back_to: list[FallbackLink]


class NotificationPage(BaseModel):
    """A page of notifications by id; next_cursor fetches the next one (null: the last)."""

    items: list[Notification]
    next_cursor: str | None


class ReplayRequest(BaseModel):
    """Which dead letters to replay: ids, or filters and/or all; with a pace and a dry run."""

    model_config = ConfigDict(extra="forbid")

    ids: list[Id] | None = Field(None, max_length=REPLAY_IDS_MAX)
    all: bool = Field(False, description="Every dead letter (matching the filters, if any).")
    channel: str | None = Field(None, max_length=32)
    reason: str | None = Field(None, max_length=64)
    alert: Id | None = None
    since: str | None = Field(None, max_length=64, description="An ISO time or an age (2h).")
    rate: str = Field(DEFAULT_RATE, max_length=32, description="At most this many a second.")
    dry_run: bool = Field(False, description="Say what would be replayed; change nothing.")
    confirm: bool = Field(False, description="Needed with all and no filter: every dead letter.")

    def filtered(self) -> bool:
        """True when a filter narrows the selection."""
        return any(v is not None for v in (self.channel, self.reason, self.alert, self.since))

    def selection(self) -> dict[str, object]:
        """What was asked for, as the audit log records it (the CLI's keys)."""
        asked = {
            "ids": self.ids,
            "all": self.all,
            "channel": self.channel,
            "reason": self.reason,
            "alert": self.alert,
            "since": self.since,
            "rate": self.rate,
        }
        return {key: value for key, value in asked.items() if value}


class ReplayResult(BaseModel):
    """What a replay did or, with dry_run, would do."""

    action: str = "replayed"
    ids: list[int]
    by_channel: dict[str, int]
    dry_run: bool


class AuditEntry(BaseModel):
    """A bulk action in the audit log: who, when, what, and which rows."""

    id: int
    at: datetime
    actor: str
    action: str
    selection: dict[str, Any]
    count: int
    ids: list[int]


class AuditPage(BaseModel):
    """A page of the audit log, newest first; next_cursor fetches older entries."""

    items: list[AuditEntry]
    next_cursor: str | None


def _where(
    app: App,
    *,
    states: list[str] | None = None,
    channel: str | None,
    reason: str | None,
    alert: int | None,
    since: str | None,
    limit: int | None,
    cursor: str | None = None,
) -> NotificationFilter:
    return notification_filter(
        app.channels.names,
        app.clock.now(),
        states=states or (),
        channel=channel,
        reason=reason,
        alert_id=alert,
        since=since,
        limit=limit,
        after=parse_id(cursor),
    )


async def _page(app: App, where: NotificationFilter) -> NotificationPage:
    """Returns the page where.limit asks for, looking one row further to know if more follow."""
    limit = where.limit or PAGE_MAX
    views = await list_notifications(app.sessions, replace(where, limit=limit + 1))
    items = [Notification.model_validate(view, from_attributes=True) for view in views[:limit]]
    more = len(views) > limit
    return NotificationPage(items=items, next_cursor=str(items[-1].id) if more else None)


@router.get("/notifications", response_model=NotificationPage, responses=responses(401, 403, 422))
async def notifications_list(
    app: Annotated[App, Depends(tocsin)],
    _token: Admin,
    status: Annotated[
        list[str] | None,
        Query(max_length=6, description="Only this state (PENDING, QUEUED, SENT, DEAD, ...)."),
    ] = None,
    channel: ChannelQuery = None,
    reason: ReasonQuery = None,
    alert: AlertQuery = None,
    since: SinceQuery = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> NotificationPage:
    """Lists notifications by id with their state, attempts and next time (`notifications list`)."""
    where = _where(
        app,
        states=status,
        channel=channel,
        reason=reason,
        alert=alert,
        since=since,
        limit=limit,
        cursor=cursor,
    )
    return await _page(app, where)


@router.get(
    "/notifications/{notification_id}",
    response_model=NotificationDetail,
    responses=responses(401, 403, 404, 422),
)
async def notifications_get(
    notification_id: Annotated[int, Path(ge=1, le=ID_MAX, description="The notification id.")],
    app: Annotated[App, Depends(tocsin)],
    _token: Admin,
) -> NotificationDetail:
    """Returns one notification with every attempt to deliver it (`notifications show`)."""
    view = await get_notification(app.sessions, notification_id)
    if view is None:
        raise HTTPException(404, f"no notification {notification_id}")
    return NotificationDetail.model_validate(view, from_attributes=True)


@router.get("/dlq", response_model=NotificationPage, responses=responses(401, 403, 422))
async def dlq_list(
    app: Annotated[App, Depends(tocsin)],
    _token: Admin,
    channel: ChannelQuery = None,
    reason: ReasonQuery = None,
    alert: AlertQuery = None,
    since: SinceQuery = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> NotificationPage:
    """Lists dead letters (DEAD notifications) by id with their reason (`dlq list`)."""
    where = _where(
        app,
        channel=channel,
        reason=reason,
        alert=alert,
        since=since,
        limit=limit,
        cursor=cursor,
    )
    return await _page(app, dead(where))


@router.post("/dlq/replay", response_model=ReplayResult, responses=responses(401, 403, 409, 422))
async def dlq_replay(
    body: ReplayRequest,
    request: Request,
    app: Annotated[App, Depends(tocsin)],
    _token: Admin,
) -> ReplayResult:
    """Puts dead letters back to PENDING with a fresh retry schedule, paced and audited.

    The CLI's rules: say which (ids, or filters and/or all; all with no filter also needs
    confirm: true unless it is a dry run); any id that is unknown or not DEAD refuses the whole
    request with 409. Each run is recorded in the audit log under the token's name.
    """
    _check_selection(body)
    try:
        per_second = parse_rate(body.rate)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    where = _where(
        app,
        channel=body.channel,
        reason=body.reason,
        alert=body.alert,
        since=body.since,
        limit=None,
    )
    where = replace(where, ids=tuple(body.ids or ()))
    try:
        report = await replay(
            app.sessions,
            app.clock,
            app.metrics,
            where,
            dry_run=body.dry_run,
            audit=Audit(request.state.actor, body.selection()),
            rate=per_second,
        )
    except InputError as exc:  # an id that is unknown or not DEAD: nothing was changed
        raise HTTPException(409, str(exc)) from None
    return ReplayResult(ids=report.ids, by_channel=report.by_channel, dry_run=report.dry_run)


def _check_selection(body: ReplayRequest) -> None:
    if body.ids and (body.all or body.filtered()):
        raise InputError("give either ids or filters / all, not both")
    if not (body.ids or body.all or body.filtered()):
        raise InputError(
            "say which dead letters: ids, a filter (channel, reason, alert, since), or all"
        )
    if body.all and not body.filtered() and not (body.confirm or body.dry_run):
        raise InputError('all without a filter would replay every dead letter: add "confirm": true')


@router.get("/audit", response_model=AuditPage, responses=responses(401, 403, 422))
async def audit_list(
    app: Annotated[App, Depends(tocsin)],
    _token: Admin,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX, description="Entries per page.")] = 50,
    cursor: Cursor = None,
) -> AuditPage:
    """Lists the audit log of bulk actions (replay, purge), newest first (`tocsin audit`)."""
    records = await list_records(app.sessions, limit + 1, before=parse_id(cursor))
    items = [AuditEntry.model_validate(r, from_attributes=True) for r in records[:limit]]
    more = len(records) > limit
    return AuditPage(items=items, next_cursor=str(items[-1].id) if more else None)
