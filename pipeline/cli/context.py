"""Builds settings and the app for one CLI command, turning every known failure into one line."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import SettingsError
from sqlalchemy.exc import DBAPIError

from pipeline import loop as event_loop
from pipeline.app import App, registered_channels, secrets_of
from pipeline.channel_set import ChannelSet
from pipeline.cli.output import fail
from pipeline.config import Settings
from pipeline.durations import format_duration
from pipeline.listeners import CannotListen
from pipeline.logs import configure_logging
from pipeline.queues.base import QueueUnavailable
from pipeline.redact import Redactor
from pipeline.validation import InputError

T = TypeVar("T")


def load_settings() -> Settings:
    """Reads settings from the environment, or exits naming the bad variable."""
    return _configured(Settings)


def load_channels() -> ChannelSet:
    """Reads every registered channel's settings, or exits naming the bad variable."""
    return _configured(registered_channels)


def _configured(build: Callable[[], T]) -> T:
    try:
        return build()
    except SettingsError as exc:
        fail(f"invalid configuration: {exc}")
        raise AssertionError("unreachable") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        # The message only: pydantic's full text echoes the input, which may hold a secret.
        message = first["msg"].removeprefix("Value error, ")
        where = ".".join(str(p) for p in first["loc"]).upper()
        fail(f"invalid configuration {where}: {message}".replace(" :", ":"))
        raise AssertionError("unreachable") from exc


@contextmanager
def friendly_errors(
    settings: Settings | None = None, channels: ChannelSet | None = None
) -> Iterator[None]:
    """Maps bad input, a missing schema and an unreachable broker to one-line errors."""
    redact = Redactor(secrets_of(settings, channels) if settings else [])
    try:
        yield
    except InputError as exc:
        fail(redact(str(exc)))
    except DBAPIError as exc:
        fail(database_error(exc, redact), 1)
    except OverflowError as exc:
        fail(f"a number is out of range: {redact(str(exc))}")
    except QueueUnavailable as exc:
        fail(f"queue unavailable: {redact(str(exc))}", 1)
    except TimeoutError:
        # Broker timeouts arrive as QueueUnavailable; a bare one is the database's driver.
        fail(database_timeout(settings), 1)
    except CannotListen as exc:
        fail(str(exc), 1)
    except (OSError, ConnectionError) as exc:
        fail(f"cannot connect: {redact(str(exc)) or type(exc).__name__}", 1)


_NO_TABLE = re.compile(r'no such table|relation "[^"]*" does not exist')
_NO_DATABASE = re.compile(r'database "[^"]*" does not exist')


def database_error(exc: DBAPIError, redact: Redactor) -> str:
    """Returns the one-line message for a database error: missing schema, database, or as is."""
    text = str(exc.orig) if exc.orig is not None else str(exc)
    if _NO_TABLE.search(text):
        return "the database has no Tocsin tables yet: run `tocsin db upgrade` first"
    missing = _NO_DATABASE.search(text)
    if missing:
        return f"{missing.group(0)}: create it (e.g. createdb), then run `tocsin db upgrade`"
    first = text.strip().splitlines()[0] if text.strip() else type(exc.orig).__name__
    return f"database error: {redact(first)}"


def database_timeout(settings: Settings | None) -> str:
    """Returns the one-line message for a database that accepted no answer in time."""
    if settings is None:
        return "the database did not answer in time"
    connect = format_duration(settings.db_connect_timeout)
    command = format_duration(settings.db_command_timeout)
    return (
        f"the database did not answer within DB_CONNECT_TIMEOUT ({connect}) or "
        f"DB_COMMAND_TIMEOUT ({command}): is it up, and reachable from here?"
    )


def run_async(
    work: Callable[[App], Awaitable[T]],
    *,
    verbose: bool = False,
    app_settings: Settings | None = None,
) -> T:
    """Runs work against a fresh app in a new event loop, with friendly errors."""
    settings = app_settings or load_settings()
    channels = load_channels()
    # Short commands log warnings only, so a terminal shows just their answer; LOG_LEVEL=DEBUG
    # is asked for explicitly and is honoured everywhere (on stderr: stdout stays clean).
    debug = settings.log_level.upper() == "DEBUG"
    configure_logging(
        settings.log_level if verbose or debug else "WARNING",
        settings.log_format,
        Redactor(secrets_of(settings, channels)),
    )

    async def main() -> T:
        app = App.create(settings, channels=channels)
        try:
            return await work(app)
        finally:
            await app.aclose()

    with friendly_errors(settings, channels):
        return event_loop.run(main())
    raise AssertionError("unreachable")


def not_none(value: Any, message: str) -> Any:
    """Returns value, or fails with message when it is None."""
    if value is None:
        fail(message)
    return value
