"""The ``plugins`` section, as SPIRE writes it: ``Type "name" { plugin_data { ... } }``.

Shared by the server's and the agent's configs: each passes a :class:`PluginCatalog` saying
which built-in plugins it has (with the key table of each one's ``plugin_data``), which
plugins SPIRE has (so those get "not supported yet" rather than "unknown"), and how many of
each type may be enabled.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType

from spiffed.config.document import Body, Item, parse_document
from spiffed.config.duration import format_duration
from spiffed.config.errors import ConfigError
from spiffed.config.schema import Decoded, Key, Kind, decode_block

__all__ = ["PLUGIN_KEYS", "PluginCatalog", "PluginConfig", "decode_plugins"]

PLUGIN_KEYS: tuple[Key, ...] = (
    Key("plugin_data", Kind.BLOCK, "The plugin's own settings (its table below).",
        default_text="{}"),
    Key("enabled", Kind.BOOL, "A disabled plugin is skipped.", default=True),
    Key("plugin_cmd", Kind.STRING, "Path of an external plugin binary.", supported=False),
    Key("plugin_checksum", Kind.STRING, "SHA-256 of the external plugin binary.",
        supported=False),
    Key("plugin_args", Kind.STRINGS, "Arguments of the external plugin.", default=(),
        supported=False),
    Key("plugin_data_file", Kind.PATH,
        "File holding the plugin_data body instead (read at start; SIGUSR1 reload not yet)."),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class PluginConfig:
    """One enabled built-in plugin, ``Type "name" { plugin_data { ... } }``.

    ``options`` holds the ``plugin_data`` keys the file set, as plain values (strings,
    numbers, booleans, lists; paths made absolute), ready for a plugin's ``from_config``.
    ``settings`` holds every key of the plugin's table with defaults filled in and typed
    (``Path``, ``timedelta``, ``tuple``).
    """

    type: str
    name: str
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    settings: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    line: int | None = None


@dataclass(frozen=True, slots=True)
class PluginCatalog:
    """What a daemon knows about plugins.

    ``data_keys``: the ``plugin_data`` key table of every built-in plugin, by (type, name).
    ``spire_plugins``: SPIRE's plugin names by type; a type missing here is unknown.
    ``counts``: (least, most or None) enabled plugins of a type.
    ``precheck`` sees a plugin's raw ``plugin_data`` body before decoding (for friendlier
    messages), ``check`` its decoded settings (for rules across keys); both raise
    :class:`ConfigError`.
    """

    data_keys: Mapping[tuple[str, str], tuple[Key, ...]]
    spire_plugins: Mapping[str, tuple[str, ...]]
    counts: Mapping[str, tuple[int, int | None]] = field(default_factory=dict)
    precheck: Callable[[str, str, Body, str], None] | None = None
    check: Callable[[str, str, Decoded], None] | None = None


def _plain(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, timedelta):
        return format_duration(value)
    return value


def _decode_plugin(
    kind: str, name: str, item: Item, catalog: PluginCatalog, cwd: Path
) -> PluginConfig | None:
    """Decode ``Type "name" { ... }``; None when it is disabled."""
    path = f"plugins.{kind}.{name}"
    body = item.value
    if not isinstance(body, Body):
        raise ConfigError(path, "expected a plugin block", line=item.line)
    if body.get_all("plugin_cmd"):
        first = body.get_all("plugin_cmd")[0]
        raise ConfigError(
            f"{path}.plugin_cmd",
            f"external plugins are not supported; spiffed only has built-in plugins "
            f"(remove plugin_cmd to use a built-in {kind} {name!r})",
            line=first.line,
        )
    outer = decode_block(
        Body(tuple(i for i in body if i.key != "plugin_data"), body.line),
        PLUGIN_KEYS,
        path,
        cwd=cwd,
        line=item.line,
    )
    if not outer.values["enabled"]:
        return None
    data_keys = catalog.data_keys.get((kind, name))
    if data_keys is None:
        if name in catalog.spire_plugins.get(kind, ()):
            message = f"SPIRE's {kind} plugin {name!r} is not supported by spiffed yet"
        else:
            message = f"unknown {kind} plugin {name!r}"
        ours = sorted(n for (t, n) in catalog.data_keys if t == kind)
        message += "; built-in: " + (", ".join(ours) if ours else "none")
        raise ConfigError(path, message, line=item.line)
    data_items = body.get_all("plugin_data")
    if len(data_items) > 1:
        raise ConfigError(f"{path}.plugin_data", "is set more than once", line=data_items[1].line)
    data_body = data_items[0].value if data_items else Body()
    data_line = data_items[0].line if data_items else item.line
    data_file = outer.values["plugin_data_file"]
    if isinstance(data_file, Path):
        if data_items:
            raise outer.error(
                "plugin_data_file", "only one of [plugin_data, plugin_data_file] can be used"
            )
        data_body, data_line = _read_plugin_data_file(data_file, outer), None
    if not isinstance(data_body, Body):
        raise ConfigError(f"{path}.plugin_data", "expected a block", line=data_line)
    try:
        if catalog.precheck is not None:
            catalog.precheck(kind, name, data_body, f"{path}.plugin_data")
        data = decode_block(data_body, data_keys, f"{path}.plugin_data", cwd=cwd, line=data_line)
        if catalog.check is not None:
            catalog.check(kind, name, data)
    except ConfigError as exc:
        if isinstance(data_file, Path):
            raise exc.with_source(str(data_file)) from None
        raise
    options = {k: _plain(data.values[k]) for k in data.lines}
    return PluginConfig(
        type=kind,
        name=name,
        options=MappingProxyType(options),
        settings=MappingProxyType(dict(data.values)),
        line=item.line,
    )


def _read_plugin_data_file(file: Path, outer: Decoded) -> Body:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise outer.error("plugin_data_file", f"unable to read {str(file)!r}: {why}") from None
    except UnicodeDecodeError as exc:
        raise outer.error("plugin_data_file", f"unable to read {str(file)!r}: {exc}") from None
    try:
        return parse_document(text)
    except ConfigError as exc:
        raise exc.with_source(str(file)) from None


def decode_plugins(
    items: Sequence[Item], catalog: PluginCatalog, *, cwd: Path
) -> dict[str, list[PluginConfig]]:
    """Decode every ``plugins { ... }`` block: the enabled plugins by type, in file order.

    Checks each plugin against ``catalog``: unknown types and names, SPIRE plugins that are
    not built in, external plugins, repeats, and how many of each type may be enabled.
    """
    if not items:
        raise ConfigError("plugins", "the plugins block is required")
    found: dict[str, list[PluginConfig]] = {kind: [] for kind in catalog.spire_plugins}
    seen: dict[tuple[str, str], int | None] = {}
    for block in items:
        if not isinstance(block.value, Body):
            raise ConfigError("plugins", "expected a block", line=block.line)
        for type_item in block.value:
            kind = type_item.key
            if kind not in catalog.spire_plugins:
                close = difflib.get_close_matches(kind, list(catalog.spire_plugins), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(
                    f"plugins.{kind}", f"unknown plugin type{hint}", line=type_item.line
                )
            if not isinstance(type_item.value, Body) or not type_item.value.items:
                raise ConfigError(
                    f"plugins.{kind}",
                    f'expected {kind} "<name>" {{ plugin_data {{ ... }} }}',
                    line=type_item.line,
                )
            for plugin_item in type_item.value:
                ident = (kind, plugin_item.key)
                if ident in seen:
                    first = seen[ident]
                    also = f" (first on line {first})" if first else ""
                    raise ConfigError(
                        f"plugins.{kind}.{plugin_item.key}",
                        f"plugin {kind} {plugin_item.key!r} is declared more than once{also}",
                        line=plugin_item.line,
                    )
                seen[ident] = plugin_item.line
                plugin = _decode_plugin(kind, plugin_item.key, plugin_item, catalog, cwd)
                if plugin is not None:
                    found[kind].append(plugin)
    for kind, (low, high) in catalog.counts.items():
        plugins = found[kind]
        if len(plugins) < low:
            raise ConfigError(f"plugins.{kind}", f"a {kind} plugin is required")
        if high is not None and len(plugins) > high:
            names = " and ".join(repr(p.name) for p in plugins)
            raise ConfigError(
                f"plugins.{kind}",
                f"only one {kind} plugin is allowed, got {names}",
                line=plugins[1].line,
            )
    return found
