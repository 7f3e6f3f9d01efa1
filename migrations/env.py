"""Runs Alembic migrations against DATABASE_URL from the same Settings every process uses.

Invoked two ways: `pipeline.db.upgrade(settings)` (which puts the Settings object in
`config.attributes["settings"]`) and the plain `alembic` CLI (which reads Settings from the
environment and `.env`). Online migrations run on the async engine through `asyncio.run`,
so a caller already inside an event loop must run `pipeline.db.upgrade` in a thread
(`await asyncio.to_thread(upgrade, settings)`); calling it directly raises RuntimeError.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from pathlib import Path
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

import pipeline.models
from pipeline.config import Settings

config = context.config
_settings: Settings = config.attributes.get("settings") or Settings()

# Only the CLI gets alembic.ini's logging: reconfiguring logging from inside a Tocsin
# process would replace its structured logging (and pytest's capture handlers).
if (
    "settings" not in config.attributes
    and config.config_file_name is not None
    and Path(config.config_file_name).is_file()
):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = SQLModel.metadata


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Revisions must not import application code that may change later: the UTC
    # decorator is rendered as its storage type, which is all the schema knows about.
    if type_ == "type" and isinstance(obj, pipeline.models.UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_item=_render_item,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=_settings.is_sqlite,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Writes the migration SQL for DATABASE_URL to stdout (`alembic upgrade --sql`)."""
    _configure(
        url=_settings.database_url.get_secret_value(),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    # NullPool: a one-shot migration keeps no connections once it is done.
    url = _settings.database_url.get_secret_value()
    engine = create_async_engine(url, poolclass=pool.NullPool, hide_parameters=True)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    """Migrates DATABASE_URL over the async driver (needs no running event loop)."""
    asyncio.run(_run_async())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
