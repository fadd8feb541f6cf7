"""Fast X509-SVID signing for the server's hot path.

Building a certificate through ``cryptography``'s ``CertificateBuilder`` costs several
times the ECDSA signature itself. The leaves one CA signs differ only in serial number,
validity, subject public key, SAN and subject key identifier. So this signer asks the
reference implementation (:func:`spiffed.svid.x509_issue.create_x509_svid`) for one leaf
when it is created, keeps that leaf's DER pieces (signature algorithm, issuer, subject and
the fixed extensions, in order) as a template, and for each SVID splices the varying parts
into a TBSCertificate and signs it. Leaves with DNS names (whose subject carries a CN) go
through the reference implementation. Tests check that the two produce the same layout.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from spiffed.keys import PrivateKey, PublicKey
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.x509_issue import BACKDATE, X509IssueError, create_x509_svid

__all__ = ["LeafSigner"]


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _len(len(content)) + content


def _element(data: bytes, pos: int) -> tuple[int, int]:
    """(start of content, end of element) of the DER element at ``pos``."""
    first = data[pos + 1]
    if first < 0x80:
        return pos + 2, pos + 2 + first
    n = first & 0x7F
    start = pos + 2 + n
    return start, start + int.from_bytes(data[pos + 2 : start], "big")


def _children(data: bytes) -> list[bytes]:
    """The elements inside the constructed DER element ``data``."""
    start, end = _element(data, 0)
    out = []
    while start < end:
        _cstart, cend = _element(data, start)
        out.append(data[start:cend])
        start = cend
    return out


def _time(t: datetime) -> bytes:
    t = t.astimezone(UTC)
    if 1950 <= t.year < 2050:
        return _tlv(0x17, t.strftime("%y%m%d%H%M%SZ").encode())
    return _tlv(0x18, t.strftime("%Y%m%d%H%M%SZ").encode())


def _key_kind(key: object) -> str:
    """ "ec" or "rsa" for a supported public key (a SPIRE key type); else X509IssueError.

    Concrete key classes are remembered, so the costly abstract-class checks run once.
    """
    kind = _KINDS.get(type(key))
    if kind is None:
        if isinstance(key, ec.EllipticCurvePublicKey):
            kind = "ec"
        elif isinstance(key, rsa.RSAPublicKey):
            kind = "rsa"
        else:
            raise X509IssueError(f"subject public key: unsupported key type {type(key).__name__}")
        _KINDS[type(key)] = kind
    if kind == "ec":
        if key.curve.name not in ("secp256r1", "secp384r1"):  # type: ignore[attr-defined]
            raise X509IssueError(
                f"subject public key: unsupported curve {key.curve.name}"  # type: ignore[attr-defined]
            )
    elif key.key_size not in (2048, 4096):  # type: ignore[attr-defined]
        raise X509IssueError(
            f"subject public key: unsupported RSA key size {key.key_size}"  # type: ignore[attr-defined]
        )
    return kind


_KINDS: dict[type, str] = {}


def csr_signature_valid(
    csr: x509.CertificateSigningRequest, key: CertificatePublicKeyTypes | None = None
) -> bool:
    """True when the CSR's self-signature verifies with the CSR's own public key.

    Same check as ``csr.is_signature_valid``, done directly with the algorithm the CSR
    declares (one verify, no more), which costs less; any other algorithm falls back to the
    library's check. Errors other than a bad signature (an unreadable key) propagate.
    ``key`` is the CSR's public key when the caller has read it already.
    """
    key = csr.public_key() if key is None else key
    params = csr.signature_algorithm_parameters
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(params, ec.ECDSA):
            key.verify(csr.signature, csr.tbs_certrequest_bytes, params)
            return True
        algorithm = csr.signature_hash_algorithm
        if (
            isinstance(key, rsa.RSAPublicKey)
            and isinstance(params, padding.PKCS1v15 | padding.PSS)
            and algorithm is not None
        ):
            key.verify(csr.signature, csr.tbs_certrequest_bytes, params, algorithm)
            return True
    except InvalidSignature:
        return False
    return bool(csr.is_signature_valid)


def _csr_key(csr: x509.CertificateSigningRequest) -> CertificatePublicKeyTypes:
    """The CSR's public key, after checking the CSR's self-signature with it."""
    key = csr.public_key()
    if csr_signature_valid(csr, key):
        return key
    raise X509IssueError(f"CSR for {csr.subject.rfc4514_string()!r} has an invalid signature")


_OID_SAN = bytes.fromhex("0603551d11")
_OID_SKI = bytes.fromhex("0603551d0e")
_CRITICAL = bytes.fromhex("0101ff")


@dataclass(frozen=True, slots=True)
class _Template:
    version: bytes
    signature: bytes
    issuer: bytes
    subject: bytes
    sig_alg: bytes
    extensions: tuple[bytes | None, ...]  # None marks where SAN, then SKI, go
    san_critical: bool


class LeafSigner:
    """Signs X509-SVIDs of ``trust_domain`` with one CA certificate and key."""

    def __init__(
        self, trust_domain: TrustDomain, signer_cert: x509.Certificate, signer_key: PrivateKey
    ) -> None:
        self._td = trust_domain
        self._cert = signer_cert
        self._key = signer_key
        self._not_after = signer_cert.not_valid_after_utc
        self._template = self._make_template()
        self._validity_memo: tuple[tuple[int, int] | None, bytes] = (None, b"")

    def _make_template(self) -> _Template:
        now = datetime.now(UTC)
        probe = ec.generate_private_key(ec.SECP256R1()).public_key()
        leaf = create_x509_svid(
            SpiffeId.from_path(self._td, "/template"),
            probe,
            signer_cert=self._cert,
            signer_key=self._key,
            ttl=timedelta(seconds=60),
            now=min(now, self._not_after - timedelta(seconds=1)),
        )
        tbs, sig_alg, _sig = _children(leaf.public_bytes(serialization.Encoding.DER))
        version, _serial, signature, issuer, _validity, subject, _spki, wrapped = _children(tbs)
        extensions: list[bytes | None] = []
        san_critical = False
        for ext in _children(_children(wrapped)[0]):
            start, _end = _element(ext, 0)
            oid = ext[start : start + 5]
            if oid == _OID_SAN:
                san_critical = _CRITICAL in ext[start + 5 : start + 8]
                extensions.append(None)
            elif oid == _OID_SKI:
                extensions.append(None)
            else:
                extensions.append(ext)
        if extensions.count(None) != 2:
            raise X509IssueError("reference leaf lacks a SAN or SKI extension")
        return _Template(
            version, signature, issuer, subject, sig_alg, tuple(extensions), san_critical
        )

    def sign(
        self,
        spiffe_id: SpiffeId,
        public_key: PublicKey | x509.CertificateSigningRequest,
        *,
        ttl: timedelta,
        now: datetime | None = None,
        dns_names: tuple[str, ...] | list[str] = (),
    ) -> x509.Certificate:
        """A leaf for ``spiffe_id`` over ``public_key`` (or a CSR's key, signature checked)."""
        return x509.load_der_x509_certificate(
            self.sign_der(spiffe_id, public_key, ttl=ttl, now=now, dns_names=dns_names)
        )

    def sign_der(
        self,
        spiffe_id: SpiffeId,
        public_key: PublicKey | x509.CertificateSigningRequest,
        *,
        ttl: timedelta,
        now: datetime | None = None,
        dns_names: tuple[str, ...] | list[str] = (),
    ) -> bytes:
        """As :meth:`sign`, as DER: what the API sends, without parsing it back."""
        if dns_names:
            return create_x509_svid(
                spiffe_id,
                public_key,
                signer_cert=self._cert,
                signer_key=self._key,
                ttl=ttl,
                now=now,
                dns_names=list(dns_names),
            ).public_bytes(serialization.Encoding.DER)
        if not isinstance(spiffe_id, SpiffeId) or spiffe_id.is_trust_domain_id:
            raise X509IssueError(
                f"cannot issue an X509-SVID for {spiffe_id}: a leaf ID needs a path (X5-02)"
            )
        if spiffe_id.trust_domain != self._td:
            raise X509IssueError(
                f"cannot issue {spiffe_id} with a CA of trust domain {self._td} (SVID-06)"
            )
        if ttl <= timedelta(0):
            raise X509IssueError(f"SVID ttl must be positive, got {ttl}")
        start = now or datetime.now(UTC)
        if start >= self._not_after:
            raise X509IssueError("the signing CA has expired")
        key = (
            _csr_key(public_key)
            if isinstance(public_key, x509.CertificateSigningRequest)
            else (public_key)
        )
        _key_kind(key)
        spki = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # RFC 5280 method 1: SHA-1 of the subjectPublicKey BIT STRING's bits.
        bit_string = _children(spki)[1]
        bits_start, bits_end = _element(bit_string, 0)
        ski = hashlib.sha1(bit_string[bits_start + 1 : bits_end]).digest()  # noqa: S324
        t = self._template
        uri = _tlv(0x86, str(spiffe_id).encode())
        san = _tlv(
            0x30,
            _OID_SAN + (_CRITICAL if t.san_critical else b"") + _tlv(0x04, _tlv(0x30, uri)),
        )
        ski_ext = _tlv(0x30, _OID_SKI + _tlv(0x04, _tlv(0x04, ski)))
        varying = iter((san, ski_ext))
        exts = b"".join(e if e is not None else next(varying) for e in t.extensions)
        serial = secrets.randbits(128) | 1
        not_after = min(start + ttl, self._not_after)
        # X.509 times have whole seconds, so the encoded validity changes once a second.
        memo_key = (int(start.timestamp()), int(not_after.timestamp()))
        if self._validity_memo[0] != memo_key:
            validity = _tlv(0x30, _time(start - BACKDATE) + _time(not_after))
            self._validity_memo = (memo_key, validity)
        tbs = _tlv(
            0x30,
            t.version
            + _tlv(0x02, serial.to_bytes((serial.bit_length() + 8) // 8, "big"))
            + t.signature
            + t.issuer
            + self._validity_memo[1]
            + t.subject
            + spki
            + _tlv(0xA3, _tlv(0x30, exts)),
        )
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            algorithm = hashes.SHA384() if self._key.curve.name == "secp384r1" else hashes.SHA256()
            sig = self._key.sign(tbs, ec.ECDSA(algorithm))
        else:
            sig = self._key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
        return _tlv(0x30, tbs + t.sig_alg + _tlv(0x03, b"\x00" + sig))
