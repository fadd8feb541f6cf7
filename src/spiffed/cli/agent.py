"""``spiffed-agent``: the agent's command line (mirrors ``spire-agent``)."""

from __future__ import annotations

import click

from spiffed import __version__


@click.group()
@click.version_option(__version__, prog_name="spiffed-agent")
def cli() -> None:
    """spiffed-agent: not available yet; its subcommands arrive with the agent."""


def main() -> None:
    """Console-script entry point."""
    cli()
