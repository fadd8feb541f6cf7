"""verify_chain: RFC 5280 path validation per trust domain plus the SPIFFE leaf rules.

Each test of the X.509 negative table (SPIFFE-CONFORMANCE §3.5) carries its row number.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from spiffed.bundle.x509 import X509Bundle
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.x509 import X509SvidError, verify_chain

from .conftest import (
    HOUR,
    NOW,
    Authority,
    build_cert,
    key_usage,
    leaf_extensions,
    make_root,
    name,
    new_key,
)

TD_A = TrustDomain("td-a.test")
TD_B = TrustDomain("td-b.test")
ID_A = "spiffe://td-a.test/workload"


class BundleSet:
    """A static X509BundleSource over several bundles."""

    def __init__(self, *bundles: X509Bundle) -> None:
        self._by_td = {b.trust_domain: b for b in bundles}

    def get_x509_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> X509Bundle | None:
        return self._by_td.get(trust_domain)


def bundle(td: TrustDomain, *auths: Authority) -> X509Bundle:
    return X509Bundle(td, tuple(a.cert for a in auths))


@pytest.fixture
def source(root_a: Authority, root_b: Authority) -> BundleSet:
    return BundleSet(bundle(TD_A, root_a), bundle(TD_B, root_b))


def reject(chain: list[x509.Certificate], source: BundleSet, *fragments: str) -> str:
    with pytest.raises(X509SvidError) as info:
        verify_chain(chain, source, now=NOW)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def san(*names: x509.GeneralName, critical: bool = False) -> tuple[x509.ExtensionType, bool]:
    return x509.SubjectAlternativeName(list(names)), critical


URI = x509.UniformResourceIdentifier


# --- positive paths -----------------------------------------------------------------------


def test_x5_20_leaf_directly_under_root_verifies(root_a: Authority, source: BundleSet) -> None:
    leaf = root_a.issue_leaf([ID_A])
    spiffe_id, chains = verify_chain(leaf.chain, source, now=NOW)
    assert spiffe_id == SpiffeId.parse(ID_A)
    assert chains == [[leaf.cert, root_a.cert]]


def test_x5_20_leaf_under_intermediate_verifies(
    root_a: Authority, inter_a: Authority, source: BundleSet
) -> None:
    leaf = inter_a.issue_leaf([ID_A])
    spiffe_id, chains = verify_chain(leaf.chain, source, now=NOW)
    assert spiffe_id == SpiffeId.parse(ID_A)
    assert chains == [[leaf.cert, inter_a.cert, root_a.cert]]


def test_row20_extra_dns_sans_with_one_spiffe_uri_accepted(
    root_a: Authority, source: BundleSet
) -> None:
    leaf = root_a.issue_leaf([ID_A], dns=["web.td-a.test", "localhost"])
    assert verify_chain(leaf.chain, source, now=NOW)[0] == SpiffeId.parse(ID_A)


def test_row21_x5_08_leaf_without_eku_accepted(root_a: Authority, source: BundleSet) -> None:
    leaf = root_a.issue_leaf([ID_A], replace={x509.ExtendedKeyUsage: None})
    assert verify_chain(leaf.chain, source, now=NOW)[0] == SpiffeId.parse(ID_A)


def test_amb_03_ca_uri_san_that_is_not_a_spiffe_id_does_not_break_chain(
    root_a: Authority, source: BundleSet
) -> None:
    inter = root_a.issue_ca("spiffe://td-a.test/")  # Appendix A's trailing-slash CA
    leaf = inter.issue_leaf([ID_A])
    assert verify_chain(leaf.chain, source, now=NOW)[0] == SpiffeId.parse(ID_A)


def test_x5_12_ca_without_uri_san_in_chain_accepted(root_a: Authority, source: BundleSet) -> None:
    inter = root_a.issue_ca(None)
    leaf = inter.issue_leaf([ID_A])
    assert verify_chain(leaf.chain, source, now=NOW)[0] == SpiffeId.parse(ID_A)


def test_x5_15_eku_on_intermediate_does_not_break_chain(
    root_a: Authority, source: BundleSet
) -> None:
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    inter = root_a.issue_ca("spiffe://td-a.test", extra=[(eku, False)])
    leaf = inter.issue_leaf([ID_A])
    assert verify_chain(leaf.chain, source, now=NOW)[0] == SpiffeId.parse(ID_A)


def test_x5_20_leaf_without_aki_accepted(root_a: Authority, source: BundleSet) -> None:
    """RFC 5280 does not require AKI for path validation; go-spiffe accepts such leaves."""
    leaf = root_a.issue_leaf([ID_A], replace={x509.AuthorityKeyIdentifier: None})
    assert verify_chain(leaf.chain, source, now=NOW)[0] == SpiffeId.parse(ID_A)


def test_x5_04_leaf_without_basic_constraints_accepted(
    root_a: Authority, source: BundleSet
) -> None:
    leaf = root_a.issue_leaf([ID_A], replace={x509.BasicConstraints: None})
    assert verify_chain(leaf.chain, source, now=NOW)[0] == SpiffeId.parse(ID_A)


def test_x5_21_bundle_with_several_roots_any_can_anchor(root_a: Authority) -> None:
    other = make_root("spiffe://td-a.test", cn="next root td-a")
    src = BundleSet(bundle(TD_A, other, root_a))
    leaf = root_a.issue_leaf([ID_A])
    assert verify_chain(leaf.chain, src, now=NOW)[1] == [[leaf.cert, root_a.cert]]


# --- §3.5 rows: rejections ----------------------------------------------------------------


def test_row1_x5_27_no_uri_san_rejected(root_a: Authority, source: BundleSet) -> None:
    leaf = root_a.issue_leaf([], dns=["web.td-a.test"])
    reject(leaf.chain, source, "X5-27", "no URI SAN")


def test_row1_x5_27_no_san_extension_rejected(root_a: Authority, source: BundleSet) -> None:
    leaf = root_a.issue_leaf([])
    reject(leaf.chain, source, "X5-27", "no subjectAltName")


def test_row2_x5_26_two_spiffe_uri_sans_rejected(root_a: Authority, source: BundleSet) -> None:
    leaf = root_a.issue_leaf(["spiffe://td-a.test/a", "spiffe://td-a.test/b"])
    reject(leaf.chain, source, "X5-26", "2 URI SANs")


def test_row3_x5_26_spiffe_plus_https_uri_san_rejected(
    root_a: Authority, source: BundleSet
) -> None:
    leaf = root_a.issue_leaf([ID_A, "https://td-a.test/a"])
    reject(leaf.chain, source, "X5-26")


def test_row4_x5_24_https_scheme_rejected(root_a: Authority, source: BundleSet) -> None:
    leaf = root_a.issue_leaf(["https://td-a.test/a"])
    reject(leaf.chain, source, "X5-24", "'https'")


def test_row5_x5_25_root_id_rejected(root_a: Authority, source: BundleSet) -> None:
    leaf = root_a.issue_leaf(["spiffe://td-a.test"])
    reject(leaf.chain, source, "X5-25", "spiffe://td-a.test")


@pytest.mark.parametrize(
    "uri", ["spiffe://td-a.test/", "spiffe://TD-A.test/a", "spiffe://td-a.test/a%20b"]
)
def test_row6_x5_27_invalid_spiffe_id_rejected(
    uri: str, root_a: Authority, source: BundleSet
) -> None:
    leaf = root_a.issue_leaf([uri])
    reject(leaf.chain, source, "X5-27", "not a valid SPIFFE ID")


def test_row7_x5_22_leaf_with_ca_true_rejected(root_a: Authority, source: BundleSet) -> None:
    bc = x509.BasicConstraints(ca=True, path_length=None)
    leaf = root_a.issue_leaf([ID_A], replace={x509.BasicConstraints: (bc, True)})
    reject(leaf.chain, source, "X5-22", ID_A)


def test_row8_x5_23_leaf_with_key_cert_sign_rejected(root_a: Authority, source: BundleSet) -> None:
    ku = key_usage(digital_signature=True, key_cert_sign=True)
    leaf = root_a.issue_leaf([ID_A], replace={x509.KeyUsage: (ku, True)})
    reject(leaf.chain, source, "X5-23", "keyCertSign")


def test_row9_x5_23_leaf_with_crl_sign_rejected(root_a: Authority, source: BundleSet) -> None:
    ku = key_usage(digital_signature=True, crl_sign=True)
    leaf = root_a.issue_leaf([ID_A], replace={x509.KeyUsage: (ku, True)})
    reject(leaf.chain, source, "X5-23", "cRLSign")


def test_row10_x5_13_ca_certificate_as_end_entity_rejected(
    root_a: Authority, inter_a: Authority, source: BundleSet
) -> None:
    reject([inter_a.cert], source, "X5-25")  # a CA's ID spiffe://td has no path
    ca_with_path = root_a.issue_ca("spiffe://td-a.test/ca")
    reject([ca_with_path.cert], source, "X5-22")


def test_row11_expired_leaf_rejected(root_a: Authority, source: BundleSet) -> None:
    leaf = root_a.issue_leaf([ID_A], not_before=NOW - 2 * HOUR, not_after=NOW - HOUR)
    reject(leaf.chain, source, "X5-20", "td-a.test")


def test_row11_not_yet_valid_leaf_rejected(root_a: Authority, source: BundleSet) -> None:
    leaf = root_a.issue_leaf([ID_A], not_before=NOW + timedelta(minutes=5))
    reject(leaf.chain, source, "X5-20")


def test_row11_now_parameter_decides_validity(root_a: Authority, source: BundleSet) -> None:
    leaf = root_a.issue_leaf([ID_A])
    verify_chain(leaf.chain, source, now=NOW)
    with pytest.raises(X509SvidError, match="X5-20"):
        verify_chain(leaf.chain, source, now=NOW + 2 * HOUR)


def test_row12_svid_06_fed_07_leaf_of_td_a_signed_by_td_b_root_rejected(
    root_b: Authority, source: BundleSet
) -> None:
    """td-b's bundle is loaded and the leaf chains to it, but the leaf claims td-a."""
    leaf = root_b.issue_leaf([ID_A])
    reject(leaf.chain, source, "X5-20", "bundle of td-a.test")


def test_row12_fed_07_bundle_source_answering_with_wrong_bundle_rejected(
    root_b: Authority,
) -> None:
    class Liar:
        def get_x509_bundle_for_trust_domain(self, td: TrustDomain) -> X509Bundle | None:
            return bundle(TD_B, root_b)

    leaf = root_b.issue_leaf([ID_A])
    with pytest.raises(X509SvidError, match="X5-21"):
        verify_chain(leaf.chain, Liar(), now=NOW)


def test_row13_x5_21_trust_domain_without_bundle_rejected(root_a: Authority) -> None:
    leaf = root_a.issue_leaf(["spiffe://td-c.test/w"])
    src = BundleSet(bundle(TD_A, root_a))
    reject(leaf.chain, src, "X5-21", "no X.509 bundle for trust domain td-c.test")


def test_row13_x5_21_empty_bundle_rejected(root_a: Authority) -> None:
    leaf = root_a.issue_leaf([ID_A])
    reject(leaf.chain, BundleSet(X509Bundle(TD_A, ())), "X5-21", "no authorities")


def test_row14_intermediate_without_ca_flag_rejected(root_a: Authority, source: BundleSet) -> None:
    bc = x509.BasicConstraints(ca=False, path_length=None)
    inter = root_a.issue_ca("spiffe://td-a.test", replace={x509.BasicConstraints: (bc, True)})
    reject(inter.issue_leaf([ID_A]).chain, source, "X5-20")


def test_row14_intermediate_without_key_cert_sign_rejected(
    root_a: Authority, source: BundleSet
) -> None:
    ku = key_usage(digital_signature=True, crl_sign=True)
    inter = root_a.issue_ca("spiffe://td-a.test", replace={x509.KeyUsage: (ku, True)})
    reject(inter.issue_leaf([ID_A]).chain, source, "X5-20", "keyCertSign")


def test_row15_path_len_exceeded_rejected(root_a: Authority, source: BundleSet) -> None:
    top = root_a.issue_ca("spiffe://td-a.test", cn="top", path_len=0)
    below = top.issue_ca("spiffe://td-a.test", cn="below")
    leaf = below.issue_leaf([ID_A])
    reject(leaf.chain, source, "X5-20", "path length")


def test_row15_path_len_respected_accepted(root_a: Authority, source: BundleSet) -> None:
    top = root_a.issue_ca("spiffe://td-a.test", cn="top", path_len=1)
    below = top.issue_ca("spiffe://td-a.test", cn="below")
    leaf = below.issue_leaf([ID_A])
    assert len(verify_chain(leaf.chain, source, now=NOW)[1][0]) == 4


def test_row16_self_signed_leaf_not_in_bundle_rejected(
    root_a: Authority, source: BundleSet
) -> None:
    key = new_key()
    exts = leaf_extensions(key, Authority(root_a.cert, key), [ID_A])  # AKI of its own key
    cert = build_cert(subject_key=key, issuer=None, subject=name("self"), extensions=exts.values())
    reject([cert], source, "X5-20")


def test_row17_bad_signature_on_leaf_rejected(root_a: Authority, source: BundleSet) -> None:
    leaf = root_a.issue_leaf([ID_A])
    der = bytearray(leaf.cert.public_bytes(Encoding.DER))
    der[-3] ^= 0x01  # inside the signature value
    tampered = x509.load_der_x509_certificate(bytes(der))
    reject([tampered], source, "X5-20")


def test_row17_leaf_signed_by_other_key_with_same_issuer_name_rejected(
    root_a: Authority, source: BundleSet
) -> None:
    impostor = Authority(root_a.cert, make_root("spiffe://td-a.test").key)
    leaf = impostor.issue_leaf([ID_A])
    reject(leaf.chain, source, "X5-20")


def test_row18_x5_14_uri_name_constraint_violation_rejected(
    root_a: Authority, source: BundleSet
) -> None:
    nc = x509.NameConstraints(permitted_subtrees=[URI("td-other.test")], excluded_subtrees=None)
    inter = root_a.issue_ca("spiffe://td-a.test", extra=[(nc, True)])
    reject(inter.issue_leaf([ID_A]).chain, source, "X5-20")


def test_row18_x5_14_dns_name_constraint_violation_rejected(
    root_a: Authority, source: BundleSet
) -> None:
    nc = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("td-other.test")], excluded_subtrees=None
    )
    inter = root_a.issue_ca("spiffe://td-a.test", extra=[(nc, True)])
    leaf = inter.issue_leaf([ID_A], dns=["web.td-a.test"])
    reject(leaf.chain, source, "X5-20", "name constraint")


def test_row19_leaf_with_unknown_critical_extension_rejected(
    root_a: Authority, source: BundleSet
) -> None:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    leaf = root_a.issue_leaf([ID_A], extra=[(unknown, True)])
    reject(leaf.chain, source, "X5-20", "1.3.6.1.4.1.99999.1")


def test_row19_unknown_non_critical_extension_accepted(
    root_a: Authority, source: BundleSet
) -> None:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    leaf = root_a.issue_leaf([ID_A], extra=[(unknown, False)])
    assert verify_chain(leaf.chain, source, now=NOW)[0] == SpiffeId.parse(ID_A)


# --- leaf rules beyond the table (X5-03, X5-08, X5-28/AMB-20) --------------------------------


def test_x5_28_amb_20_leaf_without_digital_signature_rejected(
    root_a: Authority, source: BundleSet
) -> None:
    ku = key_usage(key_encipherment=True)
    leaf = root_a.issue_leaf([ID_A], replace={x509.KeyUsage: (ku, True)})
    reject(leaf.chain, source, "X5-28", "digitalSignature")


def test_x5_28_leaf_without_key_usage_rejected(root_a: Authority, source: BundleSet) -> None:
    leaf = root_a.issue_leaf([ID_A], replace={x509.KeyUsage: None})
    reject(leaf.chain, source, "X5-28", "no keyUsage")


def test_x5_08_leaf_eku_without_client_auth_rejected(root_a: Authority, source: BundleSet) -> None:
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    leaf = root_a.issue_leaf([ID_A], replace={x509.ExtendedKeyUsage: (eku, False)})
    reject(leaf.chain, source, "X5-08", "clientAuth")


def test_x5_03_empty_subject_with_non_critical_san_rejected(
    root_a: Authority, source: BundleSet
) -> None:
    leaf = root_a.issue_leaf([ID_A], subject=x509.Name([]))
    reject(leaf.chain, source, "X5-03")


def test_x5_03_empty_subject_with_critical_san_accepted(
    root_a: Authority, source: BundleSet
) -> None:
    leaf = root_a.issue_leaf(
        [ID_A],
        subject=x509.Name([]),
        replace={x509.SubjectAlternativeName: san(URI(ID_A), critical=True)},
    )
    assert verify_chain(leaf.chain, source, now=NOW)[0] == SpiffeId.parse(ID_A)


def test_x5_20_empty_chain_rejected(source: BundleSet) -> None:
    reject([], source, "no certificates")


def test_x5_20_errors_name_the_certificate(root_b: Authority, source: BundleSet) -> None:
    leaf = root_b.issue_leaf([ID_A])
    message = reject(leaf.chain, source)
    assert ID_A in message
    assert f"{leaf.cert.serial_number:#x}" in message


def test_x5_14_uri_name_constrained_ca_is_not_supported_even_when_leaf_conforms(
    root_a: Authority, source: BundleSet
) -> None:
    """cryptography's validator refuses URI name constraints outright (X5-14 is a MAY).

    The error says so; if a later cryptography supports them, this test shows it.
    """
    nc = x509.NameConstraints(permitted_subtrees=[URI("td-a.test")], excluded_subtrees=None)
    inter = root_a.issue_ca("spiffe://td-a.test", extra=[(nc, True)])
    reject(inter.issue_leaf([ID_A]).chain, source, "X5-20", "X5-14")


def test_x5_20_naive_now_refused(root_a: Authority, source: BundleSet) -> None:
    leaf = root_a.issue_leaf([ID_A])
    with pytest.raises(X509SvidError, match="timezone-aware"):
        verify_chain(leaf.chain, source, now=NOW.replace(tzinfo=None))
