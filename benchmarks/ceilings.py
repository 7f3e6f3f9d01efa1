"""Measures, in the benchmark's own run, what the pieces under Tocsin can do at most."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib
import httpx
from sqlalchemy import Column, Integer, MetaData, String, Table, insert

from pipeline.config import Settings
from pipeline.db import create_engine, session_factory

BATCH_FACTOR = 25


@dataclass(frozen=True)
class Ceiling:
    """One measured ceiling: how many operations of a kind per second, and how it was measured."""

    key: str
    label: str
    count: int
    seconds: float

    @property
    def rate(self) -> float:
        """Operations per second."""
        return self.count / self.seconds if self.seconds > 0 else 0.0


async def _timed(key: str, label: str, count: int, work: Callable[[], Awaitable[int]]) -> Ceiling:
    started = time.perf_counter()
    done = await work()
    seconds = time.perf_counter() - started
    if done != count:
        raise RuntimeError(f"ceiling {key}: {done} of {count} operations succeeded")
    return Ceiling(key, label, count, seconds)


def _email(i: int) -> EmailMessage:
    # Built per message, as a sender must: the ceilings doc counts this as client CPU.
    message = EmailMessage()
    message["From"] = "bench@localhost"
    message["To"] = f"user{i}@example.test"
    message["Subject"] = f"[WARNING] ceiling message {i}"
    message.set_content(f"ceiling message {i}\n")
    return message


async def _smtp_connection(host: str, port: int, indexes: range) -> int:
    client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, use_tls=False)
    await client.connect()
    try:
        for i in indexes:
            await client.send_message(_email(i))
    finally:
        await client.quit()
    return len(indexes)


async def smtp(host: str, port: int, count: int, connections: int = 1) -> Ceiling:
    """Sends count plain messages over `connections` reused aiosmtplib connections."""

    async def work() -> int:
        parts = [range(c, count, connections) for c in range(connections)]
        done = await asyncio.gather(*(_smtp_connection(host, port, p) for p in parts))
        return sum(done)

    label = (
        "SMTP aiosmtplib, 1 reused connection"
        if connections == 1
        else (f"SMTP aiosmtplib, pool of {connections} reused connections")
    )
    return await _timed(f"smtp_{connections}conn", label, count, work)


async def http(url: str, count: int, concurrency: int = 8) -> Ceiling:
    """POSTs count robot messages with one httpx client at the given concurrency."""

    async def worker(client: httpx.AsyncClient, indexes: range) -> int:
        ok = 0
        for i in indexes:
            body = {"msgtype": "markdown", "markdown": {"content": f"## ceiling {i}"}}
            response = await client.post(url, json=body)
            ok += response.status_code == 200 and response.json().get("errcode") == 0
        return ok

    async def work() -> int:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            parts = [range(c, count, concurrency) for c in range(concurrency)]
            return sum(await asyncio.gather(*(worker(client, p) for p in parts)))

    label = f"httpx POST to WeCom robot, concurrency {concurrency}"
    return await _timed(f"http_c{concurrency}", label, count, work)


async def sqlite(path: str, count: int) -> tuple[Ceiling, Ceiling]:
    """Inserts count rows one commit each, then count x 25 rows in one transaction (executemany).

    Uses the product's engine factory, so the PRAGMAs (WAL, synchronous=NORMAL) and the
    BEGIN IMMEDIATE listener are the same as the pipeline's.
    """
    engine = create_engine(Settings(database_url=f"sqlite+aiosqlite:///{path}", metrics_port=-1))
    metadata = MetaData()
    table = Table(
        "ceiling_rows",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("value", String(64), nullable=False),
    )
    sessions = session_factory(engine)

    async def per_row() -> int:
        for i in range(count):
            async with sessions() as session, session.begin():
                await session.execute(insert(table).values(value=f"row {i}"))
        return count

    # A batch of only `count` rows takes milliseconds: too short to time reliably.
    many_rows = count * BATCH_FACTOR

    async def batched() -> int:
        rows = [{"value": f"row {i}"} for i in range(many_rows)]
        async with sessions() as session, session.begin():
            await session.execute(insert(table), rows)
        return many_rows

    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        one = await _timed(
            "sqlite_commit_per_row",
            "SQLite insert, commit per row (SQLAlchemy async session)",
            count,
            per_row,
        )
        many = await _timed(
            "sqlite_executemany",
            "SQLite executemany insert, one transaction",
            many_rows,
            batched,
        )
    finally:
        await engine.dispose()
    return one, many
