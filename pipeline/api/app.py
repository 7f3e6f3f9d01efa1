"""Builds the ASGI app: routers, problem+json errors, body limits, one App behind them."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from pipeline.api import (
    alertmanager,
    alerts,
    groups,
    health,
    inbox,
    operations,
    problems,
    scheduler,
    seed_settings,
    users,
)
from pipeline.api.limits import BodyLimits
from pipeline.app import App
from pipeline.inbox_feed import InboxFeed

DESCRIPTION = (
    "Alerts in (directly or from Alertmanager), the in-app inbox and operations out. Every "
    "endpoint but /healthz and /readyz needs a bearer token from `tocsin tokens create`, "
    "with the scope it names (ingest, read or admin; admin may do everything). Errors are "
    "application/problem+json (RFC 9457)."
)


def create_api(app: App) -> FastAPI:
    """Returns the API over app's database, queue and clock."""
    api = FastAPI(
        title="Tocsin",
        version="1",
        description=DESCRIPTION,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    api.state.tocsin = app
    api.state.inbox_feed = InboxFeed(app.sessions)  # one poll for every open inbox stream
    problems.install(api)
    api.add_middleware(
        BodyLimits,
        max_bytes=app.settings.api_max_body_bytes,
        timeout=app.settings.api_body_timeout.total_seconds(),
        overrides={
            ("PUT", "/api/v1/users"): max(
                users.BULK_MAX_BODY_BYTES, app.settings.api_max_body_bytes
            ),
        },
    )
    api.include_router(health.router)
    for router in _routers():
        api.include_router(router, prefix="/api/v1")
    problems.document_common(api)
    return api


async def close_streams(api: FastAPI) -> None:
    """Ends every open event stream, so a graceful shutdown does not wait on them."""
    feed: InboxFeed = api.state.inbox_feed
    await feed.close()


def _routers() -> list[APIRouter]:
    """The versioned routers; each module owns one resource."""
    return [
        alerts.router,
        groups.router,
        alertmanager.router,
        users.router,
        inbox.router,
        # Before operations: /notifications/settings is not /notifications/{id}.
        seed_settings.router,
        operations.router,
        scheduler.router,
    ]
