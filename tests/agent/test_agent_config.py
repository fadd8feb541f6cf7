"""The agent's config: SPIRE's agent.conf layout, defaults, cross-key rules, flags, validate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from spiffed.agent.config import load_agent_config, parse_agent_config
from spiffed.cli.agent import cli
from spiffed.config import ConfigError
from spiffed.keys import KeyType

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
agent {
    trust_domain = "example.org"
    server_address = "127.0.0.1"
    server_port = "8081"
    insecure_bootstrap = true
}
plugins {
    NodeAttestor "join_token" { plugin_data {} }
    KeyManager "memory" { plugin_data {} }
    WorkloadAttestor "unix" { plugin_data { discover_workload_path = true } }
}
"""


def test_minimal_config_gets_spires_defaults(tmp_path: Path) -> None:
    c = parse_agent_config(MINIMAL, cwd=tmp_path)
    assert str(c.trust_domain) == "example.org"
    assert (c.server_address, c.server_port) == ("127.0.0.1", 8081)
    assert c.socket_path == Path("/tmp/spire-agent/public/api.sock")
    assert c.data_dir == tmp_path
    assert c.workload_x509_svid_key_type is KeyType.EC_P256
    assert (c.x509_svid_cache_max_size, c.jwt_svid_cache_max_size) == (1000, 1000)
    assert (c.sds_default_svid_name, c.sds_default_bundle_name) == ("default", "ROOTCA")
    assert c.node_attestor.name == "join_token"
    assert [w.name for w in c.workload_attestors] == ["unix"]
    assert c.workload_attestors[0].options == {"discover_workload_path": True}


@pytest.mark.parametrize(
    ("edit", "key", "message"),
    [
        (('trust_domain = "example.org"', 'trust_domain = "Example.org"'), "agent.trust_domain",
         "not a valid trust domain"),
        (('server_port = "8081"', ""), "agent.server_port", "required"),
        (("insecure_bootstrap = true", ""), "agent.trust_bundle_path",
         "must be configured unless insecure_bootstrap is set"),
        (("insecure_bootstrap = true", 'insecure_bootstrap = true\n trust_bundle_path = "b.pem"'),
         "agent.trust_bundle_path", "only one of insecure_bootstrap or trust_bundle_path"),
        (("insecure_bootstrap = true", 'trust_bundle_url = "http://x/b"'),
         "agent.trust_bundle_url", "must start with https://"),
        (("insecure_bootstrap = true", "insecure_bootstrap = true\n serverPort = 1"),
         "agent.serverPort", "unknown key"),
        (('server_port = "8081"', 'server_port = "8081"\n x509_svid_cache_max_size = -1'),
         "agent.x509_svid_cache_max_size", "should not be negative"),
        (('KeyManager "memory"', 'KeyManager "awskms"'), "plugins", "KeyManager"),
        (('WorkloadAttestor "unix"', 'WorkloadAttestor "k8s"'), "plugins", "not supported"),
    ],
)  # fmt: skip
def test_mistakes_name_the_key(tmp_path: Path, edit, key: str, message: str) -> None:
    text = MINIMAL.replace(*edit)
    with pytest.raises(ConfigError) as err:
        parse_agent_config(text, cwd=tmp_path)
    assert key in str(err.value)
    assert message in str(err.value)


def test_join_token_and_its_file_are_exclusive(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("abc\n")
    with_file = MINIMAL.replace(
        "insecure_bootstrap = true", f'insecure_bootstrap = true\n join_token_file = "{token_file}"'
    )
    assert parse_agent_config(with_file, cwd=tmp_path).join_token == "abc"
    both = with_file.replace("join_token_file", 'join_token = "x"\n join_token_file')
    with pytest.raises(ConfigError, match="only one of join_token or join_token_file"):
        parse_agent_config(both, cwd=tmp_path)


def test_flags_override_the_file(tmp_path: Path) -> None:
    c = parse_agent_config(
        MINIMAL,
        {"serverAddress": "10.1.2.3", "serverPort": "9000", "joinToken": "tok", "dataDir": ""},
        cwd=tmp_path,
    )
    assert (c.server_address, c.server_port, c.join_token) == ("10.1.2.3", 9000, "tok")


def test_shipped_sample_validates(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["validate", "-config", str(ROOT / "conf/agent/agent.conf")])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "SPIRE agent configuration file is valid."


def test_validate_reports_errors_on_stderr_with_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "agent.conf"
    bad.write_text(MINIMAL.replace("example.org", "Example.org"))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "spiffed-agent"), "validate", "-config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("SPIRE agent configuration file is invalid: ")
    assert "agent.trust_domain" in proc.stderr


def test_missing_file_is_named() -> None:
    with pytest.raises(ConfigError, match="could not find config file"):
        load_agent_config("/nonexistent/agent.conf", {})


def test_experimental_sync_interval(tmp_path: Path) -> None:
    assert parse_agent_config(MINIMAL, cwd=tmp_path).sync_interval == 5.0  # SPIRE's default
    text = MINIMAL.replace(
        "insecure_bootstrap = true",
        'insecure_bootstrap = true\n experimental { sync_interval = "250ms" }',
    )
    assert parse_agent_config(text, cwd=tmp_path).sync_interval == 0.25
    with pytest.raises(ConfigError, match="sync_interval must be positive"):
        parse_agent_config(text.replace("250ms", "0s"), cwd=tmp_path)
    with pytest.raises(ConfigError, match=r"agent\.experimental\.bogus"):
        parse_agent_config(text.replace("sync_interval", "bogus"), cwd=tmp_path)
