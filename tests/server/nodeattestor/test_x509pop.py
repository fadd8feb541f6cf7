"""x509pop node attestation: both halves, SPIRE's wire format, and attacks on it."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpclib.const import Status

from spiffed.agent.nodeattestor import AgentAttestationError
from spiffed.agent.nodeattestor.x509pop import X509PopAgentAttestor
from spiffed.nodeattestation import x509pop as proto
from spiffed.selector import Selector
from spiffed.server.nodeattestor import AttestationError
from spiffed.server.nodeattestor.x509pop import X509PopAttestor
from spiffed.spiffeid import SpiffeId, TrustDomain

from .pki import Issued, make_cert

TD = TrustDomain("example.org")


@pytest.fixture(scope="module")
def pki() -> dict[str, Issued]:
    root = make_cert("root", ca=True)
    inter = make_cert("intermediate", issuer=root, ca=True)
    leaf = make_cert(
        "node-1",
        issuer=inter,
        serial=0xABC,
        uris=("x509pop://example.org/datacenter/us-east",),
    )
    other_root = make_cert("other root", ca=True)
    return {"root": root, "inter": inter, "leaf": leaf, "other_root": other_root}


def agent_for(issued: Issued, *chain: Issued) -> X509PopAgentAttestor:
    return X509PopAgentAttestor(issued.key, [issued.cert, *(c.cert for c in chain)])


async def run(server: X509PopAttestor, agent: X509PopAgentAttestor):
    async def challenger(challenge: bytes) -> bytes:
        return agent.respond(challenge)

    return await server.attest(agent.payload(), challenger)


async def test_ec_chain_attests_with_spire_agent_id_and_selectors(pki) -> None:
    server = X509PopAttestor(TD, [pki["root"].cert])
    result = await run(server, agent_for(pki["leaf"], pki["inter"]))
    fp = proto.fingerprint(pki["leaf"].cert)
    assert result.agent_id == SpiffeId.parse(f"spiffe://example.org/spire/agent/x509pop/{fp}")
    assert result.can_reattest
    assert set(result.selectors) == {
        Selector("x509pop", "subject:cn:node-1"),
        Selector("x509pop", f"ca:fingerprint:{proto.fingerprint(pki['inter'].cert)}"),
        Selector("x509pop", f"ca:fingerprint:{proto.fingerprint(pki['root'].cert)}"),
        Selector("x509pop", "serialnumber:0abc"),
        Selector("x509pop", "san:datacenter:us-east"),
    }


async def test_rsa_key_uses_pss_and_attests() -> None:
    root = make_cert("rsa root", ca=True, key=rsa.generate_private_key(65537, 2048))
    leaf = make_cert("rsa node", issuer=root, key=rsa.generate_private_key(65537, 2048))
    server = X509PopAttestor(TD, [root.cert])
    result = await run(server, agent_for(leaf))
    assert Selector("x509pop", "subject:cn:rsa node") in result.selectors


async def test_agent_path_template_is_applied(pki) -> None:
    server = X509PopAttestor(
        TD,
        [pki["root"].cert],
        template=proto.AgentPathTemplate("/cn/{{ .Subject.CommonName }}"),
    )
    result = await run(server, agent_for(pki["leaf"], pki["inter"]))
    assert str(result.agent_id) == "spiffe://example.org/spire/agent/cn/node-1"


def test_unsupported_template_constructs_are_refused_at_config_time() -> None:
    with pytest.raises(proto.X509PopError, match="only field references"):
        proto.AgentPathTemplate("/{{ .Subject.CommonName | upper }}")
    with pytest.raises(proto.X509PopError, match=r"unknown field \.Secret"):
        proto.AgentPathTemplate("/{{ .Secret }}")


async def test_chain_to_an_unconfigured_ca_is_permission_denied(pki) -> None:
    server = X509PopAttestor(TD, [pki["other_root"].cert])
    with pytest.raises(AttestationError) as err:
        await run(server, agent_for(pki["leaf"], pki["inter"]))
    assert err.value.status is Status.PERMISSION_DENIED
    assert "certificate verification failed" in err.value.message


async def test_wrong_proof_of_possession_is_permission_denied(pki) -> None:
    """An attacker with a copy of the certificate but not its key."""
    impostor_key = ec.generate_private_key(ec.SECP256R1())
    honest = agent_for(pki["leaf"], pki["inter"])
    server = X509PopAttestor(TD, [pki["root"].cert])

    async def forged(challenge: bytes) -> bytes:
        return proto.calculate_response(impostor_key, challenge)

    with pytest.raises(AttestationError) as err:
        await server.attest(honest.payload(), forged)
    assert err.value.status is Status.PERMISSION_DENIED
    assert "ECDSA signature verify failed" in err.value.message


async def test_replayed_response_to_an_earlier_challenge_is_refused(pki) -> None:
    agent = agent_for(pki["leaf"], pki["inter"])
    server = X509PopAttestor(TD, [pki["root"].cert])
    recorded: list[bytes] = []

    async def record(challenge: bytes) -> bytes:
        recorded.append(agent.respond(challenge))
        return recorded[-1]

    await server.attest(agent.payload(), record)

    async def replay(_challenge: bytes) -> bytes:
        return recorded[0]

    with pytest.raises(AttestationError) as err:
        await server.attest(agent.payload(), replay)
    assert err.value.status is Status.PERMISSION_DENIED


async def test_expired_leaf_is_refused(pki) -> None:
    import datetime as dt

    old = make_cert(
        "old", issuer=pki["root"], not_after=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    )
    server = X509PopAttestor(TD, [pki["root"].cert])
    with pytest.raises(AttestationError) as err:
        await run(server, agent_for(old))
    assert err.value.status is Status.PERMISSION_DENIED


async def test_leaf_without_digital_signature_usage_is_refused(pki) -> None:
    leaf = make_cert("no-sig", issuer=pki["root"], digital_signature=False)
    server = X509PopAttestor(TD, [pki["root"].cert])
    with pytest.raises(AttestationError, match="not intended for digital signature"):
        await run(server, agent_for(leaf))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"certificates": []}', "no certificate to attest"),
        (b'{"certificates": ["***"]}', "not valid base64"),
        (b'{"certificates": ["AAAA"]}', "unable to parse leaf certificate"),
        (json.dumps({"certificates": ["AAAA"] * 6}).encode(), "more than the 4 allowed"),
    ],
)
async def test_malformed_payloads_are_invalid_argument(pki, payload: bytes, message: str) -> None:
    server = X509PopAttestor(TD, [pki["root"].cert])

    async def never(_challenge: bytes) -> bytes:
        raise AssertionError("no challenge may be sent for a bad payload")

    with pytest.raises(AttestationError) as err:
        await server.attest(payload, never)
    assert err.value.status is Status.INVALID_ARGUMENT
    assert message in err.value.message


@pytest.mark.parametrize(
    "response",
    [
        b"garbage",
        b'{"rsa_signature": null, "ecdsa_signature": null}',
        b'{"ecdsa_signature": {"nonce": "AAAA", "r": "AQ==", "s": "AQ=="}}',
    ],
)
async def test_malformed_responses_are_refused(pki, response: bytes) -> None:
    server = X509PopAttestor(TD, [pki["root"].cert])
    agent = agent_for(pki["leaf"], pki["inter"])

    async def bad(_challenge: bytes) -> bytes:
        return response

    with pytest.raises(AttestationError) as err:
        await server.attest(agent.payload(), bad)
    assert err.value.status is Status.PERMISSION_DENIED


async def test_oversized_rsa_key_is_refused_before_verification() -> None:
    root = make_cert("root", ca=True)
    leaf = make_cert("big", issuer=root, key=rsa.generate_private_key(65537, 3072))
    server = X509PopAttestor(TD, [root.cert], max_rsa_key_size=2048)
    with pytest.raises(AttestationError, match="leaf certificate key size too large"):
        await run(server, agent_for(leaf))


def test_wire_format_is_gos_encoding(pki) -> None:
    """Byte strings are standard base64 and both challenge kinds are present (null or object)."""
    challenge = json.loads(proto.generate_challenge(pki["leaf"].cert))
    assert challenge["rsa_signature"] is None
    assert len(base64.b64decode(challenge["ecdsa_signature"]["nonce"])) == proto.NONCE_LENGTH
    payload = json.loads(agent_for(pki["leaf"], pki["inter"]).payload())
    der = pki["leaf"].cert.public_bytes(serialization.Encoding.DER)
    assert base64.b64decode(payload["certificates"][0]) == der


def test_serial_number_hex_has_even_length(pki) -> None:
    assert proto.serial_number_hex(pki["leaf"].cert) == "0abc"


def test_server_config_errors_name_the_option(tmp_path, pki) -> None:
    with pytest.raises(AttestationError, match="one of ca_bundle_path or ca_bundle_paths"):
        X509PopAttestor.from_config(TD, {})
    with pytest.raises(AttestationError, match="unknown option 'ca_path'"):
        X509PopAttestor.from_config(TD, {"ca_path": "x"})
    with pytest.raises(AttestationError, match="unable to load trust bundle"):
        X509PopAttestor.from_config(TD, {"ca_bundle_path": str(tmp_path / "missing.pem")})
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(pki["root"].cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(AttestationError, match="max_intermediates must be greater than 0"):
        X509PopAttestor.from_config(TD, {"ca_bundle_path": str(bundle), "max_intermediates": 0})
    assert X509PopAttestor.from_config(TD, {"ca_bundle_paths": [str(bundle)]}).name == "x509pop"


def test_agent_config_loads_pem_files_and_checks_the_key(tmp_path, pki) -> None:
    key = tmp_path / "key.pem"
    cert = tmp_path / "cert.pem"
    inter = tmp_path / "inter.pem"
    key.write_bytes(
        pki["leaf"].key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(pki["leaf"].cert.public_bytes(serialization.Encoding.PEM))
    inter.write_bytes(pki["inter"].cert.public_bytes(serialization.Encoding.PEM))
    agent = X509PopAgentAttestor.from_config(
        {
            "private_key_path": str(key),
            "certificate_path": str(cert),
            "intermediates_path": str(inter),
        }
    )
    assert len(json.loads(agent.payload())["certificates"]) == 2
    with pytest.raises(AgentAttestationError, match="does not match the certificate"):
        X509PopAgentAttestor.from_config(
            {"private_key_path": str(key), "certificate_path": str(inter)}
        )
    with pytest.raises(AgentAttestationError, match="certificate_path is required"):
        X509PopAgentAttestor.from_config({"private_key_path": str(key)})
