"""/api/v1/notifications/settings?user=NAME: the seed system's settings endpoint, in its shape.

One on/off switch per channel (WeCom is its `wechat`; it had SMS, Tocsin has none) and quiet
hours as start and end; the same settings as /api/v1/users/{name}/settings.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from pipeline.api.auth import Admin, Read
from pipeline.api.deps import tocsin
from pipeline.api.problems import responses
from pipeline.api.users import update_user
from pipeline.app import App
from pipeline.recipients import RecipientInput, RecipientRecord, get_recipient
from pipeline.validation import USERNAME_MAX, InputError

router = APIRouter(tags=["seed compatibility"])

# The seed's switch names and the channel each one turns on or off.
_SEED_SWITCHES = {"system_enabled": "system", "email_enabled": "email", "wechat_enabled": "wecom"}
SeedUser = Annotated[
    str, Query(description="The user's name.", min_length=1, max_length=USERNAME_MAX)
]


class SeedSettings(BaseModel):
    """The seed system's NotificationSettings: a switch per channel and quiet hours."""

    user: str
    system_enabled: bool
    email_enabled: bool
    wechat_enabled: bool = Field(description="The WeCom channel.")
    sms_enabled: bool = Field(False, description="Always false: Tocsin has no SMS channel.")
    quiet_hours_start: str | None = Field(examples=["22:00"])
    quiet_hours_end: str | None = Field(examples=["07:00"])
    timezone: str

    @classmethod
    def of(cls, record: RecipientRecord) -> SeedSettings:
        """The seed's view of a stored recipient."""
        start, _, end = (record.quiet_hours or "").partition("-")
        return cls(
            user=record.username,
            **{switch: channel in record.channels for switch, channel in _SEED_SWITCHES.items()},
            quiet_hours_start=start or None,
            quiet_hours_end=end or None,
            timezone=record.timezone,
        )


class SeedSettingsFields(BaseModel):
    """Settings to change in the seed's shape; a field left out (or null) stays as it is.

    quiet_hours_start and quiet_hours_end go together; both "" remove the quiet hours.
    """

    model_config = ConfigDict(extra="forbid")

    system_enabled: bool | None = None
    email_enabled: bool | None = None
    wechat_enabled: bool | None = None
    sms_enabled: bool | None = None
    quiet_hours_start: str | None = Field(None, max_length=5, examples=["22:00"])
    quiet_hours_end: str | None = Field(None, max_length=5, examples=["07:00"])
    timezone: str | None = Field(None, max_length=64)

    def channels(self, current: list[str]) -> str | None:
        """The channels these switches leave on, from current; None when no switch is given."""
        if self.sms_enabled:
            raise InputError("sms_enabled cannot be true: Tocsin has no SMS channel")
        switched = {
            channel: on
            for switch, channel in _SEED_SWITCHES.items()
            if (on := getattr(self, switch)) is not None
        }
        if not switched:
            return None
        kept = {channel for channel in current if switched.get(channel, True)}
        return ",".join(sorted(kept | {c for c, on in switched.items() if on}))

    def quiet_hours(self) -> str | None:
        """The quiet window these fields give ("" removes it; None leaves it)."""
        start, end = self.quiet_hours_start, self.quiet_hours_end
        if start is None and end is None:
            return None
        if start is None or end is None or bool(start.strip()) != bool(end.strip()):
            raise InputError("give quiet_hours_start and quiet_hours_end together")
        return f"{start.strip()}-{end.strip()}" if start.strip() else ""


@router.get(
    "/notifications/settings",
    response_model=SeedSettings,
    responses=responses(401, 403, 404, 422),
)
async def seed_settings_get(
    user: SeedUser, app: Annotated[App, Depends(tocsin)], _token: Read
) -> SeedSettings:
    """The seed system's settings read: GET /users/{name}/settings in its old shape."""
    record = await get_recipient(app.sessions, app.channels, user)
    if record is None:
        raise HTTPException(404, f"no user {user!r}")
    return SeedSettings.of(record)


@router.put(
    "/notifications/settings",
    response_model=SeedSettings,
    responses=responses(401, 403, 404, 422),
)
async def seed_settings_put(
    user: SeedUser,
    body: SeedSettingsFields,
    app: Annotated[App, Depends(tocsin)],
    _token: Admin,
) -> SeedSettings:
    """The seed system's settings update: PUT /users/{name}/settings in its old shape."""
    current = await get_recipient(app.sessions, app.channels, user)
    if current is None:
        raise HTTPException(404, f"no user {user!r}")
    data = RecipientInput(
        username=user,
        timezone=body.timezone,
        quiet_hours=body.quiet_hours(),
        channels=body.channels(current.channels),
    )
    return SeedSettings.of(await update_user(app, data))
