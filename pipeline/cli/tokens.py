"""`tocsin tokens ...`: the bearer tokens of the HTTP API."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.app import App
from pipeline.cli.context import friendly_errors, run_async
from pipeline.cli.output import emit, stdout
from pipeline.tokens import TokenView, create_token, list_tokens, parse_scopes, revoke_token

tokens = typer.Typer(help="API tokens: create (shown once), list, revoke.")

Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
COLUMNS = ("name", "scopes", "created_at", "last_used_at", "revoked_at")


@tokens.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="Who uses it, e.g. ci-bot or alertmanager.")],
    scope: Annotated[
        list[str],
        typer.Option(help="ingest (send alerts), read, or admin (everything); repeat for more."),
    ],
    as_json: Json = False,
) -> None:
    """Creates a token and prints it once: it is stored only as a hash."""
    with friendly_errors():
        scopes = parse_scopes(scope)

    async def work(app: App) -> tuple[TokenView, str]:
        return await create_token(app.sessions, app.clock, name, scopes)

    view, token = run_async(work)
    if as_json:
        emit({"name": view.name, "scopes": view.scopes, "token": token}, as_json=True)
        return
    stdout.print(f"token {view.name} ({', '.join(view.scopes)}); shown only now:", highlight=False)
    stdout.print(token, highlight=False, markup=False)


@tokens.command("list")
def tokens_list(as_json: Json = False) -> None:
    """Lists tokens (never the tokens themselves), revoked ones too."""

    async def work(app: App) -> list[TokenView]:
        return await list_tokens(app.sessions)

    emit(run_async(work), as_json=as_json, title="API tokens", columns=COLUMNS)


@tokens.command("revoke")
def tokens_revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    as_json: Json = False,
) -> None:
    """Revokes a token at once: every later request with it gets 401."""

    async def work(app: App) -> TokenView:
        return await revoke_token(app.sessions, app.clock, name)

    view = run_async(work)
    emit(view if as_json else f"token {view.name} revoked", as_json=as_json)
