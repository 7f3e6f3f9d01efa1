"""The WeCom app-message channel: a direct message to each person, through a self-built app.

A group robot cannot write to one person; the application API (what Alertmanager's
`wechat_configs` uses) can. One alert's recipients are one `message/send` with
`touser=a|b|c` (up to 1,000), and each row records the shared outcome, except the users
WeCom names in `invaliduser`, who fail on their own. Facts: shared/reference/wecom-app.md.

- The access token (from corp ID + secret) is fetched once, shared by every send of the
  process, renewed shortly before it expires, and fetched again once (not once per send) when
  WeCom refuses it (40014, 42001, 42009).
- WeCom silently drops a member's messages beyond 30 a minute and 1,000 an hour, so each
  member's budget (WECOM_APP_MEMBER_LIMITS) is kept in the database like a robot key's: a
  member without budget waits in the database while the others are sent to.
- `enable_duplicate_check` is on: WeCom itself drops a repeat of one message to one user within
  the interval, a second line against duplicates after a worker died between send and record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, cast

from pydantic import AliasChoices, Field, SecretStr, model_validator

from channels.base import (
    Channel,
    ChannelContext,
    ChannelUnavailable,
    Contacts,
    Delivery,
    Failures,
    Message,
)
from channels.errors import (
    WECOM_TOKEN_ERRCODES,
    DeliveryError,
    PermanentError,
    RateLimited,
    Reason,
    TransientError,
    classify_http,
    classify_wecom_app,
    parse_retry_after,
)
from channels.http import HTTP_REASONS, json_object, pinned, policy_client, refused, request
from channels.wecom import WECOM_USERID, WeComCommon
from channels.wecom_markdown import TEXT_MAX_BYTES, compose
from pipeline.budget import RateLimit, RateLimitsSetting, SendBudgets
from pipeline.clock import Clock
from pipeline.durations import Duration
from pipeline.outbound import AllowList, Destination, UrlRefused, check_url
from pipeline.redact import Redactor
from pipeline.validation import InputError, validate_wecom_userid

# WeCom takes up to 1,000 userids in one touser.
MAX_TOUSER = 1000
# App-message markdown is limited to 2,048 bytes (the robot's is 4,096).
APP_MARKDOWN_MAX_BYTES = TEXT_MAX_BYTES
# Renew the token this long before WeCom says it expires.
TOKEN_MARGIN = timedelta(minutes=5)


class WeComAppSettings(WeComCommon):
    """WECOM_APP_*; the hosts are WECOM_ALLOWED_HOSTS, shared with the robot."""

    enabled: bool = Field(False, validation_alias=AliasChoices("WECOM_APP_ENABLED"))
    corp_id: str = Field("", max_length=64, validation_alias=AliasChoices("WECOM_APP_CORP_ID"))
    agent_id: int = Field(0, ge=0, validation_alias=AliasChoices("WECOM_APP_AGENT_ID"))
    secret: SecretStr = Field(SecretStr(""), validation_alias=AliasChoices("WECOM_APP_SECRET"))
    api_base: str = Field(
        "https://qyapi.weixin.qq.com", validation_alias=AliasChoices("WECOM_APP_API_BASE")
    )
    # What WeCom lets one member receive; beyond it messages are dropped without an error.
    member_limits: RateLimitsSetting = Field(
        (RateLimit(30, timedelta(minutes=1)), RateLimit(1000, timedelta(hours=1))),
        validation_alias=AliasChoices("WECOM_APP_MEMBER_LIMITS"),
    )
    # WeCom drops a repeat of the same message to the same user within this (at most 4 h).
    duplicate_check: Duration = Field(
        timedelta(minutes=30),
        gt=timedelta(0),
        le=timedelta(hours=4),
        validation_alias=AliasChoices("WECOM_APP_DUPLICATE_CHECK"),
    )
    concurrency: int = Field(8, ge=1, validation_alias=AliasChoices("WECOM_APP_CONCURRENCY"))

    @model_validator(mode="after")
    def _api_base(self) -> WeComAppSettings:
        # Only when on: the default base must not stop a deployment that allows other hosts.
        if self.enabled:
            self.refuse_unless_allowed("WECOM_APP_API_BASE", SecretStr(self.api_base), check_base)
        return self


def check_base(url: str, allow: AllowList) -> Destination:
    """The API base is an allowed origin and nothing more: no path, query or fragment."""
    destination = check_url(url, allow)
    if destination.path != "/" or destination.query:
        raise UrlRefused("the WeCom API base is scheme://host[:port] without a path")
    return destination


def _check_userid(userid: str, _settings: Any) -> str:
    return validate_wecom_userid(userid)


@dataclass(frozen=True)
class AppPayload:
    """One message/send: its markdown, and the notifications of each userid it goes to."""

    content: str
    users: dict[str, tuple[int, ...]]


@dataclass
class _Token:
    value: str = field(default="", repr=False)
    expires_at: datetime | None = None


class AccessToken:
    """The process's access token: fetched when missing or about to expire, once at a time."""

    def __init__(self, fetch: Any, clock: Clock) -> None:
        self._fetch = fetch
        self._clock = clock
        self._token = _Token()
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def get(self) -> str:
        """A valid token: the cached one, or a new one if it is missing or about to expire."""
        if self._fresh():
            return self._token.value
        async with self._lock:
            if not self._fresh():  # another send fetched it while we waited
                await self._renew()
            return self._token.value

    async def renew(self, refused: str) -> str:
        """A new token after WeCom refused `refused`: fetched once, however many sends saw it."""
        async with self._lock:
            if self._token.value == refused:
                await self._renew()
            return self._token.value

    @property
    def current(self) -> str:
        """The cached token, or "" (for redaction: it is a credential too)."""
        return self._token.value

    def _fresh(self) -> bool:
        expires_at = self._token.expires_at
        return bool(self._token.value) and expires_at is not None and self._clock.now() < expires_at

    async def _renew(self) -> None:
        value, lifetime = await self._fetch()
        self.fetches += 1
        margin = min(TOKEN_MARGIN, lifetime / 10)
        self._token = _Token(value, self._clock.now() + lifetime - margin)


class WeComAppChannel(Channel[WeComAppSettings]):
    """Sends each person an app message; one alert's recipients share one message/send call."""

    name = "wecom_app"
    settings_class = WeComAppSettings
    contacts = (WECOM_USERID,)
    by_default = False
    coalesces = True
    reasons: ClassVar[tuple[Reason, ...]] = (
        *HTTP_REASONS,
        Reason.WECOM_BUSY,
        Reason.WECOM_45009,
        Reason.WECOM_45033,
        Reason.WECOM_44004,
        Reason.WECOM_45002,
        Reason.WECOM_TOKEN,
        Reason.WECOM_CREDENTIALS,
        Reason.WECOM_60020,
        Reason.WECOM_NO_RECIPIENT,
        Reason.WECOM_INVALID_USER,
        Reason.WECOM_OTHER,
        Reason.RATE_LIMITED,
        Reason.NO_CONTACT,
        Reason.INVALID_ADDRESS,
        Reason.CHANNEL_DISABLED,
    )

    def __init__(self, settings: WeComAppSettings, context: ChannelContext) -> None:
        self._settings = settings
        self._base = settings.api_base.rstrip("/")
        self._secret = settings.secret.get_secret_value()
        self._allow = settings.allowlist
        self._resolver = context.resolver
        self._clock = context.clock
        self._hold = context.send_timeout
        self._client = policy_client(context.send_timeout, settings.concurrency)
        self.token = AccessToken(self._fetch_token, context.clock)
        self._members = [
            SendBudgets(context.session_factory, f"{self.name}:{limit}", limit)
            for limit in settings.member_limits
        ]

    @classmethod
    def from_settings(cls, settings: WeComAppSettings, context: ChannelContext) -> WeComAppChannel:
        missing = [
            name
            for name, value in (
                ("WECOM_APP_CORP_ID", settings.corp_id),
                ("WECOM_APP_AGENT_ID", settings.agent_id),
                ("WECOM_APP_SECRET", settings.secret.get_secret_value()),
            )
            if not value
        ]
        if not settings.enabled or missing:
            wanted = ", ".join(["WECOM_APP_ENABLED=true", *missing])
            raise ChannelUnavailable(f"set {wanted}")
        return cls(settings, context)

    @classmethod
    def reachable(cls, contacts: Contacts) -> bool:
        """Only a recipient with a WeCom userid can get a direct message."""
        return bool(contacts.get(WECOM_USERID.kind))

    def group_key(self, delivery: Delivery) -> str | None:
        """Every recipient of an alert with a valid userid shares one call; others go alone."""
        return "app" if _userid(delivery) is not None else None

    def render(self, delivery: Delivery) -> AppPayload:
        [message] = self.render_group([delivery])
        return cast(AppPayload, message.payload)

    def render_group(self, deliveries: Sequence[Delivery]) -> list[Message]:
        """One message/send per 1,000 userids, each with the alert's markdown (2,048 bytes)."""
        users: dict[str, list[Delivery]] = {}
        for delivery in deliveries:
            userid = _userid(delivery)
            if userid is None:
                raise PermanentError(*_no_userid(delivery))
            users.setdefault(userid, []).append(delivery)
        [post] = compose(
            deliveries,
            full_text=self._settings.full_text_url,
            max_bytes=APP_MARKDOWN_MAX_BYTES,
            mention=False,
        )
        [content] = post.parts
        userids = list(users)
        return [
            Message(
                tuple(d for userid in chunk for d in users[userid]),
                AppPayload(
                    content,
                    {u: tuple(d.notification_id for d in users[u]) for u in chunk},
                ),
            )
            for chunk in (
                userids[start : start + MAX_TOUSER] for start in range(0, len(userids), MAX_TOUSER)
            )
        ]

    async def send(self, payload: AppPayload) -> Failures:
        """Sends to every member with budget left; the others wait, invalid users fail alone."""
        now = self._clock.now()
        granted, waits = await self._reserve(list(payload.users), now)
        failures: dict[int, DeliveryError] = {}
        for userid, wait in waits.items():
            error = RateLimited(
                Reason.RATE_LIMITED, "the member's app-message budget is spent", wait
            )
            failures |= dict.fromkeys(payload.users[userid], error)
        if not granted:
            return failures
        answered_at: datetime | None = None
        try:
            invalid = await self._send(list(granted), payload.content)
            answered_at = self._clock.now()
        except DeliveryError as failed:
            answered_at = self._clock.now()
            invalid = dict.fromkeys(granted, failed)
        finally:
            await self._settle(granted, answered_at or self._clock.now())
        for userid, refused_for in invalid.items():
            failures |= dict.fromkeys(payload.users.get(userid, ()), refused_for)
        return failures

    async def _reserve(
        self, userids: list[str], now: datetime
    ) -> tuple[dict[str, list[tuple[SendBudgets, int]]], dict[str, timedelta]]:
        """A slot of every member budget for each userid that has them all."""
        granted: dict[str, list[tuple[SendBudgets, int]]] = {u: [] for u in userids}
        waits: dict[str, timedelta] = {}
        given_back: dict[SendBudgets, list[int]] = {}
        for budget in self._members:
            slots, waiting = await budget.reserve_each(list(granted), now, self._hold)
            for userid, slot in slots.items():
                granted[userid].append((budget, slot))
            for userid, wait in waiting.items():
                waits[userid] = wait
                # Slots this member got from the other limits are given back.
                for other, slot in granted.pop(userid):
                    given_back.setdefault(other, []).append(slot)
        for budget, returned in given_back.items():
            await budget.settle([], returned)
        return granted, waits

    async def _settle(
        self, granted: dict[str, list[tuple[SendBudgets, int]]], answered_at: datetime
    ) -> None:
        for budget in self._members:
            slots = [slot for held in granted.values() for b, slot in held if b is budget]
            await budget.settle([(slot, answered_at) for slot in slots], [])

    async def _send(self, userids: list[str], content: str) -> dict[str, DeliveryError]:
        """One message/send, with the token fetched again once if WeCom refuses it."""
        token = await self.token.get()
        data = await self._post_message(token, userids, content)
        if data.get("errcode") in WECOM_TOKEN_ERRCODES:
            data = await self._post_message(await self.token.renew(token), userids, content)
        self._raise_for(data)
        return {
            userid: PermanentError(
                Reason.WECOM_INVALID_USER,
                "WeCom does not know this userid, or it is outside the app's visible range",
            )
            for userid in _listed(data, "invaliduser") | _listed(data, "unlicenseduser")
        }

    async def _post_message(self, token: str, userids: list[str], content: str) -> dict[str, Any]:
        body = {
            "touser": "|".join(userids),
            "msgtype": "markdown",
            "agentid": self._settings.agent_id,
            "markdown": {"content": content},
            "enable_duplicate_check": 1,
            "duplicate_check_interval": int(self._settings.duplicate_check.total_seconds()),
        }
        url = f"{self._base}/cgi-bin/message/send?access_token={token}"
        return await self._call("POST", url, json=body)

    async def _fetch_token(self) -> tuple[str, timedelta]:
        url = (
            f"{self._base}/cgi-bin/gettoken?corpid={self._settings.corp_id}"
            f"&corpsecret={self._secret}"
        )
        data = await self._call("GET", url)
        self._raise_for(data)
        token, lifetime = data.get("access_token"), data.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(lifetime, int):
            raise TransientError(Reason.BAD_RESPONSE, "gettoken answered without a token")
        return token, timedelta(seconds=lifetime)

    async def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        target = await pinned(url, self._check, self._resolver, "WeCom API")
        response = await request(self._client, method, target, **kwargs)
        error = classify_http(
            response.status_code, parse_retry_after(response.headers.get("Retry-After"))
        )
        if error is not None:
            raise error
        data = json_object(response)
        if data is None or not isinstance(data.get("errcode", 0), int):
            raise TransientError(Reason.BAD_RESPONSE, f"HTTP {response.status_code} without JSON")
        return data

    def _check(self, url: str) -> Destination:
        try:
            return check_url(url, self._allow)
        except UrlRefused as exc:
            raise refused("WeCom API", exc) from None

    def _raise_for(self, data: dict[str, Any]) -> None:
        """Raises the error a non-zero errcode means (errmsg redacted), or returns."""
        error = classify_wecom_app(_errcode(data), self._redact(str(data.get("errmsg", ""))))
        if error is not None:
            raise error

    def _redact(self, text: str) -> str:
        return Redactor([self._secret, self.token.current])(text)

    async def aclose(self) -> None:
        await self._client.aclose()


def _userid(delivery: Delivery) -> str | None:
    userid = delivery.contacts.get(WECOM_USERID.kind)
    if not userid:
        return None
    try:
        return validate_wecom_userid(userid)
    except InputError:
        return None


def _no_userid(delivery: Delivery) -> tuple[Reason, str]:
    if delivery.contacts.get(WECOM_USERID.kind):
        return Reason.INVALID_ADDRESS, "the recipient's wecom_userid is not a valid WeCom userid"
    return Reason.NO_CONTACT, "the recipient has no wecom_userid"


def _errcode(data: dict[str, Any]) -> int:
    errcode = data.get("errcode", 0)
    return errcode if isinstance(errcode, int) else -1


def _listed(data: dict[str, Any], name: str) -> set[str]:
    value = data.get(name)
    return {item for item in value.split("|") if item} if isinstance(value, str) else set()
