"""The WeCom group-robot channel: markdown messages to a webhook, rate limited per robot key."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

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
from pipeline.clock import Clock
from pipeline.config import Settings
from pipeline.redact import Redactor, mask_url

MARKDOWN_MAX_BYTES = 4096
TEXT_MAX_BYTES = 2048
TITLE_MAX_BYTES = 256
TRUNCATION_MARK = "…"
RATE_WINDOW = timedelta(seconds=60)

_SEVERITY_COLOURS = {
    "critical": "warning",
    "fatal": "warning",
    "error": "warning",
    "high": "warning",
    "warning": "comment",
    "warn": "comment",
    "medium": "comment",
}
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
    """One robot message: the webhook and its key (secrets, never printed) and the JSON body."""

    url: str = field(repr=False)
    key: str = field(repr=False)
    body: dict[str, Any]


def truncate_utf8(text: str, max_bytes: int, mark: str = TRUNCATION_MARK) -> str:
    """Returns text cut to at most max_bytes of UTF-8 between characters, ending in mark if cut."""
    if max_bytes < 0:
        raise ValueError("max_bytes must be >= 0")
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    mark_size = len(mark.encode("utf-8"))
    if mark_size > max_bytes:
        mark, mark_size = "", 0
    # Decoding a byte prefix with "ignore" drops only the split character at its end.
    return data[: max_bytes - mark_size].decode("utf-8", errors="ignore") + mark


def severity_colour(severity: str) -> str:
    """Returns the WeCom markdown font colour for a severity: warning, comment or info."""
    return _SEVERITY_COLOURS.get(severity.strip().lower(), "info")


def webhook_key(url: str) -> str:
    """Returns the robot key in a webhook URL (the URL itself when it carries no key)."""
    keys = parse_qs(urlsplit(url).query).get("key")
    return keys[0] if keys else url


def render_markdown(delivery: Delivery, max_bytes: int = MARKDOWN_MAX_BYTES) -> str:
    """Returns the markdown content for a delivery, the body cut so the whole fits max_bytes."""
    title = _clean(_one_line(delivery.title))
    head = (
        f"## {truncate_utf8(title, TITLE_MAX_BYTES)}\n"
        f'> Severity: <font color="{severity_colour(delivery.severity)}">'
        f"{_clean(_one_line(delivery.severity.upper()))}</font>\n\n"
    )
    tail = f"\n\n<@{_clean(delivery.wecom_userid)}>" if delivery.wecom_userid else ""
    budget = max_bytes - len(head.encode("utf-8")) - len(tail.encode("utf-8"))
    body = truncate_utf8(_clean(delivery.body), max(budget, 0))
    # Only a pathological severity or user id can overflow; the cap still holds.
    return truncate_utf8(head + body + tail, max_bytes)


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def _clean(text: str) -> str:
    # Lone surrogates cannot be sent as UTF-8 (WeCom answers 40033); replace them.
    return text.encode("utf-8", errors="replace").decode("utf-8")


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
    )

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self._default_url = settings.wecom_webhook_url.get_secret_value()
        self._clock = clock
        self._limiter = SlidingWindowLimiter(settings.wecom_rate_per_minute)
        self._client = httpx.AsyncClient(
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
        return cls(settings, context.clock)

    @classmethod
    def reachable(cls, contacts: Contacts) -> bool:
        # Everyone is reachable through the global group robot; render says if there is none.
        return True

    def render(self, delivery: Delivery) -> WeComPayload:
        url = delivery.wecom_webhook or self._default_url
        if not url:
            raise PermanentError(Reason.CHANNEL_DISABLED, NOT_CONFIGURED)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PermanentError(Reason.INVALID_ADDRESS, "WeCom webhook is not an http(s) URL")
        body = {"msgtype": "markdown", "markdown": {"content": render_markdown(delivery)}}
        return WeComPayload(url=url, key=webhook_key(url), body=body)

    async def send(self, payload: WeComPayload) -> None:
        wait = self._limiter.wait_time(payload.key, self._clock.now())
        if wait is not None:
            raise RateLimited(
                Reason.RATE_LIMITED, "WeCom robot's per-minute budget is spent", retry_after=wait
            )
        try:
            response = await self._client.post(payload.url, json=payload.body)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            error: DeliveryError | None = transport_error(exc)
        else:
            error = classify_response(response, Redactor([payload.url, payload.key]))
        # Raised outside the except block: httpx exceptions carry the URL, so none is chained.
        if error is not None:
            raise error

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
