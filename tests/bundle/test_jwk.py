"""JWK <-> key conversion (RFC 7517/7518) used by SPIFFE bundles (X5-32, X5-33, JWT-16)."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from spiffed.bundle import BundleError
from spiffed.bundle.jwk import (
    b64url_decode,
    certificate_from_x5c,
    certificate_to_x5c,
    is_known_key_type,
    public_key_from_jwk,
    public_key_to_jwk,
)
from tests.bundle.conftest import ca_cert, der, jwk_members, public_key


@pytest.mark.parametrize("kind", ["P-256", "P-384", "P-521", "RSA"])
def test_x5_33_public_members_round_trip(kind: str) -> None:
    key = public_key(kind)
    members = public_key_to_jwk(key)
    assert members == jwk_members(key)
    assert public_key_from_jwk(members) == key


@pytest.mark.parametrize(("kind", "width"), [("P-256", 32), ("P-384", 48), ("P-521", 66)])
def test_x5_33_ec_coordinates_fixed_width(kind: str, width: int) -> None:
    # find a key whose x has a leading zero byte so that minimal encoding would be shorter
    curve = public_key(kind).curve  # type: ignore[union-attr]
    for _ in range(5000):
        key = ec.generate_private_key(curve).public_key()
        if key.public_numbers().x.bit_length() <= (width - 1) * 8:
            break
    else:  # pragma: no cover - probability (255/256)^5000, about 3e-9
        pytest.fail("no key with a short x found")
    members = public_key_to_jwk(key)
    assert len(b64url_decode(members["x"], what="x")) == width
    assert len(b64url_decode(members["y"], what="y")) == width


def test_x5_33_ec_coordinate_wrong_width_rejected() -> None:
    members = jwk_members(public_key("P-256"))
    raw = b64url_decode(members["x"], what="x")
    short = base64.urlsafe_b64encode(raw[1:]).rstrip(b"=").decode()
    with pytest.raises(BundleError, match="exactly 32"):
        public_key_from_jwk({**members, "x": short})


def test_x5_33_base64url_padding_or_std_alphabet_rejected() -> None:
    members = jwk_members(public_key("P-256"))
    with pytest.raises(BundleError, match="base64url"):
        public_key_from_jwk({**members, "x": members["x"] + "="})
    std = members["y"].replace("-", "+").replace("_", "/")
    if std != members["y"]:
        with pytest.raises(BundleError, match="base64url"):
            public_key_from_jwk({**members, "y": std})


def test_x5_33_point_not_on_curve_rejected() -> None:
    members = jwk_members(public_key("P-256"))
    raw = bytearray(b64url_decode(members["y"], what="y"))
    raw[-1] ^= 1
    bad_y = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(BundleError, match="not on curve"):
        public_key_from_jwk({**members, "y": bad_y})


def test_x5_33_private_members_rejected() -> None:
    members = jwk_members(public_key("P-256"))
    with pytest.raises(BundleError, match="private"):
        public_key_from_jwk({**members, "d": "AAAA"})


def test_x5_33_missing_member_rejected() -> None:
    members = jwk_members(public_key("RSA"))
    del members["e"]
    with pytest.raises(BundleError, match="'e'"):
        public_key_from_jwk(members)


def test_tb_06_unknown_key_types() -> None:
    assert is_known_key_type({"kty": "EC", "crv": "P-256"})
    assert is_known_key_type({"kty": "RSA"})
    assert not is_known_key_type({"kty": "FOO"})
    assert not is_known_key_type({"kty": "OKP", "crv": "Ed25519"})
    assert not is_known_key_type({"kty": "EC", "crv": "secp256k1"})
    assert not is_known_key_type({})
    assert not is_known_key_type({"kty": ["EC"]})
    assert not is_known_key_type({"kty": "EC", "crv": ["P-256"]})


def test_x5_32_x5c_is_standard_padded_base64() -> None:
    cert = ca_cert("RSA")
    element = certificate_to_x5c(cert)
    assert base64.b64decode(element, validate=True) == der(cert)
    assert certificate_from_x5c(element) == cert
    urlsafe = base64.urlsafe_b64encode(der(cert)).decode()
    if urlsafe != element:
        with pytest.raises(BundleError, match="standard"):
            certificate_from_x5c(urlsafe)
    with pytest.raises(BundleError, match="standard"):
        certificate_from_x5c(element + "=")
    data = der(cert)
    data += b"\x00" * ((1 - len(data)) % 3)  # length 1 mod 3: standard base64 ends in "=="
    unpadded = base64.b64encode(data).decode()[:-2]
    with pytest.raises(BundleError, match="standard"):
        certificate_from_x5c(unpadded)


def test_x5_32_x5c_not_a_certificate_rejected() -> None:
    with pytest.raises(BundleError, match="not a DER certificate"):
        certificate_from_x5c(base64.b64encode(b"\x30\x03\x02\x01\x01").decode())
    with pytest.raises(BundleError, match="string"):
        certificate_from_x5c(5)
