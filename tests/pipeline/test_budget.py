"""The shared send budget on SQLite and PostgreSQL: slots, waits, closing, pools, concurrency."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlmodel import col

from pipeline.budget import Grant, RateLimit, SendBudgets, key_digest
from pipeline.config import Settings
from pipeline.db import SessionFactory, create_engine
from pipeline.db import session_factory as make_session_factory
from pipeline.models import SendBudget, SendBudgetSlot

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
HOLD = timedelta(seconds=5)
MINUTE = timedelta(minutes=1)


def budgets(sessions: SessionFactory, limit: str = "3/1m") -> SendBudgets:
    return SendBudgets(sessions, "wecom", RateLimit.parse(limit))


async def take(budget: SendBudgets, keys: list[str], count: int = 1, at: datetime = NOW) -> Grant:
    grant = await budget.reserve(keys, count, at, HOLD)
    assert isinstance(grant, Grant), f"no budget: wait {grant}"
    return grant


async def settle_at(budget: SendBudgets, grant: Grant, at: datetime) -> None:
    await budget.settle([(slot, at) for _, slot in grant.slots], [])


@pytest.mark.parametrize(
    ("text", "count", "window"),
    [("20/60s", 20, MINUTE), ("20/1m", 20, MINUTE), ("20", 20, MINUTE), (" 5 / 2s ", 5, None)],
)
def test_rate_limits_read_count_and_window(text: str, count: int, window: timedelta | None) -> None:
    limit = RateLimit.parse(text)
    assert limit.count == count
    assert limit.window == (window or timedelta(seconds=2))


@pytest.mark.parametrize("text", ["", "0/60s", "20/0s", "twenty", "20/60x", "-1/1m"])
def test_bad_rate_limits_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        RateLimit.parse(text)


async def test_a_window_holds_count_posts_then_says_when_the_first_frees(
    session_factory: SessionFactory,
) -> None:
    budget = budgets(session_factory)
    for second in range(3):
        at = NOW + timedelta(seconds=second)
        await settle_at(budget, await take(budget, ["k"], at=at), at)
    wait = await budget.reserve(["k"], 1, NOW + timedelta(seconds=10), HOLD)
    # The first post was answered at NOW: its slot frees a window later.
    assert wait == timedelta(seconds=50)
    await take(budget, ["k"], at=NOW + MINUTE)


async def test_a_slot_in_flight_counts_until_its_send_could_have_ended(
    session_factory: SessionFactory,
) -> None:
    budget = budgets(session_factory, "1/1m")
    await take(budget, ["k"])  # never settled: its worker died mid-send
    assert await budget.reserve(["k"], 1, NOW + MINUTE, HOLD) == HOLD
    await take(budget, ["k"], at=NOW + MINUTE + HOLD)


async def test_unused_slots_are_given_back(session_factory: SessionFactory) -> None:
    budget = budgets(session_factory, "2/1m")
    grant = await take(budget, ["k"], count=2)
    [(_, sent), (_, unused)] = grant.slots
    await budget.settle([(sent, NOW)], [unused])
    await take(budget, ["k"])


async def test_several_parts_wait_until_all_fit(session_factory: SessionFactory) -> None:
    budget = budgets(session_factory)
    first = await take(budget, ["k"], count=2)
    await settle_at(budget, first, NOW)
    later = NOW + timedelta(seconds=20)
    await settle_at(budget, await take(budget, ["k"], at=later), later)
    # Two parts need two free slots: both from the first post, a window after NOW.
    assert await budget.reserve(["k"], 2, later, HOLD) == timedelta(seconds=40)
    with pytest.raises(ValueError, match="cannot reserve 4 posts"):
        await budget.reserve(["k"], 4, later, HOLD)


async def test_a_closed_key_waits_a_whole_window(session_factory: SessionFactory) -> None:
    budget = budgets(session_factory)
    assert await budget.close("k", NOW) == MINUTE
    assert await budget.reserve(["k"], 1, NOW + timedelta(seconds=15), HOLD) == timedelta(
        seconds=45
    )
    await take(budget, ["k"], at=NOW + MINUTE)


async def test_keys_have_their_own_budgets(session_factory: SessionFactory) -> None:
    budget = budgets(session_factory, "1/1m")
    await take(budget, ["a"])
    await take(budget, ["b"])
    assert not isinstance(await budget.reserve(["a"], 1, NOW, HOLD), Grant)
    # The channel's name scopes the key: another channel's budget for "a" is its own.
    await take(SendBudgets(session_factory, "other", RateLimit.parse("1/1m")), ["a"])


async def test_a_pool_takes_turns_and_holds_the_sum(session_factory: SessionFactory) -> None:
    budget = budgets(session_factory, "2/1m")
    used = [key for _ in range(4) for key, _ in (await take(budget, ["a", "b"])).slots]
    assert sorted(used) == ["a", "a", "b", "b"]
    assert used[0] != used[1] and used[2] != used[3]
    assert not isinstance(await budget.reserve(["a", "b"], 1, NOW, HOLD), Grant)


async def test_the_key_itself_is_never_stored(session_factory: SessionFactory) -> None:
    secret = "SeCrEt-robot-key-4b1d"
    await take(budgets(session_factory), [secret])
    async with session_factory() as session:
        stored = list((await session.execute(select(SendBudget))).scalars())
        slots = list((await session.execute(select(col(SendBudgetSlot.key_digest)))).scalars())
    assert [b.key_digest for b in stored] == slots == [key_digest("wecom", secret)]
    assert all(secret not in repr(row) for row in stored)


async def test_expired_slots_are_dropped(session_factory: SessionFactory) -> None:
    budget = budgets(session_factory, "1/1m")
    for minute in range(5):
        at = NOW + minute * MINUTE
        await settle_at(budget, await take(budget, ["k"], at=at), at)
    async with session_factory() as session:
        left = list((await session.execute(select(SendBudgetSlot))).scalars())
    assert len(left) == 1


@pytest.mark.timeout(120)
async def test_replicas_racing_for_one_key_never_exceed_the_limit(db_settings: Settings) -> None:
    # Eight "replicas", each with its own engine (connection pool), reserve at the same instant.
    engines = [create_engine(db_settings) for _ in range(8)]
    try:
        replicas = [budgets(make_session_factory(engine), "5/1m") for engine in engines]
        results = await asyncio.gather(
            *(replica.reserve(["k"], 1, NOW, HOLD) for replica in replicas for _ in range(3))
        )
    finally:
        for engine in engines:
            await engine.dispose()
    granted = [r for r in results if isinstance(r, Grant)]
    assert len(granted) == 5
    assert all(r == MINUTE + HOLD for r in results if not isinstance(r, Grant))
