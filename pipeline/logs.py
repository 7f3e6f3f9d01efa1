"""Structured logging: one JSON object per line on stderr (or readable console lines)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from pipeline.redact import Redactor


def configure_logging(
    level: str = "INFO", fmt: str = "json", redact: Redactor | None = None
) -> None:
    """Sets up structlog and the standard library to write one event per line to stderr."""
    scrub = redact or Redactor()

    def scrub_secrets(
        _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> Mapping[str, Any]:
        # Last line of defence: nothing that reaches a log line may carry a secret.
        return {k: scrub(v) if isinstance(v, str) else v for k, v in event.items()}

    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrub_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
