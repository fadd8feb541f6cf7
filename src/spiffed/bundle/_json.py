"""Strict JSON for bundles: UTF-8 only, duplicate keys rejected, numbers never through float."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from spiffed.bundle.errors import BundleError

__all__ = ["dumps", "loads", "type_name"]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKeyError(key)
        obj[key] = value
    return obj


class _DuplicateKeyError(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_constant(name: str) -> Any:
    raise _ConstantError(name)


class _ConstantError(Exception):
    pass


def loads(data: bytes, *, what: str) -> Any:
    """Parse ``data`` as strict JSON; ``what`` names the document in BundleError messages.

    Non-integer numbers come back as :class:`decimal.Decimal` so that no value is ever
    rounded through a float (TB-03); ``NaN``/``Infinity`` are rejected.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BundleError(f"{what}: expected bytes, not {type(data).__name__}")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{what}: not valid UTF-8 at byte {exc.start}") from None
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=Decimal,
            parse_constant=_reject_constant,
        )
    except _DuplicateKeyError as exc:
        raise BundleError(f"{what}: duplicate JSON member {exc.key!r}") from None
    except _ConstantError as exc:
        raise BundleError(f"{what}: {exc.args[0]} is not a JSON number") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{what}: not valid JSON: {exc}") from None
    except RecursionError:
        raise BundleError(f"{what}: JSON is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python allows
        raise BundleError(f"{what}: not valid JSON: {exc}") from None


def dumps(obj: Any, *, indent: int | None = None) -> bytes:
    """Serialize ``obj`` as UTF-8 JSON (compact unless ``indent`` is given)."""
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(obj, indent=indent, separators=separators).encode("utf-8")


def type_name(value: object) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
