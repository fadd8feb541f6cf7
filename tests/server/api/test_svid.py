"""svid.v1.SVID: MintX509SVID (checked with openssl against GetBundle) and MintJWTSVID."""

from __future__ import annotations

import datetime as dt
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from spiffed._proto.spire.api.server.bundle.v1 import bundle_pb2 as B
from spiffed._proto.spire.api.server.svid.v1 import svid_pb2 as S
from spiffed.bundle.jwt import JwtBundle
from spiffed.spiffeid import TrustDomain
from spiffed.svid.jwt import JwtSvid

from .conftest import Api
from .helpers import sid

KEY = ec.generate_private_key(ec.SECP256R1())


def csr(*uris: str, dns: tuple[str, ...] = ()) -> bytes:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US")])
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _foreign_root() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "foreign")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


async def test_mint_x509_svid_verifies_with_openssl_against_get_bundle(
    api: Api, tmp_path: Path
) -> None:
    resp = await api.svid.MintX509SVID(
        S.MintX509SVIDRequest(csr=csr("spiffe://example.org/web", dns=("web.local",)), ttl=120)
    )
    svid = resp.svid
    assert svid.id.trust_domain == "example.org" and svid.id.path == "/web"
    leaf = x509.load_der_x509_certificate(svid.cert_chain[0])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org/web"]
    assert san.get_values_for_type(x509.DNSName) == ["web.local"]
    assert svid.expires_at == int(leaf.not_valid_after_utc.timestamp())
    # The requested TTL, plus SPIRE's 10 s back-dating of not-before (no wall clock involved).
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(seconds=130)
    bundle = await api.bundle.GetBundle(B.GetBundleRequest())
    (tmp_path / "roots.pem").write_bytes(b"".join(pem(a.asn1) for a in bundle.x509_authorities))
    (tmp_path / "leaf.pem").write_bytes(pem(svid.cert_chain[0]))
    (tmp_path / "chain.pem").write_bytes(b"".join(pem(c) for c in svid.cert_chain[1:]))
    cmd = ["openssl", "verify", "-CAfile", str(tmp_path / "roots.pem")]
    if len(svid.cert_chain) > 1:
        cmd += ["-untrusted", str(tmp_path / "chain.pem")]
    leaf_pem = str(tmp_path / "leaf.pem")
    out = subprocess.run([*cmd, leaf_pem], check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith(": OK")
    # Control: the same leaf does not verify against another trust domain's root.
    (tmp_path / "roots.pem").write_bytes(pem(_foreign_root()))
    out = subprocess.run([*cmd, leaf_pem], check=False, capture_output=True, text=True)
    assert out.returncode != 0


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "missing CSR"),
        (b"\x30\x03junk", "malformed CSR"),
        (csr(), "CSR URI SAN is required"),
        (csr("spiffe://example.org/a", "spiffe://example.org/b"), "only one URI SAN is expected"),
        (csr("spiffe://example.org/spire/agent/x"), "reserved namespace"),
        (csr("spiffe://example.org/w", dns=("bad_label.x",)), "CSR DNS name is invalid"),
        (csr("spiffe://example.org/w", dns=("*.x.org", "a.x.org")), "wildcard that covers"),
        (csr("spiffe://other.org/web"), 'is not a member of trust domain "example.org"'),
        (csr("https://example.org/web"), "CSR URI SAN is invalid"),
        (csr("spiffe://example.org"), "CSR URI SAN is invalid"),
    ],
)
async def test_mint_x509_svid_refuses_bad_csrs(api: Api, data: bytes, fragment: str) -> None:
    with pytest.raises(GRPCError) as err:
        await api.svid.MintX509SVID(S.MintX509SVIDRequest(csr=data))
    assert err.value.status is Status.INVALID_ARGUMENT
    assert fragment in (err.value.message or "")


async def test_mint_x509_svid_refuses_a_csr_with_a_broken_signature(api: Api) -> None:
    good = bytearray(csr("spiffe://example.org/web"))
    good[-3] ^= 0xFF  # inside the signature value
    with pytest.raises(GRPCError) as err:
        await api.svid.MintX509SVID(S.MintX509SVIDRequest(csr=bytes(good)))
    assert err.value.status is Status.INVALID_ARGUMENT
    assert err.value.message == "failed to verify CSR signature"


async def test_mint_x509_svid_negative_ttl(api: Api) -> None:
    with pytest.raises(GRPCError) as err:
        await api.svid.MintX509SVID(
            S.MintX509SVIDRequest(csr=csr("spiffe://example.org/web"), ttl=-1)
        )
    assert err.value.status is Status.INVALID_ARGUMENT


async def test_mint_jwt_svid_validates_against_get_bundle(api: Api) -> None:
    resp = await api.svid.MintJWTSVID(
        S.MintJWTSVIDRequest(id=sid("example.org", "/web"), audience=["a", "b"], ttl=90)
    )
    bundle = await api.bundle.GetBundle(B.GetBundleRequest())
    keys = {
        k.key_id: serialization.load_der_public_key(k.public_key) for k in bundle.jwt_authorities
    }
    jwt_bundle = JwtBundle(TrustDomain("example.org"), keys)  # type: ignore[arg-type]
    svid = JwtSvid.parse_and_validate(resp.svid.token, jwt_bundle, "a")
    assert str(svid.spiffe_id) == "spiffe://example.org/web"
    assert set(svid.audience) == {"a", "b"}
    assert resp.svid.expires_at - resp.svid.issued_at == 90


@pytest.mark.parametrize(
    "req",
    [
        S.MintJWTSVIDRequest(audience=["a"]),
        S.MintJWTSVIDRequest(id=sid("other.org", "/web"), audience=["a"]),
        S.MintJWTSVIDRequest(id=sid("example.org", "web"), audience=["a"]),
        S.MintJWTSVIDRequest(id=sid("example.org", "/web")),
        S.MintJWTSVIDRequest(id=sid("example.org", "/web"), audience=["a"], ttl=-3),
    ],
)
async def test_mint_jwt_svid_bad_input(api: Api, req: S.MintJWTSVIDRequest) -> None:
    with pytest.raises(GRPCError) as err:
        await api.svid.MintJWTSVID(req)
    assert err.value.status is Status.INVALID_ARGUMENT


async def test_downstream_and_wit_rpcs_are_unimplemented(api: Api) -> None:
    for call, req in (
        (api.svid.NewDownstreamX509CA, S.NewDownstreamX509CARequest()),
        (api.svid.MintWITSVID, S.MintWITSVIDRequest()),
    ):
        with pytest.raises(GRPCError) as err:
            await call(req)  # type: ignore[operator]
        assert err.value.status is Status.UNIMPLEMENTED
        if "WIT" in type(req).__name__:
            assert err.value.message == "WIT-SVID functionality is not yet implemented"
