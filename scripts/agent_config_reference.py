"""Write docs/agent-configuration.md from the agent's configuration schema.

    python scripts/agent_config_reference.py          # rewrite docs/agent-configuration.md
    python scripts/agent_config_reference.py --check  # exit 1 when the file is stale

The server's reference (docs/configuration.md) comes from
``spiffed.server.config.reference_markdown``; this is the same for ``agent.conf``, built from
the key tables in ``spiffed.agent.config``. tests/docs/test_config_reference.py fails when
the file is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "agent-configuration.md"


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    out = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, kind, default, doc in rows:
        if default == "required":
            shown = "**required**"
        elif default and default != "unset":
            shown = f"`{default}`"
        else:
            shown = default
        out.append(f"| `{key}` | {kind} | {shown} | {doc} |")
    return out


def render() -> str:
    """The whole reference."""
    from spiffed.agent import config as agent_config
    from spiffed.config.plugins import PLUGIN_KEYS
    from spiffed.config.schema import reference_rows

    lines = [
        "# Agent configuration reference",
        "",
        "<!-- Generated from src/spiffed/agent/config.py by scripts/agent_config_reference.py;",
        "     tests/docs/test_config_reference.py fails when this file is stale. Regenerate with:",
        "     .venv/bin/python scripts/agent_config_reference.py -->",
        "",
        "`spiffed-agent run -config FILE` (and `validate`) reads SPIRE's `agent.conf` layout,",
        "in HCL or JSON, with the same rules as the server's file",
        "([configuration.md](configuration.md)): Go durations, paths relative to the working",
        "directory, an unknown key is an error naming it, and a key marked *recognised, not",
        "supported yet* is accepted only at SPIRE's default value. [agent.md](agent.md)",
        "explains what the agent does with these settings.",
        "",
        "Flags of `run` override the file: "
        + ", ".join(f"`-{flag}` → `agent.{key}`" for flag, key in agent_config.FLAGS.items())
        + "; `-insecureBootstrap`, `-allowUnauthenticatedVerifiers` and `-logSourceLocation`"
        " set the boolean keys of the same names.",
        "",
    ]
    for spec in agent_config._TOP_KEYS:
        lines += [f"## `{spec.name}`", ""]
        lines += [*_table(reference_rows([spec])), ""]
    lines += [
        "## `plugins`",
        "",
        'Each plugin is written `Type "name" { plugin_data { ... } }`. Exactly one',
        "NodeAttestor and one KeyManager; any number of WorkloadAttestors.",
        "External plugins (`plugin_cmd`) are not supported.",
        "",
        *_table(reference_rows(PLUGIN_KEYS, 'plugins.<Type>."<name>"')),
        "",
    ]
    for (kind, name), keys in agent_config.PLUGIN_DATA_KEYS.items():
        lines += [f'### {kind} "{name}"', ""]
        if keys:
            lines += [*_table(reference_rows(keys, "plugin_data")), ""]
        else:
            lines += ["No `plugin_data` keys.", ""]
    lines += ["### SPIRE plugins recognised but not supported yet", ""]
    for kind, names in agent_config.SPIRE_PLUGINS.items():
        missing = [n for n in names if (kind, n) not in agent_config.PLUGIN_DATA_KEYS]
        if missing:
            lines.append(f"- {kind}: " + ", ".join(f"`{n}`" for n in missing))
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run scripts/agent_config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
