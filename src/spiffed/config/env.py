"""``$VAR`` expansion of a config file's text, as SPIRE's ``-expandEnv`` does it.

SPIRE calls Go's ``os.Expand`` with a mapping where ``$$`` stands for a literal ``$``.
Rules copied from Go: ``${NAME}`` or ``$NAME`` (letters, digits, ``_``); a single special
character (``*#$@!?-`` or a digit) after ``$`` is a name of its own; ``${}`` and an unclosed
``${`` are eaten; a ``$`` followed by anything else, or at the end, stays. Unset variables
become the empty string.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["expand_env"]

_SPECIAL = frozenset("*#$@!?-0123456789")


def _is_alnum(c: str) -> bool:
    return c == "_" or (c.isascii() and c.isalnum())


def _shell_name(s: str) -> tuple[str, int]:
    """Go's ``getShellName``: the name after a ``$`` and how many characters it used."""
    if s[0] == "{":
        if len(s) > 2 and s[1] in _SPECIAL and s[2] == "}":
            return s[1], 3
        end = s.find("}", 1)
        if end == 1:
            return "", 2
        if end == -1:
            return "", 1
        return s[1:end], end + 1
    if s[0] in _SPECIAL:
        return s[0], 1
    i = 0
    while i < len(s) and _is_alnum(s[i]):
        i += 1
    return s[:i], i


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace ``$VAR`` / ``${VAR}`` in ``text`` from ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    out: list[str] = []
    start = 0
    j = 0
    while j < len(text):
        if text[j] == "$" and j + 1 < len(text):
            out.append(text[start:j])
            name, width = _shell_name(text[j + 1 :])
            if name == "" and width > 0:
                pass  # bad syntax: Go drops it
            elif name in ("", "$"):
                out.append("$")  # a lone `$`, or `$$` (SPIRE's escape for a literal `$`)
            else:
                out.append(env.get(name, ""))
            j += width
            start = j + 1
        j += 1
    out.append(text[start:])
    return "".join(out)
