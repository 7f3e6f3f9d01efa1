"""Records a batch of attempt results: new row states and attempt rows, in one transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import structlog
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from monitoring.metrics import Metrics
from pipeline.channel_set import ChannelSet
from pipeline.db import SessionFactory
from pipeline.models import DeliveryAttempt, Notification, Outcome, State
from pipeline.producer import Candidate, count_created
from pipeline.sql import first_ints, insert_ignoring_duplicates, table_of
from workers.fallback import fall_back
from workers.outcome import AttemptResult, Transition, decide
from workers.retry import RetryPolicy

log = structlog.get_logger("tocsin.worker")

_TABLE = table_of(Notification)
_N = _TABLE.c
# One statement for the whole batch (an executemany on the Core table: the ORM's bulk update
# costs more than the database does). A transition without a new not_before or sent_at keeps
# the row's own.
_APPLY = (
    update(_TABLE)
    .where(_N.id == bindparam("row_id"))
    .values(
        state=bindparam("new_state"),
        attempts=bindparam("new_attempts"),
        last_reason=bindparam("new_reason"),
        last_error=bindparam("new_error"),
        lease_until=None,
        claim_token=None,
        updated_at=bindparam("now", type_=_N.updated_at.type),
        not_before=func.coalesce(
            bindparam("new_not_before", type_=_N.not_before.type), _N.not_before
        ),
        sent_at=func.coalesce(bindparam("new_sent_at", type_=_N.sent_at.type), _N.sent_at),
    )
)


@dataclass(frozen=True)
class Recorded:
    """One result together with the transition it led to, and whether the row took it."""

    result: AttemptResult
    transition: Transition
    applied: bool
    # The rows created to stand in for this one when it died (FALLBACK_<CHANNEL>).
    fallbacks: tuple[Candidate, ...] = ()


async def record(
    sessions: SessionFactory,
    results: Sequence[AttemptResult],
    token: str,
    policy: RetryPolicy,
    now: datetime,
    worker: str,
    channels: ChannelSet | None = None,
) -> list[Recorded]:
    """Applies every result whose claim still holds; a late result (lease lost) is discarded.

    A row that dies falls back to its channel's fallbacks in channels (none without them), in
    the same transaction. Safe to call again with the same results and token when the
    connection dropped during the commit: what the first call committed counts as applied and
    is stored once (its fallbacks included).
    """
    if not results:
        return []
    async with sessions() as session, session.begin():
        ids = [r.delivery.notification_id for r in results]
        held = await _still_held(session, ids, token)
        # What an earlier call with this token already committed counts as applied too.
        applied = held | await _insert_attempts(session, results, token, worker)
        recorded = [
            Recorded(
                r,
                decide(r, r.delivery.attempt - 1, now, policy),
                r.delivery.notification_id in applied,
            )
            for r in results
        ]
        changes = [
            _values(item, now) for item in recorded if item.result.delivery.notification_id in held
        ]
        if changes:
            await session.execute(_APPLY, changes)
        died = [item.result.delivery.notification_id for item in recorded if _died(item, held)]
        fallbacks = await fall_back(session, died, channels, now) if channels else {}
    return [_with_fallbacks(item, fallbacks) for item in recorded]


def _died(item: Recorded, held: set[int]) -> bool:
    # Only a death this call applies: one an earlier call committed already fell back then.
    return item.transition.state is State.DEAD and item.result.delivery.notification_id in held


def _with_fallbacks(item: Recorded, fallbacks: Mapping[int, list[Candidate]]) -> Recorded:
    created = fallbacks.get(item.result.delivery.notification_id)
    return replace(item, fallbacks=tuple(created)) if created else item


async def _insert_attempts(
    session: AsyncSession, results: Sequence[AttemptResult], token: str, worker: str
) -> set[int]:
    """Stores the attempts; returns the ids whose attempt this claim had already stored."""
    attempted = [r for r in results if r.outcome is not Outcome.SUPPRESSED]
    if not attempted:
        return set()
    rows = [_attempt_row(r, token, worker) for r in attempted]
    inserted = await session.execute(
        insert_ignoring_duplicates(session, DeliveryAttempt).returning(
            col(DeliveryAttempt.notification_id)
        ),
        rows,
    )
    return {r.delivery.notification_id for r in attempted} - set(first_ints(inserted))


async def _still_held(session: AsyncSession, ids: list[int], token: str) -> set[int]:
    """Returns the ids this claim still holds, locked until commit (a late claim holds none)."""
    rows = await session.execute(
        select(_N.id)
        .where(_N.id.in_(ids), _N.state == State.SENDING.value, _N.claim_token == token)
        .with_for_update()
    )
    return set(first_ints(rows))


def _values(item: Recorded, now: datetime) -> dict[str, object]:
    transition = item.transition
    return {
        "row_id": item.result.delivery.notification_id,
        "new_state": transition.state.value,
        "new_attempts": transition.attempts,
        "new_reason": transition.reason.value if transition.reason else None,
        "new_error": transition.detail or None,
        "new_not_before": transition.not_before,
        "new_sent_at": transition.sent_at,
        "now": now,
    }


def _attempt_row(result: AttemptResult, token: str, worker: str) -> dict[str, object]:
    return {
        "claim_token": token,
        "notification_id": result.delivery.notification_id,
        "attempt": result.delivery.attempt,
        "channel": result.delivery.channel,
        "started_at": result.started_at,
        "duration_seconds": result.duration_seconds,
        "outcome": result.outcome.value,
        "reason": result.reason.value if result.reason else None,
        "detail": result.detail or None,
        "worker": worker,
    }


def report(recorded: Sequence[Recorded], metrics: Metrics, now: datetime) -> None:
    """Counts and logs each recorded result: one log line per delivery."""
    for item in recorded:
        _count(item, metrics, now)
        result, transition = item.result, item.transition
        log.info(
            "delivery",
            id=result.delivery.notification_id,
            channel=result.delivery.channel,
            attempt=result.delivery.attempt,
            duration_ms=round(result.duration_seconds * 1000, 2),
            outcome=result.outcome.value,
            reason=result.reason.value if result.reason else None,
            state=transition.state.value if item.applied else "discarded_late_result",
            not_before=transition.not_before.isoformat() if transition.not_before else None,
            **_fell_back(item),
        )


def _fell_back(item: Recorded) -> dict[str, list[str]]:
    # Only on the lines of rows that fell back, so the common line stays as it was.
    return {"fell_back_to": [c.channel for c in item.fallbacks]} if item.fallbacks else {}


def _count(item: Recorded, metrics: Metrics, now: datetime) -> None:
    result, transition = item.result, item.transition
    channel = result.delivery.channel
    reason = result.reason.value if result.reason else None
    if result.outcome is Outcome.SUPPRESSED:
        if item.applied and reason:
            metrics.record_suppressed(channel, reason)
        return
    metrics.record_attempt(channel, result.outcome, reason, result.duration_seconds)
    if not item.applied:
        return
    if transition.state is State.SENT:
        metrics.record_sent(channel, (now - result.delivery.alert_created_at).total_seconds())
    elif transition.state is State.DEAD:
        metrics.record_dead(channel, reason or "none")
        _count_fallbacks(channel, item.fallbacks, metrics)
    elif result.outcome is Outcome.RATE_LIMITED:
        metrics.record_rate_limited(channel)
    else:
        metrics.record_retry(channel, reason or "none")


def _count_fallbacks(channel: str, created: Sequence[Candidate], metrics: Metrics) -> None:
    count_created(metrics, created)
    for candidate in created:
        # A suppressed fallback (opted out, say) reached nobody: it counts as suppressed only.
        if candidate.open:
            metrics.record_fallback(channel, candidate.channel)
