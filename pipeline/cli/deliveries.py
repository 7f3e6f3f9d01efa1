"""`tocsin notifications ...`, `tocsin dlq ...` and `tocsin inbox`: what happened to deliveries."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated

import typer

from channels.registry import CHANNEL_NAMES
from pipeline.app import App
from pipeline.audit import Audit, AuditView, list_records, os_actor
from pipeline.cli.bulk import confirm, parse_rate, progress, require_selection
from pipeline.cli.context import not_none, run_async
from pipeline.cli.output import check_ids, emit, fail, stdout
from pipeline.inbox import mark_read, read_inbox
from pipeline.models import State
from pipeline.notifications import (
    NotificationFilter,
    NotificationView,
    get_notification,
    list_notifications,
    notification_filter,
)
from pipeline.validation import InputError
from workers.dead_letters import DEFAULT_RATE, ReplayReport, dead, purge, replay

notifications = typer.Typer(help="Notifications and where each one stands.")
dlq = typer.Typer(help="Dead letters: inspect, replay with a fresh schedule, or purge.")

Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
Channel = Annotated[
    str | None, typer.Option(help=f"Only this channel ({', '.join(CHANNEL_NAMES)}).")
]
Reason = Annotated[str | None, typer.Option(help="Only this reason, e.g. smtp_5xx.")]
AlertId = Annotated[
    int | None, typer.Option("--alert", help="Only this alert id.", callback=check_ids)
]
Since = Annotated[
    str | None, typer.Option(help="Only rows changed since: an ISO time or an age such as 2h.")
]
Limit = Annotated[int, typer.Option(min=1, help="At most this many rows.")]
COLUMNS = ("id", "alert_id", "recipient", "channel", "state", "attempts", "not_before", "reason")


def _filter(
    channel: str | None,
    reason: str | None,
    alert: int | None,
    since: str | None,
    limit: int | None,
    states: tuple[str, ...] = (),
    ids: tuple[int, ...] = (),
) -> NotificationFilter:
    try:
        where = notification_filter(
            CHANNEL_NAMES,
            datetime.now(UTC),
            states=states,
            channel=channel,
            reason=reason,
            alert_id=alert,
            since=since,
            limit=limit,
        )
    except InputError as exc:  # the shared checks, worded for options
        fail(_as_option(str(exc)))
        raise
    return replace(where, ids=ids)


def _as_option(message: str) -> str:
    return message if message.startswith("unknown") else f"--{message}"


@notifications.command("list")
def notifications_list(
    status: Annotated[
        list[str] | None, typer.Option(help="Only this state (PENDING, QUEUED, SENT, DEAD, ...).")
    ] = None,
    channel: Channel = None,
    reason: Reason = None,
    alert: AlertId = None,
    since: Since = None,
    limit: Limit = 100,
    as_json: Json = False,
) -> None:
    """Lists notifications with their state, attempts and next time."""
    where = _filter(channel, reason, alert, since, limit, tuple(status or ()))

    async def work(app: App) -> object:
        return await list_notifications(app.sessions, where)

    emit(run_async(work), as_json=as_json, title="notifications", columns=COLUMNS)


def _show(notification_id: int, as_json: bool, *, dead_only: bool) -> None:
    async def work(app: App) -> object:
        return await get_notification(app.sessions, notification_id)

    view = not_none(run_async(work), f"no notification {notification_id}")
    if dead_only and view.state != State.DEAD.value:
        fail(f"notification {notification_id} is {view.state}, not DEAD")
    if as_json:
        emit(view, as_json=True)
        return
    emit([view], as_json=False, title=f"notification {notification_id}", columns=COLUMNS)
    if view.error:
        stdout.print(f"last error: {view.error}", highlight=False, markup=False)
    for line in fallback_lines(view):
        stdout.print(line, highlight=False, markup=False)
    emit(
        view.attempt_log,
        as_json=False,
        title="attempts",
        columns=("attempt", "started_at", "duration_seconds", "outcome", "reason", "detail"),
    )


def fallback_lines(view: NotificationView) -> list[str]:
    """Says which notification this one stands in for, and which stand in for it."""
    lines = [f"fallback of #{view.fallback_of}"] if view.fallback_of is not None else []
    return lines + [
        f"fell back to #{link['id']} ({link['channel']}, {link['state']})"
        for link in view.fell_back_to
    ]


@notifications.command("show")
def notifications_show(
    notification_id: Annotated[
        int, typer.Argument(help="The notification id.", callback=check_ids)
    ],
    as_json: Json = False,
) -> None:
    """Shows one notification and every attempt made to deliver it."""
    _show(notification_id, as_json, dead_only=False)


@dlq.command("list")
def dlq_list(
    channel: Channel = None,
    reason: Reason = None,
    alert: AlertId = None,
    since: Since = None,
    limit: Limit = 100,
    as_json: Json = False,
) -> None:
    """Lists dead-lettered notifications with their reason."""
    where = dead(_filter(channel, reason, alert, since, limit))

    async def work(app: App) -> object:
        return await list_notifications(app.sessions, where)

    emit(
        run_async(work),
        as_json=as_json,
        title="dead letters",
        columns=(
            "id",
            "alert_id",
            "recipient",
            "channel",
            "attempts",
            "reason",
            "error",
            "updated_at",
        ),
    )


@dlq.command("show")
def dlq_show(
    notification_id: Annotated[
        int, typer.Argument(help="The notification id.", callback=check_ids)
    ],
    as_json: Json = False,
) -> None:
    """Shows one dead letter with every attempt and its error."""
    _show(notification_id, as_json, dead_only=True)


Ids = Annotated[
    list[int] | None,
    typer.Option("--id", help="A dead letter id; repeat for more.", callback=check_ids),
]
All = Annotated[
    bool, typer.Option("--all", help="Every dead letter (matching the filters, if any).")
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would happen; change nothing.")]
Yes = Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")]


@dataclass(frozen=True)
class Bulk:
    """A replay or purge as asked for on the command line."""

    verb: str
    where: NotificationFilter
    every: bool
    filtered: bool
    selection: dict[str, object]

    @property
    def past(self) -> str:
        """The verb in the past tense, for reports."""
        return "replayed" if self.verb == "replay" else "purged"


def _bulk(
    verb: str,
    ids: list[int] | None,
    every: bool,
    channel: str | None,
    reason: str | None,
    alert: int | None,
    since: str | None,
) -> Bulk:
    filtered = any(value is not None for value in (channel, reason, alert, since))
    require_selection(bool(ids), every, filtered)
    where = _filter(channel, reason, alert, since, None, ids=tuple(ids or ()))
    selection: dict[str, object] = {
        "ids": ids or None,
        "all": every,
        "channel": channel,
        "reason": reason,
        "alert": alert,
        "since": since,
    }
    return Bulk(verb, where, every, filtered, {k: v for k, v in selection.items() if v})


def _summary(bulk: Bulk) -> str | None:
    """Returns what the action would do, for the question asked on a terminal."""

    async def look(app: App) -> ReplayReport:
        return await replay(app.sessions, app.clock, app.metrics, bulk.where, dry_run=True)

    report = run_async(look)
    if not report.ids:
        return None
    per_channel = ", ".join(f"{c}: {n}" for c, n in sorted(report.by_channel.items()))
    return f"{len(report.ids)} dead letter(s) will be {bulk.past} ({per_channel})"


def _run_bulk(
    bulk: Bulk, *, yes: bool, dry_run: bool, as_json: bool, rate: str | None = None
) -> None:
    if not (yes or dry_run):
        confirm(bulk.verb, lambda: _summary(bulk), unbounded=bulk.every and not bulk.filtered)
    audit = Audit(os_actor(), {**bulk.selection, **({"rate": rate} if rate else {})})
    per_second = parse_rate(rate) if rate else None

    with progress(f"{bulk.verb}:") as on_progress:

        async def work(app: App) -> ReplayReport:
            if bulk.verb == "replay":
                return await replay(
                    app.sessions,
                    app.clock,
                    app.metrics,
                    bulk.where,
                    dry_run=dry_run,
                    audit=audit,
                    rate=per_second,
                    on_progress=on_progress,
                )
            return await purge(
                app.sessions,
                app.clock,
                bulk.where,
                dry_run=dry_run,
                audit=audit,
                on_progress=on_progress,
            )

        report = run_async(work)
    _print_report(bulk.past, report, as_json)


def _print_report(verb: str, report: ReplayReport, as_json: bool) -> None:
    if as_json:
        emit({"action": verb, **report.__dict__}, as_json=True)
        return
    tense = "would be" if report.dry_run else "were"
    count = len(report.ids)
    per_channel = ", ".join(f"{c}: {n}" for c, n in sorted(report.by_channel.items())) or "none"
    stdout.print(f"{count} dead letter(s) {tense} {verb} ({per_channel})", highlight=False)
    if report.ids:
        stdout.print(
            f"ids: {', '.join(map(str, report.ids[:50]))}" + (" …" if count > 50 else ""),
            highlight=False,
        )


@dlq.command("replay")
def dlq_replay(
    ids: Ids = None,
    every: All = False,
    channel: Channel = None,
    reason: Reason = None,
    alert: AlertId = None,
    since: Since = None,
    rate: Annotated[
        str,
        typer.Option(
            help="Release at most this many a second (5/s, 300/m), so a recovered provider "
            "is not flooded."
        ),
    ] = DEFAULT_RATE,
    dry_run: DryRun = False,
    yes: Yes = False,
    as_json: Json = False,
) -> None:
    """Puts dead letters back to PENDING with a fresh retry schedule, paced and audited.

    Needs --id, a filter, or --all; --all without a filter also needs --yes (or a terminal to
    confirm on). Each run is recorded in `tocsin audit`.
    """
    parse_rate(rate)  # a bad rate fails before anything is asked or read
    bulk = _bulk("replay", ids, every, channel, reason, alert, since)
    _run_bulk(bulk, yes=yes, dry_run=dry_run, as_json=as_json, rate=rate)


@dlq.command("purge")
def dlq_purge(
    ids: Ids = None,
    every: All = False,
    channel: Channel = None,
    reason: Reason = None,
    alert: AlertId = None,
    since: Since = None,
    dry_run: DryRun = False,
    yes: Yes = False,
    as_json: Json = False,
) -> None:
    """Takes dead letters out of the queue as SUPPRESSED (purged); the rows stay, audited.

    Needs --id, a filter, or --all; --all without a filter also needs --yes (or a terminal to
    confirm on). Each run is recorded in `tocsin audit`.
    """
    bulk = _bulk("purge", ids, every, channel, reason, alert, since)
    _run_bulk(bulk, yes=yes, dry_run=dry_run, as_json=as_json)


def audit(
    limit: Limit = 50,
    as_json: Json = False,
) -> None:
    """Lists the audit log of bulk actions (replay, purge), newest first: who, when, what."""

    async def work(app: App) -> list[AuditView]:
        return await list_records(app.sessions, limit)

    records = run_async(work)
    if as_json:
        emit(records, as_json=True)
        return
    emit(
        [
            {
                **record.__dict__,
                "selection": json.dumps(record.selection, sort_keys=True),
                "ids": _ids_shown(record.ids),
            }
            for record in records
        ],
        as_json=False,
        title="audit log",
        columns=("id", "at", "actor", "action", "count", "selection", "ids"),
    )


def _ids_shown(ids: list[int], most: int = 10) -> str:
    shown = ",".join(map(str, ids[:most]))
    return shown + (f",… ({len(ids)})" if len(ids) > most else "")


def inbox(
    username: Annotated[str, typer.Argument(help="Whose inbox.")],
    unread: Annotated[bool, typer.Option("--unread", help="Only unread messages.")] = False,
    mark: Annotated[bool, typer.Option("--mark-read", help="Mark every message read.")] = False,
    limit: Limit = 100,
    as_json: Json = False,
) -> None:
    """Shows a user's in-app inbox (system channel), with read/unread."""

    async def work(app: App) -> tuple[list[object], int]:
        items = await read_inbox(app.sessions, username, unread_only=unread, limit=limit)
        marked = await mark_read(app.sessions, app.clock, username) if mark else 0
        return list(items), marked

    items, marked = run_async(work)
    if as_json:
        emit({"user": username, "messages": items, "marked_read": marked}, as_json=True)
        return
    emit(
        items,
        as_json=False,
        title=f"inbox of {username}",
        columns=("id", "severity", "title", "created_at", "read"),
    )
    if mark:
        stdout.print(f"{marked} message(s) marked read")
