"""Reading a daemon's config file and applying ``run``'s flags, as SPIRE does.

Shared by the server's and the agent's configs: both read ``-config`` (or SPIRE's default
path), optionally expand ``$VAR`` (``-expandEnv``), and let command-line flags replace keys
of their main block (``server`` / ``agent``), where Go's zero value means "not given".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from spiffed.config.document import Body, Item
from spiffed.config.env import expand_env
from spiffed.config.errors import ConfigError

__all__ = ["apply_overrides", "read_config_text"]

_TRUE = ("1", "t", "true")


def read_config_text(
    path: str | os.PathLike[str] | None, default: str, overrides: Mapping[str, str]
) -> tuple[str, str, dict[str, str]]:
    """Read the config file named by ``path`` (``default`` when None or empty).

    Returns the text (``$VAR``-expanded when ``overrides["expandEnv"]`` is true), the name to
    show in errors, and the remaining flags (without ``expandEnv`` and ``config``).
    """
    flags = dict(overrides)
    expand = flags.pop("expandEnv", "").lower() in _TRUE
    flags.pop("config", None)
    file = Path(path) if path else Path(default)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "-config", f"could not find config file {file.absolute()}: please use the -config flag"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            "-config", f"unable to read configuration at {str(file)!r}: {exc}"
        ) from None
    return (expand_env(text) if expand else text), str(file), flags


def apply_overrides(
    doc: Body,
    block: str,
    overrides: Mapping[str, str],
    *,
    flags: Mapping[str, str],
    bool_flags: Mapping[str, str] | None = None,
    port_flags: tuple[str, ...] = (),
) -> Body:
    """Put flag values into the ``block`` block of ``doc``, replacing what the file says.

    ``flags`` maps a string flag to its key; ``bool_flags`` a boolean flag (set when true);
    for a flag in ``port_flags``, ``0`` means not given. An empty value means
    the flag was not given (Go's zero value). Unknown flags are an error.
    """
    bools = bool_flags or {}
    items = [i for i in doc if i.key == block]
    if len(items) > 1:
        raise ConfigError(block, "is set more than once", line=items[1].line)
    body = items[0].value if items else Body()
    if not isinstance(body, Body):
        raise ConfigError(block, "expected a block", line=items[0].line)
    replaced: dict[str, Item] = {}
    for flag, text in overrides.items():
        if flag in bools:
            if text.lower() in _TRUE:
                replaced[bools[flag]] = Item(bools[flag], True, None)
            continue
        name = flags.get(flag)
        if name is None:
            raise ConfigError(f"-{flag}", "unknown flag")
        if text == "" or (flag in port_flags and text.strip() == "0"):
            continue
        # The value is checked by the key's own decoder, so errors name the key.
        replaced[name] = Item(name, text, None)
    if not replaced:
        return doc
    kept = [i for i in body if i.key not in replaced] + list(replaced.values())
    new_block = Item(block, Body(tuple(kept), body.line), body.line)
    rest = tuple(i for i in doc if i.key != block)
    return Body((new_block, *rest), doc.line)
