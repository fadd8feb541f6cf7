"""x509pop against SPIRE's own protocol code (github.com/spiffe/spire v1.15.3, built with Go).

Each side answers the other's challenges, so a spiffed agent can attest to a SPIRE server
and a SPIRE agent to a spiffed server.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from spiffed.nodeattestation import x509pop as proto
from spiffed.spiffeid import TrustDomain
from tests.interop.gobuild import build_go_program
from tests.server.nodeattestor.pki import make_cert

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def spire_x509pop(tmp_path_factory) -> Path:
    return build_go_program("x509pop", tmp_path_factory.mktemp("go"))


def spire(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, check=False, timeout=60
    )


KEYS = {
    "ec-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ec-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "rsa-2048": lambda: rsa.generate_private_key(65537, 2048),
}


@pytest.fixture(params=sorted(KEYS))
def node(request, tmp_path: Path):
    root = make_cert("root", ca=True)
    leaf = make_cert("node", issuer=root, key=KEYS[request.param](), serial=0x1F)
    key_pem = tmp_path / "key.pem"
    cert_pem = tmp_path / "cert.pem"
    key_pem.write_bytes(
        leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_pem.write_bytes(leaf.cert.public_bytes(serialization.Encoding.PEM))
    return leaf, key_pem, cert_pem


def test_spire_accepts_spiffed_agent_response(spire_x509pop, node, tmp_path) -> None:
    leaf, _key_pem, cert_pem = node
    challenge = tmp_path / "challenge.json"
    made = spire(spire_x509pop, "challenge", str(cert_pem))
    assert made.returncode == 0, made.stderr
    challenge.write_text(made.stdout)
    response = tmp_path / "response.json"
    response.write_bytes(proto.calculate_response(leaf.key, challenge.read_bytes()))
    checked = spire(spire_x509pop, "verify", str(cert_pem), str(challenge), str(response))
    assert checked.returncode == 0, checked.stderr


def test_spiffed_server_accepts_spire_agent_response(spire_x509pop, node, tmp_path) -> None:
    leaf, key_pem, _cert_pem = node
    challenge = tmp_path / "challenge.json"
    challenge.write_bytes(proto.generate_challenge(leaf.cert))
    answered = spire(spire_x509pop, "respond", str(key_pem), str(challenge))
    assert answered.returncode == 0, answered.stderr
    proto.verify_response(leaf.cert.public_key(), challenge.read_bytes(), answered.stdout.encode())


def test_spire_rejects_a_forged_response(spire_x509pop, node, tmp_path) -> None:
    """The attacker's side: a response signed with another key fails in SPIRE's code too."""
    leaf, _key_pem, cert_pem = node
    challenge = tmp_path / "challenge.json"
    challenge.write_text(spire(spire_x509pop, "challenge", str(cert_pem)).stdout)
    impostor = type(leaf.key)  # same algorithm family, different key
    other = (
        rsa.generate_private_key(65537, 2048)
        if issubclass(impostor, rsa.RSAPrivateKey)
        else ec.generate_private_key(ec.SECP256R1())
    )
    response = tmp_path / "response.json"
    response.write_bytes(proto.calculate_response(other, challenge.read_bytes()))
    checked = spire(spire_x509pop, "verify", str(cert_pem), str(challenge), str(response))
    assert checked.returncode != 0
    assert "verify failed" in checked.stderr


@pytest.mark.parametrize(
    "template",
    [
        "/{{ .PluginName }}/{{ .Fingerprint }}",
        "/cn/{{ .Subject.CommonName }}",
        "/{{ .TrustDomain }}/{{ .SerialNumberHex }}",
    ],
)
def test_agent_ids_match_spire(spire_x509pop, node, template: str) -> None:
    leaf, _key_pem, cert_pem = node
    got = spire(spire_x509pop, "agentid", "example.org", template, str(cert_pem))
    assert got.returncode == 0, got.stderr
    ours = proto.AgentPathTemplate(template).agent_id(TrustDomain("example.org"), leaf.cert)
    assert str(ours) == got.stdout.strip()


def test_challenge_json_shape_matches_spire(spire_x509pop, node) -> None:
    _leaf, _key_pem, cert_pem = node
    theirs = json.loads(spire(spire_x509pop, "challenge", str(cert_pem)).stdout)
    ours = json.loads(proto.generate_challenge(node[0].cert))
    assert set(theirs) == set(ours) == {"rsa_signature", "ecdsa_signature"}
    assert [k for k, v in theirs.items() if v is None] == [k for k, v in ours.items() if v is None]
