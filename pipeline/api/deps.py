"""What routes are given: the process's App (database, queue, clock, settings)."""

from __future__ import annotations

from fastapi import Request

from pipeline.app import App


def tocsin(request: Request) -> App:
    """Returns the App the API was built with."""
    app: App = request.app.state.tocsin
    return app
