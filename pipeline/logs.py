"""Structured logging: one JSON object per line on stderr (or readable console lines).

structlog's own events and every standard-library record (httpx, httpcore, aio-pika, aiormq,
asyncpg, SQLAlchemy, Alembic, ...) end in the same processors, so one scrubber sees every line.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import structlog
from structlog.stdlib import ProcessorFormatter

from pipeline.redact import Redactor

_PLAIN = (bool, int, float, type(None))
# Libraries that pin their own logger's level on import (SQLAlchemy sets WARNING unless it
# finds a level already set): configure_logging sets theirs, so LOG_LEVEL=DEBUG reaches them.
_PINNED = ("sqlalchemy",)
# Loggers whose DEBUG lines are data, not diagnostics: SQLAlchemy's engine logs every result
# row and aiosqlite every statement's parameters (contacts, recipients' webhook keys: values
# no redactor is told). They stop at INFO: statements, with the engine hiding parameters.
_DATA_LOGGERS = ("sqlalchemy.engine", "aiosqlite")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler configure_logging installs; found by type to replace, never to stack."""


# Values up to this long are redacted once and remembered: the secrets are fixed at start, and
# most values of a line (channel, outcome, state, reason) repeat on every delivery.
_REMEMBERED_LENGTH = 64


def scrubber(redact: Callable[[str], str]) -> Callable[[object], object]:
    """Returns a function that redacts a value, its nested items and any other object's str()."""
    remembered = functools.lru_cache(maxsize=4096)(redact)

    def scrub(value: object) -> object:
        if isinstance(value, str):
            return remembered(value) if len(value) <= _REMEMBERED_LENGTH else redact(value)
        if isinstance(value, _PLAIN):
            return value
        if isinstance(value, Mapping):
            return {scrub(k) if isinstance(k, str) else k: scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [scrub(item) for item in value]
        return redact(str(value))

    return scrub


def scrub_processor(redact: Callable[[str], str]) -> structlog.typing.Processor:
    """Returns the structlog processor that removes secrets from every value of an event."""
    scrub = scrubber(redact)

    def scrub_secrets(
        _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> Mapping[str, Any]:
        # Last line of defence: nothing that reaches a log line may carry a secret. It runs
        # after format_exc_info, so rendered tracebacks are scrubbed as well.
        return {key: scrub(value) for key, value in event.items()}

    return scrub_secrets


def configure_logging(
    level: str = "INFO", fmt: str = "json", redact: Redactor | None = None
) -> None:
    """Sets up structlog and the root logger to write one scrubbed event per line to stderr.

    Libraries log at WARNING and above, and at every level when level is DEBUG. Safe to call
    again: the root handler it installed before is replaced, not duplicated.
    """
    threshold = logging.getLevelNamesMapping()[level.upper()]
    scrub = scrub_processor(redact or Redactor())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    stamped: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *stamped,
            structlog.processors.format_exc_info,
            scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    formatter = ProcessorFormatter(
        foreign_pre_chain=[*stamped, structlog.stdlib.add_logger_name],
        processors=[
            ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            scrub,
            renderer,
        ],
    )
    _install_root_handler(formatter, _library_level(threshold))


def _library_level(threshold: int) -> int:
    # Libraries are chatty at INFO (httpx logs every request); DEBUG is asked for explicitly.
    return logging.DEBUG if threshold <= logging.DEBUG else max(threshold, logging.WARNING)


def _install_root_handler(formatter: logging.Formatter, level: int) -> None:
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
        old.close()
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _PINNED:
        logging.getLogger(name).setLevel(level)
    for name in _DATA_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.INFO))
