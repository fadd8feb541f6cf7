"""``spiffed-server``: the server's command line (mirrors ``spire-server``)."""

from __future__ import annotations

import click

from spiffed import __version__


@click.group()
@click.version_option(__version__, prog_name="spiffed-server")
def cli() -> None:
    """spiffed-server: not available yet; its subcommands arrive with the server."""


def main() -> None:
    """Console-script entry point."""
    cli()
