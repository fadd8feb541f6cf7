"""JWT bundles: the public keys, by key ID, that sign JWT-SVIDs of one trust domain."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from spiffed.bundle.errors import BundleError
from spiffed.spiffeid import TrustDomain

__all__ = ["JwtAuthority", "JwtBundle", "JwtBundleSource"]

# Key types that can verify a JWT-SVID (JWT-03: RS*/PS* with RSA, ES* with EC).
JwtAuthority = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class JwtBundleSource(Protocol):
    """Anything that can hand out the JWT bundle of a trust domain."""

    def get_jwt_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> JwtBundle | None:
        """The bundle for ``trust_domain``, or None when there is none (token untrusted)."""
        ...


@dataclass(frozen=True, slots=True)
class JwtBundle:
    """The JWT authorities of one trust domain: key ID -> public key."""

    trust_domain: TrustDomain
    authorities: Mapping[str, JwtAuthority] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checked: dict[str, JwtAuthority] = {}
        for kid, key in self.authorities.items():
            if not isinstance(kid, str) or not kid:
                raise BundleError(f"JWT authority of {self.trust_domain} has an empty key ID")
            if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
                raise BundleError(
                    f"JWT authority {kid!r} of {self.trust_domain}: unsupported key type "
                    f"{type(key).__name__}"
                )
            checked[kid] = key
        object.__setattr__(self, "authorities", MappingProxyType(checked))

    def find_authority(self, key_id: str) -> JwtAuthority | None:
        """The public key with ``key_id``, or None."""
        return self.authorities.get(key_id)

    def get_jwt_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> JwtBundle | None:
        """A bundle is a source of itself for its own trust domain."""
        return self if trust_domain == self.trust_domain else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JwtBundle):
            return NotImplemented
        return self.trust_domain == other.trust_domain and dict(self.authorities) == dict(
            other.authorities
        )

    def __hash__(self) -> int:
        return hash((self.trust_domain, frozenset(self.authorities)))
