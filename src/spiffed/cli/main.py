"""``spiffed``: developer tools."""

from __future__ import annotations

import sys

import click

from spiffed import __version__


@click.group()
@click.version_option(__version__, prog_name="spiffed")
def cli() -> None:
    """spiffed: a SPIFFE workload-identity runtime."""


@cli.command()
def dev() -> None:
    """Run a local trust domain (server + agent) in one process."""
    click.echo(
        "spiffed dev is not available yet: the server and agent are still being built.\n"
        "The core SPIFFE library is installed; run `make test` to see what works.",
        err=True,
    )
    sys.exit(2)


def main() -> None:
    """Console-script entry point."""
    cli()
