"""Shared builders for the JWT-SVID tests: keys, bundles, and hand-made (forged) tokens.

Holds no tests. The forging helper builds compact JWS tokens from any header and payload,
signing with any key and algorithm (including ones a JWT-SVID must never use), so each
negative test can break exactly one rule.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import get_default_algorithms

from spiffed.bundle.jwt import JwtBundle
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.jwt import sign_jwt_svid

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
TD = TrustDomain("example.org")
TD_B = TrustDomain("other.test")
ID = SpiffeId.parse("spiffe://example.org/workload")
ID_B = SpiffeId.parse("spiffe://other.test/workload")
AUD = "spiffe://example.org/reports"

KEY_KINDS = ("P-256", "P-384", "P-521", "RSA")
ALG_FOR_KIND = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "RSA": "RS256"}
_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
    "secp256k1": ec.SECP256K1(),
}

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def key(kind: str, n: int = 0) -> PrivateKey:
    """A private key of ``kind`` made once per process; ``n`` picks another one."""
    return _key(kind, n)


@cache
def _key(kind: str, n: int) -> PrivateKey:
    del n  # only part of the cache key
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(_CURVES[kind])


def kid(kind: str, n: int = 0) -> str:
    """The key ID used for :func:`key` in the test bundles."""
    return f"{kind}-{n}"


def bundle(td: TrustDomain = TD, *specs: tuple[str, int]) -> JwtBundle:
    """A JWT bundle of ``td`` with the given (kind, n) keys, or one of every kind."""
    pairs = specs or tuple((k, 0) for k in KEY_KINDS)
    return JwtBundle(td, {kid(k, n): key(k, n).public_key() for k, n in pairs})


class Bundles:
    """A JwtBundleSource over several bundles, recording which trust domains were asked."""

    def __init__(self, *bundles: JwtBundle) -> None:
        self.by_td = {b.trust_domain: b for b in bundles}
        self.asked: list[TrustDomain] = []

    def get_jwt_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> JwtBundle | None:
        self.asked.append(trust_domain)
        return self.by_td.get(trust_domain)


def good_token(kind: str = "P-256", **overrides: Any) -> str:
    """A valid token for ``ID`` and ``AUD`` signed by ``key(kind)``; overrides go to the signer."""
    args: dict[str, Any] = {
        "spiffe_id": ID,
        "audience": AUD,
        "key": key(kind),
        "key_id": kid(kind),
        "expires": timedelta(minutes=5),
        "issued_at": NOW,
    }
    args.update(overrides)
    return sign_jwt_svid(**args)


def b64(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    """Inverse of :func:`b64`."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def good_payload(at: datetime = NOW, **changes: Any) -> dict[str, Any]:
    """A payload valid at ``at`` for 5 minutes; a change to ``None`` removes the member."""
    payload: dict[str, Any] = {
        "sub": str(ID),
        "aud": AUD,
        "exp": int((at + timedelta(minutes=5)).timestamp()),
        "iat": int(at.timestamp()),
    }
    for name, value in changes.items():
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    return payload


def good_header(kind: str = "P-256", **changes: Any) -> dict[str, Any]:
    """A valid header for ``key(kind)``; a change to ``None`` removes the member."""
    header: dict[str, Any] = {"alg": ALG_FOR_KIND[kind], "kid": kid(kind), "typ": "JWT"}
    for name, value in changes.items():
        if value is None:
            header.pop(name, None)
        else:
            header[name] = value
    return header


def forge(
    header: dict[str, Any],
    payload: dict[str, Any],
    signer: Any = None,
    *,
    alg: str | None = None,
    der: bool = False,
) -> str:
    """A compact JWS of ``header`` and ``payload`` signed by ``signer`` with PyJWT's ``alg``.

    ``alg`` defaults to the header's; ``signer`` None gives an empty signature; ``der`` signs
    ECDSA in DER form instead of raw R||S.
    """
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if signer is None:
        return signing_input + "."
    name = alg or header["alg"]
    if der:
        sig = signer.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    else:
        sig = get_default_algorithms()[name].sign(signing_input.encode(), signer)
    return f"{signing_input}.{b64(sig)}"


def public_pem(kind: str) -> bytes:
    """The PEM of ``key(kind)``'s public key (the HMAC secret of the key-confusion attack)."""
    return key(kind).public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
