"""Redis Streams queues: a stream and one consumer group per channel, XAUTOCLAIM for dead consumers.

Invariant: an entry leaves its stream when it is settled (XACK and XDEL in one MULTI), so a
stream holds only undelivered and pending entries; MAXLEN only bounds a runaway backlog. A
group lost with the data (a restart without AOF, FLUSHDB) is recreated at id 0 on the next
NOGROUP, so entries published since the loss are still delivered; messages lost with it come
back from the relay when their rows' lease expires. Acks are fire-and-forget like AMQP's: the
acks of one batch leave together in one round trip, and a lost one only means a redelivery.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, ResponseError
from redis.typing import EncodableT

from pipeline.config import Settings
from pipeline.queues import names
from pipeline.queues.base import Queue, QueueStats, QueueUnavailable, ReceivedMessage
from pipeline.validation import InputError

T = TypeVar("T")

log = structlog.get_logger("tocsin.queue.redis")

BODY = b"m"
# Deliveries before a requeue re-added the entry: the delivery limit spans requeues.
DELIVERIES = b"n"
_GROUP = names.REDIS_GROUP
_START = b"0-0"
# Most seconds between two XAUTOCLAIM scans of one channel (less when REDIS_CLAIM_IDLE is short).
_CLAIM_CHECK_MAX = 5.0
# Everything redis-py and asyncio raise for a server that is gone, slow or refusing.
_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
# Forgets a gone consumer atomically, but only once it owns no pending entries: deleting it
# earlier would drop its entries from the group's PEL, and XAUTOCLAIM could never find them.
_FORGET = """
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if pending['err'] == nil then
  if #pending > 0 then return 0 end
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""


def check_claim_idle(settings: Settings) -> None:
    """Raises InputError (a ValueError) unless REDIS_CLAIM_IDLE is at least twice SEND_TIMEOUT."""
    claim, send = settings.redis_claim_idle, settings.send_timeout
    if claim < 2 * send:
        raise InputError(
            f"REDIS_CLAIM_IDLE ({claim.total_seconds():g}s) must be at least twice SEND_TIMEOUT"
            f" ({send.total_seconds():g}s): a message still being sent would be taken over by"
            " another worker and delivered twice"
        )


def consumer_name() -> str:
    """Returns a consumer name unique to this process: host:pid:random."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _group_lost(exc: ResponseError) -> bool:
    return str(exc).startswith("NOGROUP") or "no such key" in str(exc)


def _busy_group(reply: object) -> bool:
    return isinstance(reply, ResponseError) and str(reply).startswith("BUSYGROUP")


@dataclass(frozen=True)
class _Entry:
    """One stream entry as handed out: its id, body and deliveries so far (requeues included)."""

    id: bytes
    body: bytes
    deliveries: int


def _entry(entry_id: bytes, fields: dict[bytes, bytes], times_delivered: int) -> _Entry:
    before = fields.get(DELIVERIES, b"0")
    prior = int(before) if before.isdigit() else 0
    return _Entry(entry_id, fields.get(BODY, b""), prior + times_delivered)


class _RedisMessage(ReceivedMessage):
    """A pending stream entry; settling it never raises (an unsettled entry is reclaimed)."""

    def __init__(self, owner: RedisQueue, channel: str, entry: _Entry) -> None:
        self.body = entry.body
        self.deliveries = entry.deliveries
        self._owner = owner
        self._channel = channel
        self._entry = entry
        self._settled = False

    def _take(self) -> bool:
        settled, self._settled = self._settled, True
        return not settled

    async def ack(self) -> None:
        if self._take():
            self._owner._ack_soon(self._channel, self._entry.id)

    async def reject(self) -> None:
        if self._take():
            await self._owner._dead_letter(self._channel, [self._entry], "rejected")

    async def requeue(self) -> None:
        if self._take():
            readd = partial(self._owner._readd, self._channel, self._entry)
            await self._owner._settle("requeue", readd)


class RedisQueue(Queue):
    """Channel queues on Redis Streams with one consumer group; settled entries are deleted."""

    def __init__(self, settings: Settings, channels: Sequence[str]) -> None:
        # Their consumer groups are made at connect; any other channel's on first use.
        self._channel_names = tuple(channels)
        check_claim_idle(settings)
        self.consumer = consumer_name()
        self._timeout = settings.broker_timeout.total_seconds()
        # Below the socket timeout, so a blocking read never looks like a dead server.
        self._max_block = self._timeout / 2
        claim_idle = settings.redis_claim_idle.total_seconds()
        self._claim_idle_ms = int(claim_idle * 1000)
        self._claim_every = min(_CLAIM_CHECK_MAX, claim_idle / 4)
        # Live consumers poll at least every receive timeout; one silent this long is gone.
        self._gone_after = max(2 * claim_idle, self._timeout)
        self._limit = settings.queue_delivery_limit
        self._maxlen = settings.redis_stream_maxlen
        # Retries reconnect a pooled connection the server dropped (e.g. after a restart);
        # every call is still bounded by BROKER_TIMEOUT as a whole.
        self._redis = Redis.from_url(
            settings.queue_url.get_secret_value(),
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
            client_name=f"{names.PREFIX}:{self.consumer}",
        )
        self._forget = self._redis.register_script(_FORGET)
        self._ready: set[str] = set()
        self._next_claim: dict[str, float] = {}
        self._next_beat: dict[str, float] = {}
        self._cursor: dict[str, bytes] = {}
        self._acks: dict[str, list[bytes]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self._ready.clear()
        await self._call(partial(self._ensure_groups, self._channel_names))

    async def publish(self, channel: str, bodies: Sequence[bytes]) -> None:
        if bodies:
            await self._call(partial(self._add_all, names.stream_key(channel), bodies))

    async def receive(
        self, channel: str, max_messages: int, timeout: float
    ) -> list[ReceivedMessage]:
        block = min(max(timeout, 0.0), self._max_block)
        while True:
            entries = await self._call(
                partial(self._fetch, channel, max_messages, block), channel, extra=block
            )
            live = [e for e in entries if e.deliveries <= self._limit]
            if len(live) < len(entries):
                dead = [e for e in entries if e.deliveries > self._limit]
                await self._dead_letter(channel, dead, "delivery_limit")
            if live or not entries:
                return [_RedisMessage(self, channel, e) for e in live]
            block = 0.0  # all of them were dead letters: look again, without waiting

    async def stats(self, channels: Sequence[str]) -> list[QueueStats]:
        await self._acks_flushed()
        return await self._call(partial(self._stats, channels))

    async def close(self) -> None:
        await self._acks_flushed()
        await self._settle("close", self._forget_self)
        await self._redis.aclose()

    # --- calls -------------------------------------------------------------------------

    async def _call(
        self, op: Callable[[], Awaitable[T]], channel: str | None = None, extra: float = 0.0
    ) -> T:
        """Runs op within BROKER_TIMEOUT, once more if the channel's group was lost."""
        try:
            try:
                return await self._bounded(op, extra)
            except ResponseError as exc:
                if channel is None or not _group_lost(exc):
                    raise
                log.warning("redis_group_lost", channel=channel)
                self._ready.discard(channel)
                return await self._bounded(op, extra)
        except _ERRORS as exc:
            raise QueueUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def _bounded(self, op: Callable[[], Awaitable[T]], extra: float = 0.0) -> T:
        async with asyncio.timeout(self._timeout + extra):
            return await op()

    async def _ensure_groups(self, channels: Iterable[str]) -> None:
        missing = [c for c in dict.fromkeys(channels) if c not in self._ready]
        if not missing:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel in missing:
                # Id 0, not $: entries published after a data loss, before this, still count.
                pipe.xgroup_create(names.stream_key(channel), _GROUP, id="0", mkstream=True)
            replies = await pipe.execute(raise_on_error=False)
        for channel, reply in zip(missing, replies, strict=True):
            if isinstance(reply, Exception) and not _busy_group(reply):
                raise reply
            self._ready.add(channel)

    async def _add_all(self, key: str, bodies: Sequence[bytes]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for body in bodies:
                pipe.xadd(key, {BODY: body}, maxlen=self._maxlen, approximate=True)
            await pipe.execute()

    # --- receiving -----------------------------------------------------------------------

    async def _fetch(self, channel: str, most: int, block: float) -> list[_Entry]:
        await self._ensure_groups([channel])
        await self._heartbeat(channel)
        entries = await self._reclaim(channel, most)
        if len(entries) < most:
            entries += await self._read_new(channel, most - len(entries), 0 if entries else block)
        return entries

    async def _read_new(self, channel: str, most: int, block: float) -> list[_Entry]:
        # BLOCK 0 waits forever: a zero timeout is a read that does not block at all.
        block_ms = max(1, round(block * 1000)) if block > 0 else None
        reply: Any = await self._redis.xreadgroup(
            _GROUP, self.consumer, {names.stream_key(channel): ">"}, count=most, block=block_ms
        )
        return [_entry(i, fields, 1) for i, fields in reply[0][1]] if reply else []

    async def _reclaim(self, channel: str, most: int) -> list[_Entry]:
        """Takes over entries pending longer than REDIS_CLAIM_IDLE, at most every few seconds."""
        now = asyncio.get_running_loop().time()
        if now < self._next_claim.get(channel, 0.0):
            return []
        key = names.stream_key(channel)
        cursor, claimed, *_ = await self._redis.xautoclaim(
            key, _GROUP, self.consumer, self._claim_idle_ms, self._cursor.get(channel, _START), most
        )
        self._cursor[channel] = cursor
        # A cursor other than 0-0 means more to scan: look again on the next receive.
        self._next_claim[channel] = now if cursor != _START else now + self._claim_every
        found = [(i, fields) for i, fields in claimed if i is not None and fields is not None]
        if not found:
            return []
        times = await self._times_delivered(key, [i for i, _ in found])
        log.warning("redis_messages_reclaimed", channel=channel, count=len(found))
        return [_entry(i, fields, times.get(i, 1)) for i, fields in found]

    async def _times_delivered(self, key: str, ids: Sequence[bytes]) -> dict[bytes, int]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xpending_range(key, _GROUP, entry_id, entry_id, 1)
            replies = await pipe.execute()
        return {row["message_id"]: int(row["times_delivered"]) for rows in replies for row in rows}

    async def _heartbeat(self, channel: str) -> None:
        """Marks this consumer live every few seconds and forgets the ones that went silent."""
        now = asyncio.get_running_loop().time()
        if now < self._next_beat.get(channel, 0.0):
            return
        self._next_beat[channel] = now + self._claim_every
        key, wall = names.consumers_key(channel), time.time()
        # Scored by the wall clock: hosts may disagree by far less than REDIS_CLAIM_IDLE.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {self.consumer: wall})
            pipe.zrangebyscore(key, "-inf", wall - self._gone_after)
            _, gone = await pipe.execute()
        for name in gone:
            if await self._forget_consumer(channel, name):
                log.info("redis_consumer_forgotten", channel=channel)

    async def _forget_self(self) -> None:
        for channel in self._next_beat:
            await self._forget_consumer(channel, self.consumer)

    async def _forget_consumer(self, channel: str, name: str | bytes) -> bool:
        keys = [names.stream_key(channel), names.consumers_key(channel)]
        return bool(await self._forget(keys=keys, args=[_GROUP, name]))

    # --- settling ------------------------------------------------------------------------

    def _ack_soon(self, channel: str, entry_id: bytes) -> None:
        """Queues an ack; the acks of one batch go out together in one round trip."""
        self._acks.setdefault(channel, []).append(entry_id)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_acks())

    async def _flush_acks(self) -> None:
        await asyncio.sleep(0)  # lets the caller ack the rest of its batch first
        while self._acks:
            batch, self._acks = self._acks, {}
            await self._settle("ack", partial(self._ack_now, batch))

    async def _acks_flushed(self) -> None:
        if self._flusher is not None:
            await self._flusher

    async def _ack_now(self, batch: dict[str, list[bytes]]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            for channel, ids in batch.items():
                key = names.stream_key(channel)
                pipe.xack(key, _GROUP, *ids)
                pipe.xdel(key, *ids)
            await pipe.execute()

    async def _readd(self, channel: str, entry: _Entry) -> None:
        key = names.stream_key(channel)
        fields: dict[EncodableT, EncodableT] = {BODY: entry.body, DELIVERIES: entry.deliveries}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, fields, maxlen=self._maxlen, approximate=True)
            pipe.xack(key, _GROUP, entry.id)
            pipe.xdel(key, entry.id)
            await pipe.execute()

    async def _dead_letter(self, channel: str, entries: Sequence[_Entry], reason: str) -> None:
        log.warning("redis_dead_lettered", channel=channel, reason=reason, count=len(entries))
        await self._settle(reason, partial(self._move_dead, channel, entries, reason))

    async def _move_dead(self, channel: str, entries: Sequence[_Entry], reason: str) -> None:
        key, ids = names.stream_key(channel), [e.id for e in entries]
        async with self._redis.pipeline(transaction=True) as pipe:
            for e in entries:
                fields: dict[EncodableT, EncodableT] = {
                    BODY: e.body,
                    b"channel": channel,
                    b"reason": reason,
                    b"id": e.id,
                    DELIVERIES: e.deliveries,
                }
                pipe.xadd(
                    names.dead_stream_key(channel), fields, maxlen=self._maxlen, approximate=True
                )
            pipe.xack(key, _GROUP, *ids)
            pipe.xdel(key, *ids)
            await pipe.execute()

    async def _settle(self, action: str, op: Callable[[], Awaitable[None]]) -> None:
        try:
            await self._bounded(op)
        except _ERRORS as exc:
            # Still pending: XAUTOCLAIM hands it out again after REDIS_CLAIM_IDLE.
            log.warning("queue_settle_failed", action=action, error=f"{type(exc).__name__}: {exc}")

    # --- stats ---------------------------------------------------------------------------

    async def _stats(self, channels: Sequence[str]) -> list[QueueStats]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel in channels:
                key = names.stream_key(channel)
                pipe.xgroup_create(key, _GROUP, id="0", mkstream=True)  # a lost group comes back
                pipe.xinfo_groups(key)
                pipe.zcount(names.consumers_key(channel), time.time() - self._gone_after, "+inf")
                pipe.xlen(key)
                pipe.xlen(names.dead_stream_key(channel))
            replies = await pipe.execute(raise_on_error=False)
        return [self._channel_stats(c, replies[5 * i : 5 * i + 5]) for i, c in enumerate(channels)]

    def _channel_stats(self, channel: str, replies: list[Any]) -> QueueStats:
        created, groups, consumers, length, dead = replies
        if isinstance(created, Exception) and not _busy_group(created):
            raise created
        for reply in (groups, consumers, length, dead):
            if isinstance(reply, Exception):
                raise reply
        self._ready.add(channel)
        group = next(g for g in groups if g["name"] == _GROUP.encode())
        pending = int(group["pending"])
        # lag is None when deletions make Redis unsure; settled entries being deleted, the
        # stream then holds exactly the undelivered entries plus the pending ones.
        lag = group.get("lag")
        depth = int(lag) if lag is not None else max(0, int(length) - pending)
        return QueueStats(channel, depth, pending, int(consumers), int(dead))
