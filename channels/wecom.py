"""The WeCom group-robot channel: one markdown post per alert and robot, within a shared budget.

The notifications of one alert that go to the same robot are one post mentioning every
recipient (the claim takes the alert's due siblings along). Each robot key may take
WECOM_RATE_LIMIT posts (20 a minute) across every replica, counted in the database.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, cast

import httpx
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator

from channels.base import (
    Channel,
    ChannelContext,
    ChannelUnavailable,
    Contact,
    Delivery,
    Message,
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
from channels.wecom_markdown import compose
from channels.wecom_url import check_robot_url, robot_key, robot_url, split_robot_url
from pipeline.budget import Grant, RateLimit, RateLimitSetting, SendBudgets
from pipeline.outbound import Destination, UrlRefused
from pipeline.redact import Redactor
from pipeline.validation import validate_robot_url, validate_wecom_userid

RATE_WINDOW = timedelta(seconds=60)
_FULL_TEXT_URL = re.compile(r"https?://[^\s()]*\{alert_id\}[^\s()]*")
NOT_CONFIGURED = (
    "no WeCom webhook configured: set WECOM_WEBHOOK_URL or the recipient's wecom_webhook"
)


class WeComCommon(PolicySettings):
    """What both WeCom channels (the robot and app messages) read: the hosts, the full text."""

    allowed_hosts_setting = "WECOM_ALLOWED_HOSTS"

    # Hosts the WeCom channels may call (see pipeline/outbound.py for the entry syntax).
    allowed_hosts: str = Field(
        "qyapi.weixin.qq.com", validation_alias=AliasChoices("WECOM_ALLOWED_HOSTS")
    )
    # Where a cut-short message points for the full text: a URL with {alert_id} in it.
    full_text_url: str = Field("", validation_alias=AliasChoices("WECOM_FULL_TEXT_URL"))

    @field_validator("full_text_url")
    @classmethod
    def _full_text_url(cls, value: str) -> str:
        if value and not _FULL_TEXT_URL.fullmatch(value):
            raise ValueError(
                "WECOM_FULL_TEXT_URL must be an http(s) URL with {alert_id} in it, without"
                " spaces or parentheses"
            )
        return value


class WeComSettings(WeComCommon):
    """WECOM_* (the seed system's WECHAT_* names too)."""

    enabled: bool = Field(False, validation_alias=AliasChoices("WECOM_ENABLED", "WECHAT_ENABLED"))
    webhook_url: SecretStr = Field(
        SecretStr(""), validation_alias=AliasChoices("WECOM_WEBHOOK_URL", "WECHAT_WEBHOOK_URL")
    )
    # Posts per robot key in any window, for the whole deployment (WeCom allows 20 a minute).
    rate_limit: RateLimitSetting = Field(
        RateLimit(20, RATE_WINDOW),
        validation_alias=AliasChoices("WECOM_RATE_LIMIT", "WECOM_RATE_PER_MINUTE"),
    )
    # How many numbered parts one long message may take before its body is cut short.
    max_parts: int = Field(5, ge=1, le=20, validation_alias=AliasChoices("WECOM_MAX_PARTS"))
    concurrency: int = Field(8, ge=1, validation_alias=AliasChoices("WECOM_CONCURRENCY"))

    @model_validator(mode="after")
    def _robot(self) -> WeComSettings:
        for url in self.pool:
            self.refuse_unless_allowed("WECOM_WEBHOOK_URL", SecretStr(url), check_robot_url)
        return self

    @property
    def pool(self) -> tuple[str, ...]:
        """The global robot's URLs: one, or several robots in one group taking turns."""
        text = self.webhook_url.get_secret_value()
        return tuple(url.strip() for url in text.split(",") if url.strip())


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
    """One robot post: its robot's URLs (a pool, or one) by key, and a body per numbered part.

    URLs and keys are secrets, never printed. send() checks each URL against the policy again:
    a payload is never trusted to be checked.
    """

    urls: dict[str, str] = field(repr=False)
    bodies: tuple[dict[str, Any], ...]


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

    coalesces = True

    def __init__(
        self,
        settings: WeComSettings,
        context: ChannelContext,
    ) -> None:
        self._pool = settings.pool
        self._allow = settings.allowlist
        self._max_parts = min(settings.max_parts, settings.rate_limit.count)
        self._full_text_url = settings.full_text_url
        self._resolver = context.resolver
        self._clock = context.clock
        self._hold = context.send_timeout
        self._budgets = SendBudgets(context.session_factory, self.name, settings.rate_limit)
        self._client = policy_client(context.send_timeout, settings.concurrency)

    @classmethod
    def from_settings(cls, settings: WeComSettings, context: ChannelContext) -> WeComChannel:
        if not settings.enabled:
            raise ChannelUnavailable("set WECOM_ENABLED=true (and WECOM_WEBHOOK_URL)")
        return cls(settings, context)

    def group_key(self, delivery: Delivery) -> tuple[str, ...] | None:
        """The robot (or pool) the delivery goes to: the recipient's own, else the global one."""
        own = delivery.contacts.get(WECOM_WEBHOOK.kind)
        return (own,) if own else self._pool or None

    def render(self, delivery: Delivery) -> WeComPayload:
        [message] = self.render_group([delivery])
        return cast(WeComPayload, message.payload)

    def render_group(self, deliveries: Sequence[Delivery]) -> list[Message]:
        """One post (in numbered parts if long) mentioning every recipient of the group."""
        urls = self.group_key(deliveries[0])
        if urls is None:
            raise PermanentError(Reason.CHANNEL_DISABLED, NOT_CONFIGURED)
        by_key = {robot_key(self._check(url).query): url for url in urls}
        posts = compose(deliveries, max_parts=self._max_parts, full_text=self._full_text_url)
        return [
            Message(post.deliveries, WeComPayload(by_key, tuple(map(_markdown, post.parts))))
            for post in posts
        ]

    def _check(self, url: str) -> Destination:
        try:
            return check_robot_url(url, self._allow)
        except UrlRefused as exc:
            raise refused("WeCom webhook", exc) from None

    async def send(self, payload: WeComPayload) -> None:
        """Posts each part within the robot's shared budget, in order.

        Without budget for every part the post waits whole (rate limited, in the database). A
        45009 closes the key for a window. A part that fails fails the post: it is retried
        whole, earlier parts included (the group may see those twice).
        """
        grant = await self._budgets.reserve(
            list(payload.urls), len(payload.bodies), self._clock.now(), self._hold
        )
        if not isinstance(grant, Grant):
            raise RateLimited(
                Reason.RATE_LIMITED,
                f"the robot's budget of {self._budgets.limit} posts is spent",
                retry_after=grant,
            )
        answered: list[tuple[int, datetime]] = []
        try:
            for (key, slot), body in zip(grant.slots, payload.bodies, strict=True):
                try:
                    await self._post(payload.urls[key], key, body)
                finally:
                    answered.append((slot, self._clock.now()))
        finally:
            used = {slot for slot, _ in answered}
            unused = [slot for _, slot in grant.slots if slot not in used]
            await self._budgets.settle(answered, unused)

    async def _post(self, url: str, key: str, body: dict[str, Any]) -> None:
        target = await pinned(url, self._check_url, self._resolver, "WeCom webhook")
        response = await request(self._client, "POST", target, json=body)
        error = classify_response(response, Redactor([url, key]))
        if isinstance(error, RateLimited) and error.reason is Reason.WECOM_45009:
            # WeCom counts posts we did not (another sender, or a window unlike ours).
            wait = await self._budgets.close(key, self._clock.now())
            raise RateLimited(error.reason, error.detail, retry_after=wait)
        if error is not None:
            raise error

    def _check_url(self, url: str) -> Destination:
        return check_robot_url(url, self._allow)

    async def aclose(self) -> None:
        await self._client.aclose()


def _markdown(content: str) -> dict[str, Any]:
    return {"msgtype": "markdown", "markdown": {"content": content}}


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
