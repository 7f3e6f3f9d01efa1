"""POST /api/v1/integrations/alertmanager: Alertmanager's webhook receiver.

Alertmanager retries a 5xx answer (and a network error) until the group's next flush, and never
retries a 4xx. So the answer is 200 with a per-alert summary whenever the payload is valid, even
when some alerts name nobody Tocsin knows (those are skipped and reported: refusing the batch
would drop its good alerts and retrying could not help); 422 for a malformed payload (retrying
cannot fix it); 503 only while the database is unavailable, when a retry can succeed. Retries
are safe: each firing episode is stored under its key, and resolving twice changes nothing.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends

from pipeline.alertmanager import (
    AlertResult,
    Episode,
    IngestSummary,
    Outcome,
    Skip,
    SkipReason,
    WebhookPayload,
    decide,
    episode,
    partly_found,
)
from pipeline.alerts import AlertInput, Ingested, keyed_alert, resolve_alert
from pipeline.api.auth import Ingest
from pipeline.api.deps import tocsin
from pipeline.api.problems import responses
from pipeline.app import App
from pipeline.groups import directory
from pipeline.validation import InputError

log = structlog.get_logger("tocsin.api")
router = APIRouter(tags=["alertmanager"])

# An episode key (fingerprint + startsAt) can only ever name one episode, so it is kept as long
# as an alert could plausibly keep firing: a repeat after IDEMPOTENCY_RETENTION (24 h) must
# still find its alert, and so must the resolution of an alert that fired for a week.
EPISODE_RETENTION = timedelta(days=366)

Planned = tuple[int, Episode, AlertInput, str | None]


@router.post(
    "/integrations/alertmanager",
    response_model=IngestSummary,
    responses=responses(401, 403, 413, 422, 503),
    summary="Receive an Alertmanager webhook notification",
)
async def alertmanager_webhook(
    payload: WebhookPayload, app: Annotated[App, Depends(tocsin)], _token: Ingest
) -> IngestSummary:
    """Stores each firing alert once per episode and resolves each resolved one.

    Recipients come from the ALERTMANAGER_RECIPIENTS_LABEL label (comma-separated usernames)
    and the group named by the ALERTMANAGER_GROUP_LABEL label. An alert that reaches nobody is
    skipped and reported, never refused: the answer is 200 unless the payload is malformed
    (422) or the database is unavailable (503, which Alertmanager retries).
    """
    summary = await ingest_notification(app, payload)
    counts = summary.model_dump(include={"created", "repeated", "resolved", "skipped"})
    if summary.truncated:
        log.warning(
            "alertmanager_truncated", truncated=summary.truncated, receiver=payload.receiver
        )
    log.info("alertmanager_ingest", receiver=payload.receiver, **counts)
    return summary


async def ingest_notification(app: App, payload: WebhookPayload) -> IngestSummary:
    """Maps, stores and resolves the payload's alerts; returns what became of each."""
    settings = app.settings
    episodes = [
        episode(alert, settings.alertmanager_recipients_label, settings.alertmanager_group_label)
        for alert in payload.alerts
    ]
    firing = [(i, e) for i, e in enumerate(episodes) if e.status == "firing"]
    known = await directory(
        app.sessions,
        [name for _, e in firing for name in e.usernames],
        [name for _, e in firing for name in e.groups],
    )
    results: dict[int, AlertResult] = {}
    planned: list[Planned] = []
    for index, found in firing:
        addressed = known.address(found.usernames, found.groups)
        decision = decide(found, addressed, settings.max_recipients_per_alert)
        if isinstance(decision, Skip):
            results[index] = _skipped(found, decision)
        else:
            planned.append((index, found, decision, partly_found(addressed)))
    results |= await _store(app, planned)
    for index, found in enumerate(episodes):
        if found.status == "resolved":
            results[index] = await _resolve(app, found)
    summary = IngestSummary(truncated=payload.truncated_alerts)
    for index in range(len(episodes)):
        summary.add(results[index])
    return summary


async def _store(app: App, planned: list[Planned]) -> dict[int, AlertResult]:
    """Ingests the planned alerts (new ones are expanded at once) and returns their results."""
    if not planned:
        return {}
    items = [(data, found.key) for _, found, data, _ in planned]
    try:
        stored: list[Ingested | Skip] = list(
            await app.ingest(items, key_retention=EPISODE_RETENTION)
        )
    except InputError:
        # One was refused (e.g. a user deleted meanwhile): take them one at a time.
        stored = [await _store_one(app, item) for item in items]
    # A repeat of an alert whose first call stopped before expanding it expands it now.
    unexpanded = [
        r.alert.id
        for r in stored
        if isinstance(r, Ingested) and not r.created and r.alert.processed_at is None
    ]
    if unexpanded:
        await app.producer().produce([i for i in unexpanded if i is not None])
    results = {}
    for (index, found, _, note), result in zip(planned, stored, strict=True):
        if isinstance(result, Skip):
            results[index] = _skipped(found, result)
            continue
        results[index] = AlertResult(
            fingerprint=found.fingerprint,
            status=found.status,
            outcome=Outcome.CREATED if result.created else Outcome.REPEATED,
            alert_id=result.alert.id,
            detail=note,
        )
    return results


async def _store_one(app: App, item: tuple[AlertInput, str]) -> Ingested | Skip:
    try:
        (result,) = await app.ingest([item], key_retention=EPISODE_RETENTION)
    except InputError as exc:
        return Skip(SkipReason.INVALID, str(exc))
    return result


async def _resolve(app: App, found: Episode) -> AlertResult:
    """Resolves the episode's alert: its unsent notifications end SUPPRESSED alert_resolved."""
    alert = await keyed_alert(app.sessions, found.key, app.clock.now() - EPISODE_RETENTION)
    if alert is None or alert.id is None:
        return _skipped(
            found,
            Skip(SkipReason.UNKNOWN_ALERT, "Tocsin has no alert for this episode to resolve"),
        )
    outcome = Outcome.REPEATED if alert.resolved_at is not None else Outcome.RESOLVED
    await resolve_alert(app.sessions, app.clock, alert.id)
    return AlertResult(
        fingerprint=found.fingerprint, status=found.status, outcome=outcome, alert_id=alert.id
    )


def _skipped(found: Episode, skip: Skip) -> AlertResult:
    return AlertResult(
        fingerprint=found.fingerprint,
        status=found.status,
        outcome=Outcome.SKIPPED,
        reason=skip.reason,
        detail=skip.detail,
    )
