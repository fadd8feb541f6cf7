"""Key types named as in SPIRE's configuration (``ec-p256``, ``rsa-2048``, ...) and helpers.

Used by the server's key managers and CA, and by the agent for workload keys.
"""

from __future__ import annotations

import enum

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = ["KeyType", "UnsupportedKeyError", "PrivateKey", "PublicKey", "load_private_key_der"]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class UnsupportedKeyError(ValueError):
    """A key type name or key bytes are not usable."""


class KeyType(enum.Enum):
    """A key type, valued by its SPIRE configuration name."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_4096 = "rsa-4096"

    @classmethod
    def parse(cls, name: str) -> KeyType:
        """Parse a SPIRE key type name such as ``ec-p256``."""
        try:
            return cls(name)
        except ValueError:
            allowed = ", ".join(t.value for t in cls)
            raise UnsupportedKeyError(
                f"unknown key type {name!r}; expected one of {allowed}"
            ) from None

    def generate(self) -> PrivateKey:
        """Generate a new private key of this type."""
        match self:
            case KeyType.EC_P256:
                return ec.generate_private_key(ec.SECP256R1())
            case KeyType.EC_P384:
                return ec.generate_private_key(ec.SECP384R1())
            case KeyType.RSA_2048:
                return rsa.generate_private_key(public_exponent=65537, key_size=2048)
            case KeyType.RSA_4096:
                return rsa.generate_private_key(public_exponent=65537, key_size=4096)

    @classmethod
    def of(cls, key: PrivateKey | PublicKey) -> KeyType:
        """The type of an existing key."""
        if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
            by_curve = {"secp256r1": cls.EC_P256, "secp384r1": cls.EC_P384}
            if key.curve.name in by_curve:
                return by_curve[key.curve.name]
            raise UnsupportedKeyError(f"unsupported curve {key.curve.name}")
        by_size = {2048: cls.RSA_2048, 4096: cls.RSA_4096}
        if key.key_size in by_size:
            return by_size[key.key_size]
        raise UnsupportedKeyError(f"unsupported RSA key size {key.key_size}")


def load_private_key_der(data: bytes) -> PrivateKey:
    """Load an unencrypted PKCS#8 DER private key of a supported type."""
    try:
        key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UnsupportedKeyError(f"cannot load PKCS#8 private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise UnsupportedKeyError(f"unsupported private key type {type(key).__name__}")
    return key
