"""A provider's rate limit per destination key, kept in the database so every replica shares it.

WeCom lets a robot key take 20 posts a minute. A budget held in each process's memory lets four
replicas post 80 (and WeCom answers 45009 or drops messages), so the budget lives in the
database, which every worker already shares, whatever the broker:

- `send_budgets` has a row per key (a digest: the key is a secret). Reserving locks the rows of
  the keys it considers (FOR UPDATE on PostgreSQL; SQLite's writers are serialised anyway), so
  two replicas never both take the last slot.
- `send_budget_slots` has a row per post counted in the window, until it `frees_at`. A slot is
  reserved before the post with the latest moment the post can still arrive (now + the send's
  timeout), and settled after the answer to that answer's moment: the provider received the
  post between the two, so counting from the later one never lets a window see one too many.
- A key the provider said was too fast (45009) is closed until a whole window has passed.

When no slot is free, reserve says how long until enough are; the caller turns that into a
rate-limited result, so the notification waits in the database (`not_before`), not in memory.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import BeforeValidator
from pydantic_settings import NoDecode
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from pipeline.db import SessionFactory
from pipeline.durations import format_duration, parse_duration
from pipeline.models import SendBudget, SendBudgetSlot
from pipeline.sql import first_ints, insert_ignoring_duplicates, table_of

_LIMIT = re.compile(r"\s*(\d+)\s*(?:/\s*(\S+))?\s*")


@dataclass(frozen=True)
class RateLimit:
    """At most `count` posts per key in any `window`."""

    count: int
    window: timedelta

    @classmethod
    def parse(cls, text: str | int) -> RateLimit:
        """Reads "20/60s", "20/1m" or a bare count per minute ("20", as WECOM_RATE_PER_MINUTE)."""
        match = _LIMIT.fullmatch(str(text))
        if match is None:
            raise ValueError(f"rate limit {text!r} is not COUNT/WINDOW, e.g. 20/60s")
        count = int(match.group(1))
        try:
            window = parse_duration(match.group(2)) if match.group(2) else timedelta(minutes=1)
        except ValueError as exc:
            raise ValueError(f"rate limit {text!r}: {exc}") from None
        if count < 1 or window <= timedelta(0):
            raise ValueError(f"rate limit {text!r} needs a count and a window above zero")
        return cls(count, window)

    def __str__(self) -> str:
        return f"{self.count}/{format_duration(self.window)}"


def _limit(value: object) -> RateLimit:
    return value if isinstance(value, RateLimit) else RateLimit.parse(str(value))


def _limits(value: object) -> tuple[RateLimit, ...]:
    if isinstance(value, tuple):
        return tuple(_limit(item) for item in value)
    return tuple(RateLimit.parse(part) for part in str(value).split(",") if part.strip())


# A setting such as WECOM_RATE_LIMIT="20/60s" (text, never JSON), and a list of them.
RateLimitSetting = Annotated[RateLimit, NoDecode, BeforeValidator(_limit)]
RateLimitsSetting = Annotated[tuple[RateLimit, ...], NoDecode, BeforeValidator(_limits)]


@dataclass(frozen=True)
class Grant:
    """Slots reserved for one post each, in order: the key to post to and the slot to settle."""

    slots: tuple[tuple[str, int], ...]


def key_digest(scope: str, key: str) -> str:
    """Names a key in the database without storing it: SHA-256 of scope and key."""
    return hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()


class SendBudgets:
    """The shared rate budget of one channel's destination keys (scope: the channel's name)."""

    def __init__(self, sessions: SessionFactory, scope: str, limit: RateLimit) -> None:
        self._sessions = sessions
        self._scope = scope
        self.limit = limit

    async def reserve(
        self, keys: Sequence[str], count: int, now: datetime, hold: timedelta
    ) -> Grant | timedelta:
        """Reserves `count` slots across keys (a pool), or returns how long until there are.

        The keys used least in the window go first, then the longest unused: a pool's keys
        take turns. `hold` is how long a post may take; its slot counts from then until settled.
        """
        if not 1 <= count <= self.limit.count * len(keys):
            raise ValueError(f"cannot reserve {count} posts from {len(keys)} keys at {self.limit}")
        digests = {key_digest(self._scope, key): key for key in dict.fromkeys(keys)}
        async with self._sessions() as session, session.begin():
            budgets = await _lock(session, list(digests), now)
            taken = await _slots_in_window(session, list(digests), now)
            free = {d: self._free(budgets[d], taken[d], now) for d in budgets}
            if sum(free.values()) < count:
                return self._wait(budgets, taken, count, now)
            chosen = _take_turns(free, taken, budgets, count)
            slot_ids = await _add_slots(session, chosen, now + hold + self.limit.window)
            await session.execute(
                update(SendBudget)
                .where(col(SendBudget.key_digest).in_(set(chosen)))
                .values(last_used_at=now)
            )
        return Grant(tuple((digests[d], i) for d, i in zip(chosen, slot_ids, strict=True)))

    async def reserve_each(
        self, keys: Sequence[str], now: datetime, hold: timedelta
    ) -> tuple[dict[str, int], dict[str, timedelta]]:
        """Reserves one slot on each key that has one (a message to several members at once).

        Returns the slot of each key that got one, and how long each other key waits.
        """
        digests = {key_digest(self._scope, key): key for key in dict.fromkeys(keys)}
        granted: dict[str, int] = {}
        waits: dict[str, timedelta] = {}
        async with self._sessions() as session, session.begin():
            budgets = await _lock(session, list(digests), now)
            taken = await _slots_in_window(session, list(digests), now)
            open_ = []
            for digest, key in digests.items():
                if self._free(budgets[digest], taken[digest], now):
                    open_.append(digest)
                else:
                    one = {digest: budgets[digest]}
                    waits[key] = self._wait(one, {digest: taken[digest]}, 1, now)
            slot_ids = await _add_slots(session, open_, now + hold + self.limit.window)
            granted = {digests[digest]: slot for digest, slot in zip(open_, slot_ids, strict=True)}
        return granted, waits

    async def settle(self, sent: Sequence[tuple[int, datetime]], unused: Sequence[int]) -> None:
        """Counts each sent slot from the moment its answer came; frees the slots not used."""
        if not sent and not unused:
            return
        async with self._sessions() as session, session.begin():
            if sent:
                # ORM bulk UPDATE by primary key: one executemany for every slot.
                await session.execute(
                    update(SendBudgetSlot),
                    [
                        {"id": slot_id, "frees_at": answered_at + self.limit.window}
                        for slot_id, answered_at in sent
                    ],
                )
            if unused:
                await session.execute(
                    delete(SendBudgetSlot).where(col(SendBudgetSlot.id).in_(unused))
                )

    async def close(self, key: str, now: datetime) -> timedelta:
        """Closes key for a whole window (the provider said too fast); returns the wait."""
        digest = key_digest(self._scope, key)
        async with self._sessions() as session, session.begin():
            await _lock(session, [digest], now)
            await session.execute(
                update(SendBudget)
                .where(col(SendBudget.key_digest) == digest)
                .values(closed_until=now + self.limit.window)
            )
        return self.limit.window

    def _wait(
        self,
        budgets: dict[str, SendBudget],
        taken: dict[str, list[datetime]],
        count: int,
        now: datetime,
    ) -> timedelta:
        # The first moment at which `count` slots are free: try each moment a slot frees or a
        # key reopens, in order.
        moments = sorted(
            {at for slots in taken.values() for at in slots}
            | {b.closed_until for b in budgets.values() if b.closed_until and b.closed_until > now}
        )
        for moment in moments:
            if sum(self._free(budgets[d], taken[d], moment) for d in budgets) >= count:
                return moment - now
        return self.limit.window  # not reached: every slot frees within a window and a hold

    def _free(self, budget: SendBudget, slots: list[datetime], moment: datetime) -> int:
        """The slots a key has free at moment: none while closed, else those not taken then."""
        if budget.closed_until is not None and budget.closed_until > moment:
            return 0
        return self.limit.count - sum(1 for frees_at in slots if frees_at > moment)


async def _lock(session: AsyncSession, digests: list[str], now: datetime) -> dict[str, SendBudget]:
    await session.execute(
        insert_ignoring_duplicates(session, SendBudget),
        [{"key_digest": digest} for digest in digests],
    )
    rows = await session.execute(
        select(SendBudget)
        .where(col(SendBudget.key_digest).in_(digests))
        .order_by(col(SendBudget.key_digest))
        .with_for_update()
    )
    budgets = {budget.key_digest: budget for budget in rows.scalars()}
    # Slots past their window count no more; dropping them keeps the table to a window's worth.
    await session.execute(
        delete(SendBudgetSlot).where(
            col(SendBudgetSlot.key_digest).in_(digests), col(SendBudgetSlot.frees_at) <= now
        )
    )
    return budgets


async def _slots_in_window(
    session: AsyncSession, digests: list[str], now: datetime
) -> dict[str, list[datetime]]:
    rows = await session.execute(
        select(col(SendBudgetSlot.key_digest), col(SendBudgetSlot.frees_at))
        .where(col(SendBudgetSlot.key_digest).in_(digests), col(SendBudgetSlot.frees_at) > now)
        .order_by(col(SendBudgetSlot.frees_at))
    )
    taken: dict[str, list[datetime]] = {digest: [] for digest in digests}
    for digest, frees_at in rows:
        taken[digest].append(frees_at)
    return taken


async def _add_slots(session: AsyncSession, digests: list[str], frees_at: datetime) -> list[int]:
    """Adds a slot per digest (one may repeat); returns their ids in the same order."""
    if not digests:
        return []
    rows = await session.execute(
        insert(table_of(SendBudgetSlot)).returning(
            col(SendBudgetSlot.id), sort_by_parameter_order=True
        ),
        [{"key_digest": digest, "frees_at": frees_at} for digest in digests],
    )
    return first_ints(rows)


def _take_turns(
    free: dict[str, int],
    taken: dict[str, list[datetime]],
    budgets: dict[str, SendBudget],
    count: int,
) -> list[str]:
    left = dict(free)
    used = {digest: len(slots) for digest, slots in taken.items()}
    chosen: list[str] = []
    for _ in range(count):
        digest = min(
            (d for d in left if left[d] > 0),
            key=lambda d: (used[d], budgets[d].last_used_at is not None, budgets[d].last_used_at),
        )
        chosen.append(digest)
        left[digest] -= 1
        used[digest] += 1
    return chosen
