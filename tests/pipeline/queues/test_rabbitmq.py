"""The RabbitMQ queue passes the queue contract, and keeps messages through crashes and outages."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from channels.registry import CHANNEL_NAMES
from pipeline.config import Settings
from pipeline.queues import names, open_queue
from pipeline.queues.base import QueueUnavailable, decode_message, encode_message
from pipeline.queues.rabbitmq import RECONNECT_INTERVAL, AmqpQueue
from pipeline.secret_url import SecretUrl
from tests.pipeline.queues.contract import QueueContract
from tests.support.proxy import FaultProxy
from tests.support.services import delete_topology

pytestmark = pytest.mark.rabbitmq

CHANNELS = ("system", "email", "wecom")
# Every test declares the queues with this limit: RabbitMQ refuses a re-declare that differs.
DELIVERY_LIMIT = 2
BROKER_TIMEOUT = 3.0


def amqp_settings(url: str) -> Settings:
    """Settings for the test broker: a small delivery limit and a short broker timeout."""
    return Settings(
        _env_file=None,
        queue_url=url,
        queue_delivery_limit=DELIVERY_LIMIT,
        broker_timeout=timedelta(seconds=BROKER_TIMEOUT),
        metrics_port=-1,
    )


async def depth(url: str, queue: str) -> int:
    """Returns a queue's ready-message count, read over a connection of its own."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await connection.close()


async def eventually_depth(url: str, queue: str, expected: int, within: float = 5.0) -> int:
    """Polls a queue's depth until it equals expected or time runs out; returns the last."""
    deadline = time.monotonic() + within
    found = await depth(url, queue)
    while found != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        found = await depth(url, queue)
    return found


async def dead_letters(url: str) -> list[AbstractIncomingMessage]:
    """Takes (and acks) every message in the dead-letter queue."""
    connection = await aio_pika.connect(url)
    got: list[AbstractIncomingMessage] = []
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(names.DEAD_LETTER_QUEUE, passive=True)
        while (message := await queue.get(fail=False)) is not None:
            await message.ack()
            got.append(message)
    finally:
        await connection.close()
    return got


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    """Runs rabbitmqctl and returns its output, or skips when it is not installed."""
    executable = shutil.which("rabbitmqctl")
    if executable is None:
        pytest.skip("rabbitmqctl is not installed")
    result = subprocess.run(
        [executable, "-q", *args], capture_output=True, text=True, timeout=timeout, check=True
    )
    return result.stdout


def list_queues(vhost: str, *columns: str) -> dict[str, dict[str, Any]]:
    """Returns rabbitmqctl's view of the vhost's queues, by name."""
    out = rabbitmqctl("list_queues", "-p", vhost, "name", *columns, "--formatter", "json")
    return {row["name"]: row for row in json.loads(out)}


def dead_letter_binding(vhost: str) -> bool:
    """True when the dead-letter exchange is bound to the dead-letter queue."""
    out = rabbitmqctl("list_bindings", "-p", vhost, "source_name", "destination_name")
    return f"{names.DEAD_LETTER_EXCHANGE}\t{names.DEAD_LETTER_QUEUE}" in out


@pytest.fixture
async def settings(amqp_url: str) -> Settings:
    """Settings on the session's vhost, whose Tocsin topology was just deleted."""
    await delete_topology(amqp_url)
    return amqp_settings(amqp_url)


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[AmqpQueue]:
    """A connected AmqpQueue over a fresh topology."""
    amqp = AmqpQueue(settings, CHANNELS)
    await amqp.connect()
    yield amqp
    await amqp.close()


class TestAmqpQueue(QueueContract):
    """Contract tests on amqp://."""


# --- topology ---------------------------------------------------------------------------------


async def test_open_queue_picks_amqp_for_an_amqp_url(settings: Settings) -> None:
    assert isinstance(open_queue(settings, CHANNEL_NAMES), AmqpQueue)


async def test_queues_are_quorum_with_delivery_limit_and_at_least_once_dead_letters(
    queue: AmqpQueue, amqp_vhost: str
) -> None:
    queues = list_queues(amqp_vhost, "type", "durable", "arguments")
    for channel in CHANNELS:
        row = queues[names.queue_name(channel)]
        arguments = {name: value for name, _type, value in row["arguments"]}
        assert (row["type"], row["durable"]) == ("quorum", True)
        assert arguments == {
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": names.DEAD_LETTER_EXCHANGE,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    dead = queues[names.DEAD_LETTER_QUEUE]
    assert (dead["type"], dead["durable"]) == ("quorum", True)


async def test_connect_twice_and_a_second_process_declare_the_same_topology(
    queue: AmqpQueue, settings: Settings
) -> None:
    await queue.connect()
    other = AmqpQueue(settings, CHANNELS)
    await other.connect()
    await other.close()


async def test_a_different_delivery_limit_is_refused_as_unavailable(
    queue: AmqpQueue, amqp_url: str
) -> None:
    changed = amqp_settings(amqp_url).model_copy(update={"queue_delivery_limit": 9})
    with pytest.raises(QueueUnavailable, match=r"PRECONDITION_FAILED|inequivalent"):
        await AmqpQueue(changed, CHANNELS).connect()


# --- publishing -------------------------------------------------------------------------------


async def test_publish_returns_once_the_broker_confirmed_every_message(
    queue: AmqpQueue, amqp_url: str
) -> None:
    await queue.publish("email", [encode_message(i) for i in range(1000)])
    # Read at once from a second connection: nothing is still on its way.
    assert await depth(amqp_url, names.queue_name("email")) == 1000


async def test_messages_are_json_and_persistent(queue: AmqpQueue, amqp_url: str) -> None:
    await queue.publish("system", [encode_message(5)])
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(names.queue_name("system"), passive=True)
        message = await declared.get(timeout=5)
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.content_type == "application/json"
        assert decode_message(message.body) == 5
        await message.ack()
    finally:
        await connection.close()


async def test_publish_to_a_queue_that_is_gone_raises_unavailable(
    queue: AmqpQueue, amqp_url: str
) -> None:
    await delete_topology(amqp_url)
    with pytest.raises(QueueUnavailable):
        await queue.publish("email", [encode_message(1)])


async def test_a_queue_that_could_not_connect_connects_once_the_broker_is_back(
    settings: Settings, amqp_url: str
) -> None:
    # A process started during an outage: its first connect fails, later calls connect.
    async with FaultProxy.to(amqp_url) as proxy:
        proxy.refuse()
        queue = AmqpQueue(
            settings.model_copy(update={"queue_url": SecretUrl(proxy.route(amqp_url))}), CHANNELS
        )
        try:
            with pytest.raises(QueueUnavailable):
                await queue.connect()
            with pytest.raises(QueueUnavailable):
                await queue.publish("email", [encode_message(1)])
            with pytest.raises(QueueUnavailable):
                await queue.subscribe("email", 1)
            proxy.pass_through()
            await asyncio.sleep(RECONNECT_INTERVAL)  # failures within it are not tried again
            await queue.publish("email", [encode_message(7)])
            await queue.subscribe("email", 1)
            [message] = await queue.receive("email", 1, 5.0)
            await message.ack()
            [stats] = await queue.stats(["email"])
        finally:
            await queue.close()
    assert decode_message(message.body) == 7
    assert (stats.depth, stats.in_flight) == (0, 0)


# --- consuming, settling, dead letters --------------------------------------------------------


async def test_unacked_messages_come_back_when_the_consumer_connection_closes(
    queue: AmqpQueue, settings: Settings
) -> None:
    await queue.publish("system", [encode_message(i) for i in range(5)])
    await queue.subscribe("system", 5)
    first = await queue.receive("system", 2, 2.0)
    assert len(first) == 2
    await queue.close()  # two handed out and never settled, the rest still buffered
    other = AmqpQueue(settings, CHANNELS)
    await other.connect()
    try:
        again = await other.receive("system", 10, 2.0)
        assert sorted(decode_message(m.body) for m in again) == [0, 1, 2, 3, 4]
    finally:
        await other.close()


async def test_a_message_requeued_past_the_delivery_limit_lands_in_the_dead_letters(
    queue: AmqpQueue, amqp_url: str
) -> None:
    await queue.publish("email", [encode_message(42)])
    deliveries = 0
    while got := await queue.receive("email", 1, 1.0):
        deliveries += 1
        await got[0].requeue()
        assert deliveries <= DELIVERY_LIMIT + 1
    assert deliveries == DELIVERY_LIMIT + 1
    assert await eventually_depth(amqp_url, names.DEAD_LETTER_QUEUE, 1) == 1
    [dead] = await dead_letters(amqp_url)
    assert decode_message(dead.body) == 42
    assert (dead.headers or {}).get("x-first-death-reason") == "delivery_limit"


async def test_reject_dead_letters_the_message_with_its_queue(
    queue: AmqpQueue, amqp_url: str
) -> None:
    await queue.publish("wecom", [b"not json"])
    [message] = await queue.receive("wecom", 1, 2.0)
    await message.reject()
    assert await eventually_depth(amqp_url, names.DEAD_LETTER_QUEUE, 1) == 1
    [stats] = await queue.stats(["wecom"])
    assert (stats.dead_letters, stats.in_flight, stats.depth) == (1, 0, 0)
    [dead] = await dead_letters(amqp_url)
    headers = dead.headers or {}
    assert dead.body == b"not json"
    assert headers.get("x-first-death-reason") == "rejected"
    assert headers.get("x-first-death-queue") == names.queue_name("wecom")


async def test_settling_twice_is_harmless(queue: AmqpQueue) -> None:
    await queue.publish("system", [encode_message(1)])
    [message] = await queue.receive("system", 1, 2.0)
    await message.ack()
    await message.ack()
    await message.requeue()
    [stats] = await queue.stats(["system"])
    assert stats.in_flight == 0


async def test_stats_count_depth_consumers_and_this_process_in_flight(queue: AmqpQueue) -> None:
    await queue.publish("email", [encode_message(i) for i in range(3)])
    await queue.publish("system", [encode_message(9)])
    got = await queue.receive("email", 2, 2.0)
    email, system = await queue.stats(["email", "system"])
    # Prefetch 2: the third message waits on the broker, not in this process.
    assert (email.depth, email.in_flight, email.consumers) == (1, 2, 1)
    assert (system.depth, system.in_flight, system.consumers) == (1, 0, 0)
    for message in got:
        await message.ack()


async def test_subscribe_is_idempotent_and_sets_the_prefetch(
    queue: AmqpQueue, amqp_url: str
) -> None:
    await queue.publish("system", [encode_message(i) for i in range(10)])
    await queue.subscribe("system", 3)
    await queue.subscribe("system", 8)
    # Ready messages only: the broker hands this consumer 3 and keeps 7 back.
    assert await eventually_depth(amqp_url, names.queue_name("system"), 7) == 7
    [stats] = await queue.stats(["system"])
    assert (stats.consumers, stats.in_flight) == (1, 0)


async def test_close_requeues_buffered_messages(queue: AmqpQueue, amqp_url: str) -> None:
    await queue.publish("email", [encode_message(i) for i in range(4)])
    await queue.subscribe("email", 4)
    await asyncio.sleep(0.3)
    await queue.close()
    assert await eventually_depth(amqp_url, names.queue_name("email"), 4) == 4


# --- broker down ------------------------------------------------------------------------------


async def test_connect_to_a_closed_port_raises_unavailable_at_once() -> None:
    settings = amqp_settings("amqp://guest:guest@127.0.0.1:1/")
    started = time.monotonic()
    with pytest.raises(QueueUnavailable):
        await AmqpQueue(settings, CHANNELS).connect()
    assert time.monotonic() - started < BROKER_TIMEOUT


async def test_connect_to_a_silent_broker_gives_up_after_the_broker_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = amqp_settings(f"amqp://guest:guest@127.0.0.1:{port}/")
    queue = AmqpQueue(settings, CHANNELS)
    started = time.monotonic()
    try:
        # Callers queued behind a failing connect fail with it, not one BROKER_TIMEOUT each.
        failed = await asyncio.gather(
            queue.connect(),
            queue.publish("email", [b"{}"]),
            queue.subscribe("email", 1),
            return_exceptions=True,
        )
    finally:
        server.close()
    assert [type(f) for f in failed] == [QueueUnavailable] * 3
    assert BROKER_TIMEOUT - 0.5 < time.monotonic() - started < BROKER_TIMEOUT + 2


async def test_a_reconnect_declares_the_topology_again(
    queue: AmqpQueue, amqp_url: str, amqp_vhost: str
) -> None:
    if amqp_vhost == "/":
        pytest.skip("would close every connection of the shared default vhost")
    await queue.subscribe("wecom", 1)
    await delete_topology(amqp_url)
    await asyncio.to_thread(rabbitmqctl, "close_all_connections", "-p", amqp_vhost, "test")
    await wait_until_published(queue, "wecom", b"not json", within=30)
    # The publisher's channel may come back before the one that owns the dead-letter topology.
    deadline = time.monotonic() + 30
    while not await asyncio.to_thread(dead_letter_binding, amqp_vhost):
        assert time.monotonic() < deadline, "the dead-letter binding did not come back"
        await asyncio.sleep(0.2)
    [message] = await queue.receive("wecom", 1, 5.0)
    await message.reject()
    assert await eventually_depth(amqp_url, names.DEAD_LETTER_QUEUE, 1) == 1


@pytest.fixture
def broker_restart(amqp_vhost: str) -> Iterator[None]:
    """Lets a test stop the RabbitMQ app; always starts it again afterwards."""
    rabbitmqctl("status")
    try:
        yield
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")


async def wait_until_published(queue: AmqpQueue, channel: str, body: bytes, within: float) -> None:
    """Publishes body, retrying QueueUnavailable until within seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        try:
            await queue.publish(channel, [body])
            return
        except QueueUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


async def stop_broker() -> None:
    """Stops the RabbitMQ app (off the event loop, so the client notices the drop)."""
    await asyncio.to_thread(rabbitmqctl, "stop_app")


async def start_broker() -> None:
    """Starts the RabbitMQ app and waits until it serves again."""
    await asyncio.to_thread(rabbitmqctl, "start_app")
    await asyncio.to_thread(rabbitmqctl, "await_startup")


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.serial  # stops the RabbitMQ every other test shares
async def test_the_same_queue_object_recovers_after_the_broker_restarts(
    broker_restart: None, queue: AmqpQueue
) -> None:
    await queue.publish("system", [encode_message(1)])
    [held] = await queue.receive("system", 1, 2.0)

    await stop_broker()
    started = time.monotonic()
    with pytest.raises(QueueUnavailable):
        await queue.publish("system", [encode_message(2)])
    assert time.monotonic() - started < BROKER_TIMEOUT + 1
    assert await queue.receive("system", 10, 0.2) == []
    with pytest.raises(QueueUnavailable):
        await queue.stats(["system"])
    await held.ack()  # its channel is gone: logged, not raised

    await start_broker()
    await wait_until_published(queue, "system", encode_message(3), within=60)
    deadline = time.monotonic() + 30
    seen: set[int] = set()
    while seen != {1, 3} and time.monotonic() < deadline:
        for message in await queue.receive("system", 10, 1.0):
            seen.add(decode_message(message.body))
            await message.ack()
    # Message 1 was never acked on a live channel, so the broker delivers it again.
    assert seen == {1, 3}
    [stats] = await queue.stats(["system"])
    assert (stats.depth, stats.in_flight, stats.consumers) == (0, 0, 1)
