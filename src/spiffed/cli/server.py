"""``spiffed-server``: the server's command line (mirrors ``spire-server``).

Flags are spelled as SPIRE's (``-config``, ``-expandEnv``); the ``--`` form works too.
"""

from __future__ import annotations

import sys

import click

from spiffed import __version__
from spiffed.config import ConfigError

VALID_MESSAGE = "SPIRE server configuration file is valid."
"""What SPIRE's ``validate`` prints on success; kept word for word so scripts carry over."""

INVALID_PREFIX = "SPIRE server configuration file is invalid: "
"""SPIRE's prefix for a configuration error, printed on standard error."""


@click.group()
@click.version_option(__version__, prog_name="spiffed-server")
def cli() -> None:
    """spiffed-server: the SPIFFE server (spire-server compatible)."""


@cli.command()
@click.option(
    "-config",
    "--config",
    "config_path",
    default="",
    metavar="PATH",
    help="Path to a SPIRE config file (default conf/server/server.conf).",
)
@click.option(
    "-expandEnv",
    "--expandEnv",
    "expand_env",
    is_flag=True,
    help="Expand environment variables in the config file.",
)
def validate(config_path: str, expand_env: bool) -> None:
    """Validates a SPIRE server configuration file."""
    from spiffed.server.config import load_server_config

    try:
        load_server_config(config_path or None, {"expandEnv": "true" if expand_env else ""})
    except ConfigError as exc:
        click.echo(f"{INVALID_PREFIX}{exc}", err=True)
        sys.exit(1)
    click.echo(VALID_MESSAGE)


def main() -> None:
    """Console-script entry point."""
    cli()
