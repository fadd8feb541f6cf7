"""run_agent's wiring: an AgentConfig becomes a Manager with the right attestor and trust."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from spiffed.agent.attest import JoinTokenAttestor
from spiffed.agent.config import parse_agent_config
from spiffed.agent.manager import ManagerError
from spiffed.agent.manager.run import build_manager
from spiffed.bundle import X509Bundle
from spiffed.keys import KeyType
from spiffed.spiffeid import TrustDomain
from spiffed.svid.x509_issue import create_root_ca

TD = TrustDomain("example.org")


def conf(tmp_path: Path, trust: str) -> str:
    return f"""
agent {{
    trust_domain = "example.org"
    server_address = "127.0.0.1"
    server_port = "8081"
    data_dir = "{tmp_path}/data"
    join_token = "tok"
    {trust}
}}
plugins {{
    NodeAttestor "join_token" {{ plugin_data {{}} }}
    KeyManager "memory" {{ plugin_data {{}} }}
}}
"""


def test_bootstrap_bundle_and_join_token(tmp_path: Path) -> None:
    root = create_root_ca(TD, KeyType.EC_P256.generate(), ttl=dt.timedelta(hours=1))
    pem = tmp_path / "bundle.pem"
    pem.write_bytes(X509Bundle(TD, (root,)).marshal_pem())
    m = build_manager(parse_agent_config(conf(tmp_path, f'trust_bundle_path = "{pem}"')))
    assert m.bootstrap_roots == [root]
    assert isinstance(m.attestor, JoinTokenAttestor)
    assert m.attestor.payload() == b"tok"
    assert (m.server_address, m.server_port, m.data_dir) == ("127.0.0.1", 8081, tmp_path / "data")


def test_insecure_bootstrap_has_no_roots(tmp_path: Path) -> None:
    m = build_manager(parse_agent_config(conf(tmp_path, "insecure_bootstrap = true")))
    assert m.bootstrap_roots is None


def test_unreadable_bootstrap_bundle_is_a_clear_error(tmp_path: Path) -> None:
    config = parse_agent_config(conf(tmp_path, f'trust_bundle_path = "{tmp_path}/nope.pem"'))
    with pytest.raises(ManagerError, match="cannot read trust bundle"):
        build_manager(config)
