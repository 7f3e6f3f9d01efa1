"""The hourly producer: expands unprocessed alerts into per-recipient, per-channel notifications."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import structlog
from sqlalchemy import func, select, true, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlmodel import col

from channels.errors import Reason
from monitoring.metrics import Metrics
from pipeline.channel_set import ChannelClass, ChannelSet
from pipeline.clock import Clock
from pipeline.db import SessionFactory
from pipeline.fallbacks import apply_fallback_reserve
from pipeline.fanout import ROWS_PER_STATEMENT, Portion, Tally, persist, portions
from pipeline.models import Alert, Severity, State
from pipeline.preferences import RecipientView, load_audience
from pipeline.quiet_hours import QuietHours
from pipeline.sql import is_postgresql
from pipeline.validation import content_error

log = structlog.get_logger("tocsin.producer")


@dataclass(frozen=True)
class Candidate:
    """A notification the producer intends to create, and why it is in the state it is in."""

    alert: Alert
    recipient: RecipientView
    channel: str
    state: State = State.PENDING
    not_before: datetime | None = None
    deferred: bool = False
    reason: Reason | None = None

    @property
    def open(self) -> bool:
        """True while no stage has suppressed it."""
        return self.state is State.PENDING


@dataclass(frozen=True)
class ProducerReport:
    """What one producer pass did."""

    alerts: int = 0
    created: int = 0
    deferred: int = 0
    suppressed: int = 0
    duplicates: int = 0

    def __add__(self, other: ProducerReport) -> ProducerReport:
        return ProducerReport(
            *(a + b for a, b in zip(self.astuple(), other.astuple(), strict=True))
        )

    def astuple(self) -> tuple[int, ...]:
        return (self.alerts, self.created, self.deferred, self.suppressed, self.duplicates)


# stages: each takes candidates and returns them, suppressing or deferring with a reason


def expand(
    alert: Alert,
    recipients: Sequence[RecipientView],
    channels: Sequence[str],
    defaults: Collection[str],
) -> list[Candidate]:
    """Returns one candidate per recipient and channel: every channel on by default (a row
    says why one was not sent), and an opt-in channel only for those who chose it."""
    return [
        Candidate(alert, r, channel)
        for r in recipients
        for channel in channels
        if channel in defaults or channel in r.channels
    ]


def apply_content_check(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Suppresses every candidate of an alert whose title or body validation would refuse."""
    # Only a row written around create_alert (straight into the database) can get here.
    return _suppress_by_alert(candidates, content_suppression)


def content_suppression(alert: Alert) -> Reason | None:
    """Returns INVALID_CONTENT if the alert's title or body holds a refused character."""
    problem = content_error("title", alert.title, multiline=False) or content_error(
        "body", alert.body, multiline=True
    )
    return Reason.INVALID_CONTENT if problem else None


def apply_dedup(candidates: Sequence[Candidate], repeats: Mapping[int, int]) -> list[Candidate]:
    """Suppresses the candidates of alerts that repeat an earlier one (alert id -> earlier id)."""
    if not repeats:
        return list(candidates)
    return [
        replace(c, state=State.SUPPRESSED, reason=Reason.DUPLICATE)
        if c.open and c.alert.id in repeats
        else c
        for c in candidates
    ]


def apply_preferences(
    candidates: Sequence[Candidate], channels: Mapping[str, ChannelClass]
) -> list[Candidate]:
    """Suppresses channels the recipient turned off or cannot be reached on."""
    return [_preference(c, channels[c.channel]) if c.open else c for c in candidates]


def _preference(candidate: Candidate, channel: ChannelClass) -> Candidate:
    if candidate.channel not in candidate.recipient.channels:
        return replace(candidate, state=State.SUPPRESSED, reason=Reason.OPTED_OUT)
    if not channel.reachable(candidate.recipient.contacts):
        return replace(candidate, state=State.SUPPRESSED, reason=Reason.NO_CONTACT)
    return candidate


def apply_alert_state(candidates: Sequence[Candidate], now: datetime) -> list[Candidate]:
    """Suppresses the candidates of alerts resolved or expired before they were produced."""
    return _suppress_by_alert(candidates, lambda alert: alert_suppression(alert, now))


def _suppress_by_alert(
    candidates: Sequence[Candidate], reason_of: Callable[[Alert], Reason | None]
) -> list[Candidate]:
    """Suppresses the open candidates of each alert reason_of names a reason for; asked once
    per alert (by object identity: an alert may not have been flushed yet)."""
    alerts = {id(c.alert): c.alert for c in candidates}
    reasons = {key: reason for key, alert in alerts.items() if (reason := reason_of(alert))}
    if not reasons:
        return list(candidates)
    return [
        replace(c, state=State.SUPPRESSED, reason=reasons[id(c.alert)])
        if c.open and id(c.alert) in reasons
        else c
        for c in candidates
    ]


def alert_suppression(alert: Alert, now: datetime) -> Reason | None:
    """Returns why an alert should no longer notify anyone, or None while it is live."""
    if alert.resolved_at is not None:
        return Reason.ALERT_RESOLVED
    if alert.expires_at is not None and alert.expires_at <= now:
        return Reason.ALERT_EXPIRED
    return None


def apply_quiet_hours(
    candidates: Sequence[Candidate], channels: Mapping[str, ChannelClass], now: datetime
) -> list[Candidate]:
    """Defers push notifications that fall in the recipient's quiet hours to the window's end."""
    # Each window's release is worked out once: recipients share a handful of windows.
    releases: dict[QuietHours, datetime | None] = {}
    return [_quiet(c, channels[c.channel], now, releases) if c.open else c for c in candidates]


def _quiet(
    candidate: Candidate,
    channel: ChannelClass,
    now: datetime,
    releases: dict[QuietHours, datetime | None],
) -> Candidate:
    quiet = candidate.recipient.quiet_hours
    if quiet is None or not channel.deferrable or candidate.alert.severity == Severity.CRITICAL:
        return candidate
    if quiet not in releases:
        releases[quiet] = quiet.release_time(now)
    release = releases[quiet]
    return replace(candidate, not_before=release, deferred=True) if release else candidate


def screen(
    candidates: Sequence[Candidate], channels: Mapping[str, ChannelClass], now: datetime
) -> list[Candidate]:
    """Runs the per-recipient stages: alert state, preferences, then quiet hours.

    Shared by the producer and the fallback (workers/fallback.py), so a fallback row is held
    to the same rules as any other.
    """
    candidates = apply_alert_state(candidates, now)
    candidates = apply_preferences(candidates, channels)
    return apply_quiet_hours(candidates, channels, now)


class Producer:
    """Runs the stages over batches of unprocessed alerts until none are left."""

    def __init__(
        self,
        session_factory: SessionFactory,
        clock: Clock,
        metrics: Metrics,
        channels: ChannelSet,
        batch_size: int = 50,
        dedup_window: timedelta = timedelta(hours=1),
        rows_per_statement: int = ROWS_PER_STATEMENT,
    ) -> None:
        self._dedup_window = dedup_window
        # Recipients per portion: a recipient's rows (one per channel) share a portion.
        self._portion = max(1, rows_per_statement // max(1, len(channels.names)))
        self._sessions = session_factory
        self._clock = clock
        self._metrics = metrics
        self._channels = channels
        self._batch_size = batch_size

    async def run(self) -> ProducerReport:
        """Processes every unprocessed alert, one batch per transaction; returns the totals."""
        async with self._sessions() as lock_session:
            # Pin one connection for the whole pass: a session-level advisory lock belongs to
            # the connection, and a committed session would hand it back to the pool.
            connection = await lock_session.connection() if is_postgresql(lock_session) else None
            if connection is not None and not await _take_producer_lock(connection):
                log.info("producer_skipped", why="another producer replica holds the lock")
                return ProducerReport()
            started = time.perf_counter()
            try:
                total = await self._run_all(started)
            finally:
                if connection is not None:
                    await _release_producer_lock(connection)
        # Logged once the lock is free: whoever reads "producer_pass" may take it at once.
        seconds = time.perf_counter() - started
        log.info("producer_pass", duration_ms=round(seconds * 1000, 1), **total.__dict__)
        return total

    async def _run_all(self, started: float) -> ProducerReport:
        total = ProducerReport()
        try:
            while (report := await self._run_batch()) is not None:
                total += report
        except Exception:
            self._metrics.record_producer_run(False, time.perf_counter() - started, 0, 0)
            raise
        seconds = time.perf_counter() - started
        self._metrics.record_producer_run(
            True, seconds, total.alerts, self._clock.now().timestamp()
        )
        return total

    async def produce(self, alert_ids: Sequence[int]) -> ProducerReport:
        """Expands these alerts now (those not yet expanded), as their ingest call returns.

        Safe beside the hourly pass: an alert is claimed FOR UPDATE SKIP LOCKED while
        unprocessed, and the notification identity is unique, so nothing is made twice.
        """
        total = ProducerReport()
        for start in range(0, len(alert_ids), self._batch_size):
            report = await self._run_batch(alert_ids[start : start + self._batch_size])
            total += report or ProducerReport()
        return total

    async def _run_batch(self, only: Sequence[int] | None = None) -> ProducerReport | None:
        now = self._clock.now()
        tally = Tally()
        async with self._sessions() as session, session.begin():
            alerts = await self._claim_alerts(session, only)
            if not alerts:
                return None
            audience = await load_audience(session, [a.id for a in alerts if a.id], self._channels)
            repeats = await self._repeats(session, alerts)
            for part in portions(alerts, audience, self._portion):
                candidates = self._stages(part, repeats, now)
                tally.add(candidates, await persist(session, candidates, now))
            await session.execute(
                update(Alert)
                .where(col(Alert.id).in_([a.id for a in alerts]))
                .values(processed_at=now)
            )
            for repeat, first in repeats.items():
                await session.execute(
                    update(Alert).where(col(Alert.id) == repeat).values(duplicate_of=first)
                )
        # Counted once committed: a rolled-back batch created nothing.
        return self._report(len(alerts), tally)

    def _report(self, alerts: int, tally: Tally) -> ProducerReport:
        if tally.duplicates:
            # Another producer got there first; its run counted these rows, not ours.
            log.info("producer_duplicates_skipped", count=tally.duplicates)
        tally.record(self._metrics)
        return ProducerReport(
            alerts=alerts,
            created=tally.created.total(),
            deferred=tally.deferred.total(),
            suppressed=tally.suppressed.total(),
            duplicates=tally.duplicates,
        )

    def _stages(self, part: Portion, repeats: Mapping[int, int], now: datetime) -> list[Candidate]:
        candidates: list[Candidate] = []
        for alert, recipients in part:
            candidates += expand(alert, recipients, self._channels.names, self._channels.defaults)
        candidates = apply_content_check(candidates)
        candidates = apply_dedup(candidates, repeats)
        candidates = screen(candidates, self._channels.classes, now)
        return apply_fallback_reserve(candidates, self._channels.fallbacks)

    async def _repeats(self, session: AsyncSession, alerts: list[Alert]) -> dict[int, int]:
        """Maps each alert that repeats an earlier one within the dedup window to that one.

        The first alert of a key opens a window of DEDUP_WINDOW; repeats inside it notify
        nobody, and the first alert after it opens the next window. So a problem that keeps
        firing is told again once per window, never once per repeat.
        """
        opened: dict[str, Alert] = {}
        repeats: dict[int, int] = {}
        for alert in sorted(alerts, key=lambda a: a.id or 0):
            if alert.dedup_key is None or alert.id is None:
                continue
            since = alert.created_at - self._dedup_window
            first = opened.get(alert.dedup_key)
            if first is None or first.created_at <= since:
                first = await self._window_opener(session, alert, since)
            if first is not None and first.id is not None:
                repeats[alert.id] = first.id
            else:
                opened[alert.dedup_key] = alert
        return repeats

    async def _window_opener(
        self, session: AsyncSession, alert: Alert, since: datetime
    ) -> Alert | None:
        statement = (
            select(Alert)
            .where(
                col(Alert.dedup_key) == alert.dedup_key,
                col(Alert.id) < alert.id,
                col(Alert.duplicate_of).is_(None),
                col(Alert.processed_at).is_not(None),
                col(Alert.created_at) > since,
            )
            .order_by(col(Alert.id).desc())
            .limit(1)
        )
        return (await session.execute(statement)).scalars().first()

    async def _claim_alerts(
        self, session: AsyncSession, only: Sequence[int] | None = None
    ) -> list[Alert]:
        statement = (
            select(Alert)
            .where(col(Alert.processed_at).is_(None))
            .where(col(Alert.id).in_(only) if only is not None else true())
            .order_by(col(Alert.id))
            .limit(self._batch_size)
            # A second producer skips the alerts this one holds instead of waiting or doubling.
            .with_for_update(skip_locked=True)
        )
        return list((await session.execute(statement)).scalars())


# Any constant shared by every replica; "tocsin" in ASCII.
PRODUCER_LOCK_KEY = 0x746F6373696E


async def _take_producer_lock(connection: AsyncConnection) -> bool:
    """Takes the replica-wide producer lock on PostgreSQL (SQLite has one writer anyway)."""
    return bool(await connection.scalar(select(func.pg_try_advisory_lock(PRODUCER_LOCK_KEY))))


async def _release_producer_lock(connection: AsyncConnection) -> None:
    await connection.scalar(select(func.pg_advisory_unlock(PRODUCER_LOCK_KEY)))


def count_created(metrics: Metrics, created: Sequence[Candidate]) -> None:
    """Counts new rows: created, and deferred or suppressed with their reason."""
    tally = Tally()
    tally.add(created, created)
    tally.record(metrics)
