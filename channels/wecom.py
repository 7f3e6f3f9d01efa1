"""The WeCom group-robot channel: markdown messages to a webhook, rate limited per robot key."""

from __future__ import annotations

import logging
import re
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import httpx
import structlog

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
from channels.wecom_url import check_robot_url, robot_key
from pipeline.clock import Clock
from pipeline.config import Settings
from pipeline.models import Severity
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
from pipeline.validation import InputError, drop_refused_characters, validate_wecom_userid

log = structlog.get_logger("tocsin.wecom")

MARKDOWN_MAX_BYTES = 4096
TEXT_MAX_BYTES = 2048
TITLE_MAX_BYTES = 256
SEVERITY_MAX_BYTES = 64
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
    """One robot message: the webhook and its key (secrets, never printed) and the JSON body.

    send() checks the URL against the policy again: a payload is never trusted to be checked.
    """

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
    """Returns the markdown content for a delivery: alert data escaped, the body cut to fit.

    Only this template makes markup: the heading, the severity's font tag and the mention line.
    """
    title = fit(escape_markdown(_plain_line(delivery.title), heading=True), TITLE_MAX_BYTES)
    severity = fit(
        escape_markdown(_plain_line(delivery.severity.upper()), heading=True), SEVERITY_MAX_BYTES
    )
    head = (
        f"## {title}\n"
        f'> Severity: <font color="{severity_colour(delivery.severity)}">{severity}</font>\n\n'
    )
    tail = mention_line(delivery)
    budget = max_bytes - _size(head) - _size(tail)
    # Escaped first, then cut between escapes: the limit counts what is sent.
    body = fit(escape_markdown(_plain_text(delivery.body)), max(budget, 0))
    # Head and tail are bounded, so only a max_bytes far below WeCom's can still overflow.
    return truncate_utf8(head + body + tail, max_bytes)


# Alert data is text, never markup. WeCom markdown reads HTML-like tags (<font>, the <@userid>
# mention) and CommonMark-like syntax (headings, quotes, bold, links, inline code), so:
# - `&`, `<` and `>` become &amp; &lt; &gt;, so no tag, mention (<@all>) or autolink
#   (<http://x>) can open and `>` quotes nothing; `&` too, so text that already reads like an
#   entity (&lt;@all&gt;) shows as typed instead of being decoded into a tag.
# - \ ` * _ ~ | [ ] ( ) take a backslash wherever they are: no emphasis, code span, table or
#   link. With the parentheses escaped too, no "](" survives even for a renderer that ignores
#   backslashes ("!" is left alone: it makes an image only before "[").
# - # + - = and the dot of "1." take a backslash where they begin a line (heading, list,
#   setext underline), and `#` everywhere in the heading line (a trailing "#" would close it).
# Both fail safe: a renderer that decoded neither would show the escapes, never markup.
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_INLINE_MARKUP = frozenset("\\`*_~|[]()")
_LINE_MARKUP = re.compile(r"^[ \t]*(?:[#+=-]|\d+\.)", re.MULTILINE)


def escape_markdown(text: str, *, heading: bool = False) -> list[str]:
    """Returns text as markdown that shows it literally: one piece per character, escaped.

    Kept as pieces so that truncation (fit) never splits an escape such as &lt; or \\[.
    """
    if heading:
        return [_escape_char(char, char == "#") for char in text]
    line_marks = {match.end() - 1 for match in _LINE_MARKUP.finditer(text)}
    return [_escape_char(char, index in line_marks) for index, char in enumerate(text)]


def _escape_char(char: str, starts_markup: bool) -> str:
    if char in _ENTITIES:
        return _ENTITIES[char]
    return "\\" + char if starts_markup or char in _INLINE_MARKUP else char


def fit(pieces: list[str], max_bytes: int, mark: str = TRUNCATION_MARK) -> str:
    """Joins pieces, cut between pieces to at most max_bytes of UTF-8 and ending in mark if cut."""
    text = "".join(pieces)
    if _size(text) <= max_bytes:
        return text
    if _size(mark) > max_bytes:
        mark = ""
    room = max_bytes - _size(mark)
    kept: list[str] = []
    for piece in pieces:
        room -= _size(piece)
        if room < 0:
            break
        kept.append(piece)
    return "".join(kept) + mark


def mention_line(delivery: Delivery) -> str:
    """Returns the closing mention line: <@all> on a critical alert that asked, <@userid>."""
    mentions = []
    if delivery.mention_all and delivery.severity.strip().lower() == Severity.CRITICAL:
        mentions.append("<@all>")
    userid = _mentionable(delivery)
    if userid is not None:
        mentions.append(f"<@{userid}>")
    return "\n\n" + " ".join(mentions) if mentions else ""


def _mentionable(delivery: Delivery) -> str | None:
    """Returns the recipient's userid if it is valid, checked again: the row may predate checks."""
    if not delivery.wecom_userid:
        return None
    try:
        return validate_wecom_userid(delivery.wecom_userid)
    except InputError:
        # The group still sees the alert, without the mention; the value itself is not logged.
        log.warning(
            "wecom_mention_dropped",
            notification_id=delivery.notification_id,
            recipient_id=delivery.recipient_id,
            why="stored wecom_userid is not a valid WeCom userid",
        )
        return None


def _plain_line(text: str) -> str:
    """Returns text on one line, without control characters or lone surrogates."""
    return _clean(drop_refused_characters(" ".join(text.splitlines()), multiline=False))


def _plain_text(text: str) -> str:
    """Returns text with every line break made LF, without other control characters."""
    return _clean(drop_refused_characters("\n".join(text.splitlines()), multiline=True))


def _clean(text: str) -> str:
    # Lone surrogates cannot be sent as UTF-8 (WeCom answers 40033); replace them.
    return text.encode("utf-8", errors="replace").decode("utf-8")


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


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
