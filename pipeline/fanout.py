"""Writes a producer batch as notification rows: bounded portions, one INSERT each, counted.

A portion holds alerts with runs of their recipients, at most about ROWS_PER_STATEMENT rows, so
the memory a batch takes and the size of one statement stay bounded however many recipients an
alert has, while a batch of small alerts still shares one statement. Rows go in column by column
(pipeline/sql.py), never as ORM objects or one parameter dict per row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from monitoring.metrics import Metrics
from pipeline.models import Alert, Notification
from pipeline.preferences import RecipientView
from pipeline.sql import insert_columns_ignoring_duplicates

if TYPE_CHECKING:
    # Only for annotations: the producer imports this module to write its candidates.
    from pipeline.producer import Candidate

# At most about this many rows per INSERT: memory and statement size stay bounded however
# many recipients an alert has, while a batch of small alerts still shares one statement.
ROWS_PER_STATEMENT = 5000

# Alerts, each with a run of its recipients: the unit the stages and one INSERT work on.
Portion = list[tuple[Alert, Sequence[RecipientView]]]


def portions(
    alerts: Sequence[Alert], audience: Mapping[int, Sequence[RecipientView]], size: int
) -> Iterator[Portion]:
    """Splits the alerts' recipients, in order, into portions of at most size recipients
    (at least one); an alert's recipients may span portions, a recipient's channels never do."""
    size = max(size, 1)
    part: Portion = []
    room = size
    for alert in alerts:
        recipients = audience.get(alert.id or 0, [])
        start = 0
        while start < len(recipients):
            run = recipients[start : start + room]
            part.append((alert, run))
            start += len(run)
            room -= len(run)
            if not room:
                yield part
                part, room = [], size
    if part:
        yield part


@dataclass
class Tally:
    """Counts a pass's candidates and new rows by channel, for its report and its metrics."""

    candidates: int = 0
    created: Counter[str] = field(default_factory=Counter)
    deferred: Counter[str] = field(default_factory=Counter)
    suppressed: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, candidates: Sequence[Candidate], created: Sequence[Candidate]) -> None:
        """Adds candidates and those of them that became new rows."""
        self.candidates += len(candidates)
        for c in created:
            self.created[c.channel] += 1
            if c.deferred:
                self.deferred[c.channel] += 1
            if c.reason is not None:
                self.suppressed[c.channel, c.reason.value] += 1

    def record(self, metrics: Metrics) -> None:
        """Adds the new rows to the metrics: one increment per series, not per row."""
        for channel, count in self.created.items():
            metrics.record_created(channel, count)
        for channel, count in self.deferred.items():
            metrics.record_deferred(channel, count)
        for (channel, reason), count in self.suppressed.items():
            metrics.record_suppressed(channel, reason, count)

    @property
    def duplicates(self) -> int:
        """Candidates whose row existed already."""
        return self.candidates - self.created.total()


async def persist(
    session: AsyncSession,
    candidates: Sequence[Candidate],
    now: datetime,
    fallback_of: Sequence[int] | None = None,
) -> Sequence[Candidate]:
    """Inserts the candidates' rows in one statement; returns those that were new (a row of
    the same identity may exist already). fallback_of names, candidate by candidate, the row
    each stands in for (FALLBACK_<CHANNEL>)."""
    if not candidates:
        return []
    columns: dict[str, Sequence[object]] = {
        "alert_id": [c.alert.id for c in candidates],
        "recipient_id": [c.recipient.id for c in candidates],
        "channel": [c.channel for c in candidates],
        "state": [c.state.value for c in candidates],
        "not_before": [c.not_before or now for c in candidates],
        "deferred": [c.deferred for c in candidates],
        "last_reason": [c.reason.value if c.reason else None for c in candidates],
    }
    if fallback_of is not None:
        columns["fallback_of"] = fallback_of
    inserted = await insert_columns_ignoring_duplicates(
        session,
        Notification,
        columns,
        {"attempts": 0, "created_at": now, "updated_at": now},
        returning=("alert_id", "recipient_id", "channel"),
    )
    if len(inserted) == len(candidates):
        return candidates
    new = {(int(row[0]), int(row[1]), str(row[2])) for row in inserted}
    return [c for c in candidates if (c.alert.id, c.recipient.id, c.channel) in new]
