"""docs/cli-reference.md is generated from the click commands and must not be stale."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import click

REPO = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    path = REPO / "scripts/cli_reference.py"
    spec = importlib.util.spec_from_file_location("cli_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_fresh() -> None:
    gen = _generator()
    current = (REPO / "docs/cli-reference.md").read_text(encoding="utf-8")
    assert current == gen.render(), (
        "docs/cli-reference.md is stale: run .venv/bin/python scripts/cli_reference.py"
    )


def test_cli_reference_lists_every_command_and_flag() -> None:
    gen = _generator()
    text = gen.render()
    headings = set(re.findall(r"^#+ `([^`]+)`$", text, re.MULTILINE))
    for program, cli in gen._programs():
        for ctx, command in gen._walk(program, cli, None):
            assert ctx.command_path in headings
            for param in command.params:
                if isinstance(param, click.Option) and not param.hidden:
                    assert f"`{param.opts[0]}" in text, (ctx.command_path, param.opts)
