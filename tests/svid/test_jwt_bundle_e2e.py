"""JWT-SVID validation against bundles parsed from real JWKS documents (JWT-16/17, row 17)."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from spiffed.bundle import SpiffeBundle
from spiffed.bundle.jwk import public_key_to_jwk
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid import JwtSvid, JwtSvidError, sign_jwt_svid
from tests.server.nodeattestor.pki import make_cert

TD = TrustDomain("example.org")
NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)


def token(key: ec.EllipticCurvePrivateKey, kid: str) -> str:
    return sign_jwt_svid(
        SpiffeId.parse("spiffe://example.org/web"),
        ["api"],
        key,
        kid,
        dt.timedelta(minutes=5),
        issued_at=NOW,
    )


def test_jwt_16_17_key_from_a_spiffe_bundle_document_validates() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    doc = {"keys": [{**public_key_to_jwk(key.public_key()), "use": "jwt-svid", "kid": "k1"}]}
    bundle = SpiffeBundle.parse(TD, json.dumps(doc).encode())
    svid = JwtSvid.parse_and_validate(token(key, "k1"), bundle, ["api"], now=NOW)
    assert str(svid.spiffe_id) == "spiffe://example.org/web"


def test_jwt_17_row_17_x509_svid_entry_with_matching_kid_is_never_a_jwt_key() -> None:
    """An attacker who controls an X.509 authority's key cannot sign JWT-SVIDs with it."""
    ca = make_cert("ca", ca=True)
    x5c = base64.b64encode(ca.cert.public_bytes(serialization.Encoding.DER)).decode()
    entry = {**public_key_to_jwk(ca.key.public_key()), "use": "x509-svid", "x5c": [x5c]}
    entry["kid"] = "k1"
    bundle = SpiffeBundle.parse(TD, json.dumps({"keys": [entry]}).encode())
    assert bundle.x509_authorities, "the X.509 authority itself is kept"
    with pytest.raises(JwtSvidError):
        JwtSvid.parse_and_validate(token(ca.key, "k1"), bundle, ["api"], now=NOW)


def test_jwt_18_a_source_answering_with_another_trust_domains_bundle_is_refused() -> None:
    """A confused (or hostile) source must not let td-b's key vouch for a td-a subject."""
    from spiffed.bundle import JwtBundle

    key = ec.generate_private_key(ec.SECP256R1())
    foreign = JwtBundle(TrustDomain("other.org"), {"k1": key.public_key()})

    class Confused:
        def get_jwt_bundle_for_trust_domain(self, _td: TrustDomain) -> JwtBundle:
            return foreign

    with pytest.raises(JwtSvidError, match=r"returned the JWT bundle of other\.org"):
        JwtSvid.parse_and_validate(token(key, "k1"), Confused(), ["api"], now=NOW)
