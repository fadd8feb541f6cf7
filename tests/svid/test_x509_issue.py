"""Issuing helpers: issuer lint (X5-01..X5-15), SPIRE's layout and defaults, refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from spiffed.bundle.x509 import X509Bundle
from spiffed.keys import KeyType, PrivateKey
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.x509 import X509Svid, X509SvidError, check_leaf, verify_chain
from spiffed.svid.x509_issue import (
    BACKDATE,
    X509IssueError,
    create_intermediate_ca,
    create_root_ca,
    create_x509_svid,
    generate_key,
)

TD = TrustDomain("example.org")
WID = SpiffeId.parse("spiffe://example.org/ns/prod/sa/web")
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def lint_leaf(cert: x509.Certificate) -> None:
    """Issuer rules X5-01..X5-08 on a leaf, stricter than the validator."""
    exts = cert.extensions
    san = exts.get_extension_for_class(x509.SubjectAlternativeName)
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    assert len(uris) == 1, "X5-01"
    assert not SpiffeId.parse(uris[0]).is_trust_domain_id, "X5-02"
    if len(cert.subject) == 0:
        assert san.critical, "X5-03"
    bc = exts.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical, "X5-04 (recommended critical)"
    assert not bc.value.ca, "X5-04"
    ku = exts.get_extension_for_class(x509.KeyUsage)
    assert ku.critical, "X5-05"
    assert ku.value.digital_signature, "X5-06"
    assert not ku.value.key_cert_sign, "X5-07"
    assert not ku.value.crl_sign, "X5-07"
    eku = exts.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku, "X5-08"
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku, "X5-08"


def lint_ca(cert: x509.Certificate, td: TrustDomain) -> None:
    """Issuer rules X5-05, X5-10, X5-11, X5-15 on a CA certificate."""
    exts = cert.extensions
    bc = exts.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca, "X5-10"
    ku = exts.get_extension_for_class(x509.KeyUsage)
    assert ku.critical, "X5-05"
    assert ku.value.key_cert_sign, "X5-10"
    uris = exts.get_extension_for_class(x509.SubjectAlternativeName).value
    ids = [SpiffeId.parse(u) for u in uris.get_values_for_type(x509.UniformResourceIdentifier)]
    assert ids == [td.id], "X5-11 / SVID-02 / AMB-03: CA ID is spiffe://td"
    with pytest.raises(x509.ExtensionNotFound):
        exts.get_extension_for_class(x509.ExtendedKeyUsage)  # X5-15: avoid EKU on CAs
    exts.get_extension_for_class(x509.SubjectKeyIdentifier)


@pytest.fixture(scope="module")
def root() -> tuple[x509.Certificate, PrivateKey]:
    key = generate_key()
    return create_root_ca(TD, key, now=T0), key


def test_x5_10_x5_11_root_ca_lint(root: tuple[x509.Certificate, PrivateKey]) -> None:
    cert, _ = root
    lint_ca(cert, TD)
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.crl_sign
    assert not ku.digital_signature


def test_root_ca_subject_is_spire_default_with_serial_number(
    root: tuple[x509.Certificate, PrivateKey],
) -> None:
    cert, _ = root
    assert cert.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "US"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "SPIFFE"
    serial = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value
    assert serial == str(cert.serial_number)


def test_root_ca_backdated_10s(root: tuple[x509.Certificate, PrivateKey]) -> None:
    cert, _ = root
    assert cert.not_valid_before_utc == T0 - timedelta(seconds=10)
    assert cert.not_valid_after_utc == T0 + timedelta(hours=24)


def test_x5_01_to_x5_08_issued_leaf_lint(root: tuple[x509.Certificate, PrivateKey]) -> None:
    cert, key = root
    leaf = create_x509_svid(
        WID, generate_key().public_key(), signer_cert=cert, signer_key=key, now=T0
    )
    lint_leaf(leaf)
    assert check_leaf(leaf) == WID


def test_leaf_spire_layout(root: tuple[x509.Certificate, PrivateKey]) -> None:
    cert, key = root
    leaf = create_x509_svid(
        WID,
        generate_key().public_key(),
        signer_cert=cert,
        signer_key=key,
        now=T0,
        dns_names=["web.example.org", "web"],
    )
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (ku.digital_signature, ku.key_encipherment, ku.key_agreement) == (True, True, True)
    assert leaf.subject.rfc4514_string() == "CN=web.example.org,O=SPIRE,C=US"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["web.example.org", "web"]
    assert not san.critical  # subject is not empty
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert leaf.not_valid_before_utc == T0 - BACKDATE
    assert leaf.not_valid_after_utc == T0 + timedelta(hours=1)


def test_x5_03_leaf_with_empty_subject_has_critical_san(
    root: tuple[x509.Certificate, PrivateKey],
) -> None:
    cert, key = root
    leaf = create_x509_svid(
        WID,
        generate_key().public_key(),
        signer_cert=cert,
        signer_key=key,
        now=T0,
        subject=x509.Name([]),
    )
    lint_leaf(leaf)
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


def test_leaf_not_after_capped_at_signer_not_after(
    root: tuple[x509.Certificate, PrivateKey],
) -> None:
    cert, key = root
    leaf = create_x509_svid(
        WID,
        generate_key().public_key(),
        signer_cert=cert,
        signer_key=key,
        now=T0,
        ttl=timedelta(days=30),
    )
    assert leaf.not_valid_after_utc == cert.not_valid_after_utc


def test_x5_12_intermediate_lint_cap_and_chain_verifies(
    root: tuple[x509.Certificate, PrivateKey],
) -> None:
    cert, key = root
    ikey = generate_key("ec-p384")
    inter = create_intermediate_ca(
        TD, ikey.public_key(), signer_cert=cert, signer_key=key, now=T0, ttl=timedelta(days=9)
    )
    lint_ca(inter, TD)
    inter.verify_directly_issued_by(cert)
    assert inter.not_valid_after_utc == cert.not_valid_after_utc
    assert inter.issuer == cert.subject
    leaf_key = generate_key()
    leaf = create_x509_svid(WID, leaf_key.public_key(), signer_cert=inter, signer_key=ikey, now=T0)
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA384)
    got, chains = verify_chain([leaf, inter], X509Bundle(TD, (cert,)), now=T0)
    assert got == WID
    assert chains == [[leaf, inter, cert]]
    svid = X509Svid.from_certificates([leaf, inter], leaf_key)
    assert svid.spiffe_id == WID


def test_svid_06_issued_leaf_verifies_only_with_own_trust_domain_bundle(
    root: tuple[x509.Certificate, PrivateKey],
) -> None:
    cert, key = root
    other_td = TrustDomain("other.org")
    other_key = generate_key()
    other_root = create_root_ca(other_td, other_key, now=T0)
    leaf = create_x509_svid(
        WID, generate_key().public_key(), signer_cert=cert, signer_key=key, now=T0
    )
    assert verify_chain([leaf], X509Bundle(TD, (cert,)), now=T0)[0] == WID
    with pytest.raises(X509SvidError, match="X5-21"):
        verify_chain([leaf], X509Bundle(other_td, (other_root, cert)), now=T0)


@pytest.mark.parametrize("key_type", list(KeyType))
def test_key_types_issue_and_verify(key_type: KeyType) -> None:
    key = generate_key(key_type)
    assert KeyType.of(key) is key_type
    ca = create_root_ca(TD, key, now=T0)
    lint_ca(ca, TD)
    leaf_key = generate_key(key_type.value)
    leaf = create_x509_svid(WID, leaf_key.public_key(), signer_cert=ca, signer_key=key, now=T0)
    lint_leaf(leaf)
    assert verify_chain([leaf], X509Bundle(TD, (ca,)), now=T0)[0] == WID


def test_generate_key_default_is_ec_p256() -> None:
    key = generate_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"


def test_generate_key_unknown_type_rejected() -> None:
    with pytest.raises(X509IssueError, match="ec-p521"):
        generate_key("ec-p521")


def test_leaf_from_csr_takes_key_not_names(root: tuple[x509.Certificate, PrivateKey]) -> None:
    cert, key = root
    leaf_key = generate_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://evil.org/x")]),
            critical=False,
        )
        .sign(leaf_key, hashes.SHA256())
    )
    leaf = create_x509_svid(WID, csr, signer_cert=cert, signer_key=key, now=T0)
    assert leaf.public_key() == leaf_key.public_key()
    assert check_leaf(leaf) == WID


def test_leaf_from_csr_with_bad_signature_refused(
    root: tuple[x509.Certificate, PrivateKey],
) -> None:
    cert, key = root
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(generate_key(), hashes.SHA256())
    )
    der = bytearray(csr.public_bytes(Encoding.DER))
    der[-3] ^= 1
    bad = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(X509IssueError, match="invalid signature"):
        create_x509_svid(WID, bad, signer_cert=cert, signer_key=key, now=T0)


def test_x5_02_leaf_for_trust_domain_id_refused(root: tuple[x509.Certificate, PrivateKey]) -> None:
    cert, key = root
    with pytest.raises(X509IssueError, match="X5-02"):
        create_x509_svid(TD.id, generate_key().public_key(), signer_cert=cert, signer_key=key)


def test_id_12_leaf_for_non_spiffe_id_refused(root: tuple[x509.Certificate, PrivateKey]) -> None:
    cert, key = root
    with pytest.raises(X509IssueError, match="must be a SpiffeId"):
        create_x509_svid(
            "spiffe://example.org/w",  # type: ignore[arg-type]
            generate_key().public_key(),
            signer_cert=cert,
            signer_key=key,
        )


def test_svid_06_leaf_with_foreign_trust_domain_signer_refused(
    root: tuple[x509.Certificate, PrivateKey],
) -> None:
    cert, key = root
    with pytest.raises(X509IssueError, match="SVID-06"):
        create_x509_svid(
            SpiffeId.parse("spiffe://other.org/w"),
            generate_key().public_key(),
            signer_cert=cert,
            signer_key=key,
            now=T0,
        )


def test_x5_13_leaf_cannot_sign(root: tuple[x509.Certificate, PrivateKey]) -> None:
    cert, key = root
    leaf_key = generate_key()
    leaf = create_x509_svid(WID, leaf_key.public_key(), signer_cert=cert, signer_key=key, now=T0)
    with pytest.raises(X509IssueError, match="not a CA"):
        create_x509_svid(WID, generate_key().public_key(), signer_cert=leaf, signer_key=leaf_key)


def test_signer_key_mismatch_refused(root: tuple[x509.Certificate, PrivateKey]) -> None:
    cert, _ = root
    with pytest.raises(X509IssueError, match="does not match"):
        create_x509_svid(
            WID, generate_key().public_key(), signer_cert=cert, signer_key=generate_key(), now=T0
        )


def test_expired_signer_refused(root: tuple[x509.Certificate, PrivateKey]) -> None:
    cert, key = root
    with pytest.raises(X509IssueError, match="expired"):
        create_x509_svid(
            WID,
            generate_key().public_key(),
            signer_cert=cert,
            signer_key=key,
            now=T0 + timedelta(days=2),
        )


def test_unsupported_key_refused(root: tuple[x509.Certificate, PrivateKey]) -> None:
    cert, key = root
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(X509IssueError, match="1024"):
        create_x509_svid(WID, small.public_key(), signer_cert=cert, signer_key=key, now=T0)


def test_naive_now_refused() -> None:
    with pytest.raises(X509IssueError, match="timezone-aware"):
        create_root_ca(TD, generate_key(), now=datetime(2026, 1, 1))


def test_private_key_in_place_of_public_key_refused(
    root: tuple[x509.Certificate, PrivateKey],
) -> None:
    cert, key = root
    with pytest.raises(X509IssueError, match="public key or a CSR"):
        create_x509_svid(
            WID,
            generate_key(),  # type: ignore[arg-type]
            signer_cert=cert,
            signer_key=key,
            now=T0,
        )


def test_x5_10_intermediate_under_path_len_zero_refused() -> None:
    key = generate_key()
    root = create_root_ca(TD, key, now=T0, path_len=0)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    with pytest.raises(X509IssueError, match="pathLenConstraint 0"):
        create_intermediate_ca(
            TD, generate_key().public_key(), signer_cert=root, signer_key=key, now=T0
        )
    leaf = create_x509_svid(
        WID, generate_key().public_key(), signer_cert=root, signer_key=key, now=T0
    )
    lint_leaf(leaf)
