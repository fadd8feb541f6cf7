"""bundle.v1.Bundle: own bundle, federated bundles, validation, delete modes, paging."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from spiffed._proto.spire.api.server.bundle.v1 import bundle_pb2 as B
from spiffed._proto.spire.api.server.entry.v1 import entry_pb2 as E
from spiffed._proto.spire.api.types import bundle_pb2

from .conftest import Api
from .helpers import entry

OK = Status.OK.value


def ca_der(cn: str = "fed") -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def jwt_key(kid: str) -> bundle_pb2.JWTKey:
    pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return bundle_pb2.JWTKey(public_key=der, key_id=kid, expires_at=2_000_000_000)


def fed(td: str = "fed.org", *, asn1: bytes | None = None) -> bundle_pb2.Bundle:
    return bundle_pb2.Bundle(
        trust_domain=td,
        x509_authorities=[bundle_pb2.X509Certificate(asn1=asn1 or ca_der())],
        jwt_authorities=[jwt_key("k1")],
        refresh_hint=60,
    )


async def stored_tds(api: Api) -> list[str]:
    return [b.trust_domain for b in (await api.ds.list_bundles()).items]


async def test_get_bundle_has_the_ca_roots_and_jwt_keys(api: Api) -> None:
    b = await api.bundle.GetBundle(B.GetBundleRequest())
    assert b.trust_domain == "example.org"
    roots = [x509.load_der_x509_certificate(a.asn1) for a in b.x509_authorities]
    assert api.ctx.ca.current_x509.certificate in roots
    assert api.ctx.ca.jwt_signing_key()[0] in {k.key_id for k in b.jwt_authorities}
    masked = await api.bundle.GetBundle(
        B.GetBundleRequest(output_mask=bundle_pb2.BundleMask(jwt_authorities=True))
    )
    assert masked.trust_domain == "example.org" and not masked.x509_authorities
    assert list(masked.jwt_authorities) == list(b.jwt_authorities)


async def test_append_bundle(api: Api) -> None:
    before = await api.bundle.GetBundle(B.GetBundleRequest())
    extra = ca_der("extra")
    after = await api.bundle.AppendBundle(
        B.AppendBundleRequest(
            x509_authorities=[bundle_pb2.X509Certificate(asn1=extra)],
            jwt_authorities=[jwt_key("extra-kid")],
        )
    )
    assert len(after.x509_authorities) == len(before.x509_authorities) + 1
    assert after.sequence_number == before.sequence_number + 1
    assert await api.bundle.GetBundle(B.GetBundleRequest()) == after
    with pytest.raises(GRPCError) as err:
        await api.bundle.AppendBundle(
            B.AppendBundleRequest(x509_authorities=[bundle_pb2.X509Certificate(asn1=b"junk")])
        )
    assert err.value.status is Status.INVALID_ARGUMENT
    assert await api.bundle.GetBundle(B.GetBundleRequest()) == after


async def test_federated_bundle_lifecycle(api: Api) -> None:
    resp = await api.bundle.BatchCreateFederatedBundle(
        B.BatchCreateFederatedBundleRequest(bundle=[fed(), fed("other.org")])
    )
    assert [r.status.code for r in resp.results] == [OK, OK]
    got = await api.bundle.GetFederatedBundle(B.GetFederatedBundleRequest(trust_domain="fed.org"))
    assert got == resp.results[0].bundle
    assert (await api.bundle.CountBundles(B.CountBundlesRequest())).count == 3
    listed = await api.bundle.ListFederatedBundles(B.ListFederatedBundlesRequest())
    assert [b.trust_domain for b in listed.bundles] == ["fed.org", "other.org"]

    dup = await api.bundle.BatchCreateFederatedBundle(
        B.BatchCreateFederatedBundleRequest(bundle=[fed()])
    )
    assert dup.results[0].status.code == Status.ALREADY_EXISTS.value
    assert (
        await api.bundle.GetFederatedBundle(B.GetFederatedBundleRequest(trust_domain="fed.org"))
        == got
    )

    upd = await api.bundle.BatchUpdateFederatedBundle(
        B.BatchUpdateFederatedBundleRequest(
            bundle=[bundle_pb2.Bundle(trust_domain="fed.org", refresh_hint=300)],
            input_mask=bundle_pb2.BundleMask(refresh_hint=True),
        )
    )
    assert upd.results[0].status.code == OK
    assert upd.results[0].bundle.refresh_hint == 300
    assert list(upd.results[0].bundle.x509_authorities) == list(got.x509_authorities)
    missing = await api.bundle.BatchUpdateFederatedBundle(
        B.BatchUpdateFederatedBundleRequest(bundle=[fed("nobody.org")])
    )
    assert missing.results[0].status.code == Status.NOT_FOUND.value

    set_resp = await api.bundle.BatchSetFederatedBundle(
        B.BatchSetFederatedBundleRequest(bundle=[fed("third.org")])
    )
    assert set_resp.results[0].status.code == OK
    assert "third.org" in await stored_tds(api)


@pytest.mark.parametrize(
    "bad",
    [
        fed("Not A Domain"),
        fed("example.org"),
        fed(asn1=b"not a certificate"),
        bundle_pb2.Bundle(
            trust_domain="fed.org", jwt_authorities=[bundle_pb2.JWTKey(key_id="k", public_key=b"x")]
        ),
        bundle_pb2.Bundle(trust_domain="fed.org", jwt_authorities=[jwt_key("")]),
    ],
)
async def test_bad_federated_bundles_are_refused_and_nothing_is_written(
    api: Api, bad: bundle_pb2.Bundle
) -> None:
    before = await stored_tds(api)
    for call, req in (
        (api.bundle.BatchCreateFederatedBundle, B.BatchCreateFederatedBundleRequest(bundle=[bad])),
        (api.bundle.BatchSetFederatedBundle, B.BatchSetFederatedBundleRequest(bundle=[bad])),
    ):
        resp = await call(req)  # type: ignore[operator]
        assert resp.results[0].status.code == Status.INVALID_ARGUMENT.value
    assert await stored_tds(api) == before


async def test_get_federated_bundle_errors(api: Api) -> None:
    for td, status in (
        ("bad domain", Status.INVALID_ARGUMENT),
        ("example.org", Status.INVALID_ARGUMENT),
        ("unknown.org", Status.NOT_FOUND),
    ):
        with pytest.raises(GRPCError) as err:
            await api.bundle.GetFederatedBundle(B.GetFederatedBundleRequest(trust_domain=td))
        assert err.value.status is status, td


async def test_delete_modes(api: Api) -> None:
    await api.bundle.BatchCreateFederatedBundle(
        B.BatchCreateFederatedBundleRequest(bundle=[fed("a.org"), fed("b.org"), fed("c.org")])
    )
    created = await api.entry.BatchCreateEntry(
        E.BatchCreateEntryRequest(
            entries=[
                entry("/x", federates_with=["a.org", "b.org"]),
                entry("/y", federates_with=["c.org"]),
            ]
        )
    )
    x_id = created.results[0].entry.id
    Req = B.BatchDeleteFederatedBundleRequest
    restrict = await api.bundle.BatchDeleteFederatedBundle(Req(trust_domains=["a.org"]))
    assert restrict.results[0].status.code == Status.FAILED_PRECONDITION.value
    assert "a.org" in await stored_tds(api)

    dissociate = await api.bundle.BatchDeleteFederatedBundle(
        Req(trust_domains=["a.org"], mode=Req.DISSOCIATE)
    )
    assert dissociate.results[0].status.code == OK
    assert (await api.ds.get_entry(x_id)).federates_with == ("b.org",)

    delete = await api.bundle.BatchDeleteFederatedBundle(
        Req(trust_domains=["c.org", "example.org", "gone.org", "bad domain"], mode=Req.DELETE)
    )
    assert [r.status.code for r in delete.results] == [
        OK,
        Status.INVALID_ARGUMENT.value,
        Status.NOT_FOUND.value,
        Status.INVALID_ARGUMENT.value,
    ]
    assert await api.ds.count_entries() == 1
    assert (await api.ds.get_entry(x_id)).spiffe_id.endswith("/x")
    assert "example.org" in await stored_tds(api)


async def test_list_federated_bundles_pages_and_bad_token(api: Api) -> None:
    await api.bundle.BatchCreateFederatedBundle(
        B.BatchCreateFederatedBundleRequest(bundle=[fed(f"f{i}.org") for i in range(3)])
    )
    names: list[str] = []
    token = ""
    while True:
        resp = await api.bundle.ListFederatedBundles(
            B.ListFederatedBundlesRequest(page_size=2, page_token=token)
        )
        names += [b.trust_domain for b in resp.bundles]
        token = resp.next_page_token
        if not token:
            break
    assert names == ["f0.org", "f1.org", "f2.org"]
    with pytest.raises(GRPCError) as err:
        await api.bundle.ListFederatedBundles(B.ListFederatedBundlesRequest(page_token="%%"))
    assert err.value.status is Status.INVALID_ARGUMENT


async def test_publish_rpcs_are_unimplemented(api: Api) -> None:
    with pytest.raises(GRPCError) as err:
        await api.bundle.PublishJWTAuthority(B.PublishJWTAuthorityRequest())
    assert err.value.status is Status.UNIMPLEMENTED
    with pytest.raises(GRPCError) as err:
        await api.bundle.PublishWITAuthority(B.PublishWITAuthorityRequest())
    assert err.value.status is Status.UNIMPLEMENTED
    assert err.value.message == "WIT-SVID functionality is not yet implemented"
