"""The core settings of every process, read from the environment and `.env`.

Each channel reads its own settings (channels/<name>.py); see pipeline/channel_set.py.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline.durations import Duration, parse_schedule
from pipeline.secret_url import SecretUrl


class DispatchFallback(StrEnum):
    """What the relay does while the broker refuses messages."""

    INLINE = "inline"
    NONE = "none"


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
Seconds = Annotated[float, Field(gt=0)]


class Settings(BaseSettings):
    """Every knob Tocsin has; the embedded default (SQLite + in-process queue) needs none."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    # URL settings are SecretUrl: every printout shows them with the password masked.
    database_url: SecretUrl = Field(
        SecretUrl("sqlite+aiosqlite:///./tocsin.db"), validation_alias=_env("DATABASE_URL")
    )
    db_pool_size: int = Field(10, ge=1, validation_alias=_env("DB_POOL_SIZE"))
    # A database that accepts TCP and never answers must fail a command in seconds, not hang.
    db_connect_timeout: Duration = Field(
        timedelta(seconds=5), validation_alias=_env("DB_CONNECT_TIMEOUT")
    )
    db_command_timeout: Duration = Field(
        timedelta(seconds=30), validation_alias=_env("DB_COMMAND_TIMEOUT")
    )
    # REDIS_URL is the seed system's name for its queue; QUEUE_URL wins when both are set.
    queue_url: SecretUrl = Field(
        SecretUrl("memory://"), validation_alias=_env("QUEUE_URL", "REDIS_URL")
    )
    memory_queue_size: int = Field(10_000, ge=1, validation_alias=_env("MEMORY_QUEUE_SIZE"))
    dispatch_fallback: DispatchFallback = Field(
        DispatchFallback.NONE, validation_alias=_env("DISPATCH_FALLBACK")
    )
    # A message handed out this many times without being settled goes to the dead letters.
    # Generous: a worker hands messages back on shutdown and on database errors, and every
    # hand-back counts; real poison (bad JSON, unknown id) is rejected at once anyway.
    queue_delivery_limit: int = Field(20, ge=1, validation_alias=_env("QUEUE_DELIVERY_LIMIT"))
    redis_stream_maxlen: int = Field(
        1_000_000, ge=1000, validation_alias=_env("REDIS_STREAM_MAXLEN")
    )
    # Messages of a dead Redis consumer are taken over after this idle time; it must stay
    # well above the slowest send (SEND_TIMEOUT), or a slow send is delivered twice.
    redis_claim_idle: Duration = Field(
        timedelta(seconds=120), validation_alias=_env("REDIS_CLAIM_IDLE")
    )
    broker_timeout: Duration = Field(timedelta(seconds=10), validation_alias=_env("BROKER_TIMEOUT"))

    # Loopback unless set: METRICS_ADDR=0.0.0.0 lets Prometheus in another container scrape.
    metrics_addr: str = Field("127.0.0.1", validation_alias=_env("METRICS_ADDR"))
    # 0 lets the OS pick a free port (logged at start-up); -1 serves no /metrics at all.
    metrics_port: int = Field(9464, ge=-1, le=65535, validation_alias=_env("METRICS_PORT"))

    # The HTTP API (`tocsin api`, and inside `tocsin run`): loopback unless told otherwise.
    api_addr: str = Field("127.0.0.1", validation_alias=_env("API_ADDR"))
    # 0 lets the OS pick a free port (logged at start-up); -1 serves no API at all.
    api_port: int = Field(8080, ge=-1, le=65535, validation_alias=_env("API_PORT"))
    api_max_body_bytes: int = Field(1_048_576, ge=1024, validation_alias=_env("API_MAX_BODY_BYTES"))
    # A client that sends its request body slower than this is cut off (408).
    api_body_timeout: Duration = Field(
        timedelta(seconds=10), validation_alias=_env("API_BODY_TIMEOUT")
    )
    # At most this many alerts in one POST /api/v1/alerts.
    api_batch_max: int = Field(100, ge=1, validation_alias=_env("API_BATCH_MAX"))
    # An Idempotency-Key is remembered this long: a repeat within it returns the first alert.
    idempotency_retention: Duration = Field(
        timedelta(hours=24), validation_alias=_env("IDEMPOTENCY_RETENTION")
    )
    # Alertmanager ingest: the label whose value names recipients (comma-separated usernames)
    # and the label naming a recipient group; empty turns that way of addressing off.
    alertmanager_recipients_label: str = Field(
        "recipients",
        pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$",
        validation_alias=_env("ALERTMANAGER_RECIPIENTS_LABEL"),
    )
    alertmanager_group_label: str = Field(
        "team",
        pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$",
        validation_alias=_env("ALERTMANAGER_GROUP_LABEL"),
    )

    log_level: str = Field("INFO", validation_alias=_env("LOG_LEVEL"))
    log_format: str = Field("json", pattern="^(json|console)$", validation_alias=_env("LOG_FORMAT"))

    producer_cron: str = Field("0 * * * *", validation_alias=_env("PRODUCER_CRON"))
    # Comma-separated job ids that are declared but must not be scheduled.
    disabled_jobs: str = Field("", validation_alias=_env("DISABLED_JOBS"))
    observe_interval: Duration = Field(
        timedelta(seconds=15), validation_alias=_env("OBSERVE_INTERVAL")
    )
    # One alert may not fan out to more people than this (a typo'd group is not a broadcast).
    max_recipients_per_alert: int = Field(
        1000, ge=1, validation_alias=_env("MAX_RECIPIENTS_PER_ALERT")
    )
    # A second alert with the same dedup_key within this window notifies nobody.
    dedup_window: Duration = Field(timedelta(hours=1), validation_alias=_env("DEDUP_WINDOW"))
    producer_batch_size: int = Field(50, ge=1, validation_alias=_env("PRODUCER_BATCH_SIZE"))
    relay_interval: Duration = Field(timedelta(seconds=2), validation_alias=_env("RELAY_INTERVAL"))
    relay_batch_size: int = Field(500, ge=1, validation_alias=_env("RELAY_BATCH_SIZE"))
    # A QUEUED row whose message was lost is published again after this long.
    queue_lease: Duration = Field(timedelta(minutes=10), validation_alias=_env("QUEUE_LEASE"))
    # A SENDING row whose worker vanished is published again after this long.
    send_lease: Duration = Field(timedelta(minutes=2), validation_alias=_env("SEND_LEASE"))
    send_timeout: Duration = Field(timedelta(seconds=30), validation_alias=_env("SEND_TIMEOUT"))

    # NoDecode: "5m,15m" is our format, not JSON (pydantic-settings would parse it as JSON).
    retry_schedule: Annotated[tuple[timedelta, ...], NoDecode] = Field(
        (
            timedelta(minutes=5),
            timedelta(minutes=15),
            timedelta(minutes=30),
            timedelta(minutes=60),
        ),
        validation_alias=_env("RETRY_SCHEDULE"),
    )
    retry_jitter: float = Field(0.1, ge=0, le=1, validation_alias=_env("RETRY_JITTER"))
    retry_max_age: Duration = Field(timedelta(hours=24), validation_alias=_env("RETRY_MAX_AGE"))

    worker_concurrency: int = Field(16, ge=1, validation_alias=_env("WORKER_CONCURRENCY"))
    worker_batch_size: int = Field(64, ge=1, validation_alias=_env("WORKER_BATCH_SIZE"))
    shutdown_grace: Duration = Field(timedelta(seconds=25), validation_alias=_env("SHUTDOWN_GRACE"))

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _schedule(cls, value: object) -> object:
        return parse_schedule(value) if isinstance(value, str) else value

    @property
    def queue_scheme(self) -> str:
        """The queue backend named by QUEUE_URL: memory, amqp or redis."""
        return self.queue_url.get_secret_value().split("://", 1)[0].lower()

    @property
    def is_sqlite(self) -> bool:
        """True when DATABASE_URL points at SQLite."""
        return self.database_url.get_secret_value().startswith("sqlite")
