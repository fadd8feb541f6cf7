"""Durations written as Go writes them (``time.ParseDuration``): ``24h``, ``1h30m``, ``500ms``.

SPIRE reads every TTL and interval with Go's parser, so spiffed accepts exactly the same
text: an optional sign, then one or more ``<number><unit>`` pairs where the number may have
a fraction and the unit is one of ``ns``, ``us`` (``µs``, ``μs``), ``ms``, ``s``, ``m``, ``h``.
A bare ``0`` is allowed. There is no ``d`` unit. Values beyond Go's int64 nanoseconds
(about 292 years) are rejected as Go rejects them.
"""

from __future__ import annotations

from datetime import timedelta

from spiffed.config.errors import ConfigError

__all__ = ["format_duration", "parse_duration", "parse_duration_ns"]

_UNITS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_MAX_NS = (1 << 63) - 1


def _fail(key: str, text: str, why: str) -> ConfigError:
    return ConfigError(key, f"invalid duration {text!r}: {why} (use Go syntax such as 1h30m)")


def parse_duration_ns(text: str, *, key: str = "") -> int:
    """Parse ``text`` as Go's ``time.ParseDuration`` does; the result is in nanoseconds."""
    s = text
    negative = False
    if s[:1] in ("-", "+"):
        negative = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise _fail(key, text, "it is empty" if not text else "no number")
    total = 0
    while s:
        i = 0
        while i < len(s) and s[i].isascii() and s[i].isdigit():
            i += 1
        whole, s = s[:i], s[i:]
        frac = ""
        if s[:1] == ".":
            s = s[1:]
            j = 0
            while j < len(s) and s[j].isascii() and s[j].isdigit():
                j += 1
            frac, s = s[:j], s[j:]
            if not whole and not frac:
                raise _fail(key, text, "a '.' without digits")
        elif not whole:
            raise _fail(key, text, f"expected a number at {s[:1]!r}")
        j = 0
        while j < len(s) and s[j] != "." and not (s[j].isascii() and s[j].isdigit()):
            j += 1
        unit, s = s[:j], s[j:]
        if not unit:
            raise _fail(key, text, "missing unit")
        scale = _UNITS.get(unit)
        if scale is None:
            raise _fail(key, text, f"unknown unit {unit!r}")
        value = int(whole or "0") * scale
        if frac:
            value += int(frac) * scale // 10 ** len(frac)
        total += value
        if total > _MAX_NS + (1 if negative else 0):
            raise _fail(key, text, "it is too large")
    return -total if negative else total


def parse_duration(text: str, *, key: str = "") -> timedelta:
    """Parse a Go duration into a ``timedelta`` (sub-microsecond parts are dropped)."""
    ns = parse_duration_ns(text, key=key)
    return timedelta(microseconds=int(ns / 1000) if ns < 0 else ns // 1000)


def format_duration(value: timedelta) -> str:
    """Write a ``timedelta`` in Go syntax, shortest exact form (``1h30m``, ``5m``, ``90ms``)."""
    us = (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds
    if us == 0:
        return "0s"
    sign = "-" if us < 0 else ""
    us = abs(us)
    if us % 1_000_000:
        if us % 1000 == 0:
            return f"{sign}{us // 1000}ms"
        return f"{sign}{us}us"
    secs = us // 1_000_000
    hours, rest = divmod(secs, 3600)
    minutes, seconds = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{hours}h"
    if minutes:
        out += f"{minutes}m"
    if seconds:
        out += f"{seconds}s"
    return sign + out
