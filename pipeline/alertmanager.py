"""Alertmanager's webhook payload (version 4) and how each of its alerts maps onto a Tocsin alert.

Pure functions over the payload: the HTTP route looks users and groups up, then asks decide()
what to do with each alert. One firing episode of an Alertmanager alert (its fingerprint and
startsAt) is one Tocsin alert, named by episode_key(); repeats and HA duplicates find it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.alerts import AlertInput
from pipeline.groups import Addressees
from pipeline.models import Severity
from pipeline.validation import (
    BODY_MAX_BYTES,
    TITLE_MAX,
    InputError,
    drop_refused_characters,
    validate_body,
    validate_title,
)

KEY_PREFIX = "am:"
# Severity label values (any case) and the Tocsin severity they mean; anything else is info.
SEVERITY_WORDS: Mapping[str, Severity] = {
    "critical": Severity.CRITICAL,
    "page": Severity.CRITICAL,
    "error": Severity.CRITICAL,
    "warning": Severity.WARNING,
    "warn": Severity.WARNING,
}
_SHOWN_NAMES = 10


class WebhookAlert(BaseModel):
    """One alert of a webhook notification, as Alertmanager sends it."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    # The zero time 0001-01-01T00:00:00Z while firing; when it ended once resolved.
    ends_at: datetime | None = Field(None, alias="endsAt")
    generator_url: str = Field("", alias="generatorURL")
    # Identifies the alert's label set; with startsAt, one firing episode.
    fingerprint: str = Field(pattern=r"^[A-Za-z0-9]{1,64}$")


class WebhookPayload(BaseModel):
    """A webhook notification from Alertmanager (payload version 4)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    version: Literal["4"]
    group_key: str = Field("", alias="groupKey")
    # Alerts that max_alerts cut from the list: they never reach Tocsin.
    truncated_alerts: int = Field(0, ge=0, alias="truncatedAlerts")
    status: Literal["firing", "resolved"]
    receiver: str = ""
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field("", alias="externalURL")
    alerts: list[WebhookAlert]


class Outcome(StrEnum):
    """What became of one alert of a webhook notification."""

    CREATED = "created"  # a new Tocsin alert, notifications made at once
    REPEATED = "repeated"  # its episode was known already: nothing new
    RESOLVED = "resolved"  # its Tocsin alert is resolved, unsent notifications suppressed
    SKIPPED = "skipped"  # nothing stored; the reason says why


class SkipReason(StrEnum):
    """Why an alert of a webhook notification stored nothing (a bounded set)."""

    NO_RECIPIENTS = "no_recipients"  # neither the recipients nor the group label is set
    UNKNOWN_RECIPIENTS = "unknown_recipients"  # they name no known user or non-empty group
    TOO_MANY_RECIPIENTS = "too_many_recipients"  # over MAX_RECIPIENTS_PER_ALERT
    INVALID = "invalid"  # Tocsin's validation refused it
    UNKNOWN_ALERT = "unknown_alert"  # resolved, but Tocsin never recorded it firing


class AlertResult(BaseModel):
    """One alert of the notification and what Tocsin did with it."""

    fingerprint: str
    status: Literal["firing", "resolved"]
    outcome: Outcome
    alert_id: int | None = None
    reason: SkipReason | None = None
    detail: str | None = None


class IngestSummary(BaseModel):
    """Counts per outcome, and every alert's result in payload order."""

    created: int = 0
    repeated: int = 0
    resolved: int = 0
    skipped: int = 0
    # Echoes truncatedAlerts: alerts Alertmanager left out (set max_alerts: 0 to get them all).
    truncated: int = 0
    alerts: list[AlertResult] = Field(default_factory=list)

    def add(self, result: AlertResult) -> None:
        """Records one alert's result and counts its outcome."""
        self.alerts.append(result)
        name = result.outcome.value
        setattr(self, name, getattr(self, name) + 1)


@dataclass(frozen=True)
class Episode:
    """One alert of a notification mapped onto Tocsin's terms; whom it names is not looked up."""

    key: str
    fingerprint: str
    status: Literal["firing", "resolved"]
    title: str
    body: str
    severity: Severity
    usernames: list[str]
    groups: list[str]


@dataclass(frozen=True)
class Skip:
    """decide()'s answer for an alert that stores nothing."""

    reason: SkipReason
    detail: str


def episode_key(fingerprint: str, starts_at: datetime) -> str:
    """Returns the alert key of one firing episode: am:<fingerprint>:<startsAt in UTC>."""
    moment = starts_at.replace(tzinfo=UTC) if starts_at.tzinfo is None else starts_at
    moment = moment.astimezone(UTC)
    fraction = f".{moment.microsecond:06d}".rstrip("0") if moment.microsecond else ""
    return f"{KEY_PREFIX}{fingerprint}:{moment:%Y-%m-%dT%H:%M:%S}{fraction}Z"


def severity_of(labels: Mapping[str, str]) -> Severity:
    """Returns the severity the `severity` label means: see SEVERITY_WORDS; else info."""
    return SEVERITY_WORDS.get(labels.get("severity", "").strip().lower(), Severity.INFO)


def title_of(labels: Mapping[str, str], annotations: Mapping[str, str], fingerprint: str) -> str:
    """Returns the summary annotation (else the alertname label) as one line of at most 200."""
    for candidate in (annotations.get("summary", ""), labels.get("alertname", "")):
        # split() breaks on every whitespace and line break, so the title is one line.
        text = drop_refused_characters(" ".join(candidate.split()), multiline=False)
        if text:
            return text if len(text) <= TITLE_MAX else text[: TITLE_MAX - 1] + "…"
    return f"Alertmanager alert {fingerprint}"


def body_of(labels: Mapping[str, str], annotations: Mapping[str, str]) -> str:
    """Returns the description annotation, else the labels as name=value lines, within 64 KiB."""
    text = annotations.get("description", "").strip()
    if not text:
        text = "\n".join(f"{name}={labels[name]}" for name in sorted(labels))
    text = drop_refused_characters(text.replace("\r\n", "\n"), multiline=True).strip()
    encoded = text.encode("utf-8")
    if len(encoded) > BODY_MAX_BYTES:
        cut = encoded[: BODY_MAX_BYTES - len("…".encode())].decode("utf-8", errors="ignore")
        text = cut + "…"
    return text


def names_in(value: str | None) -> list[str]:
    """Returns the comma-separated names in a label value, stripped, without blanks or repeats."""
    if not value:
        return []
    return list(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))


def episode(alert: WebhookAlert, recipients_label: str, group_label: str) -> Episode:
    """Maps one alert onto Tocsin's terms; an empty label setting names nobody."""
    labels, annotations = alert.labels, alert.annotations
    title = title_of(labels, annotations, alert.fingerprint)
    return Episode(
        key=episode_key(alert.fingerprint, alert.starts_at),
        fingerprint=alert.fingerprint,
        status=alert.status,
        title=title,
        body=body_of(labels, annotations) or title,
        severity=severity_of(labels),
        usernames=names_in(labels.get(recipients_label)) if recipients_label else [],
        groups=names_in(labels.get(group_label)) if group_label else [],
    )


def decide(found: Episode, addressees: Addressees, max_recipients: int) -> AlertInput | Skip:
    """Returns the alert to ingest for a firing episode, or why it is skipped."""
    if not found.usernames and not found.groups:
        return Skip(SkipReason.NO_RECIPIENTS, "the alert has no recipients or group label")
    if not addressees.usernames:
        return Skip(SkipReason.UNKNOWN_RECIPIENTS, _not_found(addressees))
    if len(addressees.usernames) > max_recipients:
        return Skip(
            SkipReason.TOO_MANY_RECIPIENTS,
            f"{len(addressees.usernames)} recipients: the limit is {max_recipients} "
            "(MAX_RECIPIENTS_PER_ALERT)",
        )
    try:
        title, body = validate_title(found.title), validate_body(found.body)
    except InputError as exc:
        return Skip(SkipReason.INVALID, str(exc))
    return AlertInput(title, body, found.severity.value, addressees.usernames)


def _not_found(addressees: Addressees) -> str:
    parts = [
        (addressees.unknown_users, "unknown user(s)"),
        (addressees.unknown_groups, "unknown group(s)"),
        (addressees.empty_groups, "empty group(s)"),
    ]
    return "; ".join(f"{what}: {_names(names)}" for names, what in parts if names)


def _names(names: list[str]) -> str:
    shown = ", ".join(name[:64] for name in names[:_SHOWN_NAMES])
    return shown + (f" and {len(names) - _SHOWN_NAMES} more" if len(names) > _SHOWN_NAMES else "")


def partly_found(addressees: Addressees) -> str | None:
    """Returns a note on the names not found, for an alert that reaches someone all the same."""
    missing = addressees.unknown_users or addressees.unknown_groups or addressees.empty_groups
    return _not_found(addressees) if missing else None
