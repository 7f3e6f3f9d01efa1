"""Relays Alertmanager webhook notifications to WeCom group robots as markdown messages.

Alertmanager has no WeCom receiver and cannot template a webhook body, so its `wecom-oncall`
receiver posts here:

    POST /alertmanager/ROUTE   Alertmanager webhook JSON (version 4), with the header
                               `Authorization: Bearer TOKEN`
    GET  /healthz              200 while serving (the only request without the token)

and this turns each notification into one `markdown` message for the robot configured for
ROUTE. The relay holds the token and the robot keys: a request without the token gets 401,
one for an unknown route 404, and one with a query string 400, so a caller can choose a
configured robot by name but never supply a key or a URL. Alert text is escaped: labels and
annotations cannot mention (`<@all>`), link, colour or emphasise.

Alerts about Tocsin must not depend on Tocsin: this module uses only the standard library and
aiohttp, and imports nothing from Tocsin's packages. Run it with

    python -m monitoring.alertmanager.wecom_relay    (or: python .../wecom_relay.py)

    WECOM_RELAY_TOKEN      the bearer token, 16+ printable ASCII characters (required)
    WECOM_RELAY_ROBOTS     `route=KEY,route=KEY`: the robots it posts to
    WECOM_RELAY_LISTEN     host:port to serve on            (default 127.0.0.1:8080)
    WECOM_ROBOT_BASE_URL   the robot's send endpoint        (default WeCom's own)
    WECOM_ROBOT_TIMEOUT    seconds to wait for the robot    (default 10)

Answers to Alertmanager follow the robot's `errcode` (never its `errmsg`): 0 -> 200;
rate limited (45009, 45033), busy (-1, 6000), HTTP 5xx/429, timeouts and connection errors
-> 503, so Alertmanager retries; any other errcode or HTTP status (93000: unknown key or
robot removed, ...) -> 500, which is logged with its errcode for an operator to fix.
Logs and response bodies name a robot by its route, never by its key.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler

DEFAULT_HOST = "127.0.0.1"
DEFAULT_LISTEN = f"{DEFAULT_HOST}:8080"
DEFAULT_BASE_URL = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"
DEFAULT_TIMEOUT = 10.0
# WeCom's markdown content limit, in UTF-8 bytes.
MAX_CONTENT_BYTES = 4096
# Single fields are capped first, so one long description cannot push out the links.
MAX_SUMMARY_BYTES = 300
MAX_DESCRIPTION_BYTES = 1200
MARKER = "…"
# errcodes after which the same message may succeed later.
RATE_LIMITED = frozenset({45009, 45033})
TRANSIENT = frozenset({-1, 6000}) | RATE_LIMITED
# <font color=...> values WeCom markdown knows: green, grey, orange-red.
SEVERITY_COLOURS = {"critical": "warning", "warning": "comment"}
RESOLVED_COLOUR = "info"
DEFAULT_COLOUR = "comment"
# Labels already shown in a block's first line.
SHOWN_LABELS = frozenset({"alertname", "severity", "channel"})

KEY_IN_TEXT = re.compile(r"(key=)[^&\s'\"<>]+", re.IGNORECASE)
TOKEN_FORMAT = re.compile(r"[!-~]{16,}")
ROUTE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Characters WeCom markdown (or the HTML it passes through) would read as syntax.
MARKDOWN_SYNTAX = re.compile(r"([\\\[\]()*_`#~|])")
# What a link target keeps unencoded: no ( ) < > ` | space, so it cannot end early.
URL_SAFE = ":/?#[]@!$&'*+,;=%~"

log = logging.getLogger("wecom_relay")


# --- the message -------------------------------------------------------------------------


def utf8_size(text: str) -> int:
    """The size of text in UTF-8 bytes."""
    return len(text.encode("utf-8"))


def truncate(text: str, limit: int, marker: str = MARKER) -> str:
    """Cuts text to at most `limit` UTF-8 bytes on a character boundary, ending in marker."""
    if utf8_size(text) <= limit:
        return text
    room = limit - utf8_size(marker)
    if room <= 0:
        return ""
    # errors="ignore" drops a character split by the byte cut: the result stays whole.
    cut = text.encode("utf-8")[:room].decode("utf-8", errors="ignore")
    return cut.rstrip() + marker


def escape(text: str) -> str:
    """Alert data as literal markdown text: no tag, mention, link or emphasis survives."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return MARKDOWN_SYNTAX.sub(r"\\\1", text)


def _strings(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items() if v is not None}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _text(text: str) -> str:
    return escape(_one_line(text))


def _colour(alert: Mapping[str, Any]) -> str:
    if alert.get("status") == "resolved":
        return RESOLVED_COLOUR
    return SEVERITY_COLOURS.get(_strings(alert.get("labels")).get("severity", ""), DEFAULT_COLOUR)


def _time(value: Any) -> str | None:
    if not isinstance(value, str) or not value or value.startswith("0001-"):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def _link(label: str, url: str) -> str:
    url = url.strip()
    if re.match(r"https?://", url, re.IGNORECASE):
        return f"[{label}]({quote(url, safe=URL_SAFE)})"
    # A relative runbook path opens nowhere from a chat: show it as text.
    return f"{label}: {_text(url)}"


def _group_value(payload: Mapping[str, Any], alerts: list[Mapping[str, Any]], label: str) -> str:
    for source in ("groupLabels", "commonLabels"):
        value = _strings(payload.get(source)).get(label)
        if value:
            return value
    values = (_strings(alert.get("labels")).get(label) for alert in alerts)
    names = list(dict.fromkeys(value for value in values if value))
    return ", ".join(names if len(names) <= 3 else [*names[:3], MARKER])


def heading(payload: Mapping[str, Any]) -> str:
    """`## [FIRING:2] TocsinChannelNoSuccess · channel wecom`, the status in colour."""
    alerts = _alerts(payload)
    firing = [a for a in alerts if a.get("status") != "resolved"]
    status = "RESOLVED" if payload.get("status") == "resolved" or not firing else "FIRING"
    if status == "RESOLVED":
        colour, count = RESOLVED_COLOUR, len(alerts)
    else:
        colours = {_colour(a) for a in firing}
        colour = "warning" if "warning" in colours else DEFAULT_COLOUR
        count = len(firing)
    title = _text(_group_value(payload, alerts, "alertname")) or "alert"
    channel = _text(_group_value(payload, alerts, "channel"))
    where = f" · channel {channel}" if channel else ""
    return f'## <font color="{colour}">[{status}:{count}]</font> {title}{where}'


def alert_block(alert: Mapping[str, Any]) -> str:
    """One alert: severity in colour, summary, description, times, other labels, links."""
    labels = _strings(alert.get("labels"))
    annotations = _strings(alert.get("annotations"))
    resolved = alert.get("status") == "resolved"
    severity = _text(labels.get("severity", "unknown")) + (" · resolved" if resolved else "")
    summary = _text(annotations.get("summary", "")) or _text(labels.get("alertname", ""))
    lines = [
        f'**<font color="{_colour(alert)}">{severity}</font>** '
        + truncate(summary, MAX_SUMMARY_BYTES)
    ]
    description = annotations.get("description", "").strip()
    if description:
        lines.append("> " + truncate(_text(description), MAX_DESCRIPTION_BYTES))
    when = _time(alert.get("endsAt")) if resolved else _time(alert.get("startsAt"))
    if when:
        lines.append(f"{'Resolved' if resolved else 'Since'}: {_text(when)}")
    others = [f"{_text(k)}={_text(v)}" for k, v in sorted(labels.items()) if k not in SHOWN_LABELS]
    if others:
        lines.append(truncate("Labels: " + ", ".join(others), MAX_SUMMARY_BYTES))
    links = [
        _link(label, annotations[name])
        for name, label in (("runbook_url", "Runbook"), ("dashboard_url", "Dashboard"))
        if annotations.get(name, "").strip()
    ]
    if isinstance(alert.get("generatorURL"), str) and alert["generatorURL"]:
        links.append(_link("Source", alert["generatorURL"]))
    if links:
        lines.append(" · ".join(links))
    return "\n".join(lines)


def _footer(payload: Mapping[str, Any], left_out: int) -> str:
    parts = []
    if left_out:
        parts.append(f"{MARKER} {left_out} more alert(s) not shown")
    external = payload.get("externalURL")
    if isinstance(external, str) and external:
        parts.append(_link("Alertmanager", external))
    return " · ".join(parts)


def _alerts(payload: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    alerts = payload.get("alerts")
    return [a for a in alerts if isinstance(a, Mapping)] if isinstance(alerts, list) else []


def render(payload: Mapping[str, Any], limit: int = MAX_CONTENT_BYTES) -> str:
    """The robot's markdown for one Alertmanager notification, at most `limit` bytes.

    Firing alerts come before resolved ones. Alerts that do not fit are left out and
    counted in the last line; if even the first does not, the text is cut with a marker.
    """
    alerts = sorted(_alerts(payload), key=lambda a: a.get("status") == "resolved")
    truncated = payload.get("truncatedAlerts")
    dropped = truncated if isinstance(truncated, int) and truncated > 0 else 0
    blocks = [heading(payload)]
    shown = 0
    for index, alert in enumerate(alerts):
        block = alert_block(alert)
        rest = len(alerts) - index - 1 + dropped
        candidate = "\n\n".join([*blocks, block, _footer(payload, rest)]).rstrip()
        if utf8_size(candidate) > limit:
            break
        blocks.append(block)
        shown += 1
    if shown == 0 and alerts:
        # Not even one alert fits beside the footer: cut the first one to the room left.
        footer = _footer(payload, len(alerts) - 1 + dropped)
        room = limit - utf8_size("\n\n".join([*blocks, "", footer]).rstrip()) - 2
        blocks.append(truncate(alert_block(alerts[0]), max(room, 0)))
        shown = 1
    text = "\n\n".join([*blocks, _footer(payload, len(alerts) - shown + dropped)]).rstrip()
    return truncate(text, limit)


def message(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The robot's request body for one notification."""
    return {"msgtype": "markdown", "markdown": {"content": render(payload)}}


# --- the robot ---------------------------------------------------------------------------


def mask(text: str, key: str | None = None) -> str:
    """text with the key, and anything that looks like `key=...`, replaced by ***."""
    if key:
        text = text.replace(key, "***")
    return KEY_IN_TEXT.sub(r"\1***", text)


@dataclass(frozen=True)
class Outcome:
    """What the robot made of a message, and what Alertmanager is told."""

    status: int
    result: str
    errcode: int | None = None
    detail: str = ""

    def body(self) -> dict[str, Any]:
        body = {"status": self.result, "errcode": self.errcode, "detail": self.detail}
        return {name: value for name, value in body.items() if value not in (None, "")}


def classify(http_status: int, answer: Any) -> Outcome:
    """Decides on the robot's HTTP status and errcode, never on its errmsg."""
    if http_status != 200:
        retry = http_status >= 500 or http_status == 429
        return Outcome(
            503 if retry else 500,
            "retry" if retry else "failed",
            detail=f"robot answered HTTP {http_status}",
        )
    errcode = answer.get("errcode") if isinstance(answer, Mapping) else None
    if not isinstance(errcode, int) or isinstance(errcode, bool):
        return Outcome(503, "retry", detail="robot answer has no errcode")
    if errcode == 0:
        return Outcome(200, "sent", errcode)
    if errcode in TRANSIENT:
        return Outcome(503, "rate_limited" if errcode in RATE_LIMITED else "retry", errcode)
    return Outcome(500, "rejected", errcode)


class Robot:
    """Posts messages to the WeCom robot endpoint, one HTTP session for the process."""

    def __init__(self, base_url: str, timeout: float) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._session: ClientSession | None = None

    async def open(self) -> None:
        # trust_env: HTTPS_PROXY / NO_PROXY apply, for hosts whose only way out is a proxy.
        self._session = ClientSession(timeout=ClientTimeout(total=self.timeout), trust_env=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, key: str, body: dict[str, Any]) -> Outcome:
        if self._session is None:
            raise RuntimeError("Robot.open() first")
        try:
            async with self._session.post(self.base_url, params={"key": key}, json=body) as rsp:
                raw = await rsp.read()
                try:
                    answer = json.loads(raw) if raw else None
                except ValueError:
                    answer = None
                return classify(rsp.status, answer)
        except TimeoutError:
            return Outcome(503, "retry", detail=f"robot did not answer in {self.timeout:g}s")
        except ClientError as exc:
            # Some aiohttp errors quote the URL, key included.
            detail = mask(f"{type(exc).__name__}: {exc}", key)
            return Outcome(503, "retry", detail=detail)


@dataclass(frozen=True)
class Config:
    """The relay's settings; its repr shows neither the token nor a robot key."""

    token: str = field(repr=False)
    robots: Mapping[str, str] = field(repr=False)
    host: str = DEFAULT_HOST
    port: int = 8080
    base_url: str = DEFAULT_BASE_URL
    timeout: float = DEFAULT_TIMEOUT


ROBOT = web.AppKey("robot", Robot)
CONFIG = web.AppKey("config", Config)


# --- the web application -----------------------------------------------------------------


def _authorized(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # compare_digest: the time taken tells nothing about how much of the token matched.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8"), token.encode("utf-8")
    )


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answers 401 to every request but /healthz that lacks the configured bearer token."""
    if request.path == "/healthz" or _authorized(request, request.app[CONFIG].token):
        return await handler(request)
    log.warning("refused a request from %s: no valid bearer token", request.remote)
    return web.json_response(
        {"status": "unauthorized"}, status=401, headers={"WWW-Authenticate": "Bearer"}
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _refuse(status: int, result: str, reason: str) -> web.Response:
    log.warning("refused a notification: %s", reason)
    return web.json_response({"status": result, "detail": reason}, status=status)


async def alertmanager(request: web.Request) -> web.Response:
    if request.query_string:
        return _refuse(400, "bad_request", "no query string: robots come from the relay's config")
    route = request.match_info["route"]
    key = request.app[CONFIG].robots.get(route)
    if key is None:
        log.warning("refused a notification: no robot is configured for route %r", route[:64])
        detail = "no robot is configured for this route"
        return web.json_response({"status": "unknown_route", "detail": detail}, status=404)
    try:
        payload = json.loads(await request.read())
    except ValueError:
        return _refuse(400, "bad_request", "body is not JSON")
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        return _refuse(400, "bad_request", "body is not an Alertmanager webhook payload")
    alerts = _alerts(payload)
    summary = _one_line(
        f"{payload.get('status', '?')} {_group_value(payload, alerts, 'alertname') or '?'}"
        f" ({len(alerts)} alert(s))"
    )
    try:
        outcome = await request.app[ROBOT].send(key, message(payload))
    except Exception as exc:  # answered and logged, key masked
        log.error("route %s: %s not relayed: %s", route, summary, mask(repr(exc), key))
        return web.json_response({"status": "error", "detail": "internal error"}, status=500)
    level, verdict = {
        200: (logging.INFO, "relayed"),
        503: (logging.WARNING, "not relayed: Alertmanager will retry"),
    }.get(outcome.status, (logging.ERROR, "rejected: check the robot key and the message"))
    errcode = "-" if outcome.errcode is None else outcome.errcode
    detail = f" ({outcome.detail})" if outcome.detail else ""
    log.log(level, "route %s: %s %s, errcode=%s%s", route, summary, verdict, errcode, detail)
    headers = {"Retry-After": "60"} if outcome.result == "rate_limited" else None
    return web.json_response(outcome.body(), status=outcome.status, headers=headers)


def create_app(config: Config) -> web.Application:
    """The relay's aiohttp application, posting to the robots config names."""
    app = web.Application(middlewares=[require_token])
    app[CONFIG] = config
    app[ROBOT] = Robot(config.base_url, config.timeout)

    async def robot_session(app: web.Application) -> AsyncIterator[None]:
        await app[ROBOT].open()
        yield
        await app[ROBOT].close()

    app.cleanup_ctx.append(robot_session)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/alertmanager/{route}", alertmanager)
    return app


class AccessLogger(AbstractAccessLogger):
    """Logs the path without the query string: a misconfigured sender may put a key there."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.3fs", request.method, request.path, response.status, time)


def runner(app: web.Application) -> web.AppRunner:
    """An AppRunner for the relay whose access log never shows the key."""
    return web.AppRunner(app, access_log_class=AccessLogger)


# --- the process -------------------------------------------------------------------------


class _MaskKeys(logging.Filter):
    """Last line of defence for every handler: no `key=...` reaches the output."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (loopback) -> (host, port)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"WECOM_RELAY_LISTEN={value!r} is not host:port")
    return host.strip("[]") or DEFAULT_HOST, int(port)


def parse_robots(value: str) -> dict[str, str]:
    """`route=KEY,route=KEY` -> {route: key}; a route with an empty key is left out."""
    robots: dict[str, str] = {}
    for item in value.replace(",", " ").split():
        route, sep, key = item.partition("=")
        # The message never quotes the value: it holds keys.
        if not sep or not ROUTE_NAME.fullmatch(route) or route in robots:
            raise ValueError("WECOM_RELAY_ROBOTS must be route=KEY pairs, each route once")
        if key:
            robots[route] = key
    return robots


def settings(env: Mapping[str, str]) -> Config:
    """The relay's Config from the environment; ValueError when invalid (no secret in it)."""
    host, port = parse_listen(env.get("WECOM_RELAY_LISTEN") or DEFAULT_LISTEN)
    base_url = (env.get("WECOM_ROBOT_BASE_URL") or DEFAULT_BASE_URL).strip()
    if not re.match(r"https?://[^/?#]+", base_url) or "?" in base_url:
        raise ValueError("WECOM_ROBOT_BASE_URL must be an http(s) URL without a query")
    try:
        timeout = float(env.get("WECOM_ROBOT_TIMEOUT") or DEFAULT_TIMEOUT)
    except ValueError:
        raise ValueError("WECOM_ROBOT_TIMEOUT must be a number of seconds") from None
    if timeout <= 0:
        raise ValueError("WECOM_ROBOT_TIMEOUT must be positive")
    token = env.get("WECOM_RELAY_TOKEN", "").strip()
    if not TOKEN_FORMAT.fullmatch(token):
        raise ValueError(
            "WECOM_RELAY_TOKEN must be set to 16 or more printable ASCII characters (no"
            " spaces): every request but /healthz must carry it as `Authorization: Bearer ...`"
        )
    robots = parse_robots(env.get("WECOM_RELAY_ROBOTS", ""))
    return Config(token, robots, host, port, base_url, timeout)


def main(env: Mapping[str, str] | None = None) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(_MaskKeys())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    try:
        config = settings(os.environ if env is None else env)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    routes = ", ".join(sorted(config.robots))
    log.info(
        "relaying routes [%s] to %s, on %s:%d", routes, config.base_url, config.host, config.port
    )
    if not config.robots:
        log.warning("WECOM_RELAY_ROBOTS names no robot: every notification gets 404")
    web.run_app(
        create_app(config),
        host=config.host,
        port=config.port,
        access_log_class=AccessLogger,
        print=None,
        handle_signals=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
