"""X509Svid: the Workload API form (WA-23/24), PEM, and the checks made while parsing."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from spiffed.spiffeid import SpiffeId
from spiffed.svid.x509 import X509Svid, X509SvidError

from .conftest import Authority, Leaf, key_usage

ID_A = "spiffe://td-a.test/workload"
DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM


def chain_der(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(DER) for c in certs)


def pkcs8(key: object, encoding: serialization.Encoding = DER) -> bytes:
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return key.private_bytes(
        encoding, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def leaf(inter_a: Authority) -> Leaf:
    return inter_a.issue_leaf([ID_A], dns=["web.td-a.test"])


def test_wa_23_wa_24_parse_der_round_trip(leaf: Leaf) -> None:
    svid = X509Svid.parse_der(chain_der(leaf.chain), pkcs8(leaf.key))
    assert svid.spiffe_id == SpiffeId.parse(ID_A)
    assert svid.cert_chain == tuple(leaf.chain)
    assert svid.leaf == leaf.cert
    assert svid.expires_at == leaf.cert.not_valid_after_utc
    assert svid.marshal_der() == (chain_der(leaf.chain), pkcs8(leaf.key))
    assert X509Svid.parse_der(*svid.marshal_der()).marshal_der() == svid.marshal_der()


def test_parse_pem_round_trip(leaf: Leaf) -> None:
    pem_chain = b"".join(c.public_bytes(PEM) for c in leaf.chain)
    svid = X509Svid.parse_pem(pem_chain, pkcs8(leaf.key, PEM))
    assert svid.cert_chain == tuple(leaf.chain)
    assert svid.marshal_pem() == (pem_chain, pkcs8(leaf.key, PEM))
    assert X509Svid.parse_pem(*svid.marshal_pem()).marshal_pem() == svid.marshal_pem()


def test_parse_rsa_key(root_a: Authority) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = root_a.issue_leaf([ID_A], key=key)
    svid = X509Svid.parse_der(chain_der(leaf.chain), pkcs8(key))
    assert isinstance(svid.private_key, rsa.RSAPrivateKey)


def test_wa_23_pem_chain_where_der_expected_rejected(leaf: Leaf) -> None:
    pem_chain = b"".join(c.public_bytes(PEM) for c in leaf.chain)
    with pytest.raises(X509SvidError, match=r"WA-23.*PEM"):
        X509Svid.parse_der(pem_chain, pkcs8(leaf.key))


def test_wa_24_pem_key_where_der_expected_rejected(leaf: Leaf) -> None:
    with pytest.raises(X509SvidError, match=r"WA-24.*PEM"):
        X509Svid.parse_der(chain_der(leaf.chain), pkcs8(leaf.key, PEM))


def test_wa_24_encrypted_key_rejected(leaf: Leaf) -> None:
    assert isinstance(leaf.key, ec.EllipticCurvePrivateKey)
    encrypted = leaf.key.private_bytes(
        DER, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    with pytest.raises(X509SvidError, match=r"WA-24.*encrypted"):
        X509Svid.parse_der(chain_der(leaf.chain), encrypted)


def test_wa_24_encrypted_pem_key_rejected(leaf: Leaf) -> None:
    assert isinstance(leaf.key, ec.EllipticCurvePrivateKey)
    encrypted = leaf.key.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    pem_chain = b"".join(c.public_bytes(PEM) for c in leaf.chain)
    with pytest.raises(X509SvidError, match="unencrypted"):
        X509Svid.parse_pem(pem_chain, encrypted)


def test_wa_24_sec1_key_rejected(leaf: Leaf) -> None:
    assert isinstance(leaf.key, ec.EllipticCurvePrivateKey)
    sec1 = leaf.key.private_bytes(
        DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    with pytest.raises(X509SvidError, match=r"WA-24.*PKCS#8"):
        X509Svid.parse_der(chain_der(leaf.chain), sec1)


def test_wa_24_pkcs1_rsa_key_rejected(root_a: Authority) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = root_a.issue_leaf([ID_A], key=key)
    pkcs1 = key.private_bytes(
        DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    with pytest.raises(X509SvidError, match=r"WA-24.*PKCS#8"):
        X509Svid.parse_der(chain_der(leaf.chain), pkcs1)


def test_unsupported_key_type_rejected(leaf: Leaf) -> None:
    ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(X509SvidError, match="Ed25519"):
        X509Svid.parse_der(chain_der(leaf.chain), ed)


def test_wa_consistency_key_not_matching_leaf_rejected(leaf: Leaf, root_a: Authority) -> None:
    other = root_a.issue_leaf([ID_A])
    with pytest.raises(X509SvidError, match="does not match the public key of leaf"):
        X509Svid.parse_der(chain_der(leaf.chain), pkcs8(other.key))


def test_wa_23_leaf_not_first_rejected(leaf: Leaf) -> None:
    reordered = [*leaf.chain[1:], leaf.chain[0]]
    with pytest.raises(X509SvidError, match=r"WA-23.*leaf must come first"):
        X509Svid.parse_der(chain_der(reordered), pkcs8(leaf.key))


def test_wa_23_empty_chain_rejected(leaf: Leaf) -> None:
    with pytest.raises(X509SvidError, match="empty"):
        X509Svid.parse_der(b"", pkcs8(leaf.key))


def test_wa_23_truncated_chain_rejected(leaf: Leaf) -> None:
    with pytest.raises(X509SvidError, match="WA-23"):
        X509Svid.parse_der(chain_der(leaf.chain)[:-5], pkcs8(leaf.key))


def test_x5_10_intermediate_not_ca_rejected(leaf: Leaf, root_a: Authority) -> None:
    not_ca = root_a.issue_leaf(["spiffe://td-a.test/other"])
    with pytest.raises(X509SvidError, match=r"X5-10.*not a CA"):
        X509Svid.parse_der(chain_der([leaf.cert, not_ca.cert]), pkcs8(leaf.key))


def test_x5_10_intermediate_without_key_cert_sign_rejected(root_a: Authority) -> None:
    ku = key_usage(crl_sign=True)
    inter = root_a.issue_ca("spiffe://td-a.test", replace={x509.KeyUsage: (ku, True)})
    leaf = inter.issue_leaf([ID_A])
    with pytest.raises(X509SvidError, match=r"X5-10.*keyCertSign"):
        X509Svid.parse_der(chain_der(leaf.chain), pkcs8(leaf.key))


@pytest.mark.parametrize(
    ("uris", "replace", "rule"),
    [
        ([], {}, "X5-27"),
        (["spiffe://td-a.test/a", "spiffe://td-a.test/b"], {}, "X5-26"),
        (["https://td-a.test/a"], {}, "X5-24"),
        (["spiffe://td-a.test"], {}, "X5-25"),
        (["spiffe://td-a.test/a%20b"], {}, "X5-27"),
        (
            [ID_A],
            {x509.KeyUsage: (key_usage(digital_signature=True, crl_sign=True), True)},
            "X5-23",
        ),
        ([ID_A], {x509.KeyUsage: (key_usage(key_agreement=True), True)}, "X5-28"),
    ],
)
def test_x5_22_to_x5_28_leaf_rules_apply_when_parsing(
    uris: list[str], replace: dict[type[x509.ExtensionType], object], rule: str, root_a: Authority
) -> None:
    leaf = root_a.issue_leaf(uris, dns=["x.test"], replace=replace)  # type: ignore[arg-type]
    with pytest.raises(X509SvidError, match=rule):
        X509Svid.parse_der(chain_der(leaf.chain), pkcs8(leaf.key))


def test_x5_22_leaf_with_ca_true_rejected_when_parsing(root_a: Authority) -> None:
    bc = x509.BasicConstraints(ca=True, path_length=None)
    leaf = root_a.issue_leaf([ID_A], replace={x509.BasicConstraints: (bc, True)})
    with pytest.raises(X509SvidError, match=r"WA-23|X5-22"):
        X509Svid.parse_der(chain_der(leaf.chain), pkcs8(leaf.key))


def test_constructor_checks_id_matches_leaf(leaf: Leaf) -> None:
    with pytest.raises(X509SvidError, match="does not match the leaf's URI SAN"):
        X509Svid(SpiffeId.parse("spiffe://td-a.test/other"), tuple(leaf.chain), leaf.key)


def test_x509_svid_is_frozen(leaf: Leaf) -> None:
    svid = X509Svid.from_certificates(leaf.chain, leaf.key)
    with pytest.raises(AttributeError):
        svid.spiffe_id = SpiffeId.parse("spiffe://td-a.test/x")  # type: ignore[misc]


@given(chain=st.binary(max_size=300), key=st.binary(max_size=200))
def test_wa_23_random_bytes_raise_only_x509_svid_error(chain: bytes, key: bytes) -> None:
    with pytest.raises(X509SvidError):
        X509Svid.parse_der(chain, key)


@given(data=st.binary(max_size=200))
def test_wa_24_random_key_bytes_with_valid_chain_raise_only_x509_svid_error(
    data: bytes, leaf: Leaf
) -> None:
    with pytest.raises(X509SvidError):
        X509Svid.parse_der(chain_der(leaf.chain), data)


@given(prefix=st.binary(min_size=1, max_size=50))
def test_wa_23_garbage_in_chain_raises_only_x509_svid_error(prefix: bytes, leaf: Leaf) -> None:
    with pytest.raises(X509SvidError):
        X509Svid.parse_der(prefix + chain_der(leaf.chain), pkcs8(leaf.key))


@given(chain=st.binary(max_size=300), key=st.binary(max_size=200))
def test_random_pem_input_raises_only_x509_svid_error(chain: bytes, key: bytes) -> None:
    with pytest.raises(X509SvidError):
        X509Svid.parse_pem(b"-----BEGIN CERTIFICATE-----\n" + chain, key)
