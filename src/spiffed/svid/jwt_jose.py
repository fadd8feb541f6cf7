"""The JOSE layer of JWT-SVIDs: compact JWS parsing, algorithms pinned by key type, signatures.

Used by :mod:`spiffed.svid.jwt`; nothing here knows about SPIFFE claims. PyJWT's algorithm
objects do the cryptography (ECDSA signatures are raw R||S there, RFC 7518 §3.4); this module
decides which algorithm a key may be used with, so a token header never picks it (JWT-04).

Implements the SPIFFE standards at spiffe/spiffe commit
665a28f3253ecdce59f26f3ef29c0d6408b37c3d.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import Algorithm, get_default_algorithms

__all__ = [
    "ALGORITHMS",
    "FORBIDDEN_HEADERS",
    "CompactJws",
    "JwtSvidError",
    "SigningKey",
    "VerificationKey",
    "algorithms_for_key",
    "b64url_encode",
    "default_algorithm",
    "sign",
    "split_compact",
    "verify",
]

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
VerificationKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

# JWT-03: the only algorithms a JWT-SVID may use, compared case-sensitively.
ALGORITHMS: Final = (
    "RS256",
    "RS384",
    "RS512",
    "ES256",
    "ES384",
    "ES512",
    "PS256",
    "PS384",
    "PS512",
)
_RSA_ALGORITHMS: Final = frozenset(a for a in ALGORITHMS if a[0] in "RP")
_EC_ALGORITHM_BY_CURVE: Final = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}

# Header members that locate or carry a key, or demand extensions (row 15, JWT-02). They are
# never used to find a key; a token that has one is rejected. JWE's `enc` marks encryption.
FORBIDDEN_HEADERS: Final = ("jku", "jwk", "x5u", "x5c", "crit", "enc")

_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_PYJWT_ALGORITHMS: Final[dict[str, Algorithm]] = {
    name: alg for name, alg in get_default_algorithms().items() if name in ALGORITHMS
}


class JwtSvidError(ValueError):
    """A JWT-SVID is malformed, untrusted or invalid; the message says what and which part."""


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str, what: str) -> bytes:
    """Decode canonical unpadded base64url; anything else is a JwtSvidError naming ``what``."""
    if not _B64URL.fullmatch(text):
        bad = next(c for c in text if not (c.isascii() and (c.isalnum() or c in "-_")))
        raise JwtSvidError(
            f"JWT-SVID {what} is not base64url: character {bad!r} is not allowed (JWT-01)"
        )
    if len(text) % 4 == 1:
        raise JwtSvidError(f"JWT-SVID {what} is not base64url: impossible length {len(text)}")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the regex rules it out
        raise JwtSvidError(f"JWT-SVID {what} is not base64url: {exc}") from None
    if b64url_encode(data) != text:
        raise JwtSvidError(f"JWT-SVID {what} is not canonical base64url (stray trailing bits)")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate member {key!r}")
        obj[key] = value
    return obj


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    """Decode a UTF-8 JSON object with no duplicate members, NaN or Infinity."""
    try:
        text = data.decode("utf-8")
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise JwtSvidError(f"JWT-SVID {what} is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise JwtSvidError(f"JWT-SVID {what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise JwtSvidError(f"JWT-SVID {what} must be a JSON object, not {type(obj).__name__}")
    return obj


@dataclass(frozen=True, slots=True)
class CompactJws:
    """The three parts of a compact JWS, decoded but not yet checked for meaning."""

    header: Mapping[str, Any]
    payload_b64: str
    signature_b64: str
    signing_input: bytes

    def payload(self) -> dict[str, Any]:
        """The payload as a JSON object."""
        return _json_object(_b64url_decode(self.payload_b64, "payload"), "payload")

    def signature(self) -> bytes:
        """The signature bytes."""
        return _b64url_decode(self.signature_b64, "signature")


def split_compact(token: object) -> CompactJws:
    """Split a JWS Compact Serialization (JWT-01) and decode its protected header.

    Rejects the JWS JSON serializations (row 13), JWE's five parts and any other part count
    (row 14), and a header that is not base64url of a UTF-8 JSON object. Payload and
    signature are decoded later (:meth:`CompactJws.payload`, :meth:`CompactJws.signature`),
    after the caller has checked the header's ``alg`` (JWT-04).
    """
    if not isinstance(token, str):
        raise JwtSvidError(f"JWT-SVID must be a string, not {type(token).__name__}")
    if not token:
        raise JwtSvidError("JWT-SVID is empty")
    stripped = token.lstrip()
    if stripped.startswith("{"):
        raise JwtSvidError(
            "JWT-SVID uses the JWS JSON serialization; only the compact form is allowed (JWT-01)"
        )
    parts = token.split(".")
    if len(parts) == 5:
        raise JwtSvidError("JWT-SVID has 5 parts, which is a JWE; only JWS is allowed (JWT-01)")
    if len(parts) != 3:
        raise JwtSvidError(
            f"JWT-SVID has {len(parts)} dot-separated parts; a compact JWS has 3 (JWT-01)"
        )
    header_b64, payload_b64, signature_b64 = parts
    if not header_b64:
        raise JwtSvidError("JWT-SVID header is empty")
    header = _json_object(_b64url_decode(header_b64, "header"), "header")
    return CompactJws(
        header=header,
        payload_b64=payload_b64,
        signature_b64=signature_b64,
        signing_input=f"{header_b64}.{payload_b64}".encode("utf-8", "surrogatepass"),
    )


def algorithms_for_key(key: VerificationKey | SigningKey) -> frozenset[str]:
    """The JWT-SVID algorithms ``key`` may be used with: its curve's ES* or the RSA family."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return _RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        alg = _EC_ALGORITHM_BY_CURVE.get(key.curve.name)
        return frozenset((alg,)) if alg else frozenset()
    return frozenset()


def default_algorithm(key: SigningKey) -> str:
    """ES256/ES384/ES512 by the key's curve, RS256 for RSA."""
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = _EC_ALGORITHM_BY_CURVE.get(key.curve.name)
        if alg is None:
            raise JwtSvidError(
                f"EC curve {key.curve.name} cannot sign a JWT-SVID; use P-256, P-384 or P-521"
            )
        return alg
    raise JwtSvidError(
        f"a {type(key).__name__} cannot sign a JWT-SVID; use an EC (P-256/384/521) or RSA key"
    )


def sign(signing_input: bytes, key: SigningKey, alg: str) -> bytes:
    """Sign with ``alg``, which the caller has checked against :func:`algorithms_for_key`.

    ECDSA signatures come back raw R||S (RFC 7518 §3.4), not DER.
    """
    return _PYJWT_ALGORITHMS[alg].sign(signing_input, key)


def verify(signing_input: bytes, signature: bytes, key: VerificationKey, alg: str) -> bool:
    """True when ``signature`` is valid for ``alg`` and ``key``; False for any mismatch.

    ``alg`` must be one of :func:`algorithms_for_key` of ``key`` or the answer is False, so an
    RS256 header never gets an EC key checked and ES256 never a P-384 key (JWT-04). A DER
    ECDSA signature is the wrong length for raw R||S and fails (row 16).
    """
    if alg not in algorithms_for_key(key):
        return False
    try:
        return _PYJWT_ALGORITHMS[alg].verify(signing_input, key, signature)
    except (ValueError, TypeError):
        return False
