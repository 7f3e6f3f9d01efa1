"""Bearer tokens of the HTTP API: made once and shown once, stored as a hash, scoped, revocable."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from pipeline.clock import Clock
from pipeline.db import SessionFactory
from pipeline.models import ApiToken
from pipeline.validation import InputError

PREFIX = "tocsin_"
LAST_USED_EVERY = timedelta(minutes=1)
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Scope(StrEnum):
    """What a token may do: send alerts in, read, or administer (which includes both)."""

    INGEST = "ingest"
    READ = "read"
    ADMIN = "admin"


@dataclass(frozen=True)
class TokenView:
    """A token as lists show it: never the token, never its hash."""

    id: int
    name: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def allows(self, scope: Scope) -> bool:
        """True when the token may act in scope (admin may do everything)."""
        return scope.value in self.scopes or Scope.ADMIN.value in self.scopes


def token_hash(token: str) -> str:
    """Returns the stored form of a token: its SHA-256 in hex (tokens are random, 256 bits)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_scopes(values: list[str]) -> list[Scope]:
    """Returns the scopes named (comma-separated or repeated), or raises InputError."""
    names = [part.strip().lower() for value in values for part in value.split(",") if part.strip()]
    if not names:
        raise InputError("give at least one scope: ingest, read or admin")
    try:
        return sorted(set(map(Scope, names)))
    except ValueError:
        bad = next(name for name in names if name not in Scope.__members__.values())
        raise InputError(f"unknown scope {bad!r}: choose from ingest, read, admin") from None


async def create_token(
    sessions: SessionFactory, clock: Clock, name: str, scopes: list[Scope]
) -> tuple[TokenView, str]:
    """Stores a new token's hash and returns its view and the token, which is shown only now."""
    if _NAME.fullmatch(name) is None:
        raise InputError(
            f"token name {name[:40]!r} is invalid: use 1-64 letters, digits, '.', '_' or '-'"
        )
    token = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        name=name,
        scopes=",".join(scope.value for scope in scopes),
        token_hash=token_hash(token),
        created_at=clock.now(),
    )
    try:
        async with sessions() as session, session.begin():
            session.add(row)
    except IntegrityError:
        raise InputError(
            f"a token named {name!r} exists: revoke it or choose another name"
        ) from None
    return _view(row), token


async def list_tokens(sessions: SessionFactory) -> list[TokenView]:
    """Returns every token, revoked ones too, by name."""
    async with sessions() as session:
        rows = await session.execute(select(ApiToken).order_by(col(ApiToken.name)))
        return [_view(row) for row in rows.scalars()]


async def revoke_token(sessions: SessionFactory, clock: Clock, name: str) -> TokenView:
    """Revokes the named token at once; raises InputError when there is no such live token."""
    async with sessions() as session, session.begin():
        row = (
            await session.execute(select(ApiToken).where(col(ApiToken.name) == name))
        ).scalar_one_or_none()
        if row is None:
            raise InputError(f"no token named {name!r}")
        if row.revoked_at is None:
            row.revoked_at = clock.now()
        return _view(row)


async def verify_token(sessions: SessionFactory, clock: Clock, token: str) -> TokenView | None:
    """Returns the live token's view, or None for an unknown or revoked token."""
    if not token.startswith(PREFIX) or len(token) > 128:
        return None
    wanted = token_hash(token)
    async with sessions() as session:
        row = (
            await session.execute(select(ApiToken).where(col(ApiToken.token_hash) == wanted))
        ).scalar_one_or_none()
    # The lookup is by hash, so timing says nothing about the token; the comparison is
    # constant-time all the same.
    if row is None or not hmac.compare_digest(row.token_hash, wanted) or row.revoked_at:
        return None
    now = clock.now()
    # A write per request would serialise every call on SQLite: once a minute is enough.
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_EVERY:
        async with sessions() as session, session.begin():
            await session.execute(
                update(ApiToken).where(col(ApiToken.id) == row.id).values(last_used_at=now)
            )
        row.last_used_at = now
    return _view(row)


def _view(row: ApiToken) -> TokenView:
    return TokenView(
        id=row.id or 0,
        name=row.name,
        scopes=[scope for scope in row.scopes.split(",") if scope],
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )
