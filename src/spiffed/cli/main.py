"""``spiffed``: developer tools."""

from __future__ import annotations

import time

_STARTED = time.monotonic()  # "ready in N s" counts from here (before the imports below)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402

from spiffed import __version__  # noqa: E402


@click.group()
@click.version_option(__version__, prog_name="spiffed")
def cli() -> None:
    """spiffed: a SPIFFE workload-identity runtime."""


@cli.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Keep the trust domain here (default: $XDG_STATE_HOME/spiffed/dev or "
    "~/.local/state/spiffed/dev); a second run resumes it.",
)
@click.option(
    "--ephemeral",
    is_flag=True,
    help="Keep the datastore and keys in memory; nothing is left on disk after exit.",
)
@click.option(
    "--trust-domain",
    default=None,
    metavar="NAME",
    help="Trust domain of a new data directory (default: example.org).",
)
@click.option(
    "--register",
    multiple=True,
    metavar="SPIFFEID=SELECTOR[,SELECTOR...]",
    help="Register this instead of the calling user (spiffe://<td>/dev/<user> for "
    "unix:uid:<uid>); repeatable. SPIFFEID may be a path such as /web.",
)
@click.option(
    "--log-level",
    default="warn",
    show_default=True,
    metavar="LEVEL",
    help="Server and agent log level on stderr: debug, info, warn or error.",
)
def dev(
    data_dir: Path | None,
    ephemeral: bool,
    trust_domain: str | None,
    register: tuple[str, ...],
    log_level: str,
) -> None:
    """Run a local trust domain (server + agent) in one process, with no config.

    Prints the SPIFFE_ENDPOINT_SOCKET line to export once the first SVID can be fetched,
    and runs until Ctrl-C or SIGTERM.
    """
    from spiffed.dev import DevOptions, run

    options = DevOptions(
        data_dir=data_dir,
        ephemeral=ephemeral,
        trust_domain=trust_domain,
        register=register,
        log_level=log_level,
    )
    sys.exit(run(options, started=_STARTED))


def main() -> None:
    """Console-script entry point."""
    cli()
