"""Declarative key tables: one list of :class:`Key` per config block decodes, checks and
documents that block.

A block's keys are checked against its table: an unknown key, a key set twice, a value of
the wrong type, or a required key left out is a :class:`ConfigError` naming the key with its
block path (``server.ca_subject.country``) and line. Values are read as SPIRE's HCL 1 decoder
reads them: a number where a string is expected is taken as its text, a numeric string where
an integer is expected is taken as the number (SPIRE's sample writes ``bind_port = "8081"``).

A key marked ``supported=False`` is a SPIRE key spiffed recognises but does not implement
yet: leaving it at SPIRE's default is accepted, anything else is an error saying so.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from spiffed.config.document import Body, Item, Value
from spiffed.config.duration import format_duration, parse_duration
from spiffed.config.errors import ConfigError
from spiffed.spiffeid import SpiffeIdError, TrustDomain

__all__ = ["Decoded", "Key", "Kind", "decode_block", "reference_rows", "resolve_path"]


class Kind(enum.Enum):
    """The type of a key's value, named as the docs name it."""

    STRING = "string"
    INT = "integer"
    PORT = "port"
    BOOL = "boolean"
    DURATION = "duration"
    STRINGS = "list of strings"
    PATH = "path"
    PATHS = "list of paths"
    BLOCK = "block"


@dataclass(frozen=True, slots=True)
class Key:
    """One setting of a block: its name, type, default, and what it means."""

    name: str
    kind: Kind
    doc: str
    default: object = None
    required: bool = False
    choices: tuple[str, ...] = ()
    supported: bool = True
    keys: tuple[Key, ...] = ()
    default_text: str = ""

    def shown_default(self) -> str:
        """The default as the reference table shows it."""
        if self.default_text:
            return self.default_text
        if self.required:
            return "required"
        if self.kind is Kind.BLOCK:
            return ""
        match self.default:
            case None:
                return "unset"
            case bool():
                return "true" if self.default else "false"
            case timedelta():
                return format_duration(self.default)
            case tuple() | list():
                return "[" + ", ".join(f'"{v}"' for v in self.default) + "]"
            case str():
                return f'"{self.default}"'
            case _:
                return str(self.default)


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded block: values by key name (defaults filled in) and where each was set."""

    path: str
    values: dict[str, object] = field(default_factory=dict)
    lines: dict[str, int | None] = field(default_factory=dict)
    line: int | None = None

    def is_set(self, name: str) -> bool:
        """Whether the file (not a default) set ``name``."""
        return name in self.lines

    def line_of(self, name: str) -> int | None:
        """The line ``name`` was set on, else the block's line."""
        return self.lines.get(name) or self.line

    def block(self, name: str) -> Decoded:
        """The decoded nested block ``name``."""
        value = self.values[name]
        assert isinstance(value, Decoded)
        return value

    def error(self, name: str, message: str) -> ConfigError:
        """A :class:`ConfigError` about key ``name`` of this block."""
        return ConfigError(f"{self.path}.{name}", message, line=self.line_of(name))

    def trust_domain(self, name: str) -> TrustDomain:
        """Key ``name`` read as a trust domain name; an error naming the key otherwise."""
        value = self.values[name]
        try:
            return TrustDomain.parse(str(value))
        except SpiffeIdError as exc:
            raise self.error(name, f"{value!r} is not a valid trust domain: {exc}") from None


def resolve_path(text: str, cwd: Path) -> Path:
    """A path from the config, relative ones taken from the working directory as SPIRE does."""
    path = Path(text)
    return path if path.is_absolute() else cwd / path


def _describe(value: Value) -> str:
    if isinstance(value, Body):
        return "a block"
    if isinstance(value, tuple):
        return "a list"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return f"the number {value}"
    return f"the string {value!r}"


def _as_string(value: Value, key: str, line: int | None) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(key, f"expected a string, got {_describe(value)}", line=line)


def _as_int(value: Value, key: str, line: int | None) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip(), 0)
        except ValueError:
            pass
    raise ConfigError(key, f"expected an integer, got {_describe(value)}", line=line)


def _decode_value(spec: Key, item: Item, key: str, cwd: Path) -> object:
    value, line = item.value, item.line
    match spec.kind:
        case Kind.STRING:
            text = _as_string(value, key, line)
            if spec.choices:
                folded = {c.lower(): c for c in spec.choices}
                if text.lower() not in folded:
                    allowed = ", ".join(f'"{c}"' for c in spec.choices)
                    raise ConfigError(key, f"{text!r} is not one of {allowed}", line=line)
                return folded[text.lower()]
            return text
        case Kind.INT:
            return _as_int(value, key, line)
        case Kind.PORT:
            port = _as_int(value, key, line)
            if not 0 < port < 65536:
                raise ConfigError(key, f"port {port} is not between 1 and 65535", line=line)
            return port
        case Kind.BOOL:
            if not isinstance(value, bool):
                raise ConfigError(key, f"expected true or false, got {_describe(value)}", line=line)
            return value
        case Kind.DURATION:
            text = _as_string(value, key, line)
            try:
                return parse_duration(text, key=key)
            except ConfigError as exc:
                raise ConfigError(key, exc.detail, line=line) from None
        case Kind.PATH:
            text = _as_string(value, key, line)
            return resolve_path(text, cwd) if text else None
        case Kind.STRINGS | Kind.PATHS:
            if not isinstance(value, tuple):
                raise ConfigError(key, f"expected a list, got {_describe(value)}", line=line)
            texts = tuple(_as_string(v, key, line) for v in value)
            if spec.kind is Kind.PATHS:
                return tuple(resolve_path(t, cwd) for t in texts)
            return texts
        case Kind.BLOCK:  # pragma: no branch
            if not isinstance(value, Body):
                raise ConfigError(key, f"expected a block, got {_describe(value)}", line=line)
            return decode_block(value, spec.keys, key, cwd=cwd, line=line)
    raise AssertionError(spec.kind)  # pragma: no cover


def _is_default(spec: Key, decoded: object) -> bool:
    if spec.kind is Kind.BLOCK:
        assert isinstance(decoded, Decoded)
        return not decoded.lines
    if spec.kind in (Kind.STRINGS, Kind.PATHS):
        return decoded == (spec.default or ())
    return decoded == spec.default or (spec.default is None and decoded in ("", 0, False))


def _decode_unsupported(spec: Key, item: Item, key: str, cwd: Path) -> object:
    """A recognised SPIRE key spiffed does not implement: only its default (or empty) passes."""
    if item.value in ((), Body()) or (isinstance(item.value, Body) and not item.value.items):
        return _empty(spec.keys, key) if spec.kind is Kind.BLOCK else spec.default
    if spec.kind is not Kind.BLOCK or spec.keys:
        try:
            value = _decode_value(spec, item, key, cwd)
        except ConfigError:
            value = _NOT_DEFAULT
        if value is not _NOT_DEFAULT and _is_default(spec, value):
            return value
    raise ConfigError(
        key,
        "is a SPIRE setting that spiffed recognises but does not support yet; remove it",
        line=item.line,
    )


_NOT_DEFAULT = object()


def _default(spec: Key) -> object:
    if spec.kind is Kind.PATH and isinstance(spec.default, str):
        return Path(spec.default)
    return spec.default


def _empty(keys: Sequence[Key], path: str) -> Decoded:
    """A block that was not written: every key at its default, nothing required."""
    decoded = Decoded(path)
    for spec in keys:
        key = f"{path}.{spec.name}"
        block = spec.kind is Kind.BLOCK
        decoded.values[spec.name] = _empty(spec.keys, key) if block else _default(spec)
    return decoded


def _unknown(name: str, path: str, known: Sequence[str], line: int | None) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    where = f"the {path} block" if path else "the top level"
    return ConfigError(
        f"{path}.{name}" if path else name, f"unknown key in {where}{hint}", line=line
    )


def decode_block(
    body: Body, keys: Sequence[Key], path: str, *, cwd: Path, line: int | None = None
) -> Decoded:
    """Check ``body`` against ``keys`` and decode it, defaults filled in."""
    specs = {spec.name: spec for spec in keys}
    decoded = Decoded(path, line=line if line is not None else body.line)
    for item in body:
        key = f"{path}.{item.key}" if path else item.key
        spec = specs.get(item.key)
        if spec is None:
            raise _unknown(item.key, path, list(specs), item.line)
        if item.key in decoded.lines:
            first = decoded.lines[item.key]
            also = f" (first set on line {first})" if first else ""
            raise ConfigError(key, f"is set more than once{also}", line=item.line)
        if not spec.supported:
            value = _decode_unsupported(spec, item, key, cwd)
        else:
            value = _decode_value(spec, item, key, cwd)
        decoded.values[item.key] = value
        decoded.lines[item.key] = item.line
    for spec in keys:
        if spec.name in decoded.values:
            continue
        key = f"{path}.{spec.name}" if path else spec.name
        if spec.required:
            where = f"the {path} block" if path else "the file"
            raise ConfigError(key, f"is required in {where}", line=decoded.line)
        if spec.kind is Kind.BLOCK:
            decoded.values[spec.name] = _empty(spec.keys, key)
        else:
            decoded.values[spec.name] = _default(spec)
    return decoded


def reference_rows(keys: Sequence[Key], path: str = "") -> list[tuple[str, str, str, str]]:
    """Rows ``(key, type, default, meaning)`` for every key, nested blocks flattened."""
    rows: list[tuple[str, str, str, str]] = []
    for spec in keys:
        name = f"{path}.{spec.name}" if path else spec.name
        doc = spec.doc
        if spec.choices:
            doc += " One of: " + ", ".join(f"`{c}`" for c in spec.choices) + "."
        if not spec.supported:
            doc += " *Recognised, not supported yet: only SPIRE's default is accepted.*"
        rows.append((name, spec.kind.value, spec.shown_default(), doc))
        if spec.kind is Kind.BLOCK:
            rows.extend(reference_rows(spec.keys, name))
    return rows
