"""The queue contract every backend passes; subclass QueueContract with a `queue` fixture."""

from __future__ import annotations

from pipeline.queues.base import Queue, decode_message, encode_message


class QueueContract:
    """Behaviour every Queue implementation must show."""

    async def test_publish_then_receive_in_order(self, queue: Queue) -> None:
        await queue.publish("email", [encode_message(i) for i in range(5)])
        got = await queue.receive("email", 10, 2.0)
        assert [decode_message(m.body) for m in got] == [0, 1, 2, 3, 4]
        for message in got:
            await message.ack()

    async def test_channels_are_separate_queues(self, queue: Queue) -> None:
        await queue.publish("email", [encode_message(1)])
        await queue.publish("wecom", [encode_message(2)])
        assert [decode_message(m.body) for m in await queue.receive("wecom", 10, 2.0)] == [2]
        assert [decode_message(m.body) for m in await queue.receive("email", 10, 2.0)] == [1]

    async def test_receive_on_an_empty_queue_returns_nothing_in_time(self, queue: Queue) -> None:
        assert await queue.receive("system", 10, 0.1) == []

    async def test_receive_takes_at_most_max_messages(self, queue: Queue) -> None:
        await queue.publish("system", [encode_message(i) for i in range(7)])
        first = await queue.receive("system", 3, 2.0)
        assert len(first) == 3

    async def test_requeued_messages_come_back(self, queue: Queue) -> None:
        await queue.publish("system", [encode_message(7)])
        [message] = await queue.receive("system", 1, 2.0)
        await message.requeue()
        again = await queue.receive("system", 1, 2.0)
        assert [decode_message(m.body) for m in again] == [7]

    async def test_acked_messages_are_gone_and_stats_count(self, queue: Queue) -> None:
        await queue.publish("system", [encode_message(1), encode_message(2)])
        got = await queue.receive("system", 1, 2.0)
        [stats] = await queue.stats(["system"])
        assert (stats.channel, stats.in_flight) == ("system", 1)
        for message in got:
            await message.ack()
        rest = await queue.receive("system", 10, 2.0)
        assert [decode_message(m.body) for m in rest] == [2]

    async def test_rejected_messages_go_to_the_dead_letters(self, queue: Queue) -> None:
        await queue.publish("wecom", [b"not json"])
        [message] = await queue.receive("wecom", 1, 2.0)
        await message.reject()
        assert await queue.receive("wecom", 1, 0.2) == []
        [stats] = await queue.stats(["wecom"])
        assert stats.dead_letters == 1
