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

    @classmethod
    def parse_jwks(cls, trust_domain: TrustDomain, data: bytes) -> JwtBundle:
        """Parse the plain RFC 7517 JWKS of the Workload API's ``FetchJWTBundles`` (WA-45).

        ``use`` is not required (SPIRE leaves it out, AMB-18): entries without ``use`` or with
        ``"use": "jwt-svid"`` are JWT authorities; entries with any other ``use`` (x509-svid,
        wit-svid, ...) are ignored, as are unknown key types and entries without ``kid``
        (§5.3 row 9). ``spiffe_sequence`` and other top-level members are ignored.
        """
        from spiffed.bundle import _json
        from spiffed.bundle.spiffe import USE_JWT_SVID, add_jwt_authority, jwt_entry_key

        where = f"JWKS of {trust_domain}"
        obj = _json.loads(data, what=where)
        if not isinstance(obj, dict):
            raise BundleError(f"{where}: must be a JSON object, not {_json.type_name(obj)}")
        if "keys" not in obj:
            raise BundleError(f"{where}: member 'keys' is required")
        keys = obj["keys"]
        if not isinstance(keys, list):
            raise BundleError(
                f"{where}: member 'keys' must be an array, not {_json.type_name(keys)}"
            )
        authorities: dict[str, JwtAuthority] = {}
        for index, entry in enumerate(keys):
            entry_where = f"{where}: keys[{index}]"
            if not isinstance(entry, dict):
                raise BundleError(
                    f"{entry_where} must be a JSON object, not {_json.type_name(entry)}"
                )
            if entry.get("use", USE_JWT_SVID) != USE_JWT_SVID:
                continue
            pair = jwt_entry_key(entry, where=entry_where)
            if pair is not None:
                add_jwt_authority(authorities, pair[0], pair[1], where=entry_where)
        return cls(trust_domain, authorities)

    def marshal_jwks(self, *, include_use: bool = False) -> bytes:
        """A plain RFC 7517 JWKS of the authorities, as SPIRE sends it on the Workload API.

        Without ``include_use`` no ``use`` member is written (SPIRE's form); with it each key
        gets ``"use": "jwt-svid"``. No ``spiffe_sequence``/``spiffe_refresh_hint`` (WA-45).
        """
        from spiffed.bundle import _json
        from spiffed.bundle.jwk import public_key_to_jwk

        keys = []
        for kid, key in self.authorities.items():
            entry = {"kid": kid, **public_key_to_jwk(key)}
            if include_use:
                entry["use"] = "jwt-svid"
            keys.append(entry)
        return _json.dumps({"keys": keys})

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
