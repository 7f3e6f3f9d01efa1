"""The installation id: made by the migration or on first use, one per database."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, func, select, update

from pipeline.config import Settings
from pipeline.db import SessionFactory, create_engine
from pipeline.db import session_factory as sessions_of
from pipeline.installation import installation_id
from pipeline.models import Installation

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


async def test_the_migration_names_the_installation(session_factory: SessionFactory) -> None:
    first = await installation_id(session_factory, NOW)
    assert await installation_id(session_factory, NOW) == first
    assert str(uuid.UUID(first)) == first
    assert uuid.UUID(first).version == 4


async def test_processes_racing_on_a_database_without_the_row_agree(
    db_settings: Settings, session_factory: SessionFactory
) -> None:
    async with session_factory() as session:
        await session.execute(delete(Installation))
        await session.commit()
    # Separate engines: separate processes starting at the same moment.
    engines = [create_engine(db_settings) for _ in range(4)]
    try:
        ids = await asyncio.gather(*(installation_id(sessions_of(e), NOW) for e in engines))
    finally:
        for engine in engines:
            await engine.dispose()
    assert len(set(ids)) == 1
    async with session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(Installation)) == 1


async def test_a_row_that_is_not_a_uuid_fails_loudly(session_factory: SessionFactory) -> None:
    async with session_factory() as session:
        await session.execute(update(Installation).values(installation_id="not-a-uuid"))
        await session.commit()
    with pytest.raises(RuntimeError, match="not a UUID"):
        await installation_id(session_factory, NOW)
