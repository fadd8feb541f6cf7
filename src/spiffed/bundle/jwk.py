"""JWK (RFC 7517/7518) members <-> public keys and certificates, for SPIFFE bundles.

Only the key types a SPIFFE bundle needs are known here: ``EC`` on P-256, P-384 and P-521
(``crv``, ``x``, ``y``: base64url without padding, each coordinate exactly the curve's
width, RFC 7518 §6.2.1) and ``RSA`` (``n``, ``e``: base64url without padding, RFC 7518
§6.3.1). ``x5c`` holds **standard** base64 (with padding) of DER certificates (RFC 7517
§4.7). Other key types are "unknown" to the bundle parser, which ignores them (TB-06).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from spiffed.bundle.errors import BundleError
from spiffed.bundle.jwt import JwtAuthority

__all__ = [
    "KNOWN_KEY_TYPES",
    "MAX_RSA_BITS",
    "b64url_decode",
    "b64url_encode",
    "certificate_from_x5c",
    "certificate_to_x5c",
    "is_known_key_type",
    "public_key_from_jwk",
    "public_key_to_jwk",
]

KNOWN_KEY_TYPES: Final = frozenset({"EC", "RSA"})
MAX_RSA_BITS: Final = 16384  # refuse absurd moduli instead of spending seconds on them

# crv name -> (curve class, coordinate width in bytes)
_CURVES: Final[dict[str, tuple[type[ec.EllipticCurve], int]]] = {
    "P-256": (ec.SECP256R1, 32),
    "P-384": (ec.SECP384R1, 48),
    "P-521": (ec.SECP521R1, 66),
}
_CURVE_NAMES: Final[dict[str, str]] = {
    "secp256r1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
}
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_B64STD: Final = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: object, *, what: str) -> bytes:
    """Decode strict base64url without padding; ``what`` names the member in errors."""
    if not isinstance(text, str):
        raise BundleError(f"{what} must be a base64url string, not {type(text).__name__}")
    if not text:
        raise BundleError(f"{what} is empty")
    if _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        raise BundleError(f"{what} is not unpadded base64url: {text[:40]!r}")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - regex makes it unreachable
        raise BundleError(f"{what} is not base64url: {exc}") from None


def is_known_key_type(members: Mapping[str, object]) -> bool:
    """True when ``kty`` (and for EC, ``crv``) name a key type this package understands.

    An EC key on another curve counts as an unknown key type and is ignored (TB-06).
    """
    kty = members.get("kty")
    if kty == "EC":
        crv = members.get("crv")
        return isinstance(crv, str) and crv in _CURVES
    return isinstance(kty, str) and kty in KNOWN_KEY_TYPES


def public_key_to_jwk(key: JwtAuthority) -> dict[str, str]:
    """The JWK public members (``kty`` first) of an EC or RSA public key."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = _CURVE_NAMES.get(key.curve.name)
        if crv is None:
            raise BundleError(f"EC curve {key.curve.name} cannot be put in a SPIFFE bundle")
        width = _CURVES[crv][1]
        numbers = key.public_numbers()
        return {
            "kty": "EC",
            "crv": crv,
            "x": b64url_encode(numbers.x.to_bytes(width, "big")),
            "y": b64url_encode(numbers.y.to_bytes(width, "big")),
        }
    if isinstance(key, rsa.RSAPublicKey):
        rsa_numbers = key.public_numbers()
        return {
            "kty": "RSA",
            "n": b64url_encode(_int_bytes(rsa_numbers.n)),
            "e": b64url_encode(_int_bytes(rsa_numbers.e)),
        }
    raise BundleError(
        f"key type {type(key).__name__} cannot be put in a SPIFFE bundle (EC or RSA only)"
    )


def public_key_from_jwk(members: Mapping[str, object], *, where: str = "JWK") -> JwtAuthority:
    """The public key described by a JWK's ``kty`` and public members.

    Raises BundleError when the key type is unknown, a member is missing or malformed, the
    point is not on the curve, or private members (``d``, ``p`` ...) are present.
    """
    kty = members.get("kty")
    private = sorted(m for m in ("d", "p", "q", "dp", "dq", "qi", "oth", "k") if m in members)
    if private:
        raise BundleError(f"{where}: has private key member(s) {private}; a bundle is public")
    if kty == "EC":
        crv = members.get("crv")
        if not isinstance(crv, str) or crv not in _CURVES:
            raise BundleError(f"{where}: unsupported EC curve {crv!r}")
        curve_cls, width = _CURVES[crv]
        coords = []
        for name in ("x", "y"):
            raw = b64url_decode(members.get(name), what=f"{where}: member {name!r}")
            if len(raw) != width:
                raise BundleError(
                    f"{where}: member {name!r} is {len(raw)} bytes, {crv} needs exactly {width}"
                )
            coords.append(int.from_bytes(raw, "big"))
        try:
            return ec.EllipticCurvePublicNumbers(coords[0], coords[1], curve_cls()).public_key()
        except ValueError:
            raise BundleError(f"{where}: point (x, y) is not on curve {crv}") from None
    if kty == "RSA":
        n_raw = b64url_decode(members.get("n"), what=f"{where}: member 'n'")
        e_raw = b64url_decode(members.get("e"), what=f"{where}: member 'e'")
        n = int.from_bytes(n_raw, "big")
        e = int.from_bytes(e_raw, "big")
        if n.bit_length() > MAX_RSA_BITS:
            raise BundleError(f"{where}: RSA modulus of {n.bit_length()} bits is too large")
        if len(e_raw) > 8:
            raise BundleError(f"{where}: RSA exponent of {len(e_raw)} bytes is too large")
        try:
            return rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:
            raise BundleError(f"{where}: invalid RSA public key: {exc}") from None
    raise BundleError(f"{where}: unsupported key type (kty) {kty!r}")


def certificate_to_x5c(cert: x509.Certificate) -> str:
    """One ``x5c`` element: standard base64 (padded) of the DER certificate."""
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode("ascii")


def certificate_from_x5c(element: object, *, where: str = "x5c[0]") -> x509.Certificate:
    """Parse one ``x5c`` element (standard base64 DER, RFC 7517 §4.7)."""
    if not isinstance(element, str):
        raise BundleError(f"{where} must be a base64 string, not {type(element).__name__}")
    if not element or _B64STD.fullmatch(element) is None:
        raise BundleError(f"{where} is not standard (padded) base64: {element[:40]!r}")
    der = base64.b64decode(element, validate=True)
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise BundleError(f"{where} is not a DER certificate: {exc}") from None


def _int_bytes(value: int) -> bytes:
    """Minimal unsigned big-endian bytes (RFC 7518 §6.3.1: no leading zero octets)."""
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")
