"""A Tocsin cluster of real processes for fault tests, and a Jepsen-style judge of each run.

A `Cluster` owns a fresh, migrated PostgreSQL database, a broker URL (amqp:// or redis://), a
counting SMTP sink in the test's event loop, and every `tocsin producer` / `tocsin worker`
process it spawned (all killed on exit, whatever happened). `judge()` compares what was intended
(every (alert, recipient, channel) seeded on the delivered channels) with what the SMTP sink and
the inbox actually received and with the rows' final states, like RabbitMQ's Jepsen checker:

- lost: intended but never received (no row, or a SENT row without its message / inbox row);
- unexpected: received but not intended (unknown id, foreign message, row not SENT);
- duplicated: received more than once (e-mail: per Message-ID at the sink; system, whose inbox
  is idempotent: `delivery_attempts` rows with outcome `sent` beyond the first);
- not terminal: intended rows not SENT, DEAD or SUPPRESSED once the run settled.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel import col

from pipeline.models import (
    Alert,
    AlertRecipient,
    DeliveryAttempt,
    InboxMessage,
    Notification,
    NotificationSettings,
    Recipient,
    RecipientContact,
    State,
)
from pipeline.queues import names
from tests.integration.cli import Server, base_env, tocsin
from tests.integration.faults.sink import CountingSink
from tests.support.proxy import FaultProxy

DELIVERED = ("system", "email")
TERMINAL = frozenset({State.SENT.value, State.DEAD.value, State.SUPPRESSED.value})
EMAIL_FROM = "Tocsin Faults <alerts@tocsin.test>"
# The judge's own connections, which pg_terminate_backend must spare.
JUDGE_APP = "tocsin-fault-judge"

# Every process of a fault run: fast relay, JSON logs, no jitter, small pools (PostgreSQL
# allows 100 connections and several processes share it), a short broker timeout.
DEFAULT_ENV = {
    "RELAY_INTERVAL": "0.2s",
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "INFO",
    "RETRY_JITTER": "0",
    "RETRY_SCHEDULE": "1s,1s,2s",
    "DB_POOL_SIZE": "4",
    "BROKER_TIMEOUT": "3s",
    "SEND_TIMEOUT": "5s",
    "REDIS_CLAIM_IDLE": "10s",
    "SHUTDOWN_GRACE": "20s",
    "OBSERVE_INTERVAL": "5s",
    "EMAIL_POOL_SIZE": "4",
}


@dataclass
class Verdict:
    """What a run came to, Jepsen-style; `ok` when nothing was lost, unexpected or stuck."""

    intended: int
    lost: int
    unexpected: int
    duplicated: int
    not_terminal: int
    sent: int
    dead: int
    suppressed: int
    duplicated_by_channel: dict[str, int] = field(default_factory=dict)
    states: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing unexpected, everything terminal."""
        return self.lost == 0 and self.unexpected == 0 and self.not_terminal == 0

    def __str__(self) -> str:
        shown = {k: v[:10] for k, v in self.examples.items() if v}
        return (
            f"intended={self.intended} lost={self.lost} unexpected={self.unexpected} "
            f"duplicated={self.duplicated} {self.duplicated_by_channel} "
            f"not_terminal={self.not_terminal} sent={self.sent} dead={self.dead} "
            f"suppressed={self.suppressed} states={self.states}"
            + (f" examples={shown}" if shown else "")
        )


@dataclass
class Proc:
    """One `tocsin` process of the cluster, its stderr collected line by line."""

    name: str
    server: Server
    signals: list[str] = field(default_factory=list)
    # Set when the test ends the process on purpose; until then an exit is a failure.
    may_exit: bool = False

    @property
    def pid(self) -> int:
        """The process id."""
        return self.server.process.pid

    @property
    def running(self) -> bool:
        """True until the process exits."""
        return self.server.running

    @property
    def returncode(self) -> int | None:
        """The exit code once it exited."""
        return self.server.process.returncode

    def send(self, sig: signal.Signals) -> None:
        """Sends a signal (recorded for the report)."""
        self.signals.append(sig.name)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            self.may_exit = True
        self.server.process.send_signal(sig)

    async def kill(self) -> None:
        """SIGKILL and reap (SIGCONT first, in case it is stopped)."""
        if self.running:
            self.send(signal.SIGCONT)
            self.send(signal.SIGKILL)
        await self.server.kill()

    async def terminate(self, timeout: float = 40.0) -> int:
        """SIGTERM, then the exit code (fails if it overstays timeout)."""
        self.signals.append("SIGTERM")
        self.may_exit = True
        return await self.server.stop(timeout)

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines so far (only those of one event, when given)."""
        found = []
        for line in self.server.lines:
            if not line.startswith("{"):
                continue
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if event is None or data.get("event") == event:
                found.append(data)
        return found

    def count(self, event: str) -> int:
        """How many log lines of one event so far (cheap: no JSON parsing)."""
        needle = f'"event": "{event}"'
        return sum(needle in line for line in self.server.lines)

    def tail(self, lines: int = 30) -> str:
        """The last stderr lines, for failure messages."""
        return "\n".join(self.server.lines[-lines:])

    @property
    def metrics_url(self) -> str | None:
        """Where the process serves /metrics, once it logged it (it serves on a free port)."""
        for line in self.server.lines:
            if '"metrics_serving"' in line:
                return str(json.loads(line)["url"])
        return None

    @property
    def ready(self) -> bool:
        """True once serving /metrics (its queue connection is up by then); fails if it died."""
        assert self.running, f"{self.name} exited with {self.returncode}:\n{self.tail(40)}"
        return self.metrics_url is not None

    async def scrape(self) -> dict[str, float]:
        """Sums every sample of the process's /metrics by metric name (labels dropped)."""
        url = self.metrics_url
        assert url is not None, f"{self.name} serves no /metrics yet"
        async with httpx.AsyncClient(timeout=5) as client:
            body = (await client.get(urljoin(url, "/metrics"))).text
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals


class Cluster:
    """Fresh database + broker + SMTP sink + the processes spawned on them; judge the outcome."""

    def __init__(self, *, database_url: str, queue_url: str, tmp_path: Path, **env: str) -> None:
        self.database_url = database_url
        # What the processes connect to (a FaultProxy's address, when one is in between) ...
        self.queue_url = queue_url
        # ... and the broker itself.
        self.broker_url = queue_url
        self.broker = "redis" if queue_url.startswith("redis") else "amqp"
        self.tmp_path = tmp_path
        self.env_defaults: dict[str, str] = {**DEFAULT_ENV, **env}
        self.sink = CountingSink()
        self.procs: list[Proc] = []
        self.intended: set[tuple[int, int, str]] = set()
        self.channels: tuple[str, ...] = DELIVERED
        self.started = time.monotonic()
        self.engine: AsyncEngine = create_async_engine(
            database_url,
            poolclass=NullPool,
            connect_args={"server_settings": {"application_name": JUDGE_APP}},
        )

    async def __aenter__(self) -> Cluster:
        await self.sink.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            for proc in self.procs:
                await proc.kill()
            assert all(p.returncode is not None for p in self.procs), "a tocsin process survived"
        finally:
            await self.sink.stop()
            await self.engine.dispose()

    # --- processes -----------------------------------------------------------------------------

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment of a cluster process: database, broker, e-mail at the sink, tuning."""
        return base_env(
            self.tmp_path,
            **{
                "DATABASE_URL": self.database_url,
                "QUEUE_URL": self.queue_url,
                "EMAIL_ENABLED": "true",
                "EMAIL_SMTP_SERVER": self.sink.host,
                "EMAIL_SMTP_PORT": str(self.sink.port),
                "EMAIL_SECURITY": "none",
                "EMAIL_FROM": EMAIL_FROM,
                **self.env_defaults,
                **overrides,
            },
        )

    async def spawn(self, name: str, *args: str, **env: str) -> Proc:
        """Starts `tocsin *args` as a cluster process, serving /metrics on a free port."""
        extra = {"METRICS_PORT": "0", "METRICS_ADDR": "127.0.0.1", **env}
        server = await Server.start(*args, env=self.env(**extra), cwd=self.tmp_path)
        proc = Proc(name, server)
        self.procs.append(proc)
        return proc

    async def spawn_producer(self, name: str = "producer", **env: str) -> Proc:
        """Starts `tocsin producer` (producer pass at start-up, relay, observer, /metrics)."""
        return await self.spawn(name, "producer", **env)

    async def spawn_worker(
        self,
        name: str = "worker",
        *,
        channels: Sequence[str] = DELIVERED,
        concurrency: int = 8,
        **env: str,
    ) -> Proc:
        """Starts `tocsin worker` for the channels, in batches of the concurrency.

        The tests bound duplicates by what a worker holds when a fault lands: two batches per
        channel, here 2 x concurrency (unless env sets WORKER_BATCH_SIZE).
        """
        args = ["worker", "--concurrency", str(concurrency)]
        for channel in channels:
            args += ["--channel", channel]
        return await self.spawn(name, *args, **{"WORKER_BATCH_SIZE": str(concurrency), **env})

    async def produce(self) -> dict[str, Any]:
        """Runs one producer pass with the one-shot `tocsin produce`; returns its report."""
        result = await tocsin(
            "produce", "--json", env=self.env(METRICS_PORT="-1"), cwd=self.tmp_path
        )
        assert result.code == 0, str(result)
        report: dict[str, Any] = result.json()
        return report

    async def wait_ready(self, *procs: Proc, timeout: float = 30.0) -> None:
        """Waits until each process logged that it is serving (or fails with its stderr)."""
        for proc in procs:
            await self.wait_for(
                lambda p=proc: p.ready, timeout=timeout, what=f"{proc.name} to start"
            )

    # --- data ----------------------------------------------------------------------------------

    async def seed(
        self, n_users: int, n_alerts: int, channels: Iterable[str] = DELIVERED, tag: str = "a"
    ) -> list[int]:
        """Inserts users (reachable on the channels) and alerts addressed to all of them."""
        wanted = tuple(channels)
        self.channels = tuple(dict.fromkeys((*self.channels, *wanted)))
        now = datetime.now(UTC)
        async with self.engine.begin() as conn:
            users = [
                {
                    "username": f"{tag}-user{i:05d}",
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(n_users)
            ]
            inserted = await conn.execute(insert(Recipient).returning(col(Recipient.id)), users)
            recipient_ids = [rid for rid in inserted.scalars() if rid is not None]
            await conn.execute(
                insert(RecipientContact),
                [
                    {
                        "recipient_id": rid,
                        "kind": "email",
                        "address": f"{tag}.user{i:05d}@example.test",
                    }
                    for i, rid in enumerate(recipient_ids)
                ],
            )
            await conn.execute(
                insert(NotificationSettings),
                [
                    {
                        "recipient_id": rid,
                        "channels": ",".join(wanted),
                        "timezone": "UTC",
                        "updated_at": now,
                    }
                    for rid in recipient_ids
                ],
            )
            alerts = [
                {
                    "title": f"{tag} alert {i}: disk almost full",
                    "body": f"Volume /data on host-{i} is 93% full.",
                    "severity": "warning",
                    "created_at": now,
                }
                for i in range(n_alerts)
            ]
            inserted = await conn.execute(insert(Alert).returning(col(Alert.id)), alerts)
            alert_ids = [aid for aid in inserted.scalars() if aid is not None]
            await conn.execute(
                insert(AlertRecipient),
                [{"alert_id": a, "recipient_id": r} for a in alert_ids for r in recipient_ids],
            )
        self.intended |= {(a, r, c) for a in alert_ids for r in recipient_ids for c in wanted}
        return alert_ids

    async def states(self) -> dict[str, int]:
        """Rows of the delivered channels by state."""
        statement = (
            select(col(Notification.state), func.count())
            .where(col(Notification.channel).in_(self.channels))
            .group_by(col(Notification.state))
        )
        async with self.engine.connect() as conn:
            return {state: count for state, count in await conn.execute(statement)}

    async def count(self, state: str) -> int:
        """Rows of the delivered channels in one state."""
        return (await self.states()).get(state, 0)

    async def sql(self, statement: str, **params: Any) -> list[Any]:
        """Runs raw SQL on the test database and returns the rows."""
        async with self.engine.begin() as conn:
            result = await conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    async def terminate_backends(self) -> int:
        """pg_terminate_backend on every connection to the test database but the judge's."""
        rows = await self.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND application_name <> :judge",
            judge=JUDGE_APP,
        )
        return sum(1 for (done,) in rows if done)

    # --- waiting -------------------------------------------------------------------------------

    async def wait_for(
        self, check: Any, *, timeout: float, what: str, interval: float = 0.2
    ) -> Any:
        """Awaits check() (sync or async) until truthy; fails with the cluster's state if not."""
        deadline = time.monotonic() + timeout
        while True:
            died = [p for p in self.procs if not p.may_exit and not p.running]
            if died:
                raise AssertionError(
                    f"{', '.join(p.name for p in died)} exited unexpectedly while waiting for"
                    f" {what}\n{await self.report()}"
                )
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:g}s waiting for {what}\n{await self.report()}"
                )
            await asyncio.sleep(interval)

    async def wait_sent(self, at_least: int, timeout: float = 60.0) -> int:
        """Waits until at least this many rows are SENT."""
        return int(
            await self.wait_for(
                lambda: self._sent_at_least(at_least),
                timeout=timeout,
                what=f"{at_least} rows SENT",
            )
        )

    async def _sent_at_least(self, at_least: int) -> int:
        sent = await self.count(State.SENT.value)
        return sent if sent >= at_least else 0

    async def settle(self, timeout: float = 120.0) -> dict[str, int]:
        """Waits until every intended row exists and is terminal; fails with a state histogram."""

        async def settled() -> dict[str, int] | None:
            states = await self.states()
            done = sum(n for s, n in states.items() if s in TERMINAL)
            return states if done >= len(self.intended) and done == sum(states.values()) else None

        result: dict[str, int] = await self.wait_for(
            settled, timeout=timeout, what="every row terminal", interval=0.3
        )
        return result

    # --- judging -------------------------------------------------------------------------------

    async def judge(self) -> Verdict:
        """Compares intended notifications with what the sink and the inbox received."""
        async with self.engine.connect() as conn:
            rows = list(
                await conn.execute(
                    select(
                        col(Notification.id),
                        col(Notification.alert_id),
                        col(Notification.recipient_id),
                        col(Notification.channel),
                        col(Notification.state),
                    )
                )
            )
            inbox = {
                nid: n
                for nid, n in await conn.execute(
                    select(col(InboxMessage.notification_id), func.count()).group_by(
                        col(InboxMessage.notification_id)
                    )
                )
            }
            sent_attempts = {
                nid: n
                for nid, n in await conn.execute(
                    select(col(DeliveryAttempt.notification_id), func.count())
                    .where(col(DeliveryAttempt.outcome) == "sent")
                    .group_by(col(DeliveryAttempt.notification_id))
                )
            }
        return _verdict(rows, self.intended, self.sink, inbox, sent_attempts)

    async def report(self) -> str:
        """The verdict so far and each process's last log lines, for failure messages."""
        try:
            verdict = str(await self.judge())
        except Exception as exc:  # the database itself may be the fault
            verdict = f"(no verdict: {exc!r})"
        tails = "\n".join(
            f"--- {p.name} (pid {p.pid}, exit {p.returncode}, signals {p.signals}) ---\n"
            f"{p.tail(25)}"
            for p in self.procs
        )
        return f"verdict: {verdict}\n{tails}"

    def through(self, proxy: FaultProxy) -> None:
        """Makes processes spawned from now on reach the broker through proxy."""
        self.queue_url = proxy.route(self.broker_url)

    def elapsed(self) -> float:
        """Seconds since the cluster was created."""
        return time.monotonic() - self.started


def _verdict(
    rows: Sequence[Any],
    intended: set[tuple[int, int, str]],
    sink: CountingSink,
    inbox: dict[int, int],
    sent_attempts: dict[int, int],
) -> Verdict:
    by_identity = {(a, r, c): (nid, state) for nid, a, r, c, state in rows}
    by_id = {nid: (c, state) for nid, _a, _r, c, state in rows}
    lost: list[int] = []
    missing_rows = [key for key in intended if key not in by_identity]
    states: Counter[str] = Counter()
    not_terminal: list[int] = []
    duplicated: Counter[str] = Counter()
    dup_ids: list[int] = []
    for key in intended & by_identity.keys():
        nid, state = by_identity[key]
        channel = key[2]
        states[state] += 1
        if state not in TERMINAL:
            not_terminal.append(nid)
        got = sink.received.get(nid, 0) if channel == "email" else inbox.get(nid, 0)
        if state == State.SENT.value and got == 0:
            lost.append(nid)
        times = got if channel == "email" else sent_attempts.get(nid, 0)
        if times > 1:
            duplicated[channel] += times - 1
            dup_ids.append(nid)
    intended_ids = {by_identity[key][0] for key in intended & by_identity.keys()}
    received = set(sink.received) | set(inbox)
    unexpected = [nid for nid in received if nid not in intended_ids]
    unexpected += [nid for nid in received & intended_ids if by_id[nid][1] != State.SENT.value]
    return Verdict(
        intended=len(intended),
        lost=len(lost) + len(missing_rows),
        unexpected=len(unexpected) + len(sink.foreign),
        duplicated=sum(duplicated.values()),
        not_terminal=len(not_terminal),
        sent=states[State.SENT.value],
        dead=states[State.DEAD.value],
        suppressed=states[State.SUPPRESSED.value],
        duplicated_by_channel=dict(duplicated),
        states=dict(states),
        examples={
            "lost": sorted(lost),
            "unexpected": sorted(unexpected),
            "duplicated": sorted(dup_ids),
            "not_terminal": sorted(not_terminal),
        },
    )


def broker_queue_names() -> list[str]:
    """Every RabbitMQ queue Tocsin declares (channel queues and the dead-letter queue)."""
    from channels.registry import CHANNEL_NAMES

    return [names.queue_name(c) for c in CHANNEL_NAMES] + [names.DEAD_LETTER_QUEUE]


def no_orphans() -> list[str]:
    """The `tocsin producer|worker` processes still running as children of this test process."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == me and ("tocsin producer" in cmdline or "tocsin worker" in cmdline):
            found.append(f"{entry.name}: {cmdline}")
    return found


async def run_command(*args: str, timeout: float = 60.0) -> tuple[int, str]:
    """Runs a command without blocking the event loop; returns its exit code and output."""
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{' '.join(args)} did not finish within {timeout:g}s") from None
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")
