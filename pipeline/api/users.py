"""/api/v1/users: recipients, their notification settings, and bulk upserts."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.api.auth import Admin, Read
from pipeline.api.deps import tocsin
from pipeline.api.problems import MEDIA_TYPE, Problem, responses
from pipeline.app import App
from pipeline.recipients import (
    BULK_MAX,
    BulkRejected,
    EntryError,
    RecipientInput,
    RecipientInUse,
    RecipientRecord,
    UnknownRecipient,
    check_recipients,
    delete_recipient,
    get_recipient,
    list_recipients,
    save_recipient,
    upsert_recipients,
)
from pipeline.validation import USERNAME_MAX

# The longest address any contact kind takes (an own webhook URL); each kind checks its own.
CONTACT_MAX = 2048

router = APIRouter(tags=["users"])

# A bulk PUT may carry up to BULK_MAX users: this is its own body bound (others: 1 MiB).
BULK_MAX_BODY_BYTES = 16 * 1024 * 1024
PAGE_MAX = 1000

UserName = Annotated[
    str, Path(description="The user's name, e.g. alice.", min_length=1, max_length=USERNAME_MAX)
]
Channels = Annotated[
    list[Annotated[str, Field(max_length=32)]] | None,
    Field(max_length=16, description='Enabled channels, e.g. ["system", "email"].'),
]
QuietHoursText = Annotated[
    str | None,
    Field(
        max_length=32,
        description='Quiet window in the user\'s zone, e.g. "22:00-07:00"; "" removes it.',
    ),
]


ContactMap = Annotated[
    dict[Annotated[str, Field(max_length=32)], Annotated[str, Field(max_length=CONTACT_MAX)]]
    | None,
    Field(
        max_length=16,
        description="Addresses by contact kind, e.g. "
        '{"email": "alice@example.com", "wecom_userid": "alice"}; a kind left out stays as it '
        'is, "" removes it. A secret contact (an own robot URL) is never shown again unmasked.',
    ),
]


class UserFields(BaseModel):
    """A user's contacts and settings; a field left out (or null) stays as it is, "" clears it."""

    model_config = ConfigDict(extra="forbid")

    contacts: ContactMap = None
    timezone: str | None = Field(None, max_length=64, examples=["Asia/Shanghai"])
    quiet_hours: QuietHoursText = None
    channels: Channels = None

    def as_input(self, username: str) -> RecipientInput:
        """The shared input these fields make for username."""
        return RecipientInput(
            username=username,
            contacts=self.contacts or {},
            timezone=self.timezone,
            quiet_hours=self.quiet_hours,
            channels=None if self.channels is None else ",".join(self.channels),
        )


class BulkUser(UserFields):
    """One entry of a bulk upsert: a username and the fields to set."""

    username: str = Field(max_length=USERNAME_MAX)


class User(BaseModel):
    """A user as stored: a secret contact only ever masked (an own robot's key=***)."""

    username: str
    contacts: dict[str, str] = Field(description="Addresses by kind, secret parts masked.")
    channels: list[str]
    timezone: str
    quiet_hours: str | None

    @classmethod
    def of(cls, record: RecipientRecord) -> User:
        """The API view of a stored recipient."""
        return cls.model_validate(record, from_attributes=True)


class UserPage(BaseModel):
    """A page of users by name; next_cursor fetches the next page (null: this is the last)."""

    items: list[User]
    next_cursor: str | None


class UserSettings(BaseModel):
    """A user's notification settings."""

    channels: list[str]
    timezone: str
    quiet_hours: str | None

    @classmethod
    def of(cls, record: RecipientRecord) -> UserSettings:
        """The settings part of a stored recipient."""
        return cls(
            channels=record.channels, timezone=record.timezone, quiet_hours=record.quiet_hours
        )


class SettingsFields(BaseModel):
    """Settings to change; a field left out (or null) stays as it is."""

    model_config = ConfigDict(extra="forbid")

    channels: Channels = None
    timezone: str | None = Field(None, max_length=64, examples=["Asia/Shanghai"])
    quiet_hours: QuietHoursText = None


class BulkReport(BaseModel):
    """What a bulk upsert stored."""

    created: int
    updated: int


class EntryProblem(BaseModel):
    """Why one entry of a bulk upsert was refused (index counts from 0)."""

    index: int
    detail: str


class BulkProblem(Problem):
    """A refused bulk upsert: every invalid entry in `errors`; nothing was stored."""

    errors: list[EntryProblem]


def _not_found(exc: Exception) -> HTTPException:
    return HTTPException(404, str(exc))


@router.get("/users", response_model=UserPage, responses=responses(401, 403, 422))
async def users_list(
    app: Annotated[App, Depends(tocsin)],
    _token: Read,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX, description="Users per page.")] = 100,
    cursor: Annotated[
        str | None, Query(max_length=USERNAME_MAX, description="next_cursor of the last page.")
    ] = None,
) -> UserPage:
    """Lists users by name, a page at a time."""
    records = await list_recipients(app.sessions, app.channels, after=cursor, limit=limit + 1)
    more = len(records) > limit
    page = [User.of(record) for record in records[:limit]]
    return UserPage(items=page, next_cursor=page[-1].username if more else None)


@router.put(
    "/users",
    response_model=BulkReport,
    responses={
        422: {
            "model": BulkProblem,
            "description": "Invalid entries, each by index in `errors`; nothing was stored.",
            "content": {MEDIA_TYPE: {}},
        },
        **responses(401, 403, 413),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "array",
                        "maxItems": BULK_MAX,
                        "items": BulkUser.model_json_schema(),
                    }
                }
            },
        }
    },
)
async def users_bulk_put(
    entries: Annotated[list[Any], Body(max_length=BULK_MAX)],
    app: Annotated[App, Depends(tocsin)],
    _token: Admin,
) -> BulkReport | JSONResponse:
    """Creates or updates up to 10,000 users in one transaction: all of them, or none.

    Every entry is checked first; if any is invalid the answer is 422 with each invalid entry's
    index and reason in `errors`, and nothing is stored.
    """
    inputs: list[RecipientInput] = []
    at: list[int] = []  # the request index of each of inputs
    errors: list[EntryError] = []
    for index, entry in enumerate(entries):
        try:
            user = BulkUser.model_validate(entry)
        except ValidationError as exc:
            errors.append(EntryError(index, _entry_detail(exc)))
            continue
        inputs.append(user.as_input(user.username))
        at.append(index)
    try:
        check_recipients(inputs, app.channels, positions=at)
    except BulkRejected as rejected:
        errors += rejected.errors
    if errors:
        return _bulk_problem(sorted(errors, key=lambda e: e.index))
    report = await upsert_recipients(app.sessions, app.clock, inputs, app.channels)
    return BulkReport(created=report.created, updated=report.updated)


def _entry_detail(exc: ValidationError) -> str:
    """One line for the first problem of an entry, without echoing its input."""
    first = exc.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if first.get("type") == "model_type":
        return "an entry must be an object with a username"
    return f"{where}: {message}" if where else message


def _bulk_problem(errors: list[EntryError]) -> JSONResponse:
    body = BulkProblem(
        title=HTTPStatus.UNPROCESSABLE_ENTITY.phrase,
        status=422,
        detail=" ".join(str(BulkRejected(errors)).split())[:500],
        errors=[EntryProblem(index=e.index, detail=e.detail) for e in errors],
    )
    return JSONResponse(body.model_dump(), status_code=422, media_type=MEDIA_TYPE)


@router.get("/users/{name}", response_model=User, responses=responses(401, 403, 404, 422))
async def users_get(name: UserName, app: Annotated[App, Depends(tocsin)], _token: Read) -> User:
    """Returns one user with its settings."""
    record = await get_recipient(app.sessions, app.channels, name)
    if record is None:
        raise HTTPException(404, f"no user {name!r}")
    return User.of(record)


@router.put(
    "/users/{name}",
    response_model=User,
    status_code=200,
    # 404: a name that cannot be a path segment (e.g. with "/") matches no route.
    responses={201: {"model": User, "description": "Created"}, **responses(401, 403, 404, 422)},
)
async def users_put(
    name: UserName,
    body: UserFields,
    response: Response,
    app: Annotated[App, Depends(tocsin)],
    _token: Admin,
) -> User:
    """Creates the user or updates the fields given (201 when created).

    Each contact is checked by the channel that reads it (an own robot URL must pass the WeCom
    URL policy: WECOM_ALLOWED_HOSTS, https) or the answer is 422, which never quotes a secret.
    """
    record, created = await save_recipient(
        app.sessions, app.clock, body.as_input(name), app.channels
    )
    if created:
        response.status_code = 201
    return User.of(record)


@router.delete("/users/{name}", status_code=204, responses=responses(401, 403, 404, 409, 422))
async def users_delete(
    name: UserName, app: Annotated[App, Depends(tocsin)], _token: Admin
) -> Response:
    """Removes a user that nothing refers to (409 if alerts, notifications, inbox or groups do)."""
    try:
        await delete_recipient(app.sessions, name)
    except UnknownRecipient as exc:
        raise _not_found(exc) from None
    except RecipientInUse as exc:
        raise HTTPException(409, str(exc)) from None
    return Response(status_code=204)


@router.get(
    "/users/{name}/settings", response_model=UserSettings, responses=responses(401, 403, 404, 422)
)
async def settings_get(
    name: UserName, app: Annotated[App, Depends(tocsin)], _token: Read
) -> UserSettings:
    """Returns a user's channels, time zone and quiet hours."""
    record = await get_recipient(app.sessions, app.channels, name)
    if record is None:
        raise HTTPException(404, f"no user {name!r}")
    return UserSettings.of(record)


@router.put(
    "/users/{name}/settings", response_model=UserSettings, responses=responses(401, 403, 404, 422)
)
async def settings_put(
    name: UserName, body: SettingsFields, app: Annotated[App, Depends(tocsin)], _token: Admin
) -> UserSettings:
    """Changes a user's channels, time zone or quiet hours; the user must exist (else 404)."""
    data = RecipientInput(
        username=name,
        timezone=body.timezone,
        quiet_hours=body.quiet_hours,
        channels=None if body.channels is None else ",".join(body.channels),
    )
    return UserSettings.of(await update_user(app, data))


async def update_user(app: App, data: RecipientInput) -> RecipientRecord:
    """Saves data over an existing user's; 404 when there is no such user."""
    try:
        record, _created = await save_recipient(
            app.sessions, app.clock, data, app.channels, create=False
        )
    except UnknownRecipient as exc:
        raise _not_found(exc) from None
    return record
