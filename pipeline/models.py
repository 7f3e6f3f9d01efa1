"""Every table Tocsin keeps; the notifications table is the source of truth for delivery."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

# Ids are 32-bit integers on PostgreSQL: a larger one can never match and must not reach the driver.
ID_MAX = 2**31 - 1


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes as UTC and hands them back aware, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc(*, nullable: bool = False, index: bool = False) -> Any:
    return Field(
        default=None if nullable else ...,
        sa_column=Column(UTCDateTime(), nullable=nullable, index=index),
    )


class Severity(StrEnum):
    """How urgent an alert is; critical alerts bypass quiet hours."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class State(StrEnum):
    """Where a notification is in its life; SENT, DEAD and SUPPRESSED are terminal."""

    PENDING = "PENDING"
    QUEUED = "QUEUED"
    SENDING = "SENDING"
    SENT = "SENT"
    DEAD = "DEAD"
    SUPPRESSED = "SUPPRESSED"

    @property
    def terminal(self) -> bool:
        """True for the states a notification never leaves on its own."""
        return self in (State.SENT, State.DEAD, State.SUPPRESSED)


class Outcome(StrEnum):
    """What one delivery attempt came to."""

    SENT = "sent"
    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"
    PERMANENT = "permanent"
    SUPPRESSED = "suppressed"


class Recipient(SQLModel, table=True):
    """A person notifications are addressed to, with their contacts."""

    __tablename__ = "recipients"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    created_at: datetime = _utc()
    updated_at: datetime = _utc()


class RecipientContact(SQLModel, table=True):
    """One address of a recipient, by the contact kind a channel declares (email, ...).

    A secret contact (a robot URL with its key) keeps its secret part apart: address holds
    what may be shown, secret what is masked in every view.
    """

    __tablename__ = "recipient_contacts"

    recipient_id: int = Field(foreign_key="recipients.id", primary_key=True)
    kind: str = Field(sa_column=Column(String(32), primary_key=True))
    address: str = Field(sa_column=Column(String(512), nullable=False))
    secret: str | None = Field(default=None, sa_column=Column(String(256)))


class NotificationSettings(SQLModel, table=True):
    """A recipient's channel choices and quiet hours; no row means the defaults."""

    __tablename__ = "notification_settings"

    recipient_id: int = Field(foreign_key="recipients.id", primary_key=True)
    # Comma-separated channel names, so a new channel needs no migration.
    channels: str = Field(sa_column=Column(String(200), nullable=False))
    timezone: str = Field(default="UTC", sa_column=Column(String(64), nullable=False))
    quiet_start: str | None = Field(default=None, sa_column=Column(String(5)))
    quiet_end: str | None = Field(default=None, sa_column=Column(String(5)))
    updated_at: datetime = _utc()

    @property
    def channel_set(self) -> frozenset[str]:
        """The enabled channel names."""
        return channel_names(self.channels)


def channel_names(stored: str) -> frozenset[str]:
    """Returns the channel names of a comma-separated list as stored ("system,email")."""
    return frozenset(name for name in stored.split(",") if name)


class Alert(SQLModel, table=True):
    """An alert record; the producer expands it into notifications once."""

    __tablename__ = "alerts"

    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(sa_column=Column(String(200), nullable=False))
    body: str = Field(sa_column=Column(Text, nullable=False))
    severity: str = Field(sa_column=Column(String(16), nullable=False))
    created_at: datetime = _utc()
    resolved_at: datetime | None = _utc(nullable=True)
    expires_at: datetime | None = _utc(nullable=True)
    processed_at: datetime | None = _utc(nullable=True, index=True)
    # A repeat with the same key within DEDUP_WINDOW notifies nobody (SUPPRESSED duplicate).
    dedup_key: str | None = Field(default=None, sa_column=Column(String(200), index=True))
    # Set by the producer on a repeat: the alert whose dedup window it fell into.
    duplicate_of: int | None = Field(default=None, foreign_key="alerts.id")
    # Mention everyone in WeCom groups; only allowed on critical alerts.
    mention_all: bool = False


class AlertRecipient(SQLModel, table=True):
    """Links an alert to one of its recipients."""

    __tablename__ = "alert_recipients"

    alert_id: int = Field(foreign_key="alerts.id", primary_key=True)
    recipient_id: int = Field(foreign_key="recipients.id", primary_key=True)


class Notification(SQLModel, table=True):
    """One alert for one recipient on one channel, and where its delivery stands."""

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("alert_id", "recipient_id", "channel", name="uq_notification_identity"),
        Index("ix_notifications_due", "state", "not_before"),
        Index("ix_notifications_lease", "state", "lease_until"),
    )

    id: int | None = Field(default=None, primary_key=True)
    alert_id: int = Field(foreign_key="alerts.id", index=True)
    recipient_id: int = Field(foreign_key="recipients.id", index=True)
    channel: str = Field(sa_column=Column(String(32), nullable=False))
    state: str = Field(sa_column=Column(String(16), nullable=False))
    attempts: int = 0
    not_before: datetime = _utc()
    lease_until: datetime | None = _utc(nullable=True)
    # Set when a worker claims the row; only that claim may record the outcome.
    claim_token: str | None = Field(default=None, sa_column=Column(String(32)))
    deferred: bool = False
    last_reason: str | None = Field(default=None, sa_column=Column(String(64)))
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = _utc()
    updated_at: datetime = _utc()
    sent_at: datetime | None = _utc(nullable=True)
    # Set on a row made because the notification it names died (FALLBACK_<CHANNEL>); such a
    # row never falls back again.
    fallback_of: int | None = Field(default=None, foreign_key="notifications.id", index=True)


class DeliveryAttempt(SQLModel, table=True):
    """One try at sending a notification, kept for audit and the dead-letter view."""

    __tablename__ = "delivery_attempts"
    # One attempt per notification per claim: recording a batch again after a commit whose
    # answer was lost stores nothing twice.
    __table_args__ = (
        Index("uq_delivery_attempts_claim", "notification_id", "claim_token", unique=True),
    )

    id: int | None = Field(default=None, primary_key=True)
    notification_id: int = Field(foreign_key="notifications.id", index=True)
    attempt: int
    channel: str = Field(sa_column=Column(String(32), nullable=False))
    started_at: datetime = _utc()
    duration_seconds: float
    outcome: str = Field(sa_column=Column(String(16), nullable=False))
    reason: str | None = Field(default=None, sa_column=Column(String(64)))
    detail: str | None = Field(default=None, sa_column=Column(Text))
    worker: str | None = Field(default=None, sa_column=Column(String(128)))
    claim_token: str | None = Field(default=None, sa_column=Column(String(32)))


class InboxMessage(SQLModel, table=True):
    """An in-app message written by the system channel."""

    __tablename__ = "inbox_messages"

    id: int | None = Field(default=None, primary_key=True)
    recipient_id: int = Field(foreign_key="recipients.id", index=True)
    notification_id: int = Field(foreign_key="notifications.id", unique=True)
    alert_id: int = Field(foreign_key="alerts.id")
    title: str = Field(sa_column=Column(String(200), nullable=False))
    body: str = Field(sa_column=Column(Text, nullable=False))
    severity: str = Field(sa_column=Column(String(16), nullable=False))
    created_at: datetime = _utc()
    read_at: datetime | None = _utc(nullable=True)


class JobRun(SQLModel, table=True):
    """One run of a scheduled job, so its last success survives a restart."""

    __tablename__ = "job_runs"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    started_at: datetime = _utc()
    finished_at: datetime = _utc()
    outcome: str = Field(sa_column=Column(String(16), nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text))


class Installation(SQLModel, table=True):
    """The one row naming this installation, made by `tocsin db upgrade` (e.g. for Message-IDs)."""

    __tablename__ = "installation"

    id: int = Field(default=1, primary_key=True)
    installation_id: str = Field(sa_column=Column(String(36), nullable=False))
    created_at: datetime = _utc()


class AuditRecord(SQLModel, table=True):
    """One operator action that changed notifications in bulk: who, when, what, which rows."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _utc(index=True)
    # The OS user of a CLI run or the name of an API token.
    actor: str = Field(sa_column=Column(String(128), nullable=False))
    action: str = Field(sa_column=Column(String(32), nullable=False))
    # The selection as JSON (filters, --all, rate), so the record says why these rows.
    selection: str = Field(sa_column=Column(Text, nullable=False))
    count: int
    # The affected notification ids as a JSON array.
    ids: str = Field(sa_column=Column(Text, nullable=False))


class AlertKey(SQLModel, table=True):
    """A key that names an alert from outside, so a repeat of the same request finds it.

    `idem:<Idempotency-Key>` for API callers, `am:<fingerprint>:<startsAt>` for Alertmanager;
    the primary key makes two concurrent requests with one key create one alert.
    """

    __tablename__ = "alert_keys"

    key: str = Field(sa_column=Column(String(255), primary_key=True))
    alert_id: int = Field(foreign_key="alerts.id", index=True)
    created_at: datetime = _utc(index=True)


class ApiToken(SQLModel, table=True):
    """A bearer token of the HTTP API: stored as a hash, shown once, scoped, revocable."""

    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    # Comma-separated scopes: ingest, read, admin.
    scopes: str = Field(sa_column=Column(String(64), nullable=False))
    # SHA-256 of the token (hex); the token itself is never stored.
    token_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    created_at: datetime = _utc()
    last_used_at: datetime | None = _utc(nullable=True)
    revoked_at: datetime | None = _utc(nullable=True)


class RecipientGroup(SQLModel, table=True):
    """A named set of recipients (e.g. an on-call team) that alerts can address."""

    __tablename__ = "recipient_groups"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    created_at: datetime = _utc()
    updated_at: datetime = _utc()


class GroupMember(SQLModel, table=True):
    """Puts a recipient in a group."""

    __tablename__ = "group_members"

    group_id: int = Field(foreign_key="recipient_groups.id", primary_key=True)
    recipient_id: int = Field(foreign_key="recipients.id", primary_key=True)


class SendBudget(SQLModel, table=True):
    """A provider's rate budget for one destination key (a WeCom robot key), shared by replicas.

    Keyed by a digest, never the key itself (the key is a secret). Its row is the lock every
    replica takes to spend the budget; `closed_until` is set when the provider said "too fast".
    """

    __tablename__ = "send_budgets"

    key_digest: str = Field(sa_column=Column(String(64), primary_key=True))
    closed_until: datetime | None = _utc(nullable=True)
    last_used_at: datetime | None = _utc(nullable=True)


class SendBudgetSlot(SQLModel, table=True):
    """One post counted against a budget, until `frees_at` (its send's end plus the window)."""

    __tablename__ = "send_budget_slots"
    __table_args__ = (Index("ix_send_budget_slots_key", "key_digest", "frees_at"),)

    id: int | None = Field(default=None, primary_key=True)
    key_digest: str = Field(
        sa_column=Column(
            String(64), ForeignKey("send_budgets.key_digest", ondelete="CASCADE"), nullable=False
        )
    )
    frees_at: datetime = _utc()
