"""Redis Streams pass the queue contract, take over dead consumers and survive lost data."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio

from channels.registry import CHANNEL_NAMES
from pipeline.config import Settings
from pipeline.queues import names, open_queue
from pipeline.queues.base import QueueUnavailable, decode_message, encode_message
from pipeline.queues.redis import RedisQueue
from tests.pipeline.queues.contract import QueueContract
from tests.support.services import REDIS_HOST, REDIS_PORT

pytestmark = pytest.mark.redis

CLAIM_IDLE = 1.0


def redis_settings(url: str, **overrides: Any) -> Settings:
    """Settings for a queue at url with a 1 s claim idle (send timeout 0.4 s)."""
    values: dict[str, Any] = {
        "queue_url": url,
        "metrics_port": -1,
        "redis_claim_idle": timedelta(seconds=CLAIM_IDLE),
        "send_timeout": timedelta(seconds=0.4),
        "broker_timeout": timedelta(seconds=2),
        "queue_delivery_limit": 5,
        **overrides,
    }
    return Settings(_env_file=None, **values)


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return redis_settings(redis_url)


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[RedisQueue]:
    created = RedisQueue(settings, CHANNEL_NAMES)
    await created.connect()
    yield created
    await created.close()


@pytest.fixture
async def other(settings: Settings) -> AsyncIterator[RedisQueue]:
    """A second consumer on the same streams (another worker process)."""
    created = RedisQueue(settings, CHANNEL_NAMES)
    await created.connect()
    yield created
    await created.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


class TestRedisQueue(QueueContract):
    """Contract tests on redis://."""


async def _dead_entries(raw: redis.asyncio.Redis, channel: str) -> list[dict[bytes, bytes]]:
    entries: Any = await raw.xrange(names.dead_stream_key(channel))
    return [fields for _, fields in entries]


# --- topology ---------------------------------------------------------------------------


async def test_open_queue_picks_redis_by_scheme(settings: Settings) -> None:
    assert isinstance(open_queue(settings, CHANNEL_NAMES), RedisQueue)


async def test_connect_creates_one_group_per_channel(
    queue: RedisQueue, raw: redis.asyncio.Redis
) -> None:
    await queue.connect()  # idempotent: BUSYGROUP is not an error
    for channel in CHANNEL_NAMES:
        groups = await raw.xinfo_groups(names.stream_key(channel))
        assert [g["name"] for g in groups] == [names.REDIS_GROUP.encode()]


async def test_every_queue_is_its_own_consumer(queue: RedisQueue, other: RedisQueue) -> None:
    assert queue.consumer != other.consumer
    assert queue.consumer.split(":")[:2] == [socket.gethostname(), str(os.getpid())]


def test_claim_idle_must_cover_two_send_timeouts(redis_url: str) -> None:
    with pytest.raises(ValueError, match=r"REDIS_CLAIM_IDLE .*twice SEND_TIMEOUT"):
        RedisQueue(redis_settings(redis_url, send_timeout=timedelta(seconds=0.6)), CHANNEL_NAMES)
    RedisQueue(redis_settings(redis_url, send_timeout=timedelta(seconds=0.5)), CHANNEL_NAMES)


# --- settling -----------------------------------------------------------------------------


async def test_acked_entries_leave_the_stream(queue: RedisQueue, raw: redis.asyncio.Redis) -> None:
    await queue.publish("email", [encode_message(i) for i in range(3)])
    for message in await queue.receive("email", 10, 1.0):
        await message.ack()
    [stats] = await queue.stats(["email"])
    assert (stats.depth, stats.in_flight, stats.dead_letters) == (0, 0, 0)
    assert await raw.xlen(names.stream_key("email")) == 0


async def test_rejected_entries_are_dead_letters_with_their_channel(
    queue: RedisQueue, raw: redis.asyncio.Redis
) -> None:
    await queue.publish("wecom", [b"not json"])
    [message] = await queue.receive("wecom", 1, 1.0)
    await message.reject()
    await message.ack()  # already settled: ignored
    [dead] = await _dead_entries(raw, "wecom")
    assert (dead[b"m"], dead[b"channel"], dead[b"reason"]) == (b"not json", b"wecom", b"rejected")
    [stats] = await queue.stats(["wecom"])
    assert (stats.in_flight, stats.dead_letters) == (0, 1)


async def test_stats_count_depth_in_flight_and_live_consumers(
    queue: RedisQueue, other: RedisQueue
) -> None:
    await queue.publish("system", [encode_message(i) for i in range(5)])
    assert len(await queue.receive("system", 2, 1.0)) == 2
    assert len(await other.receive("system", 1, 1.0)) == 1
    [stats] = await queue.stats(["system"])
    assert (stats.depth, stats.in_flight, stats.consumers) == (2, 3, 2)


# --- dead consumers and poison messages -----------------------------------------------------


async def test_unsettled_messages_are_taken_over_after_claim_idle(
    queue: RedisQueue, other: RedisQueue
) -> None:
    await queue.publish("email", [encode_message(1)])
    [first] = await queue.receive("email", 10, 1.0)  # ... and this consumer dies
    assert await other.receive("email", 10, 0.1) == []
    await asyncio.sleep(CLAIM_IDLE + 0.2)
    [taken] = await other.receive("email", 10, 1.0)
    assert decode_message(taken.body) == 1
    assert getattr(taken, "deliveries", None) == 2
    await taken.ack()
    await first.ack()  # a late ack of a taken-over entry is harmless
    [stats] = await other.stats(["email"])
    assert (stats.depth, stats.in_flight) == (0, 0)


async def test_messages_over_the_delivery_limit_are_dead_lettered(
    redis_url: str, raw: redis.asyncio.Redis
) -> None:
    settings = redis_settings(redis_url, queue_delivery_limit=1)
    crashing, survivor = RedisQueue(settings, CHANNEL_NAMES), RedisQueue(settings, CHANNEL_NAMES)
    try:
        await crashing.publish("email", [encode_message(9)])
        assert len(await crashing.receive("email", 1, 1.0)) == 1
        await asyncio.sleep(CLAIM_IDLE + 0.2)
        assert await survivor.receive("email", 10, 0.2) == []
        [dead] = await _dead_entries(raw, "email")
        assert (dead[b"m"], dead[b"reason"], dead[b"n"]) == (
            encode_message(9),
            b"delivery_limit",
            b"2",
        )
        [stats] = await survivor.stats(["email"])
        assert (stats.depth, stats.in_flight, stats.dead_letters) == (0, 0, 1)
    finally:
        await crashing.close()
        await survivor.close()


async def test_requeues_count_towards_the_delivery_limit(
    redis_url: str, raw: redis.asyncio.Redis
) -> None:
    queue = RedisQueue(redis_settings(redis_url, queue_delivery_limit=2), CHANNEL_NAMES)
    try:
        await queue.publish("system", [encode_message(4)])
        for _ in range(2):
            [message] = await queue.receive("system", 1, 1.0)
            await message.requeue()
        assert await queue.receive("system", 1, 0.2) == []
        assert len(await _dead_entries(raw, "system")) == 1
    finally:
        await queue.close()


async def test_silent_consumers_are_forgotten_once_they_own_nothing(
    redis_url: str, other: RedisQueue, raw: redis.asyncio.Redis
) -> None:
    silent, holder = (
        RedisQueue(redis_settings(redis_url), CHANNEL_NAMES),
        RedisQueue(redis_settings(redis_url), CHANNEL_NAMES),
    )
    try:
        await silent.publish("system", [encode_message(1), encode_message(2)])
        [message] = await silent.receive("system", 1, 1.0)
        await message.ack()
        assert len(await holder.receive("system", 1, 1.0)) == 1  # ... and holder dies
        await asyncio.sleep(2.2)  # max(2 x claim idle, broker timeout): both went silent
        [taken] = await other.receive("system", 10, 0.1)
        consumers = await raw.xinfo_consumers(names.stream_key("system"), names.REDIS_GROUP)
        # holder still owned an entry when other looked, so it is kept for the next round.
        assert {c["name"] for c in consumers} == {holder.consumer.encode(), other.consumer.encode()}
        [stats] = await other.stats(["system"])
        assert stats.consumers == 1
        await taken.ack()
    finally:
        await silent.close()
        await holder.close()


async def test_a_closed_queue_is_no_longer_a_consumer(
    queue: RedisQueue, other: RedisQueue, raw: redis.asyncio.Redis
) -> None:
    await queue.publish("email", [encode_message(1)])
    for message in await queue.receive("email", 1, 1.0):
        await message.ack()
    assert await other.receive("email", 1, 0.1) == []
    [before] = await other.stats(["email"])
    await queue.close()
    [after] = await other.stats(["email"])
    assert (before.consumers, after.consumers) == (2, 1)
    consumers = await raw.xinfo_consumers(names.stream_key("email"), names.REDIS_GROUP)
    assert queue.consumer.encode() not in {c["name"] for c in consumers}


# --- bounds and data loss -------------------------------------------------------------------


async def test_maxlen_bounds_the_stream(redis_url: str, raw: redis.asyncio.Redis) -> None:
    queue = RedisQueue(redis_settings(redis_url, redis_stream_maxlen=1000), CHANNEL_NAMES)
    try:
        for start in range(0, 5000, 500):
            await queue.publish("email", [encode_message(i) for i in range(start, start + 500)])
        # Approximate trimming drops whole nodes (stream-node-max-entries, 100 by default).
        assert 1000 <= await raw.xlen(names.stream_key("email")) < 1200
    finally:
        await queue.close()


async def test_lost_data_recreates_the_group_and_work_goes_on(
    queue: RedisQueue, raw: redis.asyncio.Redis
) -> None:
    await queue.publish("email", [encode_message(1)])
    await raw.flushdb()  # a restart without AOF: message 1 is gone (the relay republishes it)
    assert await queue.receive("email", 10, 0.2) == []
    await queue.publish("email", [encode_message(2)])
    assert [decode_message(m.body) for m in await queue.receive("email", 10, 1.0)] == [2]
    groups = await raw.xinfo_groups(names.stream_key("email"))
    assert [g["name"] for g in groups] == [names.REDIS_GROUP.encode()]


async def test_entries_published_after_a_loss_but_before_any_read_are_kept(
    queue: RedisQueue, raw: redis.asyncio.Redis
) -> None:
    await raw.flushdb()
    await queue.publish("wecom", [encode_message(3)])  # XADD makes a stream without the group
    [stats] = await queue.stats(["wecom"])
    assert stats.depth == 1
    [message] = await queue.receive("wecom", 10, 1.0)
    assert decode_message(message.body) == 3


# --- connection faults --------------------------------------------------------------------


async def test_an_unreachable_server_is_queue_unavailable_promptly(closed_port: int) -> None:
    queue = RedisQueue(redis_settings(f"redis://127.0.0.1:{closed_port}/0"), CHANNEL_NAMES)
    try:
        started = time.monotonic()
        with pytest.raises(QueueUnavailable, match="redis: ConnectionError"):
            await queue.connect()
        with pytest.raises(QueueUnavailable):
            await queue.publish("email", [encode_message(1)])
        with pytest.raises(QueueUnavailable):
            await queue.receive("email", 10, 1.0)
        with pytest.raises(QueueUnavailable):
            await queue.stats(["email"])
        assert time.monotonic() - started < 2.0
    finally:
        await queue.close()


async def test_killed_connections_are_reopened(queue: RedisQueue, raw: redis.asyncio.Redis) -> None:
    await queue.publish("system", [encode_message(1)])
    mine = [c for c in await raw.client_list() if c["name"] == f"tocsin:{queue.consumer}"]
    assert mine
    for client in mine:
        await raw.client_kill_filter(_id=client["id"])
    await queue.publish("system", [encode_message(2)])
    got = await queue.receive("system", 10, 1.0)
    assert [decode_message(m.body) for m in got] == [1, 2]


class Proxy:
    """A TCP proxy to Redis that can be cut off and brought back on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server, self._writers = None, []

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(REDIS_HOST, REDIS_PORT)
        self._writers += [writer, up_writer]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(_pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        sink.transport.abort()


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[Proxy]:
    started = Proxy()
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
def through_proxy(redis_url: str, proxy: Proxy) -> Settings:
    return redis_settings(redis_url.replace(f":{REDIS_PORT}/", f":{proxy.port}/"))


async def test_a_server_that_goes_away_and_comes_back(
    through_proxy: Settings, proxy: Proxy, other: RedisQueue
) -> None:
    queue = RedisQueue(through_proxy, CHANNEL_NAMES)
    try:
        await queue.connect()
        await queue.publish("email", [encode_message(1)])
        [message] = await queue.receive("email", 1, 1.0)
        await proxy.stop()
        await message.ack()  # settling on a dead connection only logs
        started = time.monotonic()
        with pytest.raises(QueueUnavailable):
            await queue.publish("email", [encode_message(2)])
        with pytest.raises(QueueUnavailable):
            await queue.receive("email", 1, 1.0)
        assert time.monotonic() - started < 2.0
        await proxy.start()
        await queue.publish("email", [encode_message(3)])  # reconnects by itself
        [stats] = await queue.stats(["email"])
        assert (stats.depth, stats.in_flight) == (1, 1)  # the failed ack left 1 pending
    finally:
        await queue.close()
    await asyncio.sleep(CLAIM_IDLE + 0.2)
    got = await other.receive("email", 10, 1.0)
    assert sorted(decode_message(m.body) for m in got) == [1, 3]
