"""The audit log: who changed notifications in bulk (replay, purge), when, why and which rows."""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from pipeline.db import SessionFactory
from pipeline.models import AuditRecord


@dataclass(frozen=True)
class Audit:
    """Who asks for a bulk action and with which selection; recorded with the rows it changed."""

    actor: str
    selection: Mapping[str, object]


@dataclass(frozen=True)
class AuditView:
    """An audit record as `tocsin audit` shows it."""

    id: int
    at: datetime
    actor: str
    action: str
    selection: dict[str, object]
    count: int
    ids: list[int]


def os_actor() -> str:
    """Returns the operating-system user running this process, as "os:name"."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, e.g. an arbitrary container uid
        name = f"uid {os.getuid()}"
    return f"os:{name}"


def add_record(
    session: AsyncSession, audit: Audit, action: str, at: datetime, ids: Sequence[int]
) -> None:
    """Adds the audit record of an action to the session's transaction (it commits with it)."""
    session.add(
        AuditRecord(
            at=at,
            actor=audit.actor,
            action=action,
            selection=json.dumps(dict(audit.selection), sort_keys=True, default=str),
            count=len(ids),
            ids=json.dumps(list(ids)),
        )
    )


async def list_records(
    sessions: SessionFactory, limit: int | None = 100, *, before: int | None = None
) -> list[AuditView]:
    """Returns the newest audit records first (only those with an id below before, if given)."""
    statement = select(AuditRecord).order_by(col(AuditRecord.id).desc()).limit(limit)
    if before is not None:
        statement = statement.where(col(AuditRecord.id) < before)
    async with sessions() as session:
        return [_view(record) for record in (await session.execute(statement)).scalars()]


def _view(record: AuditRecord) -> AuditView:
    return AuditView(
        id=record.id or 0,
        at=record.at,
        actor=record.actor,
        action=record.action,
        selection=json.loads(record.selection),
        count=record.count,
        ids=json.loads(record.ids),
    )
