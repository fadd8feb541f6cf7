"""Process log setup: SPIRE's level names; with log_format json every line is JSON, the
standard library's records included."""

from __future__ import annotations

import io
import json
import logging

import structlog

from spiffed.logsetup import configure_logging, level_number


def test_spire_level_names() -> None:
    assert level_number("trace") == logging.DEBUG
    assert level_number("WARN") == logging.WARNING
    assert level_number("panic") == logging.CRITICAL
    assert level_number("nonsense") == logging.INFO


def test_json_format_makes_every_line_json() -> None:
    out = io.StringIO()
    try:
        configure_logging(logging.INFO, log_format="json", stream=out)
        structlog.get_logger("t").info("from structlog", n=1)
        logging.getLogger("lib").warning("from %s", "logging")
        logging.getLogger("lib").debug("below the level")
    finally:
        logging.basicConfig(force=True)
        structlog.reset_defaults()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["from structlog", "from logging"]
    assert lines[1]["level"] == "warning" and lines[1]["logger"] == "lib"
