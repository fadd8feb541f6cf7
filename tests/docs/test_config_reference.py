"""docs/agent-configuration.md is generated from the agent's config schema and not stale."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from spiffed.agent.config import AGENT_KEYS, PLUGIN_DATA_KEYS

REPO = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    path = REPO / "scripts/agent_config_reference.py"
    spec = importlib.util.spec_from_file_location("agent_config_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_agent_configuration_reference_is_fresh() -> None:
    current = (REPO / "docs/agent-configuration.md").read_text(encoding="utf-8")
    assert current == _generator().render(), (
        "docs/agent-configuration.md is stale: run .venv/bin/python "
        "scripts/agent_config_reference.py"
    )


def test_agent_configuration_reference_names_every_key_and_plugin() -> None:
    text = _generator().render()
    for key in AGENT_KEYS:
        assert f"| `agent.{key.name}` |" in text
    for kind, name in PLUGIN_DATA_KEYS:
        assert f'### {kind} "{name}"' in text
