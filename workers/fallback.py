"""Falls back to other channels when a notification dies (FALLBACK_<CHANNEL>).

Runs in the transaction that records the death: each fallback channel gets a new row for the
same alert and recipient, linked by fallback_of and put through the producer's own stages
(alert state, preferences, quiet hours), so a fallback never reaches anyone the producer would
not have. A row that is itself a fallback creates nothing, so fallbacks never loop; a recipient
who already has a row on the channel for the alert gets no second one.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from pipeline.channel_set import ChannelSet
from pipeline.fanout import persist
from pipeline.models import Alert, Notification
from pipeline.preferences import load_views
from pipeline.producer import Candidate, screen


@dataclass(frozen=True)
class Died:
    """A notification that just died and is nobody's fallback."""

    id: int
    alert_id: int
    recipient_id: int
    channel: str


@dataclass(frozen=True)
class Planned:
    """A fallback row to create: the candidate and the row it stands in for."""

    origin: int
    candidate: Candidate

    @property
    def key(self) -> tuple[int, int, str]:
        """The notification identity (alert, recipient, channel)."""
        return (self.candidate.alert.id or 0, self.candidate.recipient.id, self.candidate.channel)


async def fall_back(
    session: AsyncSession, dead_ids: Collection[int], channels: ChannelSet, now: datetime
) -> dict[int, list[Candidate]]:
    """Creates the fallback rows of notifications that just died; returns the new ones by the
    id of the row they stand in for (suppressed ones included: their row says why)."""
    died = await _died(session, dead_ids, channels)
    if not died:
        return {}
    planned = await _plan(session, died, channels, now)
    created = await _insert(session, planned, now)
    by_origin: dict[int, list[Candidate]] = {}
    for plan in created:
        by_origin.setdefault(plan.origin, []).append(plan.candidate)
    return by_origin


async def _died(session: AsyncSession, ids: Collection[int], channels: ChannelSet) -> list[Died]:
    """Returns the rows among ids that have fallbacks configured and are no fallback themselves."""
    falling = [name for name in channels.names if channels.fallbacks.of(name)]
    if not ids or not falling:
        return []
    rows = await session.execute(
        select(
            col(Notification.id),
            col(Notification.alert_id),
            col(Notification.recipient_id),
            col(Notification.channel),
        ).where(
            col(Notification.id).in_(ids),
            col(Notification.channel).in_(falling),
            col(Notification.fallback_of).is_(None),
        )
    )
    return [Died(i or 0, a, r, c) for i, a, r, c in rows]


async def _plan(
    session: AsyncSession, died: Sequence[Died], channels: ChannelSet, now: datetime
) -> list[Planned]:
    alerts = await _alerts(session, {d.alert_id for d in died})
    views = await load_views(session, {d.recipient_id for d in died}, channels)
    origins = [
        (d.id, Candidate(alerts[d.alert_id], views[d.recipient_id], channel))
        for d in died
        for channel in channels.fallbacks.of(d.channel)
    ]
    screened = screen([c for _, c in origins], channels.classes, now)
    planned = [Planned(origin, c) for (origin, _), c in zip(origins, screened, strict=True)]
    # Two dead rows may name the same fallback for one recipient: the first one gets it.
    unique: dict[tuple[int, int, str], Planned] = {}
    for plan in planned:
        unique.setdefault(plan.key, plan)
    return list(unique.values())


async def _alerts(session: AsyncSession, ids: set[int]) -> dict[int, Alert]:
    found = await session.execute(select(Alert).where(col(Alert.id).in_(ids)))
    return {alert.id or 0: alert for alert in found.scalars()}


async def _insert(
    session: AsyncSession, planned: Sequence[Planned], now: datetime
) -> list[Planned]:
    """Inserts the planned rows; returns those that were new (the rest already existed)."""
    created = await persist(
        session, [p.candidate for p in planned], now, fallback_of=[p.origin for p in planned]
    )
    new = {(c.alert.id or 0, c.recipient.id, c.channel) for c in created}
    return [plan for plan in planned if plan.key in new]
