"""Write docs/cli-reference.md from the click commands of spiffed, spiffed-server and spiffed-agent.

    python scripts/cli_reference.py          # rewrite docs/cli-reference.md
    python scripts/cli_reference.py --check  # exit 1 when the file is stale

tests/docs/test_cli_reference.py fails when the file does not match the commands.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "cli-reference.md"

HEADER = """\
# CLI reference

<!-- Generated from the click commands in src/spiffed/cli/ by scripts/cli_reference.py;
     tests/docs/test_cli_reference.py fails when this file is stale. Regenerate with:
     .venv/bin/python scripts/cli_reference.py -->

Every command and flag of `spiffed`, `spiffed-server` and `spiffed-agent`, as `--help`
shows them. Flags are single-dash as in SPIRE (`-spiffeID`); the double-dash form
(`--spiffeID`) works too. [cli.md](cli.md) explains what the commands do, with examples and
their exact messages; [migrating-from-spire.md](migrating-from-spire.md) maps SPIRE's
commands to these.
"""


def _programs() -> list[tuple[str, click.Command]]:
    from spiffed.cli.agent import cli as agent_cli
    from spiffed.cli.main import cli as main_cli
    from spiffed.cli.server import cli as server_cli

    return [("spiffed", main_cli), ("spiffed-server", server_cli), ("spiffed-agent", agent_cli)]


def _walk(
    name: str, command: click.Command, parent: click.Context | None
) -> Iterator[tuple[click.Context, click.Command]]:
    ctx = click.Context(command, info_name=name, parent=parent)
    yield ctx, command
    if isinstance(command, click.Group):
        for sub_name in sorted(command.commands):
            yield from _walk(sub_name, command.commands[sub_name], ctx)


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _cell(text: str) -> str:
    return _one_line(text).replace("|", "\\|")


def _help_text(command: click.Command) -> str:
    text = command.help or command.short_help or ""
    paragraphs = [_one_line(p) for p in text.split("\n\n") if p.strip()]
    return "\n\n".join(paragraphs)


def _command_section(ctx: click.Context, command: click.Command) -> str:
    path = ctx.command_path
    level = "#" * min(2 + path.count(" "), 4)
    lines = [f"{level} `{path}`", ""]
    help_text = _help_text(command)
    if help_text:
        lines += [help_text, ""]
    pieces = " ".join(command.collect_usage_pieces(ctx))
    lines += ["```", f"{path} {pieces}".rstrip(), "```", ""]
    if isinstance(command, click.Group) and command.commands:
        subs = ", ".join(f"`{n}`" for n in sorted(command.commands))
        lines += [f"Subcommands: {subs}.", ""]
    rows = []
    for param in command.get_params(ctx):
        if not isinstance(param, click.Option) or param.hidden:
            continue
        if "--help" in param.opts:
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_ = record
        rows.append(f"| `{_cell(names)}` | {_cell(help_)} |")
    args = [p for p in command.params if isinstance(p, click.Argument)]
    if rows or args:
        lines += ["| flag | meaning |", "|---|---|"]
        for arg in args:
            optional = "" if arg.required else " (optional)"
            lines.append(f"| `{arg.make_metavar(ctx)}` | argument{optional} |")
        lines += rows
        lines.append("")
    return "\n".join(lines)


def render() -> str:
    """The whole reference, deterministic for a given version of the commands."""
    parts = [HEADER]
    for name, cli in _programs():
        for ctx, command in _walk(name, cli, None):
            parts.append(_command_section(ctx, command))
    return "\n".join(parts).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run python scripts/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
