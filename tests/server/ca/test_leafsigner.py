"""The fast leaf signer produces exactly the reference layout, and refuses what it refuses."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from spiffed.keys import KeyType
from spiffed.server.ca.leafsigner import LeafSigner
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.x509_issue import X509IssueError, create_root_ca, create_x509_svid

TD = TrustDomain("example.org")
ID = SpiffeId.parse("spiffe://example.org/ns/prod/sa/web")
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def ca(key_type: KeyType):
    key = key_type.generate()
    return create_root_ca(TD, key, ttl=dt.timedelta(hours=2), now=NOW), key


def layout(cert: x509.Certificate) -> list:
    return [
        cert.version,
        cert.issuer,
        cert.subject,
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
        cert.signature_algorithm_oid,
        [(e.oid, e.critical, e.value) for e in cert.extensions],
    ]


@pytest.mark.parametrize("ca_type", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048])
@pytest.mark.parametrize("leaf_type", [KeyType.EC_P256, KeyType.RSA_2048])
def test_same_layout_as_the_reference(ca_type: KeyType, leaf_type: KeyType) -> None:
    ca_cert, ca_key = ca(ca_type)
    leaf_key = leaf_type.generate()
    ttl = dt.timedelta(minutes=30)
    fast = LeafSigner(TD, ca_cert, ca_key).sign(ID, leaf_key.public_key(), ttl=ttl, now=NOW)
    ref = create_x509_svid(
        ID, leaf_key.public_key(), signer_cert=ca_cert, signer_key=ca_key, ttl=ttl, now=NOW
    )
    assert layout(fast) == layout(ref)
    assert fast.public_key() == leaf_key.public_key()
    fast.verify_directly_issued_by(ca_cert)
    assert fast.serial_number != ref.serial_number


def test_validity_is_capped_at_the_ca_and_backdated() -> None:
    ca_cert, ca_key = ca(KeyType.EC_P256)
    leaf = LeafSigner(TD, ca_cert, ca_key).sign(
        ID, ec.generate_private_key(ec.SECP256R1()).public_key(), ttl=dt.timedelta(days=3), now=NOW
    )
    assert leaf.not_valid_after_utc == ca_cert.not_valid_after_utc
    assert leaf.not_valid_before_utc == NOW - dt.timedelta(seconds=10)


def test_csr_is_checked_and_its_key_used() -> None:
    ca_cert, ca_key = ca(KeyType.EC_P256)
    signer = LeafSigner(TD, ca_cert, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    assert signer.sign(ID, csr, ttl=dt.timedelta(minutes=5)).public_key() == key.public_key()
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # corrupt the signature
    forged = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(X509IssueError, match="invalid signature"):
        signer.sign(ID, forged, ttl=dt.timedelta(minutes=5))


@pytest.mark.parametrize(
    ("spiffe_id", "message"),
    [
        ("spiffe://example.org", "needs a path"),
        ("spiffe://other.org/w", "SVID-06"),
    ],
)
def test_refuses_ids_it_may_not_sign(spiffe_id: str, message: str) -> None:
    ca_cert, ca_key = ca(KeyType.EC_P256)
    with pytest.raises(X509IssueError, match=message):
        LeafSigner(TD, ca_cert, ca_key).sign(
            SpiffeId.parse(spiffe_id),
            ec.generate_private_key(ec.SECP256R1()).public_key(),
            ttl=dt.timedelta(minutes=5),
        )


def test_refuses_unsupported_keys() -> None:
    ca_cert, ca_key = ca(KeyType.EC_P256)
    with pytest.raises(X509IssueError, match="unsupported curve"):
        LeafSigner(TD, ca_cert, ca_key).sign(
            ID, ec.generate_private_key(ec.SECP521R1()).public_key(), ttl=dt.timedelta(minutes=5)
        )
    with pytest.raises(X509IssueError, match="unsupported RSA key size"):
        LeafSigner(TD, ca_cert, ca_key).sign(
            ID, rsa.generate_private_key(65537, 1024).public_key(), ttl=dt.timedelta(minutes=5)
        )


def test_dns_names_go_through_the_reference_path() -> None:
    ca_cert, ca_key = ca(KeyType.EC_P256)
    leaf = LeafSigner(TD, ca_cert, ca_key).sign(
        ID,
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        ttl=dt.timedelta(minutes=5),
        dns_names=("web.example.org",),
    )
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["web.example.org"]


def test_openssl_verifies_fast_leaves(tmp_path: Path) -> None:
    ca_cert, ca_key = ca(KeyType.EC_P256)
    leaf = LeafSigner(TD, ca_cert, ca_key).sign(
        ID, ec.generate_private_key(ec.SECP256R1()).public_key(), ttl=dt.timedelta(minutes=5)
    )
    (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: ec.generate_private_key(ec.SECP384R1()),
        lambda: rsa.generate_private_key(65537, 2048),
    ],
)
def test_csr_signatures_of_every_key_type_are_checked(make_key) -> None:
    ca_cert, ca_key = ca(KeyType.EC_P256)
    signer = LeafSigner(TD, ca_cert, ca_key)
    key = make_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    assert signer.sign(ID, csr, ttl=dt.timedelta(minutes=5)).public_key() == key.public_key()
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x40  # flip a bit inside the signature
    with pytest.raises(X509IssueError, match="invalid signature"):
        signer.sign(ID, x509.load_der_x509_csr(bytes(der)), ttl=dt.timedelta(minutes=5))


def test_rsa_pss_signed_csr_is_accepted() -> None:
    from cryptography.hazmat.primitives.asymmetric import padding

    ca_cert, ca_key = ca(KeyType.EC_P256)
    key = rsa.generate_private_key(65537, 2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(
            key,
            hashes.SHA256(),
            rsa_padding=padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        )
    )
    leaf = LeafSigner(TD, ca_cert, ca_key).sign(ID, csr, ttl=dt.timedelta(minutes=5))
    assert leaf.public_key() == key.public_key()
