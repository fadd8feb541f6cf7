"""SpiffeBundle: TB-01..TB-15, X5-30..X5-36, JWT-16/17 and rows 1-14, 18 of §5.3."""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from spiffed.bundle import (
    BundleError,
    JwtBundle,
    JwtBundleSource,
    SpiffeBundle,
    X509Bundle,
    X509BundleSource,
)
from tests.bundle.conftest import (
    OTHER_TD,
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


def parse(data: bytes) -> SpiffeBundle:
    return SpiffeBundle.parse(TD, data)


def full_bundle() -> SpiffeBundle:
    return SpiffeBundle(
        TD,
        (ca_cert("P-256"), ca_cert("RSA")),
        {"k1": public_key("P-384", 1), "k2": public_key("RSA", 2)},
        sequence=7,
        refresh_hint=300,
    )


# -- TB-01 .. TB-05 -----------------------------------------------------------------------


def test_tb_01_bundle_is_paired_with_its_trust_domain() -> None:
    bundle = parse(doc(x509_entry(ca_cert())))
    assert bundle.trust_domain == TD
    assert "trust_domain" not in json.loads(bundle.marshal())
    with pytest.raises(BundleError, match="TrustDomain"):
        SpiffeBundle("example.org")  # type: ignore[arg-type]


def test_tb_02_row_13_unknown_top_level_member_ignored() -> None:
    bundle = parse(doc(x509_entry(ca_cert()), foo=1, bar={"x": [1, 2]}))
    assert bundle.x509_authorities == (ca_cert(),)
    assert set(json.loads(bundle.marshal())) == {"keys"}


def test_tb_03_row_12_sequence_keeps_full_precision() -> None:
    big = 18446744073709551615
    assert parse(b'{"keys": [], "spiffe_sequence": 18446744073709551615}').sequence == big
    huge = 2**64 * 1000 + 1  # beyond 64 bits still exact, never via float
    bundle = parse(b'{"keys": [], "spiffe_sequence": %d}' % huge)
    assert bundle.sequence == huge
    assert json.loads(bundle.marshal())["spiffe_sequence"] == huge


@pytest.mark.parametrize("bad", [b'"5"', b"1.5", b"-1", b"5.0", b"1e3", b"true", b"null", b"NaN"])
def test_tb_03_row_11_malformed_sequence_rejected(bad: bytes) -> None:
    with pytest.raises(BundleError, match=r"spiffe_sequence|NaN"):
        parse(b'{"keys": [], "spiffe_sequence": ' + bad + b"}")


@pytest.mark.parametrize("bad", [b'"300"', b"30.5", b"-5", b"[]", b"Infinity"])
def test_tb_04_row_11_malformed_refresh_hint_rejected(bad: bytes) -> None:
    with pytest.raises(BundleError, match=r"spiffe_refresh_hint|Infinity"):
        parse(b'{"keys": [], "spiffe_refresh_hint": ' + bad + b"}")


def test_tb_04_refresh_hint_is_integer_seconds() -> None:
    assert parse(b'{"keys": [], "spiffe_refresh_hint": 300}').refresh_hint == 300
    assert parse(b'{"keys": []}').refresh_hint is None


def test_tb_05_row_01_keys_member_required() -> None:
    with pytest.raises(BundleError, match="'keys' is required"):
        parse(b"{}")
    with pytest.raises(BundleError, match="'keys' is required"):
        parse(b'{"spiffe_sequence": 1}')


@pytest.mark.parametrize("keys", [b"null", b"{}", b'"a"', b"1"])
def test_tb_05_keys_must_be_an_array(keys: bytes) -> None:
    with pytest.raises(BundleError, match="must be an array"):
        parse(b'{"keys": ' + keys + b"}")


@pytest.mark.parametrize("top", [b"[]", b'"keys"', b"null", b"1"])
def test_tb_01_document_must_be_an_object(top: bytes) -> None:
    with pytest.raises(BundleError, match="JSON object"):
        parse(top)


def test_tb_05_key_entry_must_be_an_object() -> None:
    with pytest.raises(BundleError, match=r"keys\[1\] must be a JSON object"):
        parse(doc(x509_entry(ca_cert()), "x"))  # type: ignore[arg-type]


# -- TB-06 .. TB-09: entries that are ignored ---------------------------------------------


def test_tb_07_row_02_empty_keys_means_everything_revoked() -> None:
    bundle = parse(b'{"keys": []}')
    assert not bundle.has_usable_keys
    assert bundle.get_x509_bundle_for_trust_domain(TD) is None
    assert bundle.get_jwt_bundle_for_trust_domain(TD) is None
    assert bundle.x509_bundle() == X509Bundle(TD, ())
    assert bundle.jwt_bundle() == JwtBundle(TD, {})


def test_tb_09_row_03_entry_without_use_ignored() -> None:
    entry = x509_entry(ca_cert())
    del entry["use"]
    bundle = parse(doc(entry))
    assert not bundle.has_usable_keys
    assert bundle.get_x509_bundle_for_trust_domain(TD) is None


@pytest.mark.parametrize("use", ["X509-SVID", "sig", "enc", "Jwt-Svid", "", 5, None, ["x509-svid"]])
def test_tb_09_row_04_unknown_use_ignored(use: object) -> None:
    bundle = parse(
        doc(x509_entry(ca_cert(), use=use), jwt_entry("k", public_key("P-256"), use=use))
    )
    assert not bundle.has_usable_keys


def test_tb_06_tb_08_row_05_unknown_kty_ignored() -> None:
    bundle = parse(
        doc(
            {"use": "x509-svid", "kty": "FOO", "x5c": [x5c(ca_cert())]},
            {"use": "jwt-svid", "kty": "FOO", "kid": "k"},
            {"use": "jwt-svid", "kty": "OKP", "crv": "Ed25519", "kid": "e", "x": "AAAA"},
            {"use": "jwt-svid", "kty": "EC", "crv": "P-192", "kid": "c", "x": "A", "y": "B"},
            jwt_entry("good", public_key("P-256")),
        )
    )
    assert bundle.x509_authorities == ()
    assert dict(bundle.jwt_authorities) == {"good": public_key("P-256")}


def test_tb_08_entry_without_kty_ignored() -> None:
    entry = jwt_entry("k", public_key("P-256"))
    del entry["kty"]
    x_entry = x509_entry(ca_cert())
    del x_entry["kty"]
    assert not parse(doc(entry, x_entry)).has_usable_keys


def test_tb_09_row_14_wit_svid_entry_ignored() -> None:
    bundle = parse(
        doc(
            jwt_entry("wit-key-1", public_key("P-256"), use="wit-svid"),
            x509_entry(ca_cert("P-384")),
        )
    )
    assert dict(bundle.jwt_authorities) == {}
    assert bundle.x509_authorities == (ca_cert("P-384"),)
    assert "wit-key-1" not in bundle.marshal().decode()


def test_tb_10_marshal_emits_only_defined_members() -> None:
    keys = json.loads(full_bundle().marshal())["keys"]
    allowed = {
        ("x509-svid", "EC"): {"use", "kty", "crv", "x", "y", "x5c"},
        ("x509-svid", "RSA"): {"use", "kty", "n", "e", "x5c"},
        ("jwt-svid", "EC"): {"use", "kty", "kid", "crv", "x", "y"},
        ("jwt-svid", "RSA"): {"use", "kty", "kid", "n", "e"},
    }
    assert len(keys) == 4
    for key in keys:
        assert set(key) == allowed[(key["use"], key["kty"])]


def test_tb_11_each_use_is_read_by_its_own_rules() -> None:
    # an x509-svid entry is never a JWT authority and a jwt-svid entry never an anchor
    cert = ca_cert()
    bundle = parse(
        doc(x509_entry(cert, kid="k1"), jwt_entry("k2", public_key("RSA"), x5c=[x5c(cert)]))
    )
    assert bundle.x509_authorities == (cert,)
    assert dict(bundle.jwt_authorities) == {"k2": public_key("RSA")}


def test_tb_12_rotation_add_then_revoke_by_leaving_out() -> None:
    old, new = ca_cert("P-256", 0), ca_cert("P-256", 1)
    v1 = parse(doc(x509_entry(old), spiffe_sequence=1))
    v2 = parse(doc(x509_entry(old), x509_entry(new), spiffe_sequence=2))
    v3 = parse(doc(x509_entry(new), spiffe_sequence=3))
    assert v1.x509_authorities == (old,)
    assert v2.x509_authorities == (old, new)
    assert v3.x509_authorities == (new,)
    assert v1.is_older_than(v2)
    assert v2.is_older_than(v3)


def test_tb_13_bundle_only_answers_for_its_own_trust_domain() -> None:
    bundle = full_bundle()
    assert bundle.get_x509_bundle_for_trust_domain(OTHER_TD) is None
    assert bundle.get_jwt_bundle_for_trust_domain(OTHER_TD) is None
    x_bundle = bundle.get_x509_bundle_for_trust_domain(TD)
    assert x_bundle is not None
    assert x_bundle.trust_domain == TD
    with pytest.raises(BundleError, match="FED-07"):
        SpiffeBundle.from_bundles(TD, x509_bundle=X509Bundle(OTHER_TD, (ca_cert(),)))


def test_tb_14_no_refresh_hint_leaves_the_interval_to_the_consumer() -> None:
    bundle = parse(doc(x509_entry(ca_cert())))
    assert bundle.refresh_hint is None
    assert "spiffe_refresh_hint" not in json.loads(bundle.marshal())


def test_tb_15_bundle_is_a_source_for_workloads() -> None:
    bundle = full_bundle()
    x_source: X509BundleSource = bundle
    j_source: JwtBundleSource = bundle
    x_bundle = x_source.get_x509_bundle_for_trust_domain(TD)
    j_bundle = j_source.get_jwt_bundle_for_trust_domain(TD)
    assert x_bundle == X509Bundle(TD, (ca_cert("P-256"), ca_cert("RSA")))
    assert j_bundle is not None
    assert j_bundle.find_authority("k2") == public_key("RSA", 2)


# -- X5-30 .. X5-36 -------------------------------------------------------------------------


def test_x5_30_x5_31_x5_32_marshal_x509_entries() -> None:
    certs = (ca_cert("P-256"), ca_cert("P-521"), ca_cert("RSA"))
    keys = json.loads(SpiffeBundle(TD, certs).marshal())["keys"]
    assert len(keys) == 3
    for key, cert in zip(keys, certs, strict=True):
        assert key["use"] == "x509-svid"
        assert "kid" not in key
        assert len(key["x5c"]) == 1
        assert base64.b64decode(key["x5c"][0], validate=True) == der(cert)


def test_x5_33_marshal_public_members_match_certificate() -> None:
    for kind in ("P-256", "P-384", "P-521", "RSA"):
        cert = ca_cert(kind)
        key = json.loads(SpiffeBundle(TD, (cert,)).marshal())["keys"][0]
        assert {k: v for k, v in key.items() if k not in ("use", "x5c")} == jwk_members(
            cert.public_key()  # type: ignore[arg-type]
        )


def test_x5_33_entry_without_public_members_uses_certificate() -> None:
    cert = ca_cert("P-384")
    entry = {"use": "x509-svid", "kty": "EC", "crv": "P-384", "x5c": [x5c(cert)]}
    assert parse(doc(entry)).x509_authorities == (cert,)
    with pytest.raises(BundleError, match="crv 'P-256' does not match"):
        parse(doc({**entry, "crv": "P-256"}))


def test_x5_34_only_x509_svid_entries_are_anchors() -> None:
    cert = ca_cert()
    bundle = parse(doc(x509_entry(cert, use="jwt-svid", kid="k")))
    # as a jwt-svid entry, the key is a JWT authority; the x5c certificate is not an anchor
    assert bundle.x509_authorities == ()
    assert dict(bundle.jwt_authorities) == {"k": cert.public_key()}


@pytest.mark.parametrize("x5c_value", ["missing", None, []])
def test_x5_34_row_06_x5c_missing_or_empty_ignored(x5c_value: object) -> None:
    entry = x509_entry(ca_cert())
    if x5c_value == "missing":
        del entry["x5c"]
    else:
        entry["x5c"] = x5c_value
    bundle = parse(doc(entry, x509_entry(ca_cert("RSA"))))
    assert bundle.x509_authorities == (ca_cert("RSA"),)


@pytest.mark.parametrize("x5c_value", ["abc", {"0": "abc"}, 5])
def test_x5_34_x5c_not_an_array_rejected(x5c_value: object) -> None:
    with pytest.raises(BundleError, match="'x5c' must be an array"):
        parse(doc(x509_entry(ca_cert(), x5c=x5c_value)))


def test_x5_35_amb_09_row_07_first_x5c_certificate_only() -> None:
    first, second = ca_cert("P-256", 0), ca_cert("P-256", 1)
    bundle = parse(doc(x509_entry(first, x5c=[x5c(first), x5c(second)])))
    assert bundle.x509_authorities == (first,)
    # the rest is not even decoded
    bundle = parse(doc(x509_entry(first, x5c=[x5c(first), "%%% not base64", 7])))
    assert bundle.x509_authorities == (first,)


def test_x5_35_first_x5c_must_be_a_certificate() -> None:
    with pytest.raises(BundleError, match=r"keys\[0\]: x5c\[0\]"):
        parse(doc(x509_entry(ca_cert(), x5c=["AAAA"])))
    with pytest.raises(BundleError, match=r"x5c\[0\]"):
        parse(doc(x509_entry(ca_cert(), x5c=[5])))


def test_x5_36_anchors_are_the_union_of_entries() -> None:
    certs = [ca_cert("P-256", 0), ca_cert("RSA"), ca_cert("P-384")]
    bundle = parse(doc(*(x509_entry(c) for c in certs), x509_entry(certs[0])))
    assert bundle.x509_authorities == tuple(certs)
    x_bundle = bundle.get_x509_bundle_for_trust_domain(TD)
    assert x_bundle is not None
    assert x_bundle.authorities == tuple(certs)


def test_x5_36_no_x509_entries_means_no_x509_support() -> None:
    bundle = parse(doc(jwt_entry("k", public_key("P-256"))))
    assert bundle.get_x509_bundle_for_trust_domain(TD) is None
    assert bundle.get_jwt_bundle_for_trust_domain(TD) is not None


@pytest.mark.parametrize(
    ("cert_kind", "member_kind"), [("RSA", "RSA"), ("P-256", "P-256"), ("P-256", "P-384")]
)
def test_row_08_x5c_certificate_not_matching_public_members_rejected(
    cert_kind: str, member_kind: str
) -> None:
    cert = ca_cert(cert_kind)
    other = public_key(member_kind, 5)
    entry = x509_entry(cert, **jwk_members(other))
    with pytest.raises(BundleError, match="does not match"):
        parse(doc(entry))


def test_row_08_x5c_certificate_of_other_key_type_rejected() -> None:
    entry = {"use": "x509-svid", "kty": "RSA", "x5c": [x5c(ca_cert("P-256"))]}
    with pytest.raises(BundleError, match="does not match"):
        parse(doc(entry))


def test_row_10_x509_entry_with_kid_tolerated() -> None:
    cert = ca_cert()
    bundle = parse(doc(x509_entry(cert, kid="ca-1")))
    assert bundle.x509_authorities == (cert,)
    assert dict(bundle.jwt_authorities) == {}
    assert "kid" not in json.loads(bundle.marshal())["keys"][0]


# -- JWT-16 / JWT-17 ----------------------------------------------------------------------


def test_jwt_16_marshal_jwt_entries_have_use_and_kid() -> None:
    keys = json.loads(full_bundle().marshal())["keys"]
    jwt_keys = [k for k in keys if k["use"] == "jwt-svid"]
    assert {k["kid"] for k in jwt_keys} == {"k1", "k2"}
    assert all("x5c" not in k for k in jwt_keys)


def test_jwt_17_only_jwt_svid_entries_are_jwt_authorities() -> None:
    key = public_key("P-256")
    bundle = parse(doc(jwt_entry("a", key, use="x509-svid"), jwt_entry("b", key)))
    assert dict(bundle.jwt_authorities) == {"b": key}
    only_x509 = parse(doc(x509_entry(ca_cert(), kid="a")))
    assert only_x509.get_jwt_bundle_for_trust_domain(TD) is None


@pytest.mark.parametrize("kid", ["missing", None, ""])
def test_jwt_16_row_09_jwt_entry_without_kid_ignored(kid: object) -> None:
    entry = jwt_entry("x", public_key("P-256"))
    if kid == "missing":
        del entry["kid"]
    else:
        entry["kid"] = kid
    bundle = parse(doc(entry, jwt_entry("k", public_key("RSA"))))
    assert dict(bundle.jwt_authorities) == {"k": public_key("RSA")}


def test_jwt_16_kid_must_be_a_string() -> None:
    with pytest.raises(BundleError, match="'kid' must be a string"):
        parse(doc({**jwt_entry("x", public_key("P-256")), "kid": 5}))


def test_jwt_16_same_kid_for_two_keys_rejected() -> None:
    with pytest.raises(BundleError, match="two different keys"):
        parse(doc(jwt_entry("k", public_key("P-256", 0)), jwt_entry("k", public_key("P-256", 1))))
    same = parse(doc(jwt_entry("k", public_key("P-256")), jwt_entry("k", public_key("P-256"))))
    assert dict(same.jwt_authorities) == {"k": public_key("P-256")}


def test_jwt_16_malformed_jwt_key_rejected() -> None:
    with pytest.raises(BundleError, match="kid 'k'"):
        parse(doc(jwt_entry("k", public_key("P-256"), x="!!")))


# -- JSON strictness ----------------------------------------------------------------------


def test_tb_01_duplicate_member_anywhere_rejected() -> None:
    with pytest.raises(BundleError, match="duplicate JSON member 'keys'"):
        parse(b'{"keys": [], "keys": []}')
    entry = json.dumps(jwt_entry("k", public_key("P-256")))[:-1] + ', "kid": "other"}'
    with pytest.raises(BundleError, match="duplicate JSON member 'kid'"):
        parse(b'{"keys": [' + entry.encode() + b"]}")
    with pytest.raises(BundleError, match="duplicate JSON member 'a'"):
        parse(b'{"keys": [], "foo": {"a": 1, "a": 2}}')


@pytest.mark.parametrize(
    "data",
    [b'{"keys": [], "x": "\xff"}', b'\xef\xbb\xbf{"keys": []}', '{"keys":[]}'.encode("utf-16")],
)
def test_tb_01_only_utf8_json_accepted(data: bytes) -> None:
    with pytest.raises(BundleError):
        parse(data)


def test_tb_01_deeply_nested_json_is_a_bundle_error() -> None:
    with pytest.raises(BundleError):
        parse(b'{"keys": [], "x": ' + b"[" * 100000 + b"]" * 100000 + b"}")


# -- marshal / parse, row 18 --------------------------------------------------------------


def test_tb_round_trip_full_bundle() -> None:
    bundle = full_bundle()
    assert parse(bundle.marshal()) == bundle
    assert parse(bundle.marshal(indent=2)) == bundle
    assert hash(parse(bundle.marshal())) == hash(bundle)


def test_tb_round_trip_views() -> None:
    bundle = full_bundle()
    rebuilt = SpiffeBundle.from_bundles(
        TD,
        x509_bundle=bundle.x509_bundle(),
        jwt_bundle=bundle.jwt_bundle(),
        sequence=7,
        refresh_hint=300,
    )
    assert rebuilt == bundle


@pytest.mark.parametrize(
    ("field", "value"), [("sequence", -1), ("refresh_hint", True), ("sequence", 1.0)]
)
def test_tb_03_tb_04_constructor_checks_integers(field: str, value: Any) -> None:
    with pytest.raises(BundleError, match=field):
        SpiffeBundle(TD, **{field: value})


def test_x5_33_constructor_rejects_unsupported_ca_key() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, None)
    )
    with pytest.raises(BundleError, match="EC or RSA"):
        SpiffeBundle(TD, (cert,))


def test_row_18_amb_10_lower_sequence_is_older() -> None:
    stored = SpiffeBundle(TD, (ca_cert(),), sequence=10)
    incoming = SpiffeBundle(TD, (ca_cert("RSA"),), sequence=9)
    assert incoming.is_older_than(stored)
    assert not stored.is_older_than(incoming)
    assert not SpiffeBundle(TD, sequence=None).is_older_than(stored)
    with pytest.raises(BundleError, match="cannot order"):
        SpiffeBundle(OTHER_TD, sequence=1).is_older_than(stored)


def test_wa_25_certificate_with_unknown_version_is_a_bundle_error() -> None:
    """An attacker-made DER bundle whose certificate claims X.509 v4 gets BundleError."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from spiffed.bundle import BundleError, X509Bundle
    from spiffed.bundle.x509 import split_der_certificates
    from spiffed.spiffeid import TrustDomain
    from tests.server.nodeattestor.pki import make_cert

    der = bytearray(make_cert("ca", ca=True).cert.public_bytes(Encoding.DER))
    marker = der.find(bytes.fromhex("a003020102"))
    der[marker + 4] = 0x03  # version v4 does not exist
    with pytest.raises(BundleError, match="malformed"):
        split_der_certificates(bytes(der))
    with pytest.raises(BundleError):
        X509Bundle.parse_der(TrustDomain("example.org"), bytes(der))
