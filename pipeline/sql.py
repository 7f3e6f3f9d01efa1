"""Dialect-aware SQL pieces shared by the stages (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Insert
from sqlmodel import SQLModel


def insert_ignoring_duplicates(session: AsyncSession, model: type[SQLModel]) -> Insert:
    """Returns INSERT ... ON CONFLICT DO NOTHING into model's table for the session's dialect."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    statement: Insert
    if dialect == "postgresql":
        statement = postgresql.insert(model).on_conflict_do_nothing()
    else:
        statement = sqlite.insert(model).on_conflict_do_nothing()
    return statement


def first_ints(rows: Iterable[Any]) -> list[int]:
    """Returns the first column of result rows as ints (SQLModel types primary keys Optional)."""
    return [int(row[0]) for row in rows]


def id_channel_pairs(rows: Iterable[Any]) -> list[tuple[int, str]]:
    """Returns (id, channel) pairs from rows of RETURNING id, channel."""
    return [(int(row[0]), str(row[1])) for row in rows]
