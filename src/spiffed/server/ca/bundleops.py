"""Changes to the trust domain's own bundle, kept as SPIRE's ``spire.api.types.Bundle``.

Every change that alters the content bumps ``sequence_number`` (TB-03). A tainted authority
stays in the bundle, flagged, so agents re-issue what it signed; it can be revoked (removed)
only once tainted, as in SPIRE. Pruning drops authorities that expired before a cut-off but
never empties the bundle of X.509 roots.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpclib.const import Status

from spiffed._proto.spire.api.types import bundle_pb2
from spiffed.server.errors import ServerError

__all__ = [
    "append_jwt_authority",
    "append_x509_authorities",
    "new_bundle",
    "prune",
    "revoke_jwt_authority",
    "revoke_x509_authority",
    "taint_jwt_authority",
    "taint_x509_authority",
]

Bundle = bundle_pb2.Bundle


def new_bundle(trust_domain: str) -> Bundle:
    """An empty bundle for ``trust_domain`` (its name, as SPIRE stores it)."""
    return Bundle(trust_domain=trust_domain)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _bump(bundle: Bundle) -> None:
    bundle.sequence_number += 1


def append_x509_authorities(bundle: Bundle, certs: Iterable[x509.Certificate]) -> bool:
    """Add CA certificates not already present; True if the bundle changed."""
    present = {a.asn1 for a in bundle.x509_authorities}
    changed = False
    for cert in certs:
        der = _der(cert)
        if der not in present:
            bundle.x509_authorities.add(asn1=der)
            present.add(der)
            changed = True
    if changed:
        _bump(bundle)
    return changed


def append_jwt_authority(
    bundle: Bundle, key_id: str, public_key_der: bytes, expires_at: datetime
) -> bool:
    """Add a JWT signing key; True if the bundle changed. A key ID never changes its key."""
    for key in bundle.jwt_authorities:
        if key.key_id == key_id:
            if key.public_key != public_key_der:
                raise ServerError(
                    Status.ALREADY_EXISTS,
                    f"JWT key ID {key_id!r} is in the bundle with another key",
                )
            return False
    bundle.jwt_authorities.add(
        key_id=key_id, public_key=public_key_der, expires_at=int(expires_at.timestamp())
    )
    _bump(bundle)
    return True


def _matching_roots(
    bundle: Bundle, authority: x509.Certificate
) -> list[bundle_pb2.X509Certificate]:
    wanted = authority.public_key()
    found = []
    for entry in bundle.x509_authorities:
        try:
            cert = x509.load_der_x509_certificate(entry.asn1)
        except ValueError:
            continue
        if cert.public_key() == wanted:
            found.append(entry)
    return found


def taint_x509_authority(bundle: Bundle, authority: x509.Certificate) -> None:
    """Flag the roots with ``authority``'s key as tainted."""
    roots = _matching_roots(bundle, authority)
    if not roots:
        raise ServerError(Status.NOT_FOUND, "no root CA found with the provided key")
    if any(r.tainted for r in roots):
        raise ServerError(Status.INVALID_ARGUMENT, "root CA is already tainted")
    for r in roots:
        r.tainted = True
    _bump(bundle)


def revoke_x509_authority(bundle: Bundle, authority: x509.Certificate) -> None:
    """Remove the (tainted) roots with ``authority``'s key from the bundle."""
    roots = _matching_roots(bundle, authority)
    if not roots:
        raise ServerError(Status.NOT_FOUND, "no root CA found with the provided key")
    if not all(r.tainted for r in roots):
        raise ServerError(
            Status.INVALID_ARGUMENT, "it is not possible to revoke an untainted root CA"
        )
    doomed = {r.asn1 for r in roots}
    keep = [a for a in bundle.x509_authorities if a.asn1 not in doomed]
    del bundle.x509_authorities[:]
    bundle.x509_authorities.extend(keep)
    _bump(bundle)


def _jwt_key(bundle: Bundle, key_id: str) -> bundle_pb2.JWTKey:
    for key in bundle.jwt_authorities:
        if key.key_id == key_id:
            return key
    raise ServerError(Status.NOT_FOUND, f"no JWT key found with key ID {key_id!r}")


def taint_jwt_authority(bundle: Bundle, key_id: str) -> None:
    """Flag the JWT key ``key_id`` as tainted."""
    key = _jwt_key(bundle, key_id)
    if key.tainted:
        raise ServerError(Status.INVALID_ARGUMENT, "key is already tainted")
    key.tainted = True
    _bump(bundle)


def revoke_jwt_authority(bundle: Bundle, key_id: str) -> None:
    """Remove the (tainted) JWT key ``key_id``."""
    key = _jwt_key(bundle, key_id)
    if not key.tainted:
        raise ServerError(Status.INVALID_ARGUMENT, "it is not possible to revoke an untainted key")
    keep = [k for k in bundle.jwt_authorities if k.key_id != key_id]
    del bundle.jwt_authorities[:]
    bundle.jwt_authorities.extend(keep)
    _bump(bundle)


def prune(bundle: Bundle, expired_before: datetime) -> bool:
    """Drop authorities that expired before ``expired_before``; True if any were dropped.

    Nothing is pruned when it would leave no X.509 root at all (the trust domain would be
    unusable until an operator intervenes), as in SPIRE.
    """
    cutoff = int(expired_before.timestamp())
    keep_x509 = []
    for entry in bundle.x509_authorities:
        try:
            not_after = x509.load_der_x509_certificate(entry.asn1).not_valid_after_utc
        except ValueError:
            keep_x509.append(entry)
            continue
        if not_after.timestamp() >= cutoff:
            keep_x509.append(entry)
    keep_jwt = [k for k in bundle.jwt_authorities if k.expires_at == 0 or k.expires_at >= cutoff]
    if not keep_x509 and bundle.x509_authorities:
        return False
    if len(keep_x509) == len(bundle.x509_authorities) and len(keep_jwt) == len(
        bundle.jwt_authorities
    ):
        return False
    del bundle.x509_authorities[:]
    bundle.x509_authorities.extend(keep_x509)
    del bundle.jwt_authorities[:]
    bundle.jwt_authorities.extend(keep_jwt)
    _bump(bundle)
    return True
