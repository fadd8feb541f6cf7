"""X.509 bundles: the CA certificates that anchor X509-SVIDs of one trust domain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from spiffed.bundle.errors import BundleError
from spiffed.spiffeid import TrustDomain

__all__ = ["X509Bundle", "X509BundleSource"]


class X509BundleSource(Protocol):
    """Anything that can hand out the X.509 bundle of a trust domain."""

    def get_x509_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> X509Bundle | None:
        """The bundle for ``trust_domain``, or None when there is none (peer untrusted)."""
        ...


@dataclass(frozen=True, slots=True)
class X509Bundle:
    """The X.509 authorities (trust anchors) of one trust domain, in order, without duplicates."""

    trust_domain: TrustDomain
    authorities: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        unique: list[x509.Certificate] = []
        for cert in self.authorities:
            if not isinstance(cert, x509.Certificate):
                raise BundleError(
                    f"X.509 authority must be a Certificate, not {type(cert).__name__}"
                )
            if cert not in unique:
                unique.append(cert)
        object.__setattr__(self, "authorities", tuple(unique))

    @classmethod
    def parse_der(cls, trust_domain: TrustDomain, data: bytes) -> X509Bundle:
        """Parse concatenated DER certificates, as on the Workload API (WA-25). May be empty."""
        return cls(
            trust_domain, tuple(split_der_certificates(data, what=f"bundle of {trust_domain}"))
        )

    @classmethod
    def parse_pem(cls, trust_domain: TrustDomain, data: bytes) -> X509Bundle:
        """Parse PEM certificates (any number, other PEM blocks are an error)."""
        try:
            certs = x509.load_pem_x509_certificates(data) if data.strip() else []
        except ValueError as exc:
            raise BundleError(f"X.509 bundle of {trust_domain}: cannot parse PEM: {exc}") from None
        return cls(trust_domain, tuple(certs))

    def marshal_der(self) -> bytes:
        """Concatenated DER certificates."""
        return b"".join(c.public_bytes(Encoding.DER) for c in self.authorities)

    def marshal_pem(self) -> bytes:
        """PEM certificates, one after the other."""
        return b"".join(c.public_bytes(Encoding.PEM) for c in self.authorities)

    def get_x509_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> X509Bundle | None:
        """A bundle is a source of itself for its own trust domain."""
        return self if trust_domain == self.trust_domain else None


def split_der_certificates(data: bytes, *, what: str = "DER data") -> list[x509.Certificate]:
    """Split concatenated DER certificates on their ASN.1 SEQUENCE lengths and parse each."""
    certs: list[x509.Certificate] = []
    pos = 0
    while pos < len(data):
        start = pos
        if data[pos] != 0x30:
            raise BundleError(
                f"{what}: byte {pos} is not the start of a DER certificate (SEQUENCE)"
            )
        if pos + 2 > len(data):
            raise BundleError(f"{what}: truncated DER certificate at byte {start}")
        first = data[pos + 1]
        pos += 2
        if first < 0x80:
            length = first
        else:
            n = first & 0x7F
            if n == 0 or n > 4 or pos + n > len(data):
                raise BundleError(f"{what}: bad DER length at byte {start}")
            length = int.from_bytes(data[pos : pos + n], "big")
            pos += n
        end = pos + length
        if end > len(data):
            raise BundleError(f"{what}: DER certificate at byte {start} is truncated")
        try:
            certs.append(x509.load_der_x509_certificate(data[start:end]))
        except (ValueError, x509.InvalidVersion) as exc:
            raise BundleError(f"{what}: certificate at byte {start} is malformed: {exc}") from None
        pos = end
    return certs
