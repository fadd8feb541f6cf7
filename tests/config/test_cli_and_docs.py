"""``spiffed-server validate`` (in-process and as a real process) and the generated reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from spiffed.cli.server import INVALID_PREFIX, VALID_MESSAGE, cli
from spiffed.server.config import reference_markdown

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "conf/server/server.conf"


def test_valid_message_is_spires_wording() -> None:
    # cmd/spire-server/cli/validate/validate.go prints exactly this on success.
    assert VALID_MESSAGE == "SPIRE server configuration file is valid."


@pytest.mark.parametrize("flag", ["-config", "--config"])
def test_validate_sample_with_either_flag_style(flag: str) -> None:
    result = CliRunner().invoke(cli, ["validate", flag, str(SAMPLE)])
    assert result.exit_code == 0, result.output
    assert result.stdout == VALID_MESSAGE + "\n"


def test_validate_bad_file_prints_the_error_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text(SAMPLE.read_text().replace('log_level = "DEBUG"', 'ca_ttl = "1d"'))
    result = CliRunner().invoke(cli, ["validate", "-config", str(bad)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(INVALID_PREFIX + f"{bad}: server.ca_ttl (line 10): ")
    assert "invalid duration '1d'" in result.stderr


def test_validate_expand_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "env.conf"
    conf.write_text(SAMPLE.read_text().replace('"example.org"', '"${SPIFFED_CLI_TD}"'))
    monkeypatch.setenv("SPIFFED_CLI_TD", "env.example.org")
    assert CliRunner().invoke(cli, ["validate", "-config", str(conf)]).exit_code == 1
    result = CliRunner().invoke(cli, ["validate", "-expandEnv", "-config", str(conf)])
    assert result.exit_code == 0, result.output


def test_validate_defaults_to_spires_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["validate"])
    assert result.exit_code == 1
    assert f"could not find config file {tmp_path}/conf/server/server.conf" in result.stderr
    monkeypatch.chdir(REPO)
    assert CliRunner().invoke(cli, ["validate"]).exit_code == 0


def _console_script() -> Path:
    return Path(sys.executable).parent / "spiffed-server"


def test_validate_as_a_real_process() -> None:
    script = _console_script()
    if not script.exists():
        pytest.skip(f"{script} is not installed")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(script), "validate", "-config", "conf/server/server.conf"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, VALID_MESSAGE + "\n", "")


def test_validate_as_a_real_process_reports_errors(tmp_path: Path) -> None:
    script = _console_script()
    if not script.exists():
        pytest.skip(f"{script} is not installed")
    bad = tmp_path / "server.conf"
    bad.write_text(SAMPLE.read_text().replace('KeyManager "memory"', 'KeyManager "vault"'))
    done = subprocess.run(
        [str(script), "validate", "-config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "plugins.KeyManager.vault (line 26): unknown KeyManager plugin 'vault'" in done.stderr


def test_configuration_reference_is_fresh() -> None:
    doc = REPO / "docs/configuration.md"
    assert doc.read_text() == reference_markdown(), (
        "docs/configuration.md is stale; regenerate it with the command at its top"
    )


def test_reference_lists_every_server_key() -> None:
    from spiffed.server.config import SERVER_KEYS

    text = reference_markdown()
    for key in SERVER_KEYS:
        assert f"| `server.{key.name}` |" in text
    assert "| `server.ca_ttl` | duration | `24h` |" in text
    assert "| `server.bind_port` | port | `8081` |" in text


def test_validate_takes_runs_override_flags_as_spire_does(tmp_path: Path) -> None:
    conf = tmp_path / "no-td.conf"
    conf.write_text(SAMPLE.read_text().replace('trust_domain = "example.org"', ""))
    runner = CliRunner()
    result = runner.invoke(cli, ["validate", "-config", str(conf)])
    assert result.exit_code == 1
    assert "server.trust_domain (line 4): is required in the server block" in result.stderr
    result = runner.invoke(cli, ["validate", "-config", str(conf), "-trustDomain", "ex.org"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        cli,
        ["validate", "-config", str(SAMPLE), "-serverPort", "http", "-logSourceLocation"],
    )
    assert result.exit_code == 1
    assert "server.bind_port: expected an integer, got the string 'http'" in result.stderr


def test_validate_asks_x509pop_to_load_its_ca_bundle(tmp_path: Path) -> None:
    conf = tmp_path / "pop.conf"
    conf.write_text(
        SAMPLE.read_text().replace(
            'NodeAttestor "join_token" {',
            'NodeAttestor "x509pop" {\n'
            '        plugin_data { ca_bundle_path = "missing-ca.pem" }\n'
            "    }\n"
            '    NodeAttestor "join_token" {',
        )
    )
    result = CliRunner().invoke(cli, ["validate", "-config", str(conf)])
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "SPIRE server configuration file is invalid.\nValidation errors:\n"
        '\tNodeAttestor "x509pop":\n\t\tunable to load trust bundle '
    )
    assert "missing-ca.pem" in result.stderr
