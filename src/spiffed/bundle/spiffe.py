"""SPIFFE bundles: the JWK Set document of SPIFFE_Trust_Domain_and_Bundle.md (TB-01..TB-15).

A SPIFFE bundle carries the X.509 authorities (``"use": "x509-svid"`` entries, X5-30..X5-36)
and the JWT authorities (``"use": "jwt-svid"`` entries, JWT-16/17) of one trust domain, plus
``spiffe_sequence`` and ``spiffe_refresh_hint``. The document names no trust domain, so a
bundle is always paired with one (TB-01).

Consumer decisions (see docs/bundles.md):
- AMB-09 / §5.3 row 7: an x509-svid entry with several ``x5c`` certificates contributes the
  first one; the rest are ignored and not even decoded (go-spiffe rejects the bundle).
- §5.3 row 8: an ``x5c`` certificate whose key differs from the entry's public members
  rejects the whole bundle (go-jose does the same): the document contradicts itself.
- §5.3 row 9: a jwt-svid entry without ``kid`` (or with an empty one) is ignored; it cannot be
  selected by a token anyway. go-spiffe rejects the bundle.
- Entries whose ``use`` or key type is missing or unknown, including ``wit-svid``, are
  ignored (TB-06, TB-08, TB-09). Malformed members of an entry we do use are an error.

Implements the SPIFFE standards at spiffe/spiffe commit
665a28f3253ecdce59f26f3ef29c0d6408b37c3d.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final

from cryptography import x509

from spiffed.bundle import _json
from spiffed.bundle.errors import BundleError
from spiffed.bundle.jwk import (
    certificate_from_x5c,
    certificate_to_x5c,
    is_known_key_type,
    public_key_from_jwk,
    public_key_to_jwk,
)
from spiffed.bundle.jwt import JwtAuthority, JwtBundle
from spiffed.bundle.x509 import X509Bundle
from spiffed.spiffeid import TrustDomain

__all__ = [
    "SEQUENCE_MEMBER",
    "REFRESH_HINT_MEMBER",
    "USE_JWT_SVID",
    "USE_WIT_SVID",
    "USE_X509_SVID",
    "SpiffeBundle",
]

USE_X509_SVID: Final = "x509-svid"
USE_JWT_SVID: Final = "jwt-svid"
USE_WIT_SVID: Final = "wit-svid"  # known to the spec, not implemented here: ignored (AMB-16)
SEQUENCE_MEMBER: Final = "spiffe_sequence"
REFRESH_HINT_MEMBER: Final = "spiffe_refresh_hint"

_PUBLIC_MEMBERS: Final = ("x", "y", "n", "e")


@dataclass(frozen=True, slots=True)
class SpiffeBundle:
    """The SPIFFE bundle of one trust domain: X.509 and JWT authorities, sequence, hint.

    ``sequence`` and ``refresh_hint`` (seconds) are non-negative integers or None when the
    document does not set them. Python ints keep every digit of a sequence (TB-03).
    """

    trust_domain: TrustDomain
    x509_authorities: tuple[x509.Certificate, ...] = ()
    jwt_authorities: Mapping[str, JwtAuthority] = field(default_factory=dict)
    sequence: int | None = None
    refresh_hint: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.trust_domain, TrustDomain):
            raise BundleError(
                f"SPIFFE bundle needs a TrustDomain, not {type(self.trust_domain).__name__}"
            )
        where = f"SPIFFE bundle of {self.trust_domain}"
        certs = X509Bundle(self.trust_domain, tuple(self.x509_authorities)).authorities
        for cert in certs:
            try:
                public_key_to_jwk(cert.public_key())  # type: ignore[arg-type]
            except BundleError as exc:
                raise BundleError(
                    f"{where}: X.509 authority {cert.subject.rfc4514_string()!r}: {exc}"
                ) from None
        object.__setattr__(self, "x509_authorities", certs)
        jwt = JwtBundle(self.trust_domain, dict(self.jwt_authorities))
        object.__setattr__(self, "jwt_authorities", MappingProxyType(dict(jwt.authorities)))
        for name, value in (("sequence", self.sequence), ("refresh_hint", self.refresh_hint)):
            if value is not None and (type(value) is not int or value < 0):
                raise BundleError(f"{where}: {name} must be a non-negative int, not {value!r}")

    # -- construction -------------------------------------------------------------------

    @classmethod
    def parse(cls, trust_domain: TrustDomain, data: bytes) -> SpiffeBundle:
        """Parse a SPIFFE bundle document (UTF-8 JSON) for ``trust_domain``."""
        what = f"SPIFFE bundle of {trust_domain}"
        return cls.from_json_object(trust_domain, _json.loads(data, what=what))

    @classmethod
    def from_json_object(cls, trust_domain: TrustDomain, obj: object) -> SpiffeBundle:
        """Build a bundle from already-decoded JSON (as produced by strict parsing).

        Numbers that are not integers must be :class:`decimal.Decimal` or float; both are
        rejected where an integer is required.
        """
        where = f"SPIFFE bundle of {trust_domain}"
        if not isinstance(obj, dict):
            raise BundleError(f"{where}: must be a JSON object, not {_json.type_name(obj)}")
        if "keys" not in obj:
            raise BundleError(f"{where}: member 'keys' is required (TB-05)")
        keys = obj["keys"]
        if not isinstance(keys, list):
            raise BundleError(
                f"{where}: member 'keys' must be an array, not {_json.type_name(keys)}"
            )
        sequence = _optional_uint(obj, SEQUENCE_MEMBER, where)
        refresh_hint = _optional_uint(obj, REFRESH_HINT_MEMBER, where)
        certs: list[x509.Certificate] = []
        jwt: dict[str, JwtAuthority] = {}
        for index, entry in enumerate(keys):
            entry_where = f"{where}: keys[{index}]"
            if not isinstance(entry, dict):
                raise BundleError(
                    f"{entry_where} must be a JSON object, not {_json.type_name(entry)}"
                )
            use = entry.get("use")
            if use == USE_X509_SVID:
                cert = x509_entry_certificate(entry, where=entry_where)
                if cert is not None:
                    certs.append(cert)
            elif use == USE_JWT_SVID:
                pair = jwt_entry_key(entry, where=entry_where)
                if pair is not None:
                    add_jwt_authority(jwt, pair[0], pair[1], where=entry_where)
            # anything else (missing, "sig", "X509-SVID", "wit-svid", ...) is ignored (TB-09)
        return cls(trust_domain, tuple(certs), jwt, sequence, refresh_hint)

    @classmethod
    def from_bundles(
        cls,
        trust_domain: TrustDomain,
        *,
        x509_bundle: X509Bundle | None = None,
        jwt_bundle: JwtBundle | None = None,
        sequence: int | None = None,
        refresh_hint: int | None = None,
    ) -> SpiffeBundle:
        """Combine an X.509 and a JWT bundle **of the same trust domain** (FED-07)."""
        for part in (x509_bundle, jwt_bundle):
            if part is not None and part.trust_domain != trust_domain:
                raise BundleError(
                    f"cannot put a bundle of {part.trust_domain} into the SPIFFE bundle of "
                    f"{trust_domain}: trust domains are never merged (FED-07)"
                )
        return cls(
            trust_domain,
            x509_bundle.authorities if x509_bundle is not None else (),
            dict(jwt_bundle.authorities) if jwt_bundle is not None else {},
            sequence,
            refresh_hint,
        )

    # -- output -------------------------------------------------------------------------

    def to_json_object(self, *, include_refresh_hint: bool = True) -> dict[str, Any]:
        """The JWK Set as a JSON-ready dict (see :meth:`marshal`)."""
        keys: list[dict[str, Any]] = []
        for cert in self.x509_authorities:
            members = public_key_to_jwk(cert.public_key())  # type: ignore[arg-type]
            keys.append({"use": USE_X509_SVID, **members, "x5c": [certificate_to_x5c(cert)]})
        for kid, key in self.jwt_authorities.items():
            keys.append({"use": USE_JWT_SVID, "kid": kid, **public_key_to_jwk(key)})
        doc: dict[str, Any] = {"keys": keys}
        if self.sequence is not None:
            doc[SEQUENCE_MEMBER] = self.sequence
        if include_refresh_hint and self.refresh_hint is not None:
            doc[REFRESH_HINT_MEMBER] = self.refresh_hint
        return doc

    def marshal(self, *, indent: int | None = None) -> bytes:
        """The SPIFFE bundle document as UTF-8 JSON.

        Every key has ``use``; x509-svid keys have exactly one ``x5c`` and no ``kid``
        (X5-30..X5-32); jwt-svid keys have ``kid`` (JWT-16).
        """
        return _json.dumps(self.to_json_object(), indent=indent)

    # -- views and sources --------------------------------------------------------------

    def x509_bundle(self) -> X509Bundle:
        """The X.509 authorities as an :class:`X509Bundle` (maybe empty)."""
        return X509Bundle(self.trust_domain, self.x509_authorities)

    def jwt_bundle(self) -> JwtBundle:
        """The JWT authorities as a :class:`JwtBundle` (maybe empty)."""
        return JwtBundle(self.trust_domain, dict(self.jwt_authorities))

    @property
    def has_usable_keys(self) -> bool:
        """False when nothing usable is left: every SVID of the trust domain is invalid (TB-07)."""
        return bool(self.x509_authorities) or bool(self.jwt_authorities)

    def get_x509_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> X509Bundle | None:
        """The X.509 bundle for our own trust domain; None for another one, or when there are
        no X.509 authorities (the trust domain does not support X509-SVIDs, X5-36)."""
        if trust_domain != self.trust_domain or not self.x509_authorities:
            return None
        return self.x509_bundle()

    def get_jwt_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> JwtBundle | None:
        """The JWT bundle for our own trust domain; None for another one, or when there are
        no JWT authorities (the trust domain does not support JWT-SVIDs, JWT-17)."""
        if trust_domain != self.trust_domain or not self.jwt_authorities:
            return None
        return self.jwt_bundle()

    def is_older_than(self, other: SpiffeBundle) -> bool:
        """True when both bundles have a sequence and ours is lower (§5.3 row 18, FED-05).

        What to do with an older bundle (AMB-10) is the federation client's decision.
        """
        if other.trust_domain != self.trust_domain:
            raise BundleError(
                f"cannot order a bundle of {self.trust_domain} against one of {other.trust_domain}"
            )
        if self.sequence is None or other.sequence is None:
            return False
        return self.sequence < other.sequence

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpiffeBundle):
            return NotImplemented
        return (
            self.trust_domain == other.trust_domain
            and self.x509_authorities == other.x509_authorities
            and dict(self.jwt_authorities) == dict(other.jwt_authorities)
            and self.sequence == other.sequence
            and self.refresh_hint == other.refresh_hint
        )

    def __hash__(self) -> int:
        return hash(
            (
                self.trust_domain,
                self.x509_authorities,
                frozenset(self.jwt_authorities),
                self.sequence,
                self.refresh_hint,
            )
        )


def x509_entry_certificate(entry: Mapping[str, object], *, where: str) -> x509.Certificate | None:
    """The trust anchor of one ``x509-svid`` entry, or None when the entry is ignored.

    Ignored: unknown key type (TB-06), ``x5c`` missing, null or empty (X5-34). Only the first
    ``x5c`` element is used (X5-35, AMB-09). A ``kid`` is tolerated (§5.3 row 10). The
    certificate's key must agree with the entry's ``kty`` and public members (row 8).
    """
    if not is_known_key_type(entry):
        return None
    x5c = entry.get("x5c")
    if x5c is None:
        return None
    if not isinstance(x5c, list):
        raise BundleError(f"{where}: 'x5c' must be an array, not {_json.type_name(x5c)}")
    if not x5c:
        return None
    cert = certificate_from_x5c(x5c[0], where=f"{where}: x5c[0]")
    cert_key = cert.public_key()
    try:
        cert_members = public_key_to_jwk(cert_key)  # type: ignore[arg-type]
    except BundleError as exc:
        raise BundleError(f"{where}: x5c[0] certificate: {exc}") from None
    if entry.get("kty") != cert_members["kty"]:
        raise BundleError(
            f"{where}: kty {entry.get('kty')!r} does not match the x5c[0] certificate's "
            f"{cert_members['kty']} key"
        )
    if any(m in entry for m in _PUBLIC_MEMBERS):
        key = public_key_from_jwk(entry, where=where)
        if key != cert_key:
            raise BundleError(
                f"{where}: the x5c[0] certificate's public key does not match the entry's "
                f"kty/public members"
            )
    elif entry.get("crv", cert_members.get("crv")) != cert_members.get("crv"):
        raise BundleError(
            f"{where}: crv {entry.get('crv')!r} does not match the x5c[0] certificate's "
            f"{cert_members.get('crv')} key"
        )
    else:
        public_key_from_jwk({**entry, **cert_members}, where=where)  # private members check
    return cert


def jwt_entry_key(entry: Mapping[str, object], *, where: str) -> tuple[str, JwtAuthority] | None:
    """The ``(kid, key)`` of one ``jwt-svid`` entry, or None when the entry is ignored.

    Ignored: unknown key type (TB-06); missing or empty ``kid`` (§5.3 row 9).
    """
    if not is_known_key_type(entry):
        return None
    kid = entry.get("kid")
    if kid is None or kid == "":
        return None
    if not isinstance(kid, str):
        raise BundleError(f"{where}: 'kid' must be a string, not {_json.type_name(kid)}")
    return kid, public_key_from_jwk(entry, where=f"{where} (kid {kid!r})")


def add_jwt_authority(
    authorities: dict[str, JwtAuthority], kid: str, key: JwtAuthority, *, where: str
) -> None:
    """Add ``kid -> key``; the same key twice is fine, two keys for one kid are an error."""
    existing = authorities.get(kid)
    if existing is not None and existing != key:
        raise BundleError(f"{where}: kid {kid!r} names two different keys")
    authorities[kid] = key


def _optional_uint(obj: Mapping[str, object], member: str, where: str) -> int | None:
    if member not in obj:
        return None
    value = obj[member]
    if type(value) is not int:
        shown = value if isinstance(value, int | Decimal | float) else _json.type_name(value)
        raise BundleError(f"{where}: {member!r} must be an integer, not {shown}")
    if value < 0:
        raise BundleError(f"{where}: {member!r} must not be negative, got {value}")
    return value
