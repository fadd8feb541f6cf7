"""BundleSet (FED-07) and the SPIFFE bundle map: BM-01..BM-07 and rows 15-17 of §5.3."""

from __future__ import annotations

import json

import pytest

from spiffed.bundle import (
    BundleError,
    BundleSet,
    JwtBundleSource,
    SpiffeBundle,
    X509BundleSource,
    marshal_bundle_map,
    parse_bundle_map,
)
from spiffed.spiffeid import TrustDomain
from tests.bundle.conftest import OTHER_TD, TD, ca_cert, jwt_entry, public_key, x509_entry

TD_A = TrustDomain("td-a.test")
TD_B = TrustDomain("td-b.test")


def bundle_a() -> SpiffeBundle:
    return SpiffeBundle(
        TD_A, (ca_cert("P-256", 0, "td-a.test"),), {"a1": public_key("P-256", 1)}, 3, 60
    )


def bundle_b() -> SpiffeBundle:
    return SpiffeBundle(TD_B, (ca_cert("RSA", 0, "td-b.test"),), {"b1": public_key("RSA", 1)}, 9)


def map_doc(**tds: object) -> bytes:
    return json.dumps({"trust_domains": tds}).encode()


# -- BundleSet ------------------------------------------------------------------------------


def test_fed_07_set_never_merges_trust_domains() -> None:
    bundles = BundleSet.of(bundle_a(), bundle_b())
    x_source: X509BundleSource = bundles
    j_source: JwtBundleSource = bundles
    xa = x_source.get_x509_bundle_for_trust_domain(TD_A)
    xb = x_source.get_x509_bundle_for_trust_domain(TD_B)
    assert xa is not None
    assert xb is not None
    assert xa.authorities == bundle_a().x509_authorities
    assert xb.authorities == bundle_b().x509_authorities
    assert not set(xa.authorities) & set(xb.authorities)
    ja = j_source.get_jwt_bundle_for_trust_domain(TD_A)
    assert ja is not None
    assert set(ja.authorities) == {"a1"}
    assert x_source.get_x509_bundle_for_trust_domain(OTHER_TD) is None
    assert j_source.get_jwt_bundle_for_trust_domain(OTHER_TD) is None


def test_fed_07_bundle_under_wrong_trust_domain_rejected() -> None:
    with pytest.raises(BundleError, match="FED-07"):
        BundleSet({TD_B: bundle_a()})
    with pytest.raises(BundleError, match="two bundles"):
        BundleSet.of(bundle_a(), bundle_a())
    with pytest.raises(BundleError, match="SpiffeBundle"):
        BundleSet({TD_A: "x"})  # type: ignore[dict-item]


def test_tb_07_set_without_usable_keys_gives_no_bundle() -> None:
    bundles = BundleSet.of(SpiffeBundle(TD_A), bundle_b())
    assert bundles.get_x509_bundle_for_trust_domain(TD_A) is None
    assert bundles.get_jwt_bundle_for_trust_domain(TD_A) is None


def test_set_is_an_immutable_mapping() -> None:
    bundles = BundleSet.of(bundle_a())
    assert len(bundles) == 1
    assert list(bundles) == [TD_A]
    assert bundles[TD_A] == bundle_a()
    updated = bundles.with_bundle(bundle_b())
    assert len(bundles) == 1
    assert set(updated) == {TD_A, TD_B}
    assert updated.without(TD_A) == BundleSet.of(bundle_b())
    assert hash(updated) == hash(BundleSet.of(bundle_b(), bundle_a()))
    with pytest.raises(TypeError):
        bundles.bundles[TD_B] = bundle_b()  # type: ignore[index]


# -- bundle map -----------------------------------------------------------------------------


def test_bm_01_row_16_trust_domains_member_required() -> None:
    with pytest.raises(BundleError, match="'trust_domains' is required"):
        parse_bundle_map(b"{}")
    with pytest.raises(BundleError, match="'trust_domains' is required"):
        parse_bundle_map(b'{"example.org": {"keys": []}}')


def test_bm_01_trust_domains_may_be_empty() -> None:
    assert parse_bundle_map(b'{"trust_domains": {}}') == {}
    assert marshal_bundle_map({}) == b'{"trust_domains":{}}'


@pytest.mark.parametrize("value", [b"[]", b"null", b'"x"'])
def test_bm_01_trust_domains_must_be_an_object(value: bytes) -> None:
    with pytest.raises(BundleError, match="must be an object"):
        parse_bundle_map(b'{"trust_domains": ' + value + b"}")


@pytest.mark.parametrize(
    "key", ["Example.org", "spiffe://x/y", "spiffe://example.org", "", "exa mple.org", "a:80"]
)
def test_bm_02_row_17_key_must_be_a_bare_trust_domain_name(key: str) -> None:
    with pytest.raises(BundleError, match="not a trust domain name"):
        parse_bundle_map(map_doc(**{key: {"keys": []}}))


def test_bm_02_values_are_spiffe_bundles_keyed_by_name() -> None:
    data = map_doc(
        **{
            "example.org": {"keys": [x509_entry(ca_cert())], "spiffe_sequence": 1},
            "other.test": {"keys": [jwt_entry("k", public_key("P-256"))]},
        }
    )
    parsed = parse_bundle_map(data)
    assert set(parsed) == {TD, OTHER_TD}
    assert parsed[TD].x509_authorities == (ca_cert(),)
    assert parsed[TD].trust_domain == TD
    assert dict(parsed[OTHER_TD].jwt_authorities) == {"k": public_key("P-256")}


def test_bm_03_producer_writes_each_trust_domain_once() -> None:
    with pytest.raises(BundleError, match="cannot be written under"):
        marshal_bundle_map({TD_A: bundle_b()})
    with pytest.raises(BundleError, match="appears twice"):
        marshal_bundle_map([bundle_a(), bundle_a()])
    out = json.loads(marshal_bundle_map([bundle_b(), bundle_a()]))
    assert list(out["trust_domains"]) == ["td-a.test", "td-b.test"]


def test_bm_04_row_15_duplicate_trust_domain_keys_rejected() -> None:
    data = b'{"trust_domains": {"example.org": {"keys": []}, "example.org": {"keys": []}}}'
    with pytest.raises(BundleError, match=r"duplicate JSON member 'example\.org'"):
        parse_bundle_map(data)
    with pytest.raises(BundleError, match="duplicate JSON member 'trust_domains'"):
        parse_bundle_map(b'{"trust_domains": {}, "trust_domains": {}}')


def test_bm_05_producer_leaves_out_refresh_hints() -> None:
    assert bundle_a().refresh_hint == 60
    out = json.loads(BundleSet.of(bundle_a(), bundle_b()).marshal_bundle_map())
    for doc in out["trust_domains"].values():
        assert "spiffe_refresh_hint" not in doc
    assert out["trust_domains"]["td-a.test"]["spiffe_sequence"] == 3


def test_bm_06_per_bundle_refresh_hint_never_reaches_the_map_consumer() -> None:
    data = map_doc(**{"example.org": {"keys": [], "spiffe_refresh_hint": 1}})
    assert parse_bundle_map(data)[TD].refresh_hint is None
    # still validated: a malformed hint is a malformed bundle
    with pytest.raises(BundleError, match="spiffe_refresh_hint"):
        parse_bundle_map(map_doc(**{"example.org": {"keys": [], "spiffe_refresh_hint": "1"}}))


def test_bm_07_map_is_loaded_whole_or_not_at_all() -> None:
    good = {"keys": [x509_entry(ca_cert())], "spiffe_sequence": 5}
    with pytest.raises(BundleError, match=r"other\.test"):
        parse_bundle_map(map_doc(**{"example.org": good, "other.test": {}}))
    parsed = BundleSet.parse_bundle_map(
        map_doc(**{"example.org": good, "other.test": {"keys": []}})
    )
    assert parsed[TD].sequence == 5  # each bundle keeps its own sequence
    assert parsed[OTHER_TD].sequence is None


def test_bm_round_trip() -> None:
    bundles = BundleSet.of(bundle_a(), bundle_b())
    parsed = BundleSet.parse_bundle_map(bundles.marshal_bundle_map())
    expected = BundleSet.of(
        SpiffeBundle(TD_A, bundle_a().x509_authorities, bundle_a().jwt_authorities, 3),
        bundle_b(),
    )
    assert parsed == expected


@pytest.mark.parametrize("data", [b"", b"[]", b"\xff", b'{"trust_domains": {"a": 1}}'])
def test_bm_malformed_documents_rejected(data: bytes) -> None:
    with pytest.raises(BundleError):
        parse_bundle_map(data)
