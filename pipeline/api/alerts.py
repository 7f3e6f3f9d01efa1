"""/api/v1/alerts: alerts in (one or a batch, idempotent), listed, shown, resolved.

Validation is the CLI's (pipeline.alerts and pipeline.validation); the models here only give
types, so a rule is never written twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import from_json
from sqlalchemy import select
from sqlmodel import col

from pipeline.alerts import (
    EXPIRES_IN_MAX,
    AlertInput,
    alert_usernames,
    resolve_alert,
    validate_alert,
)
from pipeline.api.auth import Ingest, Read
from pipeline.api.deps import tocsin
from pipeline.api.ids import ID_MAX, parse_id
from pipeline.api.problems import responses
from pipeline.app import App
from pipeline.durations import parse_duration
from pipeline.models import Alert
from pipeline.notifications import NotificationFilter, NotificationView, list_notifications
from pipeline.validation import InputError, validate_dedup_key, validate_severity

router = APIRouter(prefix="/alerts", tags=["alerts"])
# Where the router is mounted (create_api's /api/v1): alert URLs are given as paths.
PATH = "/api/v1/alerts"

PAGE_MAX = 500
IDEMPOTENCY_KEY_MAX = 200
PROBLEMS = (401, 403, 404, 413, 422)

AlertId = Annotated[int, Path(ge=1, le=ID_MAX, description="The alert id.")]


# --- what comes in ------------------------------------------------------------------------


class AlertIn(BaseModel):
    """One alert; its values are checked by the same rules as `tocsin alerts create`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    title: str = Field(description="One line, at most 200 characters (the e-mail subject).")
    body: str = Field("", description="The alert text (up to 64 KiB); the title when empty.")
    severity: str = Field("warning", description="info, warning or critical.")
    recipients: list[str] = Field(
        default_factory=list, description="Usernames of existing users (or name groups)."
    )
    groups: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Recipient groups: their members now join the recipients.",
    )
    expires_in: str | None = Field(None, description="Stop notifying after this long, e.g. 2h.")
    mention_all: bool = Field(False, description="@mention the whole WeCom group (critical only).")
    dedup_key: str | None = Field(
        None,
        description="Without an Idempotency-Key: a repeat within DEDUP_WINDOW returns the first "
        "alert. With one: a repeat is stored but notifies nobody (SUPPRESSED duplicate).",
    )


class AlertBatchIn(BaseModel):
    """Several alerts at once (at most API_BATCH_MAX): all are stored, or none."""

    model_config = ConfigDict(extra="forbid", strict=True)

    alerts: list[AlertIn] = Field(min_length=1)


def _request_body() -> dict[str, Any]:
    """The OpenAPI requestBody: one alert or a batch (parsed by hand, after the token)."""
    one = AlertIn.model_json_schema()
    batch = AlertBatchIn.model_json_schema(ref_template="#/$defs/{model}")
    batch["properties"]["alerts"]["items"] = one
    batch.pop("$defs", None)
    schema = {"oneOf": [one, batch]}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# --- what goes out ------------------------------------------------------------------------


class AlertSummary(BaseModel):
    """An alert as listings show it."""

    id: int
    url: str = Field(description="Where GET shows it with its notifications.")
    title: str
    severity: str
    created_at: datetime
    expires_at: datetime | None
    resolved_at: datetime | None
    processed_at: datetime | None = Field(
        description="When it was expanded into notifications (null: not yet)."
    )
    mention_all: bool
    dedup_key: str | None
    duplicate_of: int | None = Field(
        description="The alert this one repeats within DEDUP_WINDOW (it notified nobody)."
    )

    @classmethod
    def fields_of(cls, alert: Alert) -> dict[str, Any]:
        """The summary fields of a stored alert."""
        return {
            "id": alert.id,
            "url": f"{PATH}/{alert.id}",
            **alert.model_dump(
                include={
                    "title",
                    "severity",
                    "created_at",
                    "expires_at",
                    "resolved_at",
                    "processed_at",
                    "mention_all",
                    "dedup_key",
                    "duplicate_of",
                }
            ),
        }


class AlertAccepted(AlertSummary):
    """An alert as POST answers: created false means its key named an alert stored before."""

    created: bool


class BatchAccepted(BaseModel):
    """The alerts of a batch, in the order given."""

    alerts: list[AlertAccepted]


class AlertPage(BaseModel):
    """A page of alerts, newest first; next_cursor fetches older ones (null: the last page)."""

    items: list[AlertSummary]
    next_cursor: str | None


class AlertNotification(BaseModel):
    """One notification of the alert: where it stands, and why (reason) when not sent."""

    id: int
    recipient: str
    channel: str
    state: str
    not_before: datetime
    deferred: bool = Field(description="Held back by the recipient's quiet hours.")
    attempts: int
    reason: str | None
    sent_at: datetime | None
    updated_at: datetime
    fallback_of: int | None = Field(
        description="The notification this one stands in for (FALLBACK_<CHANNEL>), if any."
    )

    @classmethod
    def of(cls, view: NotificationView) -> AlertNotification:
        """The API view of a notification row."""
        return cls.model_validate(view, from_attributes=True)


class AlertDetail(AlertSummary):
    """An alert with its recipients and every notification: "why was I (not) notified"."""

    body: str
    recipients: list[str]
    notifications: list[AlertNotification]


# --- routes -------------------------------------------------------------------------------


async def _raw_body(request: Request) -> bytes:
    """Reads the body first, so the body limits (size, 408 for slow clients) bound every caller."""
    return await request.body()


@router.post(
    "",
    status_code=202,
    response_model=AlertAccepted | BatchAccepted,
    responses={
        200: {
            "model": AlertAccepted | BatchAccepted,
            "description": "An idempotent repeat: every alert was stored before (created false).",
        },
        **responses(*PROBLEMS, 408, 415),
    },
    openapi_extra=_request_body(),
)
async def alerts_create(
    raw: Annotated[bytes, Depends(_raw_body)],
    request: Request,
    response: Response,
    app: Annotated[App, Depends(tocsin)],
    _token: Ingest,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="1-200 printable characters; a repeat within IDEMPOTENCY_RETENTION "
            "returns the first alert(s) instead of storing new ones.",
        ),
    ] = None,
) -> AlertAccepted | BatchAccepted:
    """Stores one alert, or a batch, and expands it into notifications before answering.

    202 when something was stored, 200 when the Idempotency-Key (or dedup_key) named alerts
    stored before; a batch is validated whole (recipients included) before any is stored.
    """
    items, batch = _parse(raw, request.headers.get("content-type"), app.settings.api_batch_max)
    inputs, keys, retention = _inputs(items, batch, idempotency_key, app.settings.dedup_window)
    if batch:
        limit = app.settings.max_recipients_per_alert
        for index, data in enumerate(inputs):
            with _at(index):
                await validate_alert(app.sessions, app.clock, data, max_recipients=limit)
    results = await app.ingest(list(zip(inputs, keys, strict=True)), key_retention=retention)
    stored = await _alerts(app, [r.alert.id or 0 for r in results])
    accepted = [
        AlertAccepted(**AlertSummary.fields_of(stored[r.alert.id or 0]), created=r.created)
        for r in results
    ]
    if not any(a.created for a in accepted):
        response.status_code = 200
    if batch:
        return BatchAccepted(alerts=accepted)
    response.headers["Location"] = accepted[0].url
    return accepted[0]


@router.get("", response_model=AlertPage, responses=responses(*PROBLEMS))
async def alerts_list(
    app: Annotated[App, Depends(tocsin)],
    _token: Read,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX, description="Alerts per page.")] = 50,
    cursor: Annotated[
        str | None, Query(max_length=20, description="next_cursor of the previous page.")
    ] = None,
    severity: Annotated[
        str | None,
        Query(max_length=16, description="Only this severity (info, warning, critical)."),
    ] = None,
    resolved: Annotated[
        bool | None, Query(description="Only resolved (true) or unresolved (false) alerts.")
    ] = None,
) -> AlertPage:
    """Lists alerts, newest first."""
    statement = select(Alert).order_by(col(Alert.id).desc()).limit(limit + 1)
    before = parse_id(cursor)
    if before is not None:
        statement = statement.where(col(Alert.id) < before)
    if severity is not None:
        statement = statement.where(col(Alert.severity) == validate_severity(severity).value)
    if resolved is not None:
        done = col(Alert.resolved_at).is_not(None) if resolved else col(Alert.resolved_at).is_(None)
        statement = statement.where(done)
    async with app.sessions() as session:
        found = list((await session.execute(statement)).scalars())
    page = [AlertSummary(**AlertSummary.fields_of(alert)) for alert in found[:limit]]
    more = len(found) > limit
    return AlertPage(items=page, next_cursor=str(page[-1].id) if more else None)


@router.get("/{alert_id}", response_model=AlertDetail, responses=responses(*PROBLEMS), name="alert")
async def alerts_show(
    alert_id: AlertId, app: Annotated[App, Depends(tocsin)], _token: Read
) -> AlertDetail:
    """Shows the alert with its recipients and every notification: state, time and reason."""
    return await _detail(app, alert_id)


@router.post("/{alert_id}/resolve", response_model=AlertDetail, responses=responses(*PROBLEMS))
async def alerts_resolve(
    alert_id: AlertId, app: Annotated[App, Depends(tocsin)], _token: Ingest
) -> AlertDetail:
    """Resolves the alert (again is harmless): unsent notifications end SUPPRESSED."""
    await _detail(app, alert_id)  # 404 before anything changes
    await resolve_alert(app.sessions, app.clock, alert_id)
    return await _detail(app, alert_id)


# --- helpers ------------------------------------------------------------------------------


def _parse(raw: bytes, content_type: str | None, batch_max: int) -> tuple[list[AlertIn], bool]:
    """Returns the alerts in a JSON body and whether it was a batch, or raises a 4xx."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise HTTPException(415, "the body must be JSON: send Content-Type: application/json")
    try:
        document = from_json(raw)
    except ValueError:
        raise InputError("the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise InputError('the body must be a JSON object: one alert, or {"alerts": [...]}')
    try:
        if "alerts" not in document:
            return [AlertIn.model_validate(document)], False
        given = document["alerts"]
        if isinstance(given, list) and len(given) > batch_max:
            raise InputError(
                f"alerts: {len(given)} alerts in one request; the limit is {batch_max} "
                "(API_BATCH_MAX)"
            )
        return AlertBatchIn.model_validate(document).alerts, True
    except ValidationError as exc:
        raise InputError(_first_error(exc)) from None


def _first_error(exc: ValidationError) -> str:
    """One line for the first type error, located like alerts[3].title."""
    first = exc.errors()[0]
    where = ""
    for part in first["loc"]:
        where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
    return f"{where}: {first['msg']}" if where else str(first["msg"])


def _inputs(
    items: Sequence[AlertIn], batch: bool, header: str | None, dedup_window: timedelta
) -> tuple[list[AlertInput], list[str | None], timedelta | None]:
    """Returns the alerts, the key naming each, and how long those keys last (None: default)."""
    inputs = []
    for index, item in enumerate(items):
        with _at(index if batch else None):
            inputs.append(_input(item))
    if header is not None:
        key = _idempotency_key(header)
        keys: list[str | None] = (
            [f"idem:{key}:{index}" for index in range(len(items))] if batch else [f"idem:{key}"]
        )
        return inputs, keys, None
    keys = []
    for index, item in enumerate(items):
        with _at(index if batch else None):
            dedup = validate_dedup_key(item.dedup_key) if item.dedup_key is not None else None
        keys.append(f"dedup:{dedup}" if dedup is not None else None)
    return inputs, keys, dedup_window


def _input(item: AlertIn) -> AlertInput:
    expires_in = None
    if item.expires_in is not None:
        try:
            expires_in = parse_duration(item.expires_in)
        except ValueError as exc:
            raise InputError(f"expires_in: {exc}") from None
        except OverflowError:
            raise InputError(f"expires_in must be at most {EXPIRES_IN_MAX.days}d") from None
    return AlertInput(
        title=item.title,
        body=item.body or item.title,
        severity=item.severity,
        recipients=item.recipients,
        groups=item.groups,
        expires_in=expires_in,
        mention_all=item.mention_all,
        dedup_key=item.dedup_key,
    )


def _idempotency_key(header: str) -> str:
    if not 0 < len(header) <= IDEMPOTENCY_KEY_MAX or not header.isprintable():
        raise InputError(f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX} printable characters")
    return header


@contextmanager
def _at(index: int | None) -> Iterator[None]:
    """Prefixes an InputError with the batch position it is about (alerts[3]: ...)."""
    if index is None:
        yield
        return
    try:
        yield
    except InputError as exc:
        raise InputError(f"alerts[{index}]: {exc}") from None


async def _alerts(app: App, ids: list[int]) -> dict[int, Alert]:
    """Reads these alerts back as stored now (expanded, perhaps a duplicate of another)."""
    async with app.sessions() as session:
        found = await session.execute(select(Alert).where(col(Alert.id).in_(set(ids))))
        return {alert.id or 0: alert for alert in found.scalars()}


async def _detail(app: App, alert_id: int) -> AlertDetail:
    async with app.sessions() as session:
        alert = await session.get(Alert, alert_id)
        if alert is None:
            raise HTTPException(404, f"no alert {alert_id}")
        recipients = await alert_usernames(session, alert_id)
    rows = await list_notifications(app.sessions, NotificationFilter(alert_id=alert_id, limit=None))
    return AlertDetail(
        **AlertSummary.fields_of(alert),
        body=alert.body,
        recipients=recipients,
        notifications=[AlertNotification.of(row) for row in rows],
    )
