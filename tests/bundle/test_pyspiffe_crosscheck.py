"""Cross-check with py-spiffe 0.3.x: the same JWKS documents and DER/PEM through both.

py-spiffe's ``JwtBundle.parse`` reads a plain RFC 7517 JWKS (the Workload API form), so it
is compared with ``JwtBundle.parse_jwks`` and, for full SPIFFE bundle documents, with
``SpiffeBundle.parse(...).jwt_bundle()``. Where the two disagree, the test asserts both
behaviours and its docstring names the rule that decides for spiffed.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import spiffe
from cryptography.hazmat.primitives.serialization import Encoding
from spiffe.bundle.jwt_bundle.errors import ParseJWTBundleError
from spiffe.bundle.x509_bundle.errors import ParseX509BundleError

from spiffed.bundle import BundleError, JwtBundle, SpiffeBundle, X509Bundle
from tests.bundle.conftest import (
    TD,
    ca_cert,
    der,
    doc,
    jwk_members,
    jwt_entry,
    public_key,
    x5c,
    x509_entry,
)

pytestmark = pytest.mark.interop

PY_TD = spiffe.TrustDomain(TD.name)
EC = public_key("P-256")
RSA = public_key("RSA")


def theirs_jwt(data: bytes) -> dict[str, Any]:
    return spiffe.JwtBundle.parse(PY_TD, data).jwt_authorities


def ours_jwks(data: bytes) -> dict[str, Any]:
    return dict(JwtBundle.parse_jwks(TD, data).authorities)


def ours_spiffe(data: bytes) -> dict[str, Any]:
    return dict(SpiffeBundle.parse(TD, data).jwt_authorities)


# -- agreement ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "has_use"),
    [
        (doc(jwt_entry("a", EC), jwt_entry("b", RSA)), True),
        (doc(jwt_entry("a", public_key("P-384")), jwt_entry("c", public_key("P-521"))), True),
        (json.dumps({"keys": [{"kid": "a", **jwk_members(EC)}]}).encode(), False),
        (doc(jwt_entry("a", EC), spiffe_sequence=3, spiffe_refresh_hint=60), True),
        (doc(), True),
    ],
    ids=["ec-rsa", "p384-p521", "no-use-spire-form", "with-sequence", "empty-keys"],
)
def test_wa_45_good_jwks_same_keys(data: bytes, has_use: bool) -> None:
    assert ours_jwks(data) == theirs_jwt(data)
    if has_use:  # a SPIFFE bundle needs ``use`` (TB-09); the Workload API form does not
        assert ours_spiffe(data) == theirs_jwt(data)
    else:
        assert ours_spiffe(data) == {}


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"[]", doc(jwt_entry("a", EC, y=jwk_members(EC)["x"]))],
    ids=["empty", "not-json", "array", "point-not-on-curve"],
)
def test_wa_45_bad_jwks_both_reject(data: bytes) -> None:
    with pytest.raises(BundleError):
        ours_jwks(data)
    with pytest.raises((ParseJWTBundleError, spiffe.errors.ArgumentError)):
        theirs_jwt(data)


def test_wa_45_our_jwks_output_reads_in_pyspiffe() -> None:
    bundle = JwtBundle(TD, {"a": EC, "b": RSA, "c": public_key("P-521")})
    for data in (bundle.marshal_jwks(), bundle.marshal_jwks(include_use=True)):
        assert theirs_jwt(data) == dict(bundle.authorities)
    spiffe_doc = SpiffeBundle(TD, (), {"a": EC}, sequence=1).marshal()
    assert theirs_jwt(spiffe_doc) == {"a": EC}


def test_private_member_both_reject() -> None:
    with pytest.raises(BundleError, match="private"):
        ours_jwks(doc(jwt_entry("a", EC, d="AAAA")))
    with pytest.raises(ParseJWTBundleError):
        theirs_jwt(doc(jwt_entry("a", EC, d="AAAA")))


# -- disagreement, decided by a rule --------------------------------------------------------


def test_jwt_17_spiffe_bundle_with_x509_entries() -> None:
    """JWT-17 / X5-31: x509-svid entries (no kid) are not JWT keys and are skipped.

    py-spiffe treats every entry as a JWT key and rejects the document for the missing kid,
    so it cannot read a full SPIFFE bundle. spiffed reads the jwt-svid entries only.
    """
    data = doc(x509_entry(ca_cert()), jwt_entry("a", EC))
    assert ours_spiffe(data) == {"a": EC}
    assert ours_jwks(data) == {"a": EC}
    with pytest.raises(ParseJWTBundleError, match="keyID"):
        theirs_jwt(data)


def test_jwt_17_x509_entry_with_kid_is_not_a_jwt_key() -> None:
    """JWT-17 and §4.3 row 17: a ``use: x509-svid`` key must never validate a JWT.

    py-spiffe takes it as JWT authority ``x``; spiffed does not.
    """
    data = doc(x509_entry(ca_cert(), kid="x"), jwt_entry("a", EC))
    assert ours_spiffe(data) == {"a": EC}
    assert ours_jwks(data) == {"a": EC}
    assert set(theirs_jwt(data)) == {"a", "x"}


def test_amb_09_row_07_two_x5c_certificates() -> None:
    """AMB-09 / X5-35: the first ``x5c`` certificate is the anchor, the rest is ignored.

    py-spiffe has no SPIFFE-bundle reader for X.509 and fails this document as a JWKS
    (entry without kid); go-spiffe would reject the bundle. spiffed follows the spec.
    """
    first, second = ca_cert("P-256", 0), ca_cert("P-256", 1)
    data = doc(x509_entry(first, x5c=[x5c(first), x5c(second)]))
    assert SpiffeBundle.parse(TD, data).x509_authorities == (first,)
    with pytest.raises(ParseJWTBundleError):
        theirs_jwt(data)


def test_jwt_16_row_09_jwt_entry_without_kid() -> None:
    """§5.3 row 9 (our decision): a jwt-svid entry without ``kid`` is ignored.

    py-spiffe (like go-spiffe) rejects the whole document.
    """
    entry = jwt_entry("a", EC)
    del entry["kid"]
    data = doc(entry, jwt_entry("b", RSA))
    assert ours_jwks(data) == {"b": RSA}
    assert ours_spiffe(data) == {"b": RSA}
    with pytest.raises(ParseJWTBundleError, match="keyID"):
        theirs_jwt(data)


@pytest.mark.parametrize("data", [b"{}", b'{"keys": null}'], ids=["no-keys", "keys-null"])
def test_tb_05_row_01_keys_required(data: bytes) -> None:
    """TB-05 / §5.3 row 1: ``keys`` must be present (and an array).

    py-spiffe returns an empty bundle; spiffed rejects the document.
    """
    with pytest.raises(BundleError):
        ours_jwks(data)
    with pytest.raises(BundleError):
        ours_spiffe(data)
    assert theirs_jwt(data) == {}


def test_tb_06_tb_07_row_05_only_unknown_key_types() -> None:
    """TB-06/TB-07 / §5.3 row 5: unknown ``kty`` entries are ignored; nothing left means an
    empty bundle (every SVID invalid), not a malformed one.

    py-spiffe rejects a JWKS with no usable key.
    """
    data = doc({"use": "jwt-svid", "kty": "FOO", "kid": "z"})
    assert ours_jwks(data) == {}
    assert ours_spiffe(data) == {}
    with pytest.raises(ParseJWTBundleError):
        theirs_jwt(data)


@pytest.mark.parametrize("use", ["wit-svid", "sig"])
def test_tb_09_wa_45_row_14_other_use_ignored(use: str) -> None:
    """TB-09 / WA-45 / §5.3 row 14: keys with another ``use`` are not JWT authorities.

    py-spiffe ignores ``use`` and takes them.
    """
    data = doc(jwt_entry("w", EC, use=use), jwt_entry("a", RSA))
    assert ours_jwks(data) == {"a": RSA}
    assert ours_spiffe(data) == {"a": RSA}
    assert set(theirs_jwt(data)) == {"a", "w"}


def test_bm_04_duplicate_json_member() -> None:
    """BM-04 (applied to every document we parse): duplicate JSON members are rejected.

    py-spiffe keeps the last value.
    """
    data = b'{"keys": [], "keys": [' + json.dumps(jwt_entry("a", EC)).encode() + b"]}"
    with pytest.raises(BundleError, match="duplicate"):
        ours_jwks(data)
    assert theirs_jwt(data) == {"a": EC}


def test_tb_01_non_utf8() -> None:
    """TB-01 (RFC 7517 is JSON, RFC 8259 §8.1: UTF-8): non-UTF-8 is a BundleError.

    py-spiffe lets a bare UnicodeDecodeError escape.
    """
    data = b'{"keys": [], "x": "\xff"}'
    with pytest.raises(BundleError, match="UTF-8"):
        ours_jwks(data)
    with pytest.raises(UnicodeDecodeError):
        theirs_jwt(data)


def test_x5_33_short_ec_coordinate() -> None:
    """RFC 7518 §6.2.1.2 (full-width coordinates): a malformed key of a known type rejects the
    document in spiffed; py-spiffe silently drops that key and keeps the others.
    """
    raw_x = base64.urlsafe_b64decode(jwk_members(EC)["x"] + "==")
    short = base64.urlsafe_b64encode(raw_x[1:]).rstrip(b"=").decode()
    data = doc(jwt_entry("a", EC, x=short), jwt_entry("b", RSA))
    with pytest.raises(BundleError, match="exactly 32"):
        ours_jwks(data)
    assert set(theirs_jwt(data)) == {"b"}


def test_jwt_16_one_kid_two_keys() -> None:
    """RFC 7517 §4.5 (distinct kids) / JWT-04 (never guess the key): one ``kid`` naming two
    keys rejects the document in spiffed; py-spiffe keeps the last key.
    """
    data = doc(jwt_entry("a", EC), jwt_entry("a", RSA))
    with pytest.raises(BundleError, match="two different keys"):
        ours_jwks(data)
    assert theirs_jwt(data) == {"a": RSA}


def test_tb_03_row_11_sequence_as_string() -> None:
    """TB-03 / §5.3 row 11: in a SPIFFE bundle a string sequence is malformed. The Workload
    API form does not look at it (WA-45), and neither does py-spiffe.
    """
    data = doc(jwt_entry("a", EC), spiffe_sequence="5")
    with pytest.raises(BundleError, match="spiffe_sequence"):
        ours_spiffe(data)
    assert ours_jwks(data) == {"a": EC}
    assert theirs_jwt(data) == {"a": EC}


# -- X.509 bundles (WA-25) ------------------------------------------------------------------


def test_wa_25_der_and_pem_agree() -> None:
    certs = (ca_cert("P-256"), ca_cert("RSA"), ca_cert("P-384"))
    ours = X509Bundle(TD, certs)
    assert spiffe.X509Bundle.parse_raw(PY_TD, ours.marshal_der()).x509_authorities == set(certs)
    assert spiffe.X509Bundle.parse(PY_TD, ours.marshal_pem()).x509_authorities == set(certs)
    data = b"".join(der(c) for c in certs)
    assert set(X509Bundle.parse_der(TD, data).authorities) == set(
        spiffe.X509Bundle.parse_raw(PY_TD, data).x509_authorities
    )
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in certs)
    assert set(X509Bundle.parse_pem(TD, pem).authorities) == set(
        spiffe.X509Bundle.parse(PY_TD, pem).x509_authorities
    )


@pytest.mark.parametrize(
    "data",
    [der(ca_cert()) + b"\x00", b"\x30\x03\x02\x01\x01", der(ca_cert())[:-1], b"\x01\x02"],
    ids=["trailing-byte", "not-a-certificate", "truncated", "not-der"],
)
def test_wa_25_bad_der_both_reject(data: bytes) -> None:
    with pytest.raises(BundleError):
        X509Bundle.parse_der(TD, data)
    with pytest.raises(ParseX509BundleError):
        spiffe.X509Bundle.parse_raw(PY_TD, data)


def test_wa_25_duplicate_der_certificate_collapses_in_both() -> None:
    data = der(ca_cert()) + der(ca_cert())
    assert X509Bundle.parse_der(TD, data).authorities == (ca_cert(),)
    assert spiffe.X509Bundle.parse_raw(PY_TD, data).x509_authorities == {ca_cert()}


def test_tb_07_empty_der_bundle() -> None:
    """TB-07: an empty bundle is valid and means "no authorities" (every SVID invalid).

    py-spiffe refuses to parse empty DER.
    """
    assert X509Bundle.parse_der(TD, b"").authorities == ()
    with pytest.raises(ParseX509BundleError):
        spiffe.X509Bundle.parse_raw(PY_TD, b"")
