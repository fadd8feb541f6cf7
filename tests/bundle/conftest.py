"""Test keys, CA certificates and JWKS document builders, generated with `cryptography`.

Keys and certificates are made once per process (functools.cache) so that hypothesis
tests can draw from them without generating keys in every example.
"""

from __future__ import annotations

import base64
import datetime
import json
from functools import cache
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from spiffed.bundle.jwk import b64url_encode
from spiffed.bundle.jwt import JwtAuthority
from spiffed.spiffeid import TrustDomain

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

TD = TrustDomain("example.org")
OTHER_TD = TrustDomain("other.test")

_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}


@cache
def private_key(kind: str, n: int = 0) -> PrivateKey:
    """A private key of ``kind`` ("P-256", "P-384", "P-521", "RSA"); ``n`` picks another one."""
    del n  # only part of the cache key
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(_CURVES[kind])


def public_key(kind: str, n: int = 0) -> JwtAuthority:
    """The public half of :func:`private_key`."""
    return private_key(kind, n).public_key()


@cache
def ca_cert(kind: str = "P-256", n: int = 0, td: str = "example.org") -> x509.Certificate:
    """A self-signed CA certificate for trust domain ``td`` with URI SAN ``spiffe://td``."""
    key = private_key(kind, n)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{td} CA {kind} {n}")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1000 + n)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{td}")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def der(cert: x509.Certificate) -> bytes:
    """DER bytes of ``cert``."""
    return cert.public_bytes(Encoding.DER)


def x5c(cert: x509.Certificate) -> str:
    """One x5c element: standard base64 of the DER certificate."""
    return base64.b64encode(der(cert)).decode()


def jwk_members(key: JwtAuthority) -> dict[str, str]:
    """Public JWK members of ``key``, written here independently of spiffed.bundle.jwk."""
    if isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        return {
            "kty": "RSA",
            "n": b64url_encode(nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")),
            "e": b64url_encode(nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big")),
        }
    width = {"secp256r1": 32, "secp384r1": 48, "secp521r1": 66}[key.curve.name]
    crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
    en = key.public_numbers()
    return {
        "kty": "EC",
        "crv": crv,
        "x": b64url_encode(en.x.to_bytes(width, "big")),
        "y": b64url_encode(en.y.to_bytes(width, "big")),
    }


def x509_entry(cert: x509.Certificate, **extra: Any) -> dict[str, Any]:
    """A well-formed x509-svid JWK for ``cert``; ``extra`` overrides or adds members."""
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    entry: dict[str, Any] = {"use": "x509-svid", **jwk_members(key), "x5c": [x5c(cert)]}
    entry.update(extra)
    return entry


def jwt_entry(kid: str, key: JwtAuthority, **extra: Any) -> dict[str, Any]:
    """A well-formed jwt-svid JWK; ``extra`` overrides or adds members."""
    entry: dict[str, Any] = {"use": "jwt-svid", "kid": kid, **jwk_members(key)}
    entry.update(extra)
    return entry


def doc(*keys: dict[str, Any], **top: Any) -> bytes:
    """A bundle document with ``keys`` and extra top-level members."""
    return json.dumps({"keys": list(keys), **top}).encode()


@pytest.fixture(scope="session")
def ec_ca() -> x509.Certificate:
    """A P-256 CA certificate of example.org."""
    return ca_cert("P-256")


@pytest.fixture(scope="session")
def rsa_ca() -> x509.Certificate:
    """An RSA-2048 CA certificate of example.org."""
    return ca_cert("RSA")


@pytest.fixture(scope="session")
def ec_key() -> JwtAuthority:
    """A P-256 JWT signing public key."""
    return public_key("P-256", 7)


@pytest.fixture(scope="session")
def rsa_key() -> JwtAuthority:
    """An RSA JWT signing public key."""
    return public_key("RSA", 7)
