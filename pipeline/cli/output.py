"""How the CLI prints: one JSON document on stdout with --json, rich tables otherwise."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from enum import Enum
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value


def emit_json(document: Any) -> None:
    """Writes one JSON document to stdout."""
    sys.stdout.write(json.dumps(_plain(document), ensure_ascii=False, indent=2) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def emit_table(title: str, rows: Sequence[Any], columns: Sequence[str]) -> None:
    """Prints rows (dataclasses or dicts) as a table with the given columns."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column.replace("_", " "))
    for row in rows:
        data = _plain(row) if dataclasses.is_dataclass(row) else row
        table.add_row(*(escape(_cell(getattr(row, c, data.get(c)))) for c in columns))
    stdout.print(table)
    if not rows:
        stdout.print("[dim](none)[/dim]")


def emit(document: Any, *, as_json: bool, title: str = "", columns: Sequence[str] = ()) -> None:
    """Prints a listing as JSON or as a table."""
    if as_json:
        emit_json(document)
    elif columns:
        emit_table(title, document, columns)
    else:
        stdout.print(document)


# Ids are 32-bit on PostgreSQL; larger ones could never match and would reach the driver.
MAX_ID = 2**31 - 1


def check_ids(value: Any) -> Any:
    """Typer callback: exits with one line when an id (or any id in a list) is out of range."""
    for item in value if isinstance(value, list) else [value]:
        if item is not None and not 1 <= item <= MAX_ID:
            fail(f"id {item} is out of range: ids run from 1 to {MAX_ID}")
    return value


def fail(message: str, code: int = 2) -> None:
    """Prints a one-line error on stderr and exits with code."""
    stderr.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(code)
