"""X509-SVIDs: parsing with a private key, and verifying a presented chain (X509-SVID.md).

Parsing (:class:`X509Svid`) takes the Workload API form (WA-23/24: concatenated DER chain,
leaf first, unencrypted DER PKCS#8 key) or PEM, and checks the leaf rules X5-01..X5-08 as a
validator applies them (X5-22..X5-28, AMB-20), that the key matches the leaf, and that every
intermediate is a CA with keyCertSign.

Verification (:func:`verify_chain`) is RFC 5280 path validation by
``cryptography.x509.verification`` (X5-20), anchored only on the bundle of the leaf's own
trust domain (X5-21, FED-07, SVID-06), followed by the same leaf rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from spiffed.bundle.x509 import X509BundleSource, split_der_certificates
from spiffed.keys import PrivateKey
from spiffed.spiffeid import SpiffeId, SpiffeIdError

__all__ = [
    "X509Svid",
    "X509SvidError",
    "check_leaf",
    "describe",
    "verify_chain",
]


class X509SvidError(ValueError):
    """An X509-SVID or a presented chain breaks a rule; the message names rule and certificate."""


# What ``cryptography`` raises when a lazily parsed field of a certificate is malformed.
_MALFORMED = (
    ValueError,
    x509.DuplicateExtension,
    x509.InvalidVersion,
    x509.UnsupportedGeneralNameType,
    UnsupportedAlgorithm,
)


def describe(cert: x509.Certificate) -> str:
    """A short name for a certificate in messages: its URI SAN or subject, and its serial."""
    try:
        name = cert.subject.rfc4514_string() or "<empty subject>"
    except _MALFORMED:
        name = "<malformed subject>"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if uris:
            name = uris[0]
    except (x509.ExtensionNotFound, *_MALFORMED):
        pass
    return f"certificate {name!r} (serial {cert.serial_number:#x})"


_E = TypeVar("_E", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[_E], rule: str) -> x509.Extension[_E] | None:
    """The extension of class ``kind``, None when absent; malformed ones raise for ``rule``."""
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # duplicate or malformed extensions
        raise X509SvidError(f"{rule}: {describe(cert)} has malformed extensions: {exc}") from None


def _leaf_id(cert: x509.Certificate) -> SpiffeId:
    """The leaf's SPIFFE ID under X5-01, X5-02, X5-24..X5-27."""
    try:
        exts = cert.extensions
        san_ext = exts.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise X509SvidError(
            f"X5-27: leaf {describe(cert)} has no subjectAltName, so no URI SAN"
        ) from None
    except ValueError as exc:
        raise X509SvidError(f"X5-27: leaf has malformed extensions: {exc}") from None
    uris = san_ext.value.get_values_for_type(x509.UniformResourceIdentifier)
    if not uris:
        raise X509SvidError(f"X5-27: leaf {describe(cert)} has no URI SAN")
    if len(uris) > 1:
        raise X509SvidError(
            f"X5-26: leaf {describe(cert)} has {len(uris)} URI SANs {uris!r}; exactly one allowed"
        )
    uri = uris[0]
    if not uri.startswith("spiffe:"):
        raise X509SvidError(
            f"X5-24: leaf URI SAN {uri!r} has scheme {uri.partition(':')[0]!r}, not 'spiffe'"
        )
    try:
        spiffe_id = SpiffeId.parse(uri)
    except SpiffeIdError as exc:
        raise X509SvidError(f"X5-27: leaf URI SAN is not a valid SPIFFE ID: {exc}") from None
    if spiffe_id.is_trust_domain_id:
        raise X509SvidError(
            f"X5-25: leaf SPIFFE ID {spiffe_id} has no path; a leaf ID needs a non-root path"
        )
    if len(cert.subject) == 0 and not san_ext.critical:
        raise X509SvidError(
            f"X5-03: leaf {describe(cert)} has an empty subject but a non-critical SAN"
        )
    return spiffe_id


def check_leaf(cert: x509.Certificate) -> SpiffeId:
    """Apply the validator-side leaf rules and return the leaf's SPIFFE ID.

    X5-24..X5-27 (exactly one URI SAN, a valid ``spiffe`` ID with a path), X5-03, X5-22
    (cA=false; a missing basicConstraints counts as false, X5-04), X5-23 (no keyCertSign or
    cRLSign), X5-28/AMB-20 (keyUsage with digitalSignature required), X5-08 (an EKU, when
    present, holds serverAuth and clientAuth; an absent EKU is accepted, row 21).
    """
    try:
        return _check_leaf(cert)
    except X509SvidError:
        raise
    except _MALFORMED as exc:
        raise X509SvidError(f"leaf {describe(cert)} is malformed: {exc}") from None


def _check_leaf(cert: x509.Certificate) -> SpiffeId:
    """The leaf rules; lazily parsed fields may raise cryptography's errors."""
    spiffe_id = _leaf_id(cert)
    bc = _ext(cert, x509.BasicConstraints, "X5-22")
    if bc is not None and bc.value.ca:
        raise X509SvidError(f"X5-22: leaf {describe(cert)} has basicConstraints cA=true")
    ku = _ext(cert, x509.KeyUsage, "X5-28")
    if ku is None:
        raise X509SvidError(
            f"X5-28: leaf {describe(cert)} has no keyUsage, so no digitalSignature (AMB-20)"
        )
    if ku.value.key_cert_sign:
        raise X509SvidError(f"X5-23: leaf {describe(cert)} has keyUsage keyCertSign")
    if ku.value.crl_sign:
        raise X509SvidError(f"X5-23: leaf {describe(cert)} has keyUsage cRLSign")
    if not ku.value.digital_signature:
        raise X509SvidError(
            f"X5-28: leaf {describe(cert)} lacks keyUsage digitalSignature (AMB-20)"
        )
    eku = _ext(cert, x509.ExtendedKeyUsage, "X5-08")
    if eku is not None:
        usages = set(eku.value)
        missing = [
            name
            for oid, name in (
                (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
                (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
            )
            if oid not in usages
        ]
        if missing:
            raise X509SvidError(
                f"X5-08: leaf {describe(cert)} has an extendedKeyUsage without "
                f"{' and '.join(missing)}"
            )
    return spiffe_id


def _check_intermediate(cert: x509.Certificate) -> None:
    try:
        _check_intermediate_fields(cert)
    except X509SvidError:
        raise
    except _MALFORMED as exc:
        raise X509SvidError(f"intermediate {describe(cert)} is malformed: {exc}") from None


def _check_intermediate_fields(cert: x509.Certificate) -> None:
    bc = _ext(cert, x509.BasicConstraints, "X5-10")
    if bc is None or not bc.value.ca:
        raise X509SvidError(f"X5-10: intermediate {describe(cert)} is not a CA (cA=false)")
    ku = _ext(cert, x509.KeyUsage, "X5-10")
    if ku is None or not ku.value.key_cert_sign:
        raise X509SvidError(f"X5-10: intermediate {describe(cert)} lacks keyUsage keyCertSign")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, *_MALFORMED):
        return False


def _check_pkcs8_shape(data: bytes) -> None:
    """Raise unless ``data`` looks like DER PKCS#8 (not PEM, PKCS#1 or SEC1) (WA-24)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        raise X509SvidError("WA-24: private key is PEM; the DER form was expected")
    # PrivateKeyInfo ::= SEQUENCE { version INTEGER, privateKeyAlgorithm SEQUENCE, ... }
    # EncryptedPrivateKeyInfo ::= SEQUENCE { SEQUENCE, OCTET STRING }
    pos = 0
    if len(data) < 2 or data[0] != 0x30:
        raise X509SvidError("WA-24: private key is not DER (no outer SEQUENCE)")
    pos = 2 + (data[1] & 0x7F if data[1] & 0x80 else 0)
    if pos < len(data) and data[pos] == 0x30:
        raise X509SvidError("WA-24: private key is encrypted PKCS#8; it must be unencrypted")
    if pos + 2 > len(data) or data[pos] != 0x02:
        raise X509SvidError("WA-24: private key is not DER PKCS#8 (no version INTEGER)")
    nxt = pos + 2 + data[pos + 1]
    if nxt >= len(data) or data[nxt] != 0x30:
        raise X509SvidError(
            "WA-24: private key is not PKCS#8 (looks like PKCS#1 or SEC1); "
            "the Workload API carries PKCS#8"
        )


def _load_key_der(data: bytes) -> PrivateKey:
    _check_pkcs8_shape(data)
    try:
        key = serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise X509SvidError("WA-24: private key is encrypted; it must be unencrypted") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise X509SvidError(f"WA-24: cannot parse PKCS#8 private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise X509SvidError(f"private key type {type(key).__name__} is not supported (EC or RSA)")
    return key


@dataclass(frozen=True, slots=True)
class X509Svid:
    """An X509-SVID with its private key: ``cert_chain`` is leaf first, then intermediates."""

    spiffe_id: SpiffeId
    cert_chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey

    def __post_init__(self) -> None:
        if not self.cert_chain:
            raise X509SvidError("X509-SVID has an empty certificate chain")
        leaf = self.cert_chain[0]
        if _is_ca(leaf):
            raise X509SvidError(
                f"WA-23: the first certificate {describe(leaf)} is a CA; the leaf must come first"
            )
        found = check_leaf(leaf)
        if found != self.spiffe_id:
            raise X509SvidError(
                f"X509-SVID ID {self.spiffe_id} does not match the leaf's URI SAN {found}"
            )
        for cert in self.cert_chain[1:]:
            _check_intermediate(cert)
        if not isinstance(self.private_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise X509SvidError(
                f"private key type {type(self.private_key).__name__} is not supported"
            )
        try:
            leaf_key = leaf.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise X509SvidError(
                f"cannot read the public key of leaf {describe(leaf)}: {exc}"
            ) from None
        if self.private_key.public_key() != leaf_key:
            raise X509SvidError(
                f"private key does not match the public key of leaf {describe(leaf)}"
            )

    @classmethod
    def from_certificates(
        cls, cert_chain: Sequence[x509.Certificate], private_key: PrivateKey
    ) -> X509Svid:
        """Build from parsed certificates (leaf first) and a key; the ID is read from the leaf."""
        chain = tuple(cert_chain)
        if not chain:
            raise X509SvidError("X509-SVID has an empty certificate chain")
        if _is_ca(chain[0]):
            raise X509SvidError(
                f"WA-23: the first certificate {describe(chain[0])} is a CA; "
                "the leaf must come first"
            )
        return cls(check_leaf(chain[0]), chain, private_key)

    @classmethod
    def parse_der(cls, chain_der: bytes, key_der: bytes) -> X509Svid:
        """Parse the Workload API form: concatenated DER chain (leaf first), DER PKCS#8 key."""
        if chain_der.lstrip().startswith(b"-----BEGIN"):
            raise X509SvidError("WA-23: certificate chain is PEM; concatenated DER was expected")
        try:
            certs = split_der_certificates(chain_der, what="X509-SVID chain")
        except _MALFORMED as exc:
            raise X509SvidError(f"WA-23: {exc}") from None
        return cls.from_certificates(certs, _load_key_der(key_der))

    @classmethod
    def parse_pem(cls, chain_pem: bytes, key_pem: bytes) -> X509Svid:
        """Parse PEM certificates (leaf first) and a PEM ``PRIVATE KEY`` (unencrypted PKCS#8)."""
        try:
            certs = x509.load_pem_x509_certificates(chain_pem)
        except ValueError as exc:
            raise X509SvidError(f"cannot parse PEM certificate chain: {exc}") from None
        blocks = key_pem.strip().splitlines()
        if not blocks or blocks[0].strip() != b"-----BEGIN PRIVATE KEY-----":
            first = blocks[0][:40].decode(errors="replace") if blocks else ""
            raise X509SvidError(
                f"private key PEM must be an unencrypted 'PRIVATE KEY' (PKCS#8) block, "
                f"not {first!r}"
            )
        try:
            der = serialization.load_pem_private_key(key_pem, password=None)
        except (TypeError, ValueError, UnsupportedAlgorithm) as exc:
            raise X509SvidError(f"cannot parse PEM private key: {exc}") from None
        if not isinstance(der, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise X509SvidError(f"private key type {type(der).__name__} is not supported")
        return cls.from_certificates(certs, der)

    @property
    def leaf(self) -> x509.Certificate:
        """The leaf certificate."""
        return self.cert_chain[0]

    @property
    def expires_at(self) -> datetime:
        """The leaf's NotAfter (UTC)."""
        return self.leaf.not_valid_after_utc

    def marshal_der(self) -> tuple[bytes, bytes]:
        """``(concatenated DER chain, DER PKCS#8 key)``, the Workload API form."""
        chain = b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.cert_chain)
        key = self.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return chain, key

    def marshal_pem(self) -> tuple[bytes, bytes]:
        """``(PEM chain, PEM PKCS#8 key)``."""
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.cert_chain)
        key = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return chain, key


def _policy(now: datetime, anchors: list[x509.Certificate]) -> verification.ClientVerifier:
    """A client verifier with the WebPKI profile relaxed where SPIFFE differs.

    EE: EKU may be absent and is checked by :func:`check_leaf` (row 21); AKI may be absent
    (Go does not require it). CA: EKU is not interpreted (X5-15, as go-spiffe's ExtKeyUsageAny);
    AKI may be absent. SAN contents on CAs are not interpreted (AMB-03).
    """
    agnostic = verification.Criticality.AGNOSTIC
    ee = (
        verification.ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.ExtendedKeyUsage, agnostic, None)
        .may_be_present(x509.AuthorityKeyIdentifier, agnostic, None)
    )
    ca = (
        verification.ExtensionPolicy.webpki_defaults_ca()
        .may_be_present(x509.ExtendedKeyUsage, agnostic, None)
        .may_be_present(x509.AuthorityKeyIdentifier, agnostic, None)
    )
    return (
        verification.PolicyBuilder()
        .store(verification.Store(anchors))
        .time(now)
        .extension_policies(ca_policy=ca, ee_policy=ee)
        .build_client_verifier()
    )


def verify_chain(
    chain: Sequence[x509.Certificate],
    bundle_source: X509BundleSource,
    *,
    now: datetime | None = None,
) -> tuple[SpiffeId, list[list[x509.Certificate]]]:
    """Verify a presented chain (leaf first) and return the leaf's ID and the verified chains.

    The anchors are the authorities of the bundle for the leaf's own trust domain and nothing
    else (X5-21, FED-07, SVID-06); path validation follows RFC 5280 (X5-20); the leaf rules are
    those of :func:`check_leaf`. Each verified chain runs from the leaf to a bundle authority.
    """
    certs = list(chain)
    if not certs:
        raise X509SvidError("no certificates presented")
    leaf = certs[0]
    spiffe_id = check_leaf(leaf)
    td = spiffe_id.trust_domain
    bundle = bundle_source.get_x509_bundle_for_trust_domain(td)
    if bundle is None:
        raise X509SvidError(
            f"X5-21: no X.509 bundle for trust domain {td}; {describe(leaf)} is untrusted"
        )
    if bundle.trust_domain != td:
        raise X509SvidError(
            f"X5-21: bundle source returned the bundle of {bundle.trust_domain} for {td}"
        )
    if not bundle.authorities:
        raise X509SvidError(
            f"X5-21: the X.509 bundle of {td} has no authorities; {describe(leaf)} is untrusted"
        )
    if now is not None and now.tzinfo is None:
        raise X509SvidError(f"now must be timezone-aware, got naive {now.isoformat()}")
    when = datetime.now(UTC) if now is None else now.astimezone(UTC)
    verifier = _policy(when, list(bundle.authorities))
    try:
        verified = verifier.verify(leaf, certs[1:])
    except (verification.VerificationError, *_MALFORMED) as exc:
        detail = str(exc)
        hint = ""
        if "unsupported name constraint" in detail:
            hint = " (URI name constraints, X5-14, are not supported by the path validator)"
        raise X509SvidError(
            f"X5-20: {describe(leaf)} did not validate against the X.509 bundle of {td} "
            f"at {when.isoformat()}: {detail}{hint}"
        ) from None
    return spiffe_id, [list(verified.chain)]
