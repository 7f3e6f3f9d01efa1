"""A loopback HTTP server that answers like WeCom's application API: tokens and app messages.

GET /cgi-bin/gettoken and POST /cgi-bin/message/send, with WeCom's errcodes, its invaliduser
answer, its duplicate check and its silent per-member limit (messages past 30 a minute are
dropped without an error, as WeCom does); knobs make it expire tokens or fail.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.support.http_server import serve

CORP_ID = "ww-test-corp"
AGENT_ID = 1000002
MARKDOWN_LIMIT = 2048


@dataclass
class Received:
    """One accepted app message, as the users it reached would see it."""

    touser: list[str]
    content: str
    duplicate_check: bool


class WeComApp:
    """Serves the application API for one corp and app, on a free loopback port."""

    def __init__(
        self,
        secret: str,
        users: Iterable[str] = (),
        *,
        member_limit: int = 30,
        window: float = 60.0,
        token_lifetime: int = 7200,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.secret = secret
        self.users = set(users)
        self.member_limit = member_limit
        self.window = window
        self.token_lifetime = token_lifetime
        self.clock = clock
        self.port = 0
        self.token_fetches = 0
        self.sends = 0
        self.received: list[Received] = []
        # Messages WeCom would drop without telling anyone: over a member's limit, or repeats.
        self.dropped_over_limit = 0
        self.dropped_duplicates = 0
        self._tokens: set[str] = set()
        self._per_member: dict[str, deque[float]] = {}
        self._seen: dict[tuple[str, str], float] = {}
        self._errcodes: list[int] = []
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """What WECOM_APP_API_BASE names (and WECOM_ALLOWED_HOSTS allows)."""
        return f"http://127.0.0.1:{self.port}"

    def expire_tokens(self) -> None:
        """Every token handed out so far is refused from now on (42001)."""
        self._tokens.clear()

    def fail_next(self, *errcodes: int) -> None:
        """Answers the next message/send calls with these errcodes, in order."""
        self._errcodes.extend(errcodes)

    def messages_to(self, userid: str) -> list[str]:
        """The contents that reached one user."""
        return [r.content for r in self.received if userid in r.touser]

    async def __aenter__(self) -> WeComApp:
        app = web.Application()
        app.router.add_get("/cgi-bin/gettoken", self._gettoken)
        app.router.add_post("/cgi-bin/message/send", self._send)
        self._runner, self.port = await serve(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _gettoken(self, request: web.Request) -> web.Response:
        self.token_fetches += 1
        if request.query.get("corpid") != CORP_ID:
            return _answer(40013)
        if request.query.get("corpsecret") != self.secret:
            return _answer(40001)
        token = secrets.token_hex(16)
        self._tokens.add(token)
        return _answer(0, access_token=token, expires_in=self.token_lifetime)

    async def _send(self, request: web.Request) -> web.Response:
        self.sends += 1
        body: dict[str, Any] = await request.json()
        errcode = self._refusal(request.query.get("access_token"), body)
        if errcode:
            return _answer(errcode)
        content = body["markdown"]["content"]
        named = [u for u in str(body.get("touser", "")).split("|") if u]
        invalid = [u for u in named if u not in self.users]
        valid = [u for u in named if u in self.users]
        if not valid:
            return _answer(81013, invaliduser="|".join(invalid))
        reached = [u for u in valid if self._admit(u, content, body)]
        if reached:
            checked = bool(body.get("enable_duplicate_check"))
            self.received.append(Received(reached, content, checked))
        return _answer(0, invaliduser="|".join(invalid), msgid=secrets.token_hex(8))

    def _refusal(self, token: str | None, body: dict[str, Any]) -> int:
        """The errcode WeCom answers before looking at the users, or 0."""
        if not token:
            return 41001
        if token not in self._tokens:
            return 42001
        if self._errcodes:
            return self._errcodes.pop(0)
        if body.get("agentid") != AGENT_ID:
            return 40056
        content = body.get("markdown", {}).get("content", "")
        if not content:
            return 44004
        return 45002 if len(content.encode("utf-8")) > MARKDOWN_LIMIT else 0

    def _admit(self, userid: str, content: str, body: dict[str, Any]) -> bool:
        now = self.clock()
        interval = float(body.get("duplicate_check_interval", 1800))
        seen = self._seen.get((userid, content))
        if body.get("enable_duplicate_check") and seen is not None and now - seen < interval:
            self.dropped_duplicates += 1
            return False
        sent = self._per_member.setdefault(userid, deque())
        while sent and sent[0] <= now - self.window:
            sent.popleft()
        if len(sent) >= self.member_limit:
            self.dropped_over_limit += 1
            return False
        sent.append(now)
        self._seen[(userid, content)] = now
        return True


def _answer(errcode: int, **fields: Any) -> web.Response:
    errmsg = "ok" if errcode == 0 else f"error {errcode}"
    return web.json_response({"errcode": errcode, "errmsg": errmsg, **fields})
