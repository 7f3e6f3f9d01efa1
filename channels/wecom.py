"""The WeCom group-robot channel: markdown messages to a webhook, rate limited per robot key."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

import httpx

from channels.base import Channel, ChannelContext, ChannelUnavailable, Contacts, Delivery
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
from channels.wecom_markdown import render_markdown
from channels.wecom_url import check_robot_url, robot_key
from pipeline.clock import Clock
from pipeline.config import Settings
from pipeline.outbound import (
    Destination,
    PinnedRequest,
    ResolveFailed,
    Resolver,
    UrlRefused,
    pin,
    pinned_request,
    system_resolver,
)
from pipeline.redact import Redactor, mask_url

RATE_WINDOW = timedelta(seconds=60)

# Checked in order: ConnectTimeout and the other timeouts are TransportErrors too.
_TRANSPORT_REASONS: tuple[tuple[type[httpx.HTTPError], Reason], ...] = (
    (httpx.ConnectTimeout, Reason.CONNECT_TIMEOUT),
    (httpx.TimeoutException, Reason.TIMEOUT),
    (httpx.TransportError, Reason.CONNECTION_ERROR),
)
NOT_CONFIGURED = (
    "no WeCom webhook configured: set WECOM_WEBHOOK_URL or the recipient's wecom_webhook"
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


class _MaskUrls(logging.Filter):
    """Masks webhook keys in httpx's per-request log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # a malformed record: logging reports it, with no URL of ours
        record.msg, record.args = mask_url(message), ()
        return True


_MASK_URLS = _MaskUrls()


class WeComChannel(Channel):
    """Posts notifications to a WeCom group robot, per recipient webhook or the global one."""

    name = "wecom"
    secret_settings = ("wecom_webhook_url",)
    reasons: ClassVar[tuple[Reason, ...]] = (
        Reason.CONNECT_TIMEOUT,
        Reason.TIMEOUT,
        Reason.CONNECTION_ERROR,
        Reason.HTTP_429,
        Reason.HTTP_4XX,
        Reason.HTTP_5XX,
        Reason.BAD_RESPONSE,
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
        Reason.INVALID_ADDRESS,
        Reason.URL_REFUSED,
    )

    def __init__(
        self, settings: Settings, clock: Clock, resolver: Resolver = system_resolver
    ) -> None:
        self._default_url = settings.wecom_webhook_url.get_secret_value()
        self._allow = settings.wecom_allowlist
        self._resolver = resolver
        self._clock = clock
        self._limiter = SlidingWindowLimiter(settings.wecom_rate_per_minute)
        # No proxy from the environment and no redirects: the URL policy decides where we post.
        self._client = httpx.AsyncClient(
            trust_env=False,
            follow_redirects=False,
            timeout=settings.send_timeout.total_seconds(),
            limits=httpx.Limits(
                max_connections=settings.wecom_concurrency,
                max_keepalive_connections=settings.wecom_concurrency,
            ),
        )
        # httpx logs every request URL at INFO; the key is in that URL.
        logging.getLogger("httpx").addFilter(_MASK_URLS)

    @classmethod
    def from_settings(cls, settings: Settings, context: ChannelContext) -> WeComChannel:
        if not settings.wecom_enabled:
            raise ChannelUnavailable("set WECOM_ENABLED=true (and WECOM_WEBHOOK_URL)")
        return cls(settings, context.clock, context.resolver)

    @classmethod
    def reachable(cls, contacts: Contacts) -> bool:
        # Everyone is reachable through the global group robot; render says if there is none.
        return True

    def render(self, delivery: Delivery) -> WeComPayload:
        url = delivery.wecom_webhook or self._default_url
        if not url:
            raise PermanentError(Reason.CHANNEL_DISABLED, NOT_CONFIGURED)
        destination = self._check(url)
        body = {"msgtype": "markdown", "markdown": {"content": render_markdown(delivery)}}
        return WeComPayload(url=url, key=robot_key(destination.query), body=body)

    def _check(self, url: str) -> Destination:
        try:
            return check_robot_url(url, self._allow)
        except UrlRefused as exc:
            raise PermanentError(Reason.URL_REFUSED, f"WeCom webhook refused: {exc}") from None

    async def send(self, payload: WeComPayload) -> None:
        wait = self._limiter.wait_time(payload.key, self._clock.now())
        if wait is not None:
            raise RateLimited(
                Reason.RATE_LIMITED, "WeCom robot's per-minute budget is spent", retry_after=wait
            )
        target = await self._pinned(payload.url)
        try:
            response = await self._client.post(
                target.url,
                json=payload.body,
                headers=target.headers,
                extensions=target.extensions,
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            error: DeliveryError | None = transport_error(exc)
        else:
            error = classify_response(response, Redactor([payload.url, payload.key]))
        # Raised outside the except block: httpx exceptions carry the URL, so none is chained.
        if error is not None:
            raise error

    async def _pinned(self, url: str) -> PinnedRequest:
        """Checks url again and resolves it once, so the post reaches the address checked."""
        destination = self._check(url)
        try:
            address = await pin(destination, self._resolver)
        except UrlRefused as exc:
            raise PermanentError(Reason.URL_REFUSED, f"WeCom webhook refused: {exc}") from None
        except ResolveFailed as exc:
            raise TransientError(Reason.CONNECTION_ERROR, str(exc)) from None
        return pinned_request(destination, address)

    async def aclose(self) -> None:
        await self._client.aclose()


def transport_error(exc: httpx.HTTPError | httpx.InvalidURL) -> DeliveryError:
    """Maps an httpx failure to an error naming only its class (httpx messages hold the URL)."""
    detail = type(exc).__name__
    if isinstance(exc, httpx.InvalidURL):
        return PermanentError(Reason.INVALID_ADDRESS, detail)
    for kind, reason in _TRANSPORT_REASONS:
        if isinstance(exc, kind):
            return TransientError(reason, detail)
    # DecodingError and friends: the robot answered, but not in a form we can read.
    return TransientError(Reason.BAD_RESPONSE, detail)


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
    try:
        data = response.json()
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    errcode, errmsg = data.get("errcode"), data.get("errmsg", "")
    if not isinstance(errcode, int) or isinstance(errcode, bool):
        return None
    return errcode, str(errmsg)
