"""Bearer-token authentication: 401 without a valid token, 403 without the scope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pipeline.api.deps import tocsin
from pipeline.app import App
from pipeline.tokens import Scope, TokenView, verify_token

_bearer = HTTPBearer(auto_error=False, description="A token from `tocsin tokens create`.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def require(scope: Scope) -> Callable[..., Awaitable[TokenView]]:
    """Returns a dependency that yields the caller's token if it may act in scope."""

    async def caller(
        request: Request,
        app: Annotated[App, Depends(tocsin)],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> TokenView:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(401, "a bearer token is required", headers=_CHALLENGE)
        token = await verify_token(app.sessions, app.clock, credentials.credentials)
        if token is None:
            raise HTTPException(401, "the token is unknown or revoked", headers=_CHALLENGE)
        if not token.allows(scope):
            raise HTTPException(403, f"the token {token.name!r} lacks the {scope.value} scope")
        request.state.actor = f"token:{token.name}"
        return token

    return caller


Ingest = Annotated[TokenView, Depends(require(Scope.INGEST))]
Read = Annotated[TokenView, Depends(require(Scope.READ))]
Admin = Annotated[TokenView, Depends(require(Scope.ADMIN))]
