"""spiffed-server's admin commands without a server: flags, validation and error wording."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from spiffed.cli.server import cli


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_every_spire_command_is_there() -> None:
    code, out, _ = run("--help")
    assert code == 0
    for name in ("run", "validate", "healthcheck", "entry", "bundle", "agent", "token",
                 "x509", "jwt", "localauthority"):  # fmt: skip
        assert name in out
    for group, subs in {
        "entry": ("create", "update", "show", "count", "delete"),
        "bundle": ("show", "count", "list", "set", "delete"),
        "agent": ("list", "show", "ban", "evict", "count"),
        "localauthority x509": ("show", "prepare", "activate", "taint", "revoke"),
        "localauthority jwt": ("show", "prepare", "activate", "taint", "revoke"),
    }.items():
        code, out, _ = run(*group.split(), "--help")
        assert code == 0
        for sub in subs:
            assert sub in out, (group, sub)


def test_healthcheck_without_server(tmp_path: Path) -> None:
    sock = str(tmp_path / "api.sock")
    code, out, err = run("healthcheck", "-socketPath", sock)
    assert code == 1
    assert err == "Error: server is unhealthy: unable to determine health\n"
    code, out, err = run("healthcheck", "-socketPath", sock, "-verbose")
    assert out == "Checking server health...\n"
    assert err.startswith("Failed to check health: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            (
                "entry",
                "create",
                "-spiffeID",
                "spiffe://example.org/w",
                "-parentID",
                "spiffe://example.org/a",
            ),
            "at least one selector is required",
        ),
        (
            ("entry", "create", "-selector", "unix:uid:1", "-spiffeID", "spiffe://example.org/w"),
            "a parent ID is required if the node flag is not set",
        ),
        (
            ("entry", "create", "-selector", "unix:uid:1", "-parentID", "spiffe://example.org/a"),
            "a SPIFFE ID is required",
        ),
        (
            (
                "entry",
                "create",
                "-selector",
                "unix:uid:1",
                "-node",
                "-federatesWith",
                "x.org",
                "-spiffeID",
                "spiffe://example.org/w",
            ),
            "node entries can not federate",
        ),
        (
            (
                "entry",
                "create",
                "-selector",
                "uid1",
                "-parentID",
                "spiffe://example.org/a",
                "-spiffeID",
                "spiffe://example.org/w",
            ),
            'selector "uid1" must be formatted as type:value',
        ),
        (("entry", "update", "-selector", "unix:uid:1"), "entry ID is required"),
        (
            (
                "entry",
                "delete",
            ),
            "an entry ID is required",
        ),
        (("x509", "mint"), "spiffeID must be specified"),
        (
            ("jwt", "mint", "-spiffeID", "spiffe://example.org/w"),
            "at least one audience must be specified",
        ),
        (("agent", "ban"), "a SPIFFE ID is required"),
        (("localauthority", "jwt", "revoke"), "an authority ID is required"),
    ],
)
def test_validation_errors_before_any_rpc(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    code, _, err = run(*args, "-socketPath", str(tmp_path / "none.sock"))
    assert code == 1
    assert err == f"Error: {message}\n"


def test_rpc_to_missing_socket_is_a_connection_error(tmp_path: Path) -> None:
    code, _, err = run("entry", "count", "-socketPath", str(tmp_path / "none.sock"))
    assert code == 1
    assert err.startswith("Error: connection error")


def test_run_with_invalid_config(tmp_path: Path) -> None:
    conf = tmp_path / "server.conf"
    conf.write_text('server { trust_domain = "example.org" }\n')
    code, _, err = run("run", "-config", str(conf))
    assert code == 1
    assert err.startswith("SPIRE server configuration file is invalid: ")
