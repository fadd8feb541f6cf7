"""Log output for the spiffed processes (server, agent, dev): structlog to a stream or file.

SPIRE's ``log_level`` names (``TRACE`` … ``PANIC``, any case), ``log_format`` ``text`` or
``json``, ``log_file`` and ``log_source_location`` mean the same here.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import structlog

__all__ = ["LEVELS", "configure_logging", "level_number"]

LEVELS = {
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "FATAL": logging.CRITICAL,
    "PANIC": logging.CRITICAL,
}
"""SPIRE's log level names and the :mod:`logging` level each stands for."""


class _JsonFormatter(logging.Formatter):
    """Standard :mod:`logging` records as the same JSON lines structlog writes."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "event": record.getMessage(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def level_number(name: str, default: int = logging.INFO) -> int:
    """The :mod:`logging` level of a SPIRE level name (``default`` for an unknown one)."""
    return LEVELS.get(name.upper(), default)


def configure_logging(
    level: int,
    *,
    log_file: Path | None = None,
    log_format: str = "text",
    source_location: bool = False,
    stream: TextIO | None = None,
    first: Sequence[Callable[..., Any]] = (),
) -> None:
    """Send structlog (and standard :mod:`logging`) output to ``log_file``, or to ``stream``
    (stderr by default), at ``level``, as text or JSON; ``first`` are structlog processors
    run before the standard ones (filters)."""
    out: TextIO = stream if stream is not None else sys.stderr
    if log_file is not None:
        out = open(log_file, "a", encoding="utf-8")  # noqa: SIM115 - process lifetime
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    processors: list[Any] = [
        *first,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if source_location:
        processors.append(
            structlog.processors.CallsiteParameterAdder(
                {
                    structlog.processors.CallsiteParameter.FILENAME,
                    structlog.processors.CallsiteParameter.LINENO,
                }
            )
        )
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("aiosqlite").setLevel(max(level, logging.INFO))  # a line per query
