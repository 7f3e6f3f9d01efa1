"""Broker and database faults mid-run: restarts, cut and partitioned connections, lost data."""

from __future__ import annotations

import asyncio
import shutil

import pytest
import redis.asyncio

from tests.integration.faults.harness import (
    Cluster,
    Proc,
    run_command,
)
from tests.integration.faults.test_producers_and_poison import dead_letters
from tests.support.proxy import FaultProxy
from tests.support.redis_server import RedisServer
from tests.support.services import in_ci
from tests.support.waiting import eventually

# One fault test at a time, all on one pytest-xdist worker (scripts/test.sh): each runs a
# producer and several workers against the PostgreSQL that allows 100 connections.
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.xdist_group("faults")]


async def start(
    cluster: Cluster, workers: int = 2, concurrency: int = 8
) -> tuple[Proc, list[Proc]]:
    """Seeds 1,000 notifications, starts the workers and the producer, waits until they serve."""
    await cluster.seed(20, 25)
    producer, *started = await asyncio.gather(
        cluster.spawn_producer(),
        *(cluster.spawn_worker(f"worker-{i}", concurrency=concurrency) for i in range(workers)),
    )
    await cluster.wait_ready(producer, *started)
    return producer, started


async def finish(
    cluster: Cluster, producer: Proc, workers: list[Proc], label: str
) -> dict[str, float]:
    """Settles, stops everything gracefully (exit 0), prints and returns the producer metrics."""
    await cluster.settle(timeout=120)
    metrics = await producer.scrape()
    for proc in [*workers, producer]:
        assert await proc.terminate() == 0, proc.tail(40)
    verdict = await cluster.judge()
    print(
        f"\n[{cluster.broker}] {label}: {verdict}; relay published"
        f" {metrics['tocsin_relay_published_total']:.0f}, lease expired"
        f" {metrics['tocsin_relay_lease_expired_total']:.0f}, publish failures"
        f" {metrics['tocsin_relay_publish_failures_total']:.0f} in {cluster.elapsed():.1f}s"
    )
    assert verdict.ok, verdict
    assert verdict.sent == verdict.intended, verdict
    return metrics


async def broker_dead_letters(cluster: Cluster) -> int:
    """Messages in the broker's dead letters (all channels)."""
    if cluster.broker == "amqp":  # one dead-letter queue shared by every channel
        return await dead_letters(cluster, "email")
    return sum([await dead_letters(cluster, c) for c in ("system", "email")])


def recovered(workers: list[Proc], before: dict[str, int]) -> None:
    """Asserts every worker recorded deliveries again after the fault."""
    stuck = [w.name for w in workers if w.count("delivery") <= before[w.name]]
    assert not stuck, f"no delivery after the fault by {stuck}"


def deliveries(workers: list[Proc]) -> dict[str, int]:
    """Deliveries each worker recorded so far."""
    return {w.name: w.count("delivery") for w in workers}


# --- RabbitMQ ----------------------------------------------------------------------------


async def rabbitmqctl(*args: str) -> None:
    code, out = await run_command("rabbitmqctl", "-q", *args, timeout=90)
    assert code == 0, f"rabbitmqctl {' '.join(args)}: {out}"


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
@pytest.mark.timeout(200)
@pytest.mark.serial  # stops the RabbitMQ every other test shares
async def test_rabbitmq_restart_mid_run(cluster: Cluster) -> None:
    if shutil.which("rabbitmqctl") is None:
        message = "rabbitmqctl is not installed"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    producer, workers = await start(cluster)
    await cluster.wait_sent(200)
    before = deliveries(workers)
    try:
        await rabbitmqctl("stop_app")
        await asyncio.sleep(2)
    finally:
        await rabbitmqctl("start_app")
    await rabbitmqctl("await_startup")
    metrics = await finish(cluster, producer, workers, "rabbitmqctl stop_app/start_app")
    recovered(workers, before)
    verdict = await cluster.judge()
    assert verdict.duplicated == 0, verdict
    assert metrics["tocsin_relay_lease_expired_total"] == 0, "recovery waited for a lease"


# --- the connection through a fault proxy --------------------------------------------------


@pytest.mark.timeout(200)
async def test_broker_connection_cut_partitioned_and_delayed(cluster: Cluster) -> None:
    async with FaultProxy.to(cluster.broker_url) as proxy:
        cluster.through(proxy)
        # A Redis XREADGROUP reply lost with a cut connection leaves its entries pending for a
        # consumer that never saw them: XAUTOCLAIM takes them back after REDIS_CLAIM_IDLE.
        cluster.env_defaults.update(SEND_TIMEOUT="2s", REDIS_CLAIM_IDLE="4s")
        producer, workers = await start(cluster)

        await cluster.wait_sent(150)
        proxy.close_all()  # every connection reset at once
        before = deliveries(workers)

        await cluster.wait_sent(350)
        proxy.blackhole()  # a partition: nothing passes, connections look alive
        await asyncio.sleep(3)
        proxy.close_all()  # ... until they are given up, as heartbeats or TCP would
        proxy.pass_through()

        await cluster.wait_sent(550)
        proxy.cut_after(2000)  # every connection dies after 2 kB, mid-frame, reconnects too
        await asyncio.sleep(2)
        proxy.pass_through()

        await cluster.wait_sent(750)
        proxy.delay(0.3)  # a slow network
        await asyncio.sleep(2)
        proxy.pass_through()

        metrics = await finish(cluster, producer, workers, "cut, blackhole, cut-after, delay")
        reclaimed = sum(w.count("redis_messages_reclaimed") for w in workers)
        print(
            f"proxy: {proxy.accepted} connections accepted, {proxy.cuts} cut mid-stream;"
            f" redis_messages_reclaimed events: {reclaimed}"
        )
    recovered(workers, before)
    assert metrics["tocsin_relay_published_total"] >= 1000


@pytest.mark.timeout(60)
async def test_processes_started_while_the_broker_is_down_wait_for_it(cluster: Cluster) -> None:
    async with FaultProxy.to(cluster.broker_url) as proxy:
        cluster.through(proxy)
        proxy.refuse()  # the broker is down when the processes start
        await cluster.seed(5, 10)
        procs = await asyncio.gather(cluster.spawn_producer(), cluster.spawn_worker())
        await asyncio.sleep(4)
        alive = {p.name: p.running for p in procs}
        proxy.pass_through()
        if all(alive.values()):
            await cluster.settle(timeout=30)
        print(f"\n[{cluster.broker}] started during a broker outage: still running {alive}")
        assert all(alive.values()), await cluster.report()
        verdict = await cluster.judge()
        assert verdict.ok, verdict


# --- Redis -------------------------------------------------------------------------------


async def kill_redis_clients(cluster: Cluster, within: float = 10.0) -> int:
    """CLIENT KILL every connection of this cluster's processes, once they have any again.

    Right after an earlier kill the processes may not have reconnected yet: nothing to kill.
    """
    killed: int = await eventually(
        lambda: _kill_named_clients(cluster), timeout=within, interval=0.05
    )
    return killed


async def _kill_named_clients(cluster: Cluster) -> int:
    """CLIENT KILL every connection of this cluster's processes (by their client names)."""
    client = redis.asyncio.Redis.from_url(cluster.broker_url)
    pids = {f":{p.pid}:" for p in cluster.procs if p.running}
    try:
        killed = 0
        for entry in await client.client_list(_type="normal"):
            name = entry.get("name", "")
            if name.startswith("tocsin:") and any(pid in name for pid in pids):
                killed += await client.execute_command(  # type: ignore[no-untyped-call]
                    "CLIENT", "KILL", "TYPE", "normal", "ID", entry["id"]
                )
        return killed
    finally:
        await client.aclose()


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
@pytest.mark.timeout(150)
async def test_redis_connections_killed_then_redis_restarted_without_its_data(
    cluster: Cluster, private_redis: RedisServer
) -> None:
    # On a redis-server of the test's own (the shared one must stay up): CLIENT KILL of every
    # connection of the cluster, then SIGKILL and a restart without persistence, which loses
    # every stream, group and pending entry. The relay re-publishes the QUEUED rows whose
    # messages were lost once their QUEUE_LEASE expires.
    cluster.queue_url = cluster.broker_url = private_redis.url
    cluster.env_defaults.update(QUEUE_LEASE="5s")
    producer, workers = await start(cluster)
    await cluster.wait_sent(150)
    killed = await kill_redis_clients(cluster)
    await cluster.wait_sent(300)
    await private_redis.crash()
    await asyncio.sleep(1.0)  # down for a moment: publishes and reads fail meanwhile
    await private_redis.start()
    before = deliveries(workers)
    metrics = await finish(
        cluster,
        producer,
        workers,
        f"CLIENT KILL ({killed} connections), then SIGKILL and a restart without data",
    )
    recovered(workers, before)
    verdict = await cluster.judge()
    assert verdict.duplicated == 0, verdict
    assert metrics["tocsin_relay_lease_expired_total"] > 0, "the restart lost no message?"


# --- PostgreSQL ----------------------------------------------------------------------------


async def postgres_outage(
    cluster: Cluster, proxy: FaultProxy, seconds: float, *, terminate_first: bool = False
) -> tuple[Proc, list[Proc], int]:
    """Runs the cluster on PostgreSQL through proxy and takes the database away mid-run.

    With terminate_first, pg_terminate_backend first kills every connection of the cluster.
    Returns the producer, the workers and how many backends were terminated.
    """
    cluster.env_defaults.update(DATABASE_URL=proxy.route(cluster.database_url))
    producer, workers = await start(cluster)
    terminated = 0
    if terminate_first:
        await cluster.wait_sent(150)
        terminated = await cluster.terminate_backends()
    await cluster.wait_sent(350)
    proxy.refuse()  # PostgreSQL restarting: every connection reset, new ones refused
    await asyncio.sleep(seconds)
    proxy.pass_through()
    return producer, workers, terminated


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
@pytest.mark.timeout(150)
async def test_postgres_connections_terminated_then_down_mid_run(cluster: Cluster) -> None:
    # Rows whose claim or outcome could not be committed come back when their lease expires
    # (short leases here; see the test below for the default QUEUE_LEASE).
    concurrency = 8
    cluster.env_defaults.update(SEND_LEASE="5s", SEND_TIMEOUT="2.5s", QUEUE_LEASE="10s")
    async with FaultProxy.to(cluster.database_url) as proxy:
        producer, workers, terminated = await postgres_outage(
            cluster, proxy, 5.0, terminate_first=True
        )
        before = deliveries(workers)
        metrics = await finish(
            cluster, producer, workers, f"pg_terminate_backend ({terminated}), then down 5s"
        )
    recovered(workers, before)
    assert terminated > 0
    verdict = await cluster.judge()
    print(f"valid messages dead-lettered by the broker: {await broker_dead_letters(cluster)}")
    # Only sends whose outcome could not be committed may repeat: per fault, at most one
    # window (two batches, of `concurrency` here) per channel per worker.
    bound = 2 * len(workers) * 2 * concurrency
    for channel, duplicated in verdict.duplicated_by_channel.items():
        assert duplicated <= bound, f"{channel}: {duplicated} > {bound}: {verdict}"
    assert metrics["tocsin_relay_published_total"] >= verdict.intended


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
@pytest.mark.timeout(90)
async def test_postgres_outage_dead_letters_no_valid_message(cluster: Cluster) -> None:
    cluster.env_defaults.update(QUEUE_DELIVERY_LIMIT="3")
    async with FaultProxy.to(cluster.database_url) as proxy:
        await postgres_outage(cluster, proxy, 6.0)
        await asyncio.sleep(1)
        dead = await broker_dead_letters(cluster)
    print(f"\n[{cluster.broker}] PostgreSQL down for 6s: {dead} valid messages dead-lettered")
    assert dead == 0
