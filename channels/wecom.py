"""The WeCom group-robot channel: markdown messages to a webhook, rate limited per robot key."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

import httpx
from pydantic import AliasChoices, Field, SecretStr, model_validator

from channels.base import (
    Channel,
    ChannelContext,
    ChannelUnavailable,
    Contact,
    Delivery,
    SecretParts,
)
from channels.errors import (
    DeliveryError,
    PermanentError,
    RateLimited,
    Reason,
    TransientError,
    classify_http,
    classify_wecom,
    parse_retry_after,
)
from channels.http import (
    HTTP_REASONS,
    PolicySettings,
    json_object,
    pinned,
    policy_client,
    refused,
    request,
)
from channels.wecom_markdown import render_markdown
from channels.wecom_url import check_robot_url, robot_key, robot_url, split_robot_url
from pipeline.clock import Clock
from pipeline.outbound import Destination, Resolver, UrlRefused, system_resolver
from pipeline.redact import Redactor
from pipeline.validation import validate_robot_url, validate_wecom_userid

RATE_WINDOW = timedelta(seconds=60)
NOT_CONFIGURED = (
    "no WeCom webhook configured: set WECOM_WEBHOOK_URL or the recipient's wecom_webhook"
)


class WeComSettings(PolicySettings):
    """WECOM_* (the seed system's WECHAT_* names too)."""

    allowed_hosts_setting = "WECOM_ALLOWED_HOSTS"

    enabled: bool = Field(False, validation_alias=AliasChoices("WECOM_ENABLED", "WECHAT_ENABLED"))
    webhook_url: SecretStr = Field(
        SecretStr(""), validation_alias=AliasChoices("WECOM_WEBHOOK_URL", "WECHAT_WEBHOOK_URL")
    )
    # Hosts the WeCom channels may call (see pipeline/outbound.py for the entry syntax).
    allowed_hosts: str = Field(
        "qyapi.weixin.qq.com", validation_alias=AliasChoices("WECOM_ALLOWED_HOSTS")
    )
    rate_per_minute: int = Field(20, ge=1, validation_alias=AliasChoices("WECOM_RATE_PER_MINUTE"))
    concurrency: int = Field(8, ge=1, validation_alias=AliasChoices("WECOM_CONCURRENCY"))

    @model_validator(mode="after")
    def _robot(self) -> WeComSettings:
        self.refuse_unless_allowed("WECOM_WEBHOOK_URL", self.webhook_url, check_robot_url)
        return self


def _check_userid(userid: str, _settings: Any) -> str:
    return validate_wecom_userid(userid)


def _check_robot(url: str, settings: Any) -> str:
    return validate_robot_url(url, settings.allowlist)


# The userid a mention (<@userid>) and an app message (touser) address.
WECOM_USERID = Contact(
    "wecom_userid", "the WeCom userid (mentioned in robot posts)", _check_userid, max_length=64
)
# A recipient's own group robot, posted to instead of WECOM_WEBHOOK_URL; its key is a secret.
WECOM_WEBHOOK = Contact(
    "wecom_webhook",
    "an own WeCom robot URL (https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...)",
    _check_robot,
    max_length=512,
    secret=SecretParts(split=split_robot_url, join=robot_url),
)


@dataclass(frozen=True)
class WeComPayload:
    """One robot message: the webhook and its key (secrets, never printed) and the JSON body.

    send() checks the URL against the policy again: a payload is never trusted to be checked.
    """

    url: str = field(repr=False)
    key: str = field(repr=False)
    body: dict[str, Any]


class SlidingWindowLimiter:
    """Allows at most `limit` events per key in any window of `window`, judged by a given time."""

    def __init__(self, limit: int, window: timedelta = RATE_WINDOW) -> None:
        self._limit = limit
        self._window = window
        self._events: dict[str, deque[datetime]] = {}

    def wait_time(self, key: str, now: datetime) -> timedelta | None:
        """Records an event for key and returns None, or returns how long until a slot frees."""
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self._window:
            events.popleft()
        if len(events) >= self._limit:
            return events[0] + self._window - now
        events.append(now)
        return None


class WeComChannel(Channel[WeComSettings]):
    """Posts notifications to a WeCom group robot, per recipient webhook or the global one."""

    name = "wecom"
    settings_class = WeComSettings
    contacts = (WECOM_USERID, WECOM_WEBHOOK)
    reasons: ClassVar[tuple[Reason, ...]] = (
        *HTTP_REASONS,
        Reason.WECOM_BUSY,
        Reason.WECOM_6000,
        Reason.WECOM_45009,
        Reason.WECOM_45033,
        Reason.WECOM_93000,
        Reason.WECOM_93004,
        Reason.WECOM_93008,
        Reason.WECOM_40008,
        Reason.WECOM_44004,
        Reason.WECOM_45002,
        Reason.WECOM_40033,
        Reason.WECOM_OTHER,
        Reason.RATE_LIMITED,
        Reason.CHANNEL_DISABLED,
    )

    def __init__(
        self,
        settings: WeComSettings,
        clock: Clock,
        resolver: Resolver = system_resolver,
        send_timeout: timedelta = timedelta(seconds=30),
    ) -> None:
        self._default_url = settings.webhook_url.get_secret_value()
        self._allow = settings.allowlist
        self._resolver = resolver
        self._clock = clock
        self._limiter = SlidingWindowLimiter(settings.rate_per_minute)
        self._client = policy_client(send_timeout, settings.concurrency)

    @classmethod
    def from_settings(cls, settings: WeComSettings, context: ChannelContext) -> WeComChannel:
        if not settings.enabled:
            raise ChannelUnavailable("set WECOM_ENABLED=true (and WECOM_WEBHOOK_URL)")
        return cls(settings, context.clock, context.resolver, context.send_timeout)

    def render(self, delivery: Delivery) -> WeComPayload:
        url = delivery.contacts.get(WECOM_WEBHOOK.kind) or self._default_url
        if not url:
            raise PermanentError(Reason.CHANNEL_DISABLED, NOT_CONFIGURED)
        destination = self._check(url)
        body = {"msgtype": "markdown", "markdown": {"content": render_markdown(delivery)}}
        return WeComPayload(url=url, key=robot_key(destination.query), body=body)

    def _check(self, url: str) -> Destination:
        try:
            return check_robot_url(url, self._allow)
        except UrlRefused as exc:
            raise refused("WeCom webhook", exc) from None

    async def send(self, payload: WeComPayload) -> None:
        wait = self._limiter.wait_time(payload.key, self._clock.now())
        if wait is not None:
            raise RateLimited(
                Reason.RATE_LIMITED, "WeCom robot's per-minute budget is spent", retry_after=wait
            )
        target = await pinned(payload.url, self._check_url, self._resolver, "WeCom webhook")
        response = await request(self._client, "POST", target, json=payload.body)
        error = classify_response(response, Redactor([payload.url, payload.key]))
        if error is not None:
            raise error

    def _check_url(self, url: str) -> Destination:
        return check_robot_url(url, self._allow)

    async def aclose(self) -> None:
        await self._client.aclose()


def classify_response(response: httpx.Response, redact: Redactor) -> DeliveryError | None:
    """Maps a robot response to an error, or None on success: the status, then the errcode."""
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    error = classify_http(response.status_code, retry_after)
    if error is not None:
        return error
    parsed = _errcode(response)
    if parsed is None:
        return TransientError(
            Reason.BAD_RESPONSE, f"HTTP {response.status_code} without a JSON errcode"
        )
    errcode, errmsg = parsed
    return classify_wecom(errcode, redact(errmsg))


def _errcode(response: httpx.Response) -> tuple[int, str] | None:
    data = json_object(response)
    if data is None:
        return None
    errcode, errmsg = data.get("errcode"), data.get("errmsg", "")
    if not isinstance(errcode, int) or isinstance(errcode, bool):
        return None
    return errcode, str(errmsg)
