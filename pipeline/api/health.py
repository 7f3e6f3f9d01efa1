"""Liveness and readiness, without a token (for orchestrators and load balancers)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from pipeline.api.deps import tocsin
from pipeline.app import App

router = APIRouter(tags=["health"])
_CHECK_TIMEOUT = 5.0


class Health(BaseModel):
    """Whether the process (and, for readiness, what it depends on) is up."""

    status: str
    database: str | None = None
    queue: str | None = None


@router.get("/healthz", response_model=Health, response_model_exclude_none=True)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(app: Annotated[App, Depends(tocsin)]) -> JSONResponse:
    """The database and the queue answer (503 otherwise)."""
    database = await _check(_database(app))
    queue = await _check(_queue(app))
    ready = database == "ok" and queue == "ok"
    body = Health(status="ok" if ready else "unavailable", database=database, queue=queue)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


async def _database(app: App) -> None:
    async with app.sessions() as session:
        await session.execute(text("SELECT 1"))


async def _queue(app: App) -> None:
    await app.queue.connect()
    await app.queue.stats(app.channels.names[:1])  # one round trip to the broker


async def _check(probe: object) -> str:
    try:
        await asyncio.wait_for(probe, _CHECK_TIMEOUT)  # type: ignore[arg-type]
    except Exception as exc:  # any failure means "not ready"; the reason is its class only
        return f"unavailable ({type(exc).__name__})"
    return "ok"
