"""Configuration files in SPIRE's layout: HCL (or JSON) reading, Go durations, ``$VAR``
expansion, and declarative key tables that check, decode and document a block.

The server's config (:mod:`spiffed.server.config`) and the agent's are built from these.
"""

from spiffed.config.document import Body, Item, parse_document
from spiffed.config.duration import format_duration, parse_duration, parse_duration_ns
from spiffed.config.env import expand_env
from spiffed.config.errors import ConfigError
from spiffed.config.plugins import PLUGIN_KEYS, PluginCatalog, PluginConfig, decode_plugins
from spiffed.config.schema import Decoded, Key, Kind, decode_block, reference_rows, resolve_path

__all__ = [
    "PLUGIN_KEYS",
    "Body",
    "ConfigError",
    "Decoded",
    "Item",
    "Key",
    "Kind",
    "PluginCatalog",
    "PluginConfig",
    "decode_block",
    "decode_plugins",
    "expand_env",
    "format_duration",
    "parse_document",
    "parse_duration",
    "parse_duration_ns",
    "reference_rows",
    "resolve_path",
]
