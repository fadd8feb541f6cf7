"""Issuing X.509 CA certificates and X509-SVIDs, laid out as SPIRE lays them out.

Rules followed: X5-01..X5-08 for leaves, X5-10..X5-15 for CAs, SVID-02 (a CA's ID is the
trust domain ID ``spiffe://td``, AMB-03), SPIRE's defaults (SPIRE-REFERENCE §1.4): NotBefore
back-dated 10 s, NotAfter capped at the signer's NotAfter, subjects ``C=US, O=SPIFFE`` (CA,
plus ``serialNumber``) and ``C=US, O=SPIRE`` (leaf, first DNS name as CN), SKI and AKI.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from spiffed.keys import KeyType, PrivateKey, PublicKey, UnsupportedKeyError
from spiffed.spiffeid import SpiffeId, TrustDomain

__all__ = [
    "BACKDATE",
    "DEFAULT_CA_TTL",
    "DEFAULT_SVID_TTL",
    "X509IssueError",
    "create_intermediate_ca",
    "create_root_ca",
    "create_x509_svid",
    "default_ca_subject",
    "default_svid_subject",
    "generate_key",
]

BACKDATE: Final = timedelta(seconds=10)
DEFAULT_CA_TTL: Final = timedelta(hours=24)
DEFAULT_SVID_TTL: Final = timedelta(hours=1)


class X509IssueError(ValueError):
    """A certificate cannot be issued as asked; the message says why."""


def generate_key(key_type: KeyType | str = KeyType.EC_P256) -> PrivateKey:
    """Generate a private key of a SPIRE key type (``ec-p256`` default, ``ec-p384``, ``rsa-*``)."""
    try:
        kt = key_type if isinstance(key_type, KeyType) else KeyType.parse(key_type)
    except UnsupportedKeyError as exc:
        raise X509IssueError(str(exc)) from None
    return kt.generate()


def default_ca_subject(serial_number: int) -> x509.Name:
    """SPIRE's default CA subject: ``C=US, O=SPIFFE, serialNumber=<certificate serial>``."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, str(serial_number)),
        ]
    )


def default_svid_subject(dns_names: Sequence[str] = ()) -> x509.Name:
    """SPIRE's default SVID subject: ``C=US, O=SPIRE``, with the first DNS name as CN."""
    attrs = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE"),
    ]
    if dns_names:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0]))
    return x509.Name(attrs)


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    """The signature hash Go's x509 picks for a signer key (SHA-384 for P-384, else SHA-256)."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        return hashes.SHA384()
    return hashes.SHA256()


def _checked_key(key: object, what: str) -> None:
    """Raise X509IssueError unless ``key`` is of one of SPIRE's key types."""
    if not isinstance(
        key,
        ec.EllipticCurvePrivateKey
        | ec.EllipticCurvePublicKey
        | rsa.RSAPrivateKey
        | rsa.RSAPublicKey,
    ):
        raise X509IssueError(f"{what}: unsupported key type {type(key).__name__}")
    try:
        KeyType.of(key)
    except UnsupportedKeyError as exc:
        raise X509IssueError(f"{what}: {exc}") from None


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise X509IssueError(f"now must be timezone-aware, got naive {now.isoformat()}")
    return now.astimezone(UTC)


def _serial() -> int:
    # 128 random bits, positive and below 2**159 so the DER INTEGER stays within 20 bytes.
    return secrets.randbits(128) | 1


def _ski(public_key: PublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.public_key()  # type: ignore[arg-type]
        )
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _ca_extensions(
    builder: x509.CertificateBuilder, trust_domain: TrustDomain, path_len: int | None
) -> x509.CertificateBuilder:
    return (
        builder.add_extension(x509.BasicConstraints(ca=True, path_length=path_len), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(trust_domain.id_string())]),
            critical=False,
        )
    )


def _signer_ready(
    signer_cert: x509.Certificate,
    signer_key: PrivateKey,
    now: datetime,
    *,
    for_ca: bool = False,
) -> None:
    """Raise unless ``signer_cert`` is an unexpired CA whose key is ``signer_key``."""
    _checked_key(signer_key, "signer key")
    if signer_cert.public_key() != signer_key.public_key():
        raise X509IssueError(
            "signer key does not match the public key of signer "
            f"{signer_cert.subject.rfc4514_string()!r}"
        )
    try:
        bc = signer_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = x509.BasicConstraints(ca=False, path_length=None)
    if not bc.ca:
        raise X509IssueError(
            f"signer {signer_cert.subject.rfc4514_string()!r} is not a CA (basicConstraints)"
        )
    if for_ca and bc.path_length == 0:
        raise X509IssueError(
            f"signer {signer_cert.subject.rfc4514_string()!r} has pathLenConstraint 0 "
            "and cannot issue CA certificates"
        )
    if signer_cert.not_valid_after_utc <= now:
        raise X509IssueError(
            f"signer {signer_cert.subject.rfc4514_string()!r} expired at "
            f"{signer_cert.not_valid_after_utc.isoformat()}"
        )


def create_root_ca(
    trust_domain: TrustDomain,
    key: PrivateKey,
    *,
    ttl: timedelta = DEFAULT_CA_TTL,
    now: datetime | None = None,
    subject: x509.Name | None = None,
    path_len: int | None = None,
) -> x509.Certificate:
    """A self-signed root CA for ``trust_domain``, as SPIRE makes it without an upstream.

    URI SAN ``spiffe://<td>``, basicConstraints CA:TRUE (critical), keyUsage
    keyCertSign|cRLSign (critical), SKI and AKI; ``subject`` defaults to
    :func:`default_ca_subject`.
    """
    if not isinstance(trust_domain, TrustDomain):
        raise X509IssueError(
            f"trust_domain must be a TrustDomain, not {type(trust_domain).__name__}"
        )
    if ttl <= timedelta(0):
        raise X509IssueError(f"CA ttl must be positive, got {ttl}")
    _checked_key(key, "CA key")
    start = _now(now)
    serial = _serial()
    name = subject if subject is not None else default_ca_subject(serial)
    builder = (
        x509.CertificateBuilder()
        .serial_number(serial)
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .not_valid_before(start - BACKDATE)
        .not_valid_after(start + ttl)
    )
    builder = _ca_extensions(builder, trust_domain, path_len)
    ski = _ski(key.public_key())
    builder = builder.add_extension(ski, critical=False).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
    )
    return builder.sign(key, _hash_for(key))


def create_intermediate_ca(
    trust_domain: TrustDomain,
    public_key: PublicKey | x509.CertificateSigningRequest,
    *,
    signer_cert: x509.Certificate,
    signer_key: PrivateKey,
    ttl: timedelta = DEFAULT_CA_TTL,
    now: datetime | None = None,
    subject: x509.Name | None = None,
    path_len: int | None = None,
) -> x509.Certificate:
    """An intermediate CA for ``trust_domain`` signed by ``signer_cert`` (X5-10, X5-12).

    Same layout as :func:`create_root_ca`; NotAfter is capped at the signer's NotAfter.
    The subject defaults to the CSR's subject when it has one, else the default CA subject.
    """
    if not isinstance(trust_domain, TrustDomain):
        raise X509IssueError(
            f"trust_domain must be a TrustDomain, not {type(trust_domain).__name__}"
        )
    start = _now(now)
    _signer_ready(signer_cert, signer_key, start, for_ca=True)
    key = _subject_key(public_key)
    serial = _serial()
    if subject is None:
        if isinstance(public_key, x509.CertificateSigningRequest) and len(public_key.subject):
            subject = public_key.subject
        else:
            subject = default_ca_subject(serial)
    builder = (
        x509.CertificateBuilder()
        .serial_number(serial)
        .subject_name(subject)
        .issuer_name(signer_cert.subject)
        .public_key(key)
        .not_valid_before(start - BACKDATE)
        .not_valid_after(min(start + ttl, signer_cert.not_valid_after_utc))
    )
    builder = _ca_extensions(builder, trust_domain, path_len)
    builder = builder.add_extension(_ski(key), critical=False).add_extension(
        _aki(signer_cert), critical=False
    )
    return builder.sign(signer_key, _hash_for(signer_key))


def _subject_key(public_key: PublicKey | x509.CertificateSigningRequest) -> PublicKey:
    if isinstance(public_key, x509.CertificateSigningRequest):
        if not public_key.is_signature_valid:
            raise X509IssueError(
                f"CSR for {public_key.subject.rfc4514_string()!r} has an invalid signature"
            )
        key: object = public_key.public_key()
    else:
        key = public_key
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise X509IssueError(
            f"subject key must be an EC or RSA public key or a CSR, not {type(key).__name__}"
        )
    _checked_key(key, "subject public key")
    return key


def create_x509_svid(
    spiffe_id: SpiffeId,
    public_key: PublicKey | x509.CertificateSigningRequest,
    *,
    signer_cert: x509.Certificate,
    signer_key: PrivateKey,
    ttl: timedelta = DEFAULT_SVID_TTL,
    now: datetime | None = None,
    dns_names: Sequence[str] = (),
    subject: x509.Name | None = None,
) -> x509.Certificate:
    """A leaf X509-SVID for ``spiffe_id`` over ``public_key`` (or a CSR's key), signed by a CA.

    Layout (X5-01..X5-08): one URI SAN plus ``dns_names`` (SAN critical when the subject is
    empty), basicConstraints CA:FALSE (critical), keyUsage digitalSignature|keyEncipherment|
    keyAgreement (critical), EKU serverAuth+clientAuth, SKI and AKI. The ID comes from the
    caller, never from the CSR. Refuses a trust-domain ID (X5-02) and a signer whose SPIFFE ID
    is in another trust domain (SVID-06).
    """
    if not isinstance(spiffe_id, SpiffeId):
        raise X509IssueError(f"spiffe_id must be a SpiffeId, not {type(spiffe_id).__name__}")
    if spiffe_id.is_trust_domain_id:
        raise X509IssueError(
            f"cannot issue an X509-SVID for {spiffe_id}: a leaf ID needs a path (X5-02)"
        )
    if ttl <= timedelta(0):
        raise X509IssueError(f"SVID ttl must be positive, got {ttl}")
    start = _now(now)
    _signer_ready(signer_cert, signer_key, start)
    signer_td = _signer_trust_domain(signer_cert)
    if signer_td is not None and signer_td != spiffe_id.trust_domain:
        raise X509IssueError(
            f"cannot issue {spiffe_id} with a CA of trust domain {signer_td} (SVID-06)"
        )
    key = _subject_key(public_key)
    name = subject if subject is not None else default_svid_subject(dns_names)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
    sans.extend(x509.DNSName(d) for d in dns_names)
    builder = (
        x509.CertificateBuilder()
        .serial_number(_serial())
        .subject_name(name)
        .issuer_name(signer_cert.subject)
        .public_key(key)
        .not_valid_before(start - BACKDATE)
        .not_valid_after(min(start + ttl, signer_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=len(name) == 0)
        .add_extension(_ski(key), critical=False)
        .add_extension(_aki(signer_cert), critical=False)
    )
    return builder.sign(signer_key, _hash_for(signer_key))


def _signer_trust_domain(cert: x509.Certificate) -> TrustDomain | None:
    """The trust domain of a CA's SPIFFE URI SAN, or None when it has no valid one (AMB-03)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        return None
    try:
        return TrustDomain.parse(uris[0])
    except ValueError:
        return None
