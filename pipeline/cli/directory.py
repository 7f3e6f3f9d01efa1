"""`tocsin users ...` and `tocsin alerts ...`: who is notified, and of what."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy import select
from sqlmodel import col

from pipeline.alerts import AlertInput, alert_usernames, resolve_alert
from pipeline.app import App
from pipeline.cli.context import run_async
from pipeline.cli.output import check_ids, emit, fail
from pipeline.durations import parse_duration
from pipeline.models import Alert
from pipeline.recipients import RecipientInput, list_recipients, upsert_recipient

users = typer.Typer(help="Recipients: contacts, channels, time zone and quiet hours.")
alerts = typer.Typer(help="Alert records that the producer turns into notifications.")

Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
USER_COLUMNS = ("id", "username", "contacts", "channels", "timezone", "quiet_hours")


@users.command("upsert")
def users_upsert(
    username: Annotated[str, typer.Argument(help="Unique user name, e.g. alice.")],
    email: Annotated[str | None, typer.Option(help="E-mail address.")] = None,
    wecom_userid: Annotated[str | None, typer.Option(help="WeCom userid to @mention.")] = None,
    wecom_webhook: Annotated[
        str | None, typer.Option(help="The user's own WeCom robot webhook (a secret).")
    ] = None,
    timezone: Annotated[
        str | None, typer.Option(help="IANA time zone, e.g. Asia/Shanghai.")
    ] = None,
    quiet_hours: Annotated[
        str | None, typer.Option(help="Quiet window in the user's zone, e.g. 22:00-07:00.")
    ] = None,
    channels: Annotated[
        str | None, typer.Option(help="Enabled channels, e.g. system,email,wecom.")
    ] = None,
    contact: Annotated[
        list[str] | None,
        typer.Option(
            help="Any channel's contact as KIND=ADDRESS (KIND= removes it); repeatable. "
            "`tocsin channels` lists the kinds."
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Creates a user or updates the fields given ("" clears a contact or quiet hours)."""
    given = {"email": email, "wecom_userid": wecom_userid, "wecom_webhook": wecom_webhook}
    contacts = {kind: value for kind, value in given.items() if value is not None}
    for item in contact or []:
        kind, equals, value = item.partition("=")
        if not equals or not kind.strip():
            fail(f"--contact {item[:40]!r}: use KIND=ADDRESS, e.g. email=alice@example.com")
        contacts[kind.strip()] = value
    data = RecipientInput(username, contacts, timezone, quiet_hours, channels)

    async def work(app: App) -> object:
        return await upsert_recipient(app.sessions, app.clock, data, app.channels)

    record = run_async(work)
    emit([record] if not as_json else record, as_json=as_json, title="user", columns=USER_COLUMNS)


@users.command("list")
def users_list(as_json: Json = False) -> None:
    """Lists every user with their settings (webhooks are never shown)."""

    async def work(app: App) -> object:
        return await list_recipients(app.sessions, app.channels)

    emit(run_async(work), as_json=as_json, title="users", columns=USER_COLUMNS)


@alerts.command("create")
def alerts_create(
    title: Annotated[str, typer.Option(help="One-line title (becomes the e-mail subject).")],
    recipient: Annotated[
        list[str] | None, typer.Option(help="A recipient user name; repeat for more.")
    ] = None,
    group: Annotated[
        list[str] | None,
        typer.Option(help="A recipient group; its members join the recipients. Repeatable."),
    ] = None,
    body: Annotated[str, typer.Option(help="The alert text.")] = "",
    severity: Annotated[str, typer.Option(help="info, warning or critical.")] = "warning",
    expires_in: Annotated[
        str | None, typer.Option(help="Stop notifying after this long, e.g. 2h.")
    ] = None,
    mention_all: Annotated[
        bool,
        typer.Option(
            "--mention-all", help="@mention everyone in the WeCom group (critical alerts only)."
        ),
    ] = False,
    dedup_key: Annotated[
        str | None,
        typer.Option(
            help="A repeat with this key within DEDUP_WINDOW notifies nobody (e.g. disk-db1)."
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Records an alert and expands it into notifications at once (`tocsin run` delivers them)."""
    try:
        expiry = parse_duration(expires_in) if expires_in else None
    except ValueError as exc:
        fail(f"--expires-in: {exc}")
        return
    data = AlertInput(
        title, body or title, severity, recipient or [], expiry, mention_all, dedup_key, group or []
    )

    async def work(app: App) -> tuple[Alert, list[str]]:
        # No key: a --dedup-key repeat is stored, and the producer's dedup stage suppresses it.
        (ingested,) = await app.ingest([(data, None)])
        async with app.sessions() as session:
            reached = await alert_usernames(session, ingested.alert.id or 0)
        return ingested.alert, reached

    alert, reached = run_async(work)
    shown = {
        "id": alert.id,
        "title": alert.title,
        "severity": alert.severity,
        "created_at": alert.created_at,
        "recipients": reached,
        "mention_all": alert.mention_all,
        "dedup_key": alert.dedup_key,
    }
    emit(
        shown if as_json else [shown],
        as_json=as_json,
        title="alert created",
        columns=("id", "title", "severity", "created_at", "recipients"),
    )


@alerts.command("list")
def alerts_list(
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
    as_json: Json = False,
) -> None:
    """Lists alerts, newest first."""

    async def work(app: App) -> list[dict[str, object]]:
        async with app.sessions() as session:
            rows = await session.execute(select(Alert).order_by(col(Alert.id).desc()).limit(limit))
            return [a.model_dump(exclude={"body"}) for a in rows.scalars()]

    emit(
        run_async(work),
        as_json=as_json,
        title="alerts",
        columns=("id", "title", "severity", "created_at", "processed_at", "resolved_at"),
    )


@alerts.command("resolve")
def alerts_resolve(
    alert_id: Annotated[int, typer.Argument(help="The alert id.", callback=check_ids)],
    as_json: Json = False,
) -> None:
    """Resolves an alert: notifications not yet sent are suppressed."""

    async def work(app: App) -> object:
        return await resolve_alert(app.sessions, app.clock, alert_id)

    resolved_at = run_async(work)
    emit(
        {"id": alert_id, "resolved_at": resolved_at} if as_json else f"alert {alert_id} resolved",
        as_json=as_json,
    )
