"""SVID rules of SPIFFE-ID.md §3-4 (SVID-01..SVID-05), checked on what the server's CA makes."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from spiffed.bundle import X509Bundle
from spiffed.server.ca.manager import CaManager, CaSettings, MemoryCaStore
from spiffed.server.keymanager.memory import MemoryKeyManager
from spiffed.server.upstreamauthority.disk import DiskUpstreamAuthority
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.x509 import X509Svid, X509SvidError, verify_chain
from tests.server.nodeattestor.pki import make_cert

TD = TrustDomain("example.org")
WEB = SpiffeId.parse("spiffe://example.org/web")


async def started_ca(**kw) -> CaManager:
    ca = CaManager(CaSettings(trust_domain=TD), MemoryKeyManager(), MemoryCaStore(TD.name), **kw)
    await ca.start()
    return ca


def uri_sans(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


async def test_svid_01_svid_02_the_authority_holds_an_svid_of_its_own_trust_domain() -> None:
    ca = await started_ca()
    cert = ca.current_x509.certificate
    assert uri_sans(cert) == ["spiffe://example.org"]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


async def test_svid_03_authority_is_self_signed_or_chained_to_its_upstream(tmp_path) -> None:
    ca = await started_ca()
    root = ca.current_x509.certificate
    assert root.issuer == root.subject
    root.verify_directly_issued_by(root)

    upstream = make_cert("upstream", ca=True)
    (tmp_path / "u.pem").write_bytes(upstream.cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "u.key").write_bytes(
        upstream.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    chained = await started_ca(
        upstream=DiskUpstreamAuthority(str(tmp_path / "u.pem"), str(tmp_path / "u.key"))
    )
    intermediate = chained.current_x509.certificate
    assert intermediate.issuer == upstream.cert.subject
    intermediate.verify_directly_issued_by(upstream.cert)


def _tampered(der: bytes, old: bytes, new: bytes) -> x509.Certificate:
    assert der.count(old) == 1 and len(old) == len(new)
    return x509.load_der_x509_certificate(der.replace(old, new))


async def test_svid_04_the_signature_covers_the_spiffe_id_and_the_key() -> None:
    ca = await started_ca()
    bundle = X509Bundle(TD, (ca.current_x509.certificate,))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = ca.sign_x509_svid(WEB, key.public_key())[0]
    assert verify_chain([leaf], bundle)[0] == WEB
    der = leaf.public_bytes(serialization.Encoding.DER)
    other_id = _tampered(der, b"spiffe://example.org/web", b"spiffe://example.org/wab")
    with pytest.raises(X509SvidError, match="did not validate"):
        verify_chain([other_id], bundle)
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    swapped = _tampered(der, point[-8:], bytes(b ^ 0xFF for b in point[-8:]))
    with pytest.raises(X509SvidError):
        verify_chain([swapped], bundle)


def test_svid_05_an_x509_svid_is_an_x509_document() -> None:
    with pytest.raises(X509SvidError):
        X509Svid.parse_der(b'{"typ": "JWT"}', b"\x30\x00")
    with pytest.raises(X509SvidError):
        X509Svid.parse_der(b"eyJhbGciOiJFUzI1NiJ9.e30.sig", b"\x30\x00")
