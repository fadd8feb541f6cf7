"""A config file (HCL or JSON) read into one small, ordered, line-numbered tree.

SPIRE decodes its files with HCL version 1, where ``a "b" c { ... }`` means
``a { b { c { ... } } }``, a block and an ``= { ... }`` object are the same thing, and a key
may repeat. python-hcl2 parses the HCL 2 syntax, which covers what SPIRE's files are written
in; this module walks its parse tree (not its lossy dict output) so that every key keeps its
line, repeated keys stay visible, and strings come out with their escapes resolved.

The tree: a :class:`Body` is an ordered tuple of :class:`Item` (key, value, line). A value is
``str``, ``int``, ``float``, ``bool``, ``None``, a ``tuple`` of values, or a nested ``Body``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias

from spiffed.config.errors import ConfigError

__all__ = ["Body", "Item", "Value", "parse_document", "parse_hcl", "parse_json"]


@dataclass(frozen=True, slots=True)
class Body:
    """An object or block body: its items in file order (keys may repeat)."""

    items: tuple[Item, ...] = ()
    line: int | None = None

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def keys(self) -> list[str]:
        """The distinct keys, in the order they first appear."""
        return list(dict.fromkeys(item.key for item in self.items))

    def get_all(self, key: str) -> list[Item]:
        """Every item named ``key``."""
        return [item for item in self.items if item.key == key]


Value: TypeAlias = "str | int | float | bool | tuple[Value, ...] | Body | None"


@dataclass(frozen=True, slots=True)
class Item:
    """One ``key = value`` or ``key { ... }`` in a body."""

    key: str
    value: Value
    line: int | None = None


def _syntax_error(message: str, line: int | None) -> ConfigError:
    return ConfigError("", f"syntax error: {message}", line=line)


# --- HCL ------------------------------------------------------------------------------


def _line(rule: Any) -> int | None:
    meta = getattr(rule, "_meta", None)
    line = getattr(meta, "line", None)
    return line if isinstance(line, int) else None


def _string_value(rule: Any) -> str:
    from hcl2.utils import SerializationOptions

    options = SerializationOptions(
        with_comments=False, strip_string_quotes=True, preserve_heredocs=False
    )
    value = rule.serialize(options)
    if not isinstance(value, str):  # pragma: no cover - python-hcl2 contract
        raise _syntax_error("unreadable string", _line(rule))
    return value


def _expression(rule: Any, line: int | None, key: str) -> Value:
    from hcl2.rules.containers import ObjectRule, TupleRule
    from hcl2.rules.expressions import ExprTermRule, UnaryOpRule
    from hcl2.rules.literal_rules import FloatLitRule, IntLitRule, LiteralValueRule
    from hcl2.rules.strings import HeredocTemplateRule, StringRule

    while isinstance(rule, ExprTermRule) and not rule.parentheses:
        rule = rule.expression
    line = _line(rule) or line
    if isinstance(rule, StringRule | HeredocTemplateRule):
        return _string_value(rule)
    if isinstance(rule, IntLitRule):
        return int(str(rule.token.value))
    if isinstance(rule, FloatLitRule):
        try:
            return float(str(rule.token.value))
        except ValueError:
            raise _syntax_error(f"bad number {rule.token.value!s}", line) from None
    if isinstance(rule, LiteralValueRule):
        text = str(rule.token.value)
        return {"true": True, "false": False, "null": None}[text]
    if isinstance(rule, TupleRule):
        return tuple(_expression(e, line, key) for e in rule.elements)
    if isinstance(rule, ObjectRule):
        items = []
        for element in rule.elements:
            name = element.key.serialize()
            if not isinstance(name, str) or name.startswith("${"):
                raise ConfigError(key, f"object key {name!s} must be a name or a string", line=line)
            if name.startswith('"') and name.endswith('"') and len(name) >= 2:
                name = json.loads(name) if "\\" in name else name[1:-1]
            value_line = _line(element) or line
            value = _expression(element.expression, value_line, f"{key}.{name}")
            items.append(Item(name, value, value_line))
        return Body(tuple(items), line)
    if isinstance(rule, UnaryOpRule):
        text = str(rule.serialize()).removeprefix("${").removesuffix("}")
        for convert in (int, float):
            try:
                return convert(text)
            except ValueError:
                continue
    text = str(rule.serialize()) if hasattr(rule, "serialize") else type(rule).__name__
    text = text.removeprefix("${").removesuffix("}")
    raise ConfigError(key, f"{text!r} is an expression; only literal values are allowed", line=line)


def _label(rule: Any) -> str:
    from hcl2.rules.strings import StringRule

    if isinstance(rule, StringRule):
        return _string_value(rule)
    return str(rule.serialize())


def _body(rule: Any, line: int | None, path: str) -> Body:
    from hcl2.rules.base import AttributeRule, BlockRule

    items: list[Item] = []
    for child in rule.children:
        if isinstance(child, AttributeRule):
            child_line = _line(child)
            key = str(child.identifier.serialize())
            value = _expression(child.expression, child_line, f"{path}{key}")
            items.append(Item(key, value, child_line))
        elif isinstance(child, BlockRule):
            child_line = _line(child)
            names = [_label(label) for label in child.labels]
            block: Value = _body(child.body, child_line, f"{path}{'.'.join(names)}.")
            # HCL 1: `a "b" c { }` is `a { b { c { } } }`.
            for name in reversed(names[1:]):
                block = Body((Item(name, block, child_line),), child_line)
            items.append(Item(names[0], block, child_line))
    return Body(tuple(items), line)


def parse_hcl(text: str) -> Body:
    """Parse HCL text into a :class:`Body`; syntax errors become :class:`ConfigError`."""
    import hcl2
    from lark.exceptions import LarkError, UnexpectedInput

    try:
        tree = hcl2.parses(text, discard_comments=True)
    except UnexpectedInput as exc:
        raise _syntax_error(
            f"unexpected input at column {exc.column}", exc.line if exc.line > 0 else None
        ) from None
    except (LarkError, RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _syntax_error(first, None) from None
    try:
        return _body(tree.body, None, "")
    except ConfigError:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise _syntax_error(f"unsupported construct ({exc})", None) from None


# --- JSON -----------------------------------------------------------------------------


def _json_value(value: object) -> Value:
    if isinstance(value, dict):
        return _json_body(value)
    if isinstance(value, list):
        return tuple(_json_value(v) for v in value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ConfigError("", f"unsupported JSON value {value!r}")  # pragma: no cover


def _json_body(obj: dict[str, object]) -> Body:
    items: list[Item] = []
    for key, value in obj.items():
        # HCL 1 reads `"k": [{...}, {...}]` as the block `k` written twice.
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            items.extend(Item(key, _json_body(v)) for v in value)
        else:
            items.append(Item(key, _json_value(value)))
    return Body(tuple(items))


def parse_json(text: str) -> Body:
    """Parse a JSON config (SPIRE accepts JSON with the same layout) into a :class:`Body`."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        line = getattr(exc, "lineno", None)
        raise _syntax_error(f"invalid JSON: {getattr(exc, 'msg', exc)}", line) from None
    if not isinstance(data, dict):
        raise _syntax_error("a JSON config must be an object", 1)
    return _json_body(data)


def parse_document(text: str) -> Body:
    """Parse a config file's text: JSON when it starts with ``{``, HCL otherwise."""
    if text.lstrip().startswith("{"):
        return parse_json(text)
    return parse_hcl(text)
