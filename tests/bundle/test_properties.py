"""Property tests: parsers raise nothing but BundleError; marshal/parse round-trip.

Rules exercised: TB-01..TB-09 (any JSON), X5-30..X5-35 and JWT-16 (round trips), BM-01..BM-05
(map round trip), WA-25/WA-45 (Workload API forms).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spiffed.bundle import (
    BundleError,
    BundleSet,
    JwtBundle,
    SpiffeBundle,
    X509Bundle,
    parse_bundle_map,
)
from spiffed.spiffeid import TrustDomain
from tests.bundle.conftest import TD, ca_cert, der, jwk_members, public_key, x5c

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KINDS = ["P-256", "P-384", "P-521", "RSA"]
CERTS = [ca_cert(kind, n) for kind in KINDS for n in (0, 1)]
KEYS = [public_key(kind, n) for kind in KINDS for n in (0, 1)]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)

# member values that are sometimes right, often wrong
member_values = (
    st.sampled_from(["x509-svid", "jwt-svid", "wit-svid", "EC", "RSA", "P-256", "P-521", "", "k"])
    | st.sampled_from([x5c(c) for c in CERTS]).map(lambda v: [v])
    | st.sampled_from([m for k in KEYS for m in jwk_members(k).values()])
    | json_values
)
member_names = st.sampled_from(["use", "kty", "kid", "crv", "x", "y", "n", "e", "x5c", "d"])


@st.composite
def jwk_like(draw: st.DrawFn) -> dict[str, Any]:
    """A real JWK entry with some members replaced, removed or added."""
    if draw(st.booleans()):
        cert = draw(st.sampled_from(CERTS))
        entry: dict[str, Any] = {
            "use": "x509-svid",
            **jwk_members(cert.public_key()),  # type: ignore[arg-type]
            "x5c": [x5c(cert)],
        }
    else:
        key = draw(st.sampled_from(KEYS))
        entry = {"use": "jwt-svid", "kid": draw(st.text(max_size=5)), **jwk_members(key)}
    for _ in range(draw(st.integers(0, 3))):
        name = draw(member_names)
        if draw(st.booleans()):
            entry.pop(name, None)
        else:
            entry[name] = draw(member_values)
    return entry


@st.composite
def bundle_documents(draw: st.DrawFn) -> bytes:
    top: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        top["keys"] = draw(st.lists(jwk_like() | json_values, max_size=4))
    for name in ("spiffe_sequence", "spiffe_refresh_hint"):
        if draw(st.booleans()):
            top[name] = draw(st.integers(-5, 2**70) | json_values)
    if draw(st.booleans()):
        top.update(draw(st.dictionaries(st.text(max_size=6), json_values, max_size=2)))
    return json.dumps(top).encode()


def only_bundle_error(parse: Any, data: bytes) -> None:
    with contextlib.suppress(BundleError):
        parse(data)


@SETTINGS
@given(bundle_documents())
def test_tb_spiffe_bundle_parse_raises_only_bundle_error(data: bytes) -> None:
    try:
        bundle = SpiffeBundle.parse(TD, data)
    except BundleError:
        return
    # whatever parses, marshals and parses back to the same thing
    assert SpiffeBundle.parse(TD, bundle.marshal()) == bundle


@SETTINGS
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_tb_any_bytes_raise_only_bundle_error(data: bytes) -> None:
    only_bundle_error(lambda d: SpiffeBundle.parse(TD, d), data)
    only_bundle_error(lambda d: JwtBundle.parse_jwks(TD, d), data)
    only_bundle_error(parse_bundle_map, data)


@SETTINGS
@given(bundle_documents())
def test_wa_45_parse_jwks_raises_only_bundle_error(data: bytes) -> None:
    only_bundle_error(lambda d: JwtBundle.parse_jwks(TD, d), data)


@SETTINGS
@given(
    st.dictionaries(
        st.text(max_size=12) | st.sampled_from(["example.org", "td-b", "Example.org"]),
        bundle_documents().map(json.loads),
        max_size=3,
    )
)
def test_bm_parse_bundle_map_raises_only_bundle_error(tds: dict[str, Any]) -> None:
    only_bundle_error(parse_bundle_map, json.dumps({"trust_domains": tds}).encode())


@SETTINGS
@given(
    st.binary(max_size=64),
    st.sampled_from([b""] + [der(c) for c in CERTS[:2]]),
)
def test_wa_25_parse_der_raises_only_bundle_error(noise: bytes, prefix: bytes) -> None:
    only_bundle_error(lambda d: X509Bundle.parse_der(TD, d), prefix + noise)
    only_bundle_error(lambda d: X509Bundle.parse_pem(TD, d), prefix + noise)


spiffe_bundles = st.builds(
    SpiffeBundle,
    st.just(TD),
    st.lists(st.sampled_from(CERTS), max_size=4).map(tuple),
    st.dictionaries(st.text(min_size=1, max_size=10), st.sampled_from(KEYS), max_size=4),
    st.none() | st.integers(0, 2**100),
    st.none() | st.integers(0, 2**40),
)


@SETTINGS
@given(spiffe_bundles)
def test_x5_30_jwt_16_spiffe_bundle_round_trip(bundle: SpiffeBundle) -> None:
    data = bundle.marshal()
    assert SpiffeBundle.parse(TD, data) == bundle
    for key in json.loads(data)["keys"]:
        assert key["use"] in ("x509-svid", "jwt-svid")
        assert ("kid" in key) == (key["use"] == "jwt-svid")
        assert ("x5c" in key) == (key["use"] == "x509-svid")
        if "x5c" in key:
            assert len(key["x5c"]) == 1


@SETTINGS
@given(spiffe_bundles)
def test_wa_45_jwks_and_der_round_trip(bundle: SpiffeBundle) -> None:
    jwt = bundle.jwt_bundle()
    assert JwtBundle.parse_jwks(TD, jwt.marshal_jwks()) == jwt
    x = bundle.x509_bundle()
    assert X509Bundle.parse_der(TD, x.marshal_der()) == x
    assert X509Bundle.parse_pem(TD, x.marshal_pem()) == x


@SETTINGS
@given(
    st.lists(
        st.tuples(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True), spiffe_bundles),
        max_size=3,
        unique_by=lambda t: t[0],
    )
)
def test_bm_05_bundle_map_round_trip(items: list[tuple[str, SpiffeBundle]]) -> None:
    bundles = [
        SpiffeBundle(
            TrustDomain(name), b.x509_authorities, b.jwt_authorities, b.sequence, b.refresh_hint
        )
        for name, b in items
    ]
    parsed = parse_bundle_map(BundleSet.of(*bundles).marshal_bundle_map())
    assert parsed == {
        b.trust_domain: SpiffeBundle(
            b.trust_domain, b.x509_authorities, b.jwt_authorities, b.sequence, None
        )
        for b in bundles
    }
