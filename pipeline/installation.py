"""Names this installation: the one row of the `installation` table, made on first use."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlmodel import col

from pipeline.db import SessionFactory
from pipeline.models import Installation
from pipeline.sql import insert_ignoring_duplicates

_ROW = 1


async def installation_id(sessions: SessionFactory, now: datetime) -> str:
    """Returns this installation's id, first storing a random one if the table has no row.

    `tocsin db upgrade` makes the row; a database made by `SQLModel.metadata.create_all` (tests)
    has none. Processes that start together race to insert: each inserts ignoring a conflict,
    then every one of them uses the row that was stored.
    """
    stored = await _stored(sessions)
    if stored is None:
        async with sessions() as session:
            await session.execute(
                insert_ignoring_duplicates(session, Installation).values(
                    id=_ROW, installation_id=str(uuid.uuid4()), created_at=now
                )
            )
            await session.commit()
        stored = await _stored(sessions)
    if stored is None:
        raise RuntimeError("the installation row could not be stored")
    try:
        return str(uuid.UUID(stored))  # canonical form
    except ValueError:
        raise RuntimeError("installation.installation_id is not a UUID: fix the row") from None


async def _stored(sessions: SessionFactory) -> str | None:
    async with sessions() as session:
        found = await session.scalar(
            select(col(Installation.installation_id)).where(col(Installation.id) == _ROW)
        )
    return None if found is None else str(found)
