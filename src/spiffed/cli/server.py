"""``spiffed-server``: the server's command line (mirrors ``spire-server``).

Flags are spelled as SPIRE's (``-config``, ``-expandEnv``, ``-trustDomain``); the ``--`` form
works too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from spiffed import __version__
from spiffed.config import ConfigError

if TYPE_CHECKING:
    from spiffed.server.config import ServerConfig

VALID_MESSAGE = "SPIRE server configuration file is valid."
"""What SPIRE's ``validate`` prints on success; kept word for word so scripts carry over."""

INVALID_PREFIX = "SPIRE server configuration file is invalid: "
"""SPIRE's prefix for a configuration error, printed on standard error."""

_F = TypeVar("_F", bound=Callable[..., Any])

# (flag, help) for the flags of SPIRE's `run` that override a `server` key; `validate`
# takes the same ones, as SPIRE's does, so it checks exactly what `run` would start with.
_OVERRIDE_FLAGS = (
    ("bindAddress", "IP address or DNS name of the server"),
    ("serverPort", "Port number of the server"),
    ("socketPath", "Path to bind the server API socket to"),
    ("trustDomain", "The trust domain that this server belongs to"),
    ("dataDir", "Directory to store runtime data to"),
    ("logLevel", "'debug', 'info', 'warn', or 'error'"),
    ("logFormat", "'text' or 'json'"),
    ("logFile", "File to write logs to"),
)


def config_flags(func: _F) -> _F:
    """Add ``-config``, ``-expandEnv`` and the ``run`` override flags to a command.

    The command receives ``config_path``, ``expand_env`` and ``overrides`` (flag name to
    value, only the flags given), ready for :func:`spiffed.server.config.load_server_config`.
    """
    for flag, help_text in reversed(_OVERRIDE_FLAGS):
        func = click.option(
            f"-{flag}", f"--{flag}", f"flag_{flag}", default="", metavar="VALUE", help=help_text
        )(func)
    func = click.option(
        "-logSourceLocation",
        "--logSourceLocation",
        "flag_logSourceLocation",
        is_flag=True,
        help="Include source file and line number in log lines",
    )(func)
    func = click.option(
        "-expandEnv",
        "--expandEnv",
        "expand_env",
        is_flag=True,
        help="Expand environment variables in the config file",
    )(func)
    return click.option(
        "-config",
        "--config",
        "config_path",
        default="",
        metavar="PATH",
        help="Path to a SPIRE config file (default conf/server/server.conf)",
    )(func)


def _overrides(expand_env: bool, flags: dict[str, Any]) -> dict[str, str]:
    out = {"expandEnv": "true" if expand_env else ""}
    for key, value in flags.items():
        name = key.removeprefix("flag_")
        if value is True:
            out[name] = "true"
        elif value:
            out[name] = str(value)
    return out


@click.group()
@click.version_option(__version__, prog_name="spiffed-server")
def cli() -> None:
    """spiffed-server: the SPIFFE server (spire-server compatible)."""


@cli.command()
@config_flags
def validate(config_path: str, expand_env: bool, **flags: Any) -> None:
    """Validates a SPIRE server configuration file."""
    from spiffed.server.config import load_server_config

    try:
        config = load_server_config(config_path or None, _overrides(expand_env, flags))
    except ConfigError as exc:
        click.echo(f"{INVALID_PREFIX}{exc}", err=True)
        sys.exit(1)
    notes = _plugin_notes(config)
    if notes:
        # SPIRE's layout for problems a plugin finds in its own configuration.
        click.echo("SPIRE server configuration file is invalid.\nValidation errors:", err=True)
        for plugin, note in notes:
            click.echo(f"\t{plugin}:\n\t\t{note}", err=True)
        sys.exit(1)
    click.echo(VALID_MESSAGE)


@cli.command()
@config_flags
def run(config_path: str, expand_env: bool, **flags: Any) -> None:
    """Runs the server."""
    from spiffed.server.config import load_server_config
    from spiffed.server.run import run as run_server

    try:
        config = load_server_config(config_path or None, _overrides(expand_env, flags))
    except ConfigError as exc:
        click.echo(f"{INVALID_PREFIX}{exc}", err=True)
        sys.exit(1)
    sys.exit(run_server(config))


DEFAULT_SOCKET_PATH = "/tmp/spire-server/private/api.sock"  # noqa: S108 - SPIRE's default


@cli.command()
@click.option(
    "-socketPath",
    "--socketPath",
    "socket_path",
    default=DEFAULT_SOCKET_PATH,
    metavar="PATH",
    help="Path to the SPIRE Server API socket",
)
@click.option("-shallow", "--shallow", is_flag=True, help="Perform a less stringent health check")
@click.option("-verbose", "--verbose", is_flag=True, help="Print verbose information")
def healthcheck(socket_path: str, shallow: bool, verbose: bool) -> None:
    """Determines server health status."""
    import asyncio

    from spiffed.cli._spire import check_health

    ok, detail = asyncio.run(check_health(socket_path, verbose=verbose))
    if not ok:
        if verbose and detail:
            click.echo(detail, err=True)
        click.echo("Server is unhealthy: unable to determine health", err=True)
        sys.exit(1)
    click.echo("Server is healthy.")


def _plugin_notes(config: ServerConfig) -> list[tuple[str, str]]:
    """Let each built-in plugin that can check its settings without side effects do so
    (SPIRE's ``validate`` asks every plugin too): x509pop loads its CA bundles."""
    from spiffed.server.nodeattestor import AttestationError
    from spiffed.server.nodeattestor.x509pop import X509PopAttestor

    notes = []
    for plugin in config.node_attestors:
        if plugin.name == "x509pop":
            try:
                X509PopAttestor.from_config(config.trust_domain, plugin.options)
            except AttestationError as exc:
                name = f'NodeAttestor "{plugin.name}"'
                notes.append((name, exc.message.removeprefix(f"{name}: ")))
    return notes


def main() -> None:
    """Console-script entry point."""
    cli()
