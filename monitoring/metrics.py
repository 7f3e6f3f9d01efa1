"""Declares every Tocsin metric and the verbs the stages report through."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from channels.errors import Reason
from pipeline.models import Outcome

NO_REASON = "none"
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LATENCY_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900)
# Reasons any channel can end with, whatever its transport.
COMMON_REASONS = (
    Reason.CHANNEL_DISABLED,
    Reason.RENDER_ERROR,
    Reason.INTERNAL_ERROR,
    Reason.TIMEOUT,
    Reason.EXPIRED,
    Reason.CONNECTION_ERROR,
)
SUPPRESSION_REASONS = (
    Reason.OPTED_OUT,
    Reason.NO_CONTACT,
    Reason.ALERT_RESOLVED,
    Reason.ALERT_EXPIRED,
    Reason.RECIPIENT_REMOVED,
    Reason.INVALID_CONTENT,
)

# The worker stages whose database work is retried (label values of database_retries).
DATABASE_STAGES = ("claim", "record")

# The _created series double the exposition and no panel or rule reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """Every tocsin_ metric, registered on one registry, with all label series pre-created."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        c, g, h = _factory(registry)
        self.created = c("notifications_created_total", "Notifications created.", ["channel"])
        self.deferred = c(
            "notifications_deferred_total", "Notifications deferred by quiet hours.", ["channel"]
        )
        self.suppressed = c(
            "notifications_suppressed_total", "Notifications suppressed.", ["channel", "reason"]
        )
        self.published = c("relay_published_total", "Notifications published.", ["channel"])
        self.lease_expired = c(
            "relay_lease_expired_total",
            "Notifications re-published after a lease expired.",
            ["channel"],
        )
        self.attempts = c(
            "delivery_attempts_total", "Delivery attempts.", ["channel", "outcome", "reason"]
        )
        self.attempt_seconds = h(
            "delivery_attempt_duration_seconds",
            "Time one send took.",
            ["channel"],
            ATTEMPT_BUCKETS,
        )
        self.latency = h(
            "delivery_latency_seconds",
            "Alert created to notification sent.",
            ["channel"],
            LATENCY_BUCKETS,
        )
        self.retries = c("retries_scheduled_total", "Retries scheduled.", ["channel", "reason"])
        self.rate_limited = c(
            "rate_limit_waits_total", "Sends postponed by a rate limit.", ["channel"]
        )
        self.dead = c("dead_lettered_total", "Notifications dead-lettered.", ["channel", "reason"])
        self.replayed = c("dead_letters_replayed_total", "Dead letters replayed.", ["channel"])
        self.fallbacks = c(
            "channel_fallbacks_total",
            "Dead notifications that fell back to another channel (to).",
            ["channel", "to"],
        )
        self.in_flight = g("worker_in_flight", "Sends in progress.", ["channel"])
        self.abandoned = c(
            "worker_sends_abandoned_total",
            "Claimed sends not started because the lease would run out first.",
            ["channel"],
        )
        self.database_retries = c(
            "worker_database_retries_total",
            "Claim or record steps retried because the database was unreachable.",
            ["channel", "stage"],
        )
        self.poison = c(
            "poison_messages_total", "Queue messages that could not be decoded.", ["channel"]
        )
        self.publish_failures = c(
            "relay_publish_failures_total", "Rows the broker did not take.", ["channel"]
        )
        self.inline = c(
            "relay_inline_dispatch_total",
            "Rows delivered by the relay while the broker was down.",
            ["channel"],
        )
        self.queue_depth = g("queue_depth", "Messages waiting in the channel queue.", ["channel"])
        self.queue_in_flight = g(
            "queue_in_flight", "Messages handed to workers, not yet settled.", ["channel"]
        )
        self.backlog = g(
            "backlog",
            "Notifications due and not yet sent (PENDING due, QUEUED, SENDING).",
            ["channel"],
        )
        self.oldest_due = g(
            "oldest_due_age_seconds",
            "Age of the oldest due notification not yet sent.",
            ["channel"],
        )
        self.dead_depth = g(
            "dead_letters", "Notifications in the dead letters (DEAD).", ["channel"]
        )
        self.broker_up = g("broker_up", "1 while the queue broker answers, else 0.", [])
        self.observed_at = g(
            "observer_last_success_timestamp_seconds",
            "When the database-derived gauges were last refreshed.",
            [],
        )
        self.producer_runs = c("producer_runs_total", "Producer passes.", ["outcome"])
        self.producer_alerts = c("producer_alerts_processed_total", "Alerts expanded.", [])
        self.producer_seconds = h(
            "producer_run_duration_seconds", "Producer pass duration.", [], JOB_BUCKETS
        )
        self.producer_last_success = g(
            "producer_last_success_timestamp_seconds", "When the producer last succeeded.", []
        )
        self.job_seconds = Histogram(
            "scheduler_job_duration_seconds",
            "Scheduled job duration.",
            ["job"],
            registry=registry,
            buckets=JOB_BUCKETS,
        )
        self.job_success = Counter(
            "scheduler_job_success", "Scheduled job successes.", ["job"], registry=registry
        )
        self.job_failed = Counter(
            "scheduler_job_failed", "Scheduled job failures.", ["job"], registry=registry
        )
        self.job_last_run = Gauge(
            "scheduler_job_last_run_timestamp_seconds",
            "When a job last ran.",
            ["job"],
            registry=registry,
        )

    def initialize(
        self,
        channel_reasons: Mapping[str, Iterable[Reason]],
        jobs: Iterable[str] = (),
    ) -> None:
        """Creates every label series at 0, so panels show 0 and zero-success alerts can fire."""
        for channel, reasons in channel_reasons.items():
            for metric in (
                self.publish_failures,
                self.inline,
                self.queue_depth,
                self.queue_in_flight,
                self.backlog,
                self.oldest_due,
                self.dead_depth,
                self.created,
                self.deferred,
                self.published,
                self.lease_expired,
                self.rate_limited,
                self.replayed,
                self.poison,
                self.attempt_seconds,
                self.latency,
                self.in_flight,
                self.abandoned,
            ):
                metric.labels(channel=channel)
            for stage in DATABASE_STAGES:
                self.database_retries.labels(channel=channel, stage=stage)
            for reason in SUPPRESSION_REASONS:
                self.suppressed.labels(channel=channel, reason=reason.value)
            self.attempts.labels(channel=channel, outcome=Outcome.SENT.value, reason=NO_REASON)
            for reason in {*reasons, *COMMON_REASONS}:
                for outcome in (Outcome.TRANSIENT, Outcome.PERMANENT, Outcome.RATE_LIMITED):
                    self.attempts.labels(
                        channel=channel, outcome=outcome.value, reason=reason.value
                    )
                self.retries.labels(channel=channel, reason=reason.value)
                self.dead.labels(channel=channel, reason=reason.value)
        for run_outcome in ("success", "failure"):
            self.producer_runs.labels(outcome=run_outcome)
        self._initialize_jobs(jobs)
        self._initialize_fallbacks(list(channel_reasons))

    def _initialize_fallbacks(self, channels: list[str]) -> None:
        # Every pair, not only the configured ones: FALLBACK_* may differ between replicas,
        # and a panel shows 0 rather than "no data" where nothing is configured.
        for channel in channels:
            for to in channels:
                if to != channel:
                    self.fallbacks.labels(channel=channel, to=to)

    def _initialize_jobs(self, jobs: Iterable[str]) -> None:
        for job in jobs:
            for metric in (self.job_seconds, self.job_success, self.job_failed, self.job_last_run):
                metric.labels(job=job)

    # verbs, called at stage boundaries

    def record_created(self, channel: str, count: int = 1) -> None:
        self.created.labels(channel=channel).inc(count)

    def record_deferred(self, channel: str, count: int = 1) -> None:
        self.deferred.labels(channel=channel).inc(count)

    def record_suppressed(self, channel: str, reason: str, count: int = 1) -> None:
        self.suppressed.labels(channel=channel, reason=reason).inc(count)

    def record_published(self, channel: str, count: int, *, lease_expired: bool = False) -> None:
        self.published.labels(channel=channel).inc(count)
        if lease_expired:
            self.lease_expired.labels(channel=channel).inc(count)

    def record_attempt(
        self, channel: str, outcome: Outcome, reason: str | None, seconds: float
    ) -> None:
        self.attempts.labels(
            channel=channel, outcome=outcome.value, reason=reason or NO_REASON
        ).inc()
        self.attempt_seconds.labels(channel=channel).observe(seconds)

    def record_sent(self, channel: str, latency_seconds: float) -> None:
        self.latency.labels(channel=channel).observe(max(latency_seconds, 0.0))

    def record_retry(self, channel: str, reason: str) -> None:
        self.retries.labels(channel=channel, reason=reason).inc()

    def record_rate_limited(self, channel: str) -> None:
        self.rate_limited.labels(channel=channel).inc()

    def record_dead(self, channel: str, reason: str) -> None:
        self.dead.labels(channel=channel, reason=reason).inc()

    def record_fallback(self, channel: str, to: str) -> None:
        self.fallbacks.labels(channel=channel, to=to).inc()

    def record_replayed(self, channel: str, count: int = 1) -> None:
        self.replayed.labels(channel=channel).inc(count)

    def record_abandoned(self, channel: str, count: int) -> None:
        self.abandoned.labels(channel=channel).inc(count)

    def record_database_retry(self, channel: str, stage: str) -> None:
        self.database_retries.labels(channel=channel, stage=stage).inc()

    def record_poison(self, channel: str) -> None:
        self.poison.labels(channel=channel).inc()

    def record_producer_run(
        self, ok: bool, seconds: float, alerts: int, finished_at: float
    ) -> None:
        self.producer_runs.labels(outcome="success" if ok else "failure").inc()
        self.producer_seconds.observe(seconds)
        if ok:
            self.producer_alerts.inc(alerts)
            self.producer_last_success.set(finished_at)

    def record_job_run(self, job: str, ok: bool, seconds: float, finished_at: float) -> None:
        self.job_seconds.labels(job=job).observe(seconds)
        (self.job_success if ok else self.job_failed).labels(job=job).inc()
        self.job_last_run.labels(job=job).set(finished_at)


def _factory(registry: CollectorRegistry):  # type: ignore[no-untyped-def]
    """Returns constructors that add the tocsin_ prefix and bind the registry."""

    def counter(name: str, doc: str, labels: list[str]) -> Counter:
        return Counter(f"tocsin_{name}", doc, labels, registry=registry)

    def gauge(name: str, doc: str, labels: list[str]) -> Gauge:
        return Gauge(f"tocsin_{name}", doc, labels, registry=registry)

    def histogram(name: str, doc: str, labels: list[str], buckets: tuple[float, ...]) -> Histogram:
        return Histogram(f"tocsin_{name}", doc, labels, registry=registry, buckets=buckets)

    return counter, gauge, histogram
