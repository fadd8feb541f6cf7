"""Workload API bundle forms: JWKS of FetchJWTBundles (WA-45) and DER/PEM X.509 bundles (WA-25)."""

from __future__ import annotations

import json

import pytest

from spiffed.bundle import BundleError, JwtBundle, SpiffeBundle, X509Bundle
from tests.bundle.conftest import TD, ca_cert, der, jwk_members, jwt_entry, public_key, x509_entry


def test_wa_45_plain_jwks_without_use_accepted() -> None:
    """SPIRE's form: no ``use``, no ``spiffe_sequence`` (AMB-18)."""
    data = json.dumps(
        {
            "keys": [
                {"kid": "a", **jwk_members(public_key("P-256"))},
                {"kid": "b", **jwk_members(public_key("RSA"))},
            ]
        }
    ).encode()
    bundle = JwtBundle.parse_jwks(TD, data)
    assert dict(bundle.authorities) == {"a": public_key("P-256"), "b": public_key("RSA")}


def test_wa_45_other_uses_ignored() -> None:
    data = json.dumps(
        {
            "keys": [
                jwt_entry("j", public_key("P-256")),
                jwt_entry("w", public_key("P-384"), use="wit-svid"),
                x509_entry(ca_cert(), kid="x"),
            ],
            "spiffe_sequence": "not checked here",
        }
    ).encode()
    assert dict(JwtBundle.parse_jwks(TD, data).authorities) == {"j": public_key("P-256")}


def test_wa_45_row_09_key_without_kid_ignored() -> None:
    data = json.dumps({"keys": [jwk_members(public_key("P-256"))]}).encode()
    assert dict(JwtBundle.parse_jwks(TD, data).authorities) == {}


@pytest.mark.parametrize(
    "data",
    [b"{}", b'{"keys": {}}', b"[]", b'{"keys": [1]}', b'{"keys": [], "keys": []}', b"\xfe"],
)
def test_wa_45_malformed_jwks_rejected(data: bytes) -> None:
    with pytest.raises(BundleError):
        JwtBundle.parse_jwks(TD, data)


def test_wa_45_marshal_jwks_round_trip() -> None:
    bundle = JwtBundle(TD, {"a": public_key("P-521"), "b": public_key("RSA")})
    doc = json.loads(bundle.marshal_jwks())
    assert set(doc) == {"keys"}
    assert all("use" not in k for k in doc["keys"])
    assert JwtBundle.parse_jwks(TD, bundle.marshal_jwks()) == bundle
    with_use = json.loads(bundle.marshal_jwks(include_use=True))
    assert {k["use"] for k in with_use["keys"]} == {"jwt-svid"}
    assert JwtBundle.parse_jwks(TD, bundle.marshal_jwks(include_use=True)) == bundle


def test_wa_45_spiffe_bundle_jwt_view_marshals_as_jwks() -> None:
    spiffe = SpiffeBundle(TD, (ca_cert(),), {"k": public_key("P-256")}, sequence=4)
    jwks = spiffe.jwt_bundle().marshal_jwks()
    assert b"x5c" not in jwks
    assert b"spiffe_sequence" not in jwks
    assert JwtBundle.parse_jwks(TD, jwks) == spiffe.jwt_bundle()


def test_wa_25_x509_bundle_der_round_trip() -> None:
    certs = (ca_cert("P-256"), ca_cert("RSA"), ca_cert("P-521"))
    bundle = X509Bundle(TD, certs)
    data = bundle.marshal_der()
    assert data == b"".join(der(c) for c in certs)
    assert X509Bundle.parse_der(TD, data) == bundle
    assert X509Bundle.parse_der(TD, b"") == X509Bundle(TD, ())


def test_wa_25_x509_bundle_pem_round_trip() -> None:
    bundle = X509Bundle(TD, (ca_cert("P-384"), ca_cert("RSA")))
    assert X509Bundle.parse_pem(TD, bundle.marshal_pem()) == bundle


def test_wa_25_x509_bundle_through_spiffe_bundle() -> None:
    bundle = X509Bundle(TD, (ca_cert("P-384"), ca_cert("RSA")))
    spiffe = SpiffeBundle.from_bundles(TD, x509_bundle=bundle)
    assert SpiffeBundle.parse(TD, spiffe.marshal()).x509_bundle() == bundle


@pytest.mark.parametrize(
    "data",
    [
        b"\x31\x00",
        b"\x30",
        b"\x30\x85\x00\x00\x00\x00\x01",
        b"\x30\x05\x00",
        b"\x30\x03\x02\x01\x01",
    ],
)
def test_wa_25_malformed_der_rejected(data: bytes) -> None:
    with pytest.raises(BundleError):
        X509Bundle.parse_der(TD, der(ca_cert()) + data)
