"""A loopback HTTP server that answers like the WeCom group robot, with knobs to make it fail."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.support.http_server import serve

SEND_PATH = "/cgi-bin/webhook/send"
LIMITS = {"text": 2048, "markdown": 4096}
WINDOW_SECONDS = 60.0
# A markdown mention as the robot reads it; "all" mentions the whole group.
_MENTION = re.compile(r"<@([^<>]*)>")
ERRMSGS = {
    0: "ok",
    40008: "invalid message type",
    44004: "empty content",
    45002: "content size out of limit",
    45009: "api freq out of limit",
    47001: "data format error",
    93000: "invalid webhook url",
}


@dataclass
class _Forced:
    """A scripted answer used for the next `times` requests (None = until cleared)."""

    value: int
    times: int | None
    key: str | None = None
    retry_after: str | None = None

    def applies(self, key: str) -> bool:
        """Tells whether this answer is due for key, using up one application if so."""
        if self.key is not None and self.key != key:
            return False
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


class WeComRobot:
    """Serves POST /cgi-bin/webhook/send?key=KEY like WeCom: HTTP 200 and an errcode body."""

    def __init__(
        self,
        keys: Iterable[str] = (),
        rate_per_minute: int = 20,
        clock: Callable[[], float] = time.monotonic,
        window: float = WINDOW_SECONDS,
    ) -> None:
        # Like WeCom: at most rate_per_minute posts per key in any `window` seconds (a minute).
        self.rate_per_minute = rate_per_minute
        self.window = window
        self.clock = clock
        self.received: dict[str, list[dict[str, Any]]] = {}
        # When each accepted post arrived, by key (the clock's seconds).
        self.arrivals: dict[str, list[float]] = {}
        # How many posts were refused with 45009 for being over the rate.
        self.too_fast = 0
        self.requests = 0
        self.port = 0
        self._keys = set(keys)
        self._sent: dict[str, deque[float]] = {}
        self._errcode: _Forced | None = None
        self._status: _Forced | None = None
        self._delay = 0.0
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """The server's root URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def allow_entry(self) -> str:
        """The WECOM_ALLOWED_HOSTS entry that allows this loopback server (plain http)."""
        return self.base_url

    def webhook_url(self, key: str) -> str:
        """The webhook URL of the robot with this key."""
        return f"{self.base_url}{SEND_PATH}?key={key}"

    async def start(self) -> WeComRobot:
        """Starts serving on a free loopback port in the running loop."""
        app = web.Application()
        app.router.add_post(SEND_PATH, self._send)
        self._runner, self.port = await serve(app)
        return self

    async def stop(self) -> None:
        """Wakes delayed requests and stops serving."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> WeComRobot:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def add_key(self, key: str) -> None:
        """Registers a robot key."""
        self._keys.add(key)

    def remove_key(self, key: str) -> None:
        """Removes a robot, as when it is kicked out of its group (errcode 93000 from now on)."""
        self._keys.discard(key)

    def fail_with(self, errcode: int, times: int | None = None, key: str | None = None) -> None:
        """Answers `errcode` (HTTP 200) to the next `times` requests, for one key or all."""
        self._errcode = _Forced(errcode, times, key)

    def http_status(
        self, status: int, times: int | None = None, retry_after: str | None = None
    ) -> None:
        """Answers HTTP `status` (with Retry-After when given) to the next `times` requests."""
        self._status = _Forced(status, times, retry_after=retry_after)

    def delay(self, seconds: float) -> None:
        """Holds every answer back for `seconds`."""
        self._delay = seconds

    def reset(self) -> None:
        """Clears forced answers and delays (keys and history stay)."""
        self._errcode = self._status = None
        self._delay = 0.0

    async def _send(self, request: web.Request) -> web.Response:
        self.requests += 1
        raw = await request.read()
        if self._delay:
            # Interruptible, so stop() does not wait for a slow answer nobody reads.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._delay)
        key = request.query.get("key", "")
        if self._status is not None and self._status.applies(key):
            headers = {"Retry-After": self._status.retry_after} if self._status.retry_after else {}
            # Like a proxy or gateway page: not the robot's JSON.
            return web.Response(text="forced", status=self._status.value, headers=headers)
        errcode = self._errcode_for(key, raw)
        return web.json_response({"errcode": errcode, "errmsg": ERRMSGS.get(errcode, "error")})

    def _errcode_for(self, key: str, raw: bytes) -> int:
        if key not in self._keys:
            return 93000
        if self._errcode is not None and self._errcode.applies(key):
            return self._errcode.value
        try:
            body = json.loads(raw)
        except ValueError:
            return 47001
        errcode = validate(body)
        if errcode == 0 and not self._admit(key):
            self.too_fast += 1
            return 45009
        if errcode == 0:
            self.received.setdefault(key, []).append(body)
        return errcode

    def _admit(self, key: str) -> bool:
        now = self.clock()
        sent = self._sent.setdefault(key, deque())
        while sent and sent[0] <= now - self.window:
            sent.popleft()
        if len(sent) >= self.rate_per_minute:
            return False
        sent.append(now)
        self.arrivals.setdefault(key, []).append(now)
        return True

    def most_in_any_window(self, key: str) -> int:
        """The most posts accepted for key within any `window` seconds."""
        times = self.arrivals.get(key, [])
        most = start = 0
        for end, arrived in enumerate(times):
            while times[start] <= arrived - self.window:
                start += 1
            most = max(most, end - start + 1)
        return most


def validate(body: Any) -> int:
    """Returns the errcode WeCom gives a message body: 0, 40008, 44004 or 45002."""
    if not isinstance(body, dict):
        return 47001
    msgtype = body.get("msgtype")
    if msgtype not in LIMITS:
        return 40008
    section = body.get(msgtype)
    content = section.get("content") if isinstance(section, dict) else None
    if not isinstance(content, str) or not content:
        return 44004
    if len(content.encode("utf-8")) > LIMITS[msgtype]:
        return 45002
    return 0


def mentions(content: str) -> list[str]:
    """Returns whom WeCom would @mention for a markdown content: its <@userid> tags, in order."""
    return _MENTION.findall(content)
