"""`tocsin groups ...`: recipient groups that alerts (and Alertmanager's team label) address."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.app import App
from pipeline.cli.context import run_async
from pipeline.cli.output import emit
from pipeline.groups import GroupRecord, delete_group, get_group, list_groups, upsert_group

groups = typer.Typer(help="Recipient groups, e.g. an on-call team: upsert, list, show, delete.")

Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
Name = Annotated[str, typer.Argument(help="The group's name, e.g. db-oncall.")]
COLUMNS = ("name", "members", "created_at", "updated_at")


@groups.command("upsert")
def groups_upsert(
    name: Name,
    member: Annotated[
        list[str] | None, typer.Option(help="A member's username; repeat for more.")
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Set exactly these members (default: add them).")
    ] = False,
    as_json: Json = False,
) -> None:
    """Creates a group or adds members to it; every member must be an existing user."""

    async def work(app: App) -> GroupRecord:
        record, _ = await upsert_group(app.sessions, app.clock, name, member or [], replace=replace)
        return record

    record = run_async(work)
    emit(record if as_json else [record], as_json=as_json, title="group", columns=COLUMNS)


@groups.command("list")
def groups_list(as_json: Json = False) -> None:
    """Lists every group with its members."""

    async def work(app: App) -> list[GroupRecord]:
        return await list_groups(app.sessions)

    emit(run_async(work), as_json=as_json, title="groups", columns=COLUMNS)


@groups.command("show")
def groups_show(name: Name, as_json: Json = False) -> None:
    """Shows one group with its members."""

    async def work(app: App) -> GroupRecord:
        return await get_group(app.sessions, name)

    record = run_async(work)
    emit(record if as_json else [record], as_json=as_json, title="group", columns=COLUMNS)


@groups.command("delete")
def groups_delete(name: Name, as_json: Json = False) -> None:
    """Deletes a group (its users stay)."""

    async def work(app: App) -> GroupRecord:
        return await delete_group(app.sessions, name)

    record = run_async(work)
    emit(
        {"deleted": record} if as_json else f"group {record.name} deleted",
        as_json=as_json,
    )
