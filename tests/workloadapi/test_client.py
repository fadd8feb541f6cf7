"""WorkloadApiClient against the in-process Workload API on a real Unix socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from grpclib.const import Status

from spiffed._proto.workload import workload_pb2 as pb
from spiffed.spiffeid import SpiffeId
from spiffed.svid.jwt import JwtSvid
from spiffed.svid.x509 import X509Svid
from spiffed.workloadapi import WorkloadApiClient, WorkloadApiError
from spiffed.workloadapi.client import InvalidResponseError, parse_x509_context
from tests.agent.endpoints.support import (
    DEADLINE,
    FED,
    MY_UID,
    NOBODY_UID,
    TD,
    Agent,
    Authority,
    entry,
    running_agent,
)


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    async with running_agent(tmp_path / "agent.sock") as a:
        yield a


def token_exp(token: str) -> float:
    return JwtSvid.parse_insecure(token).expiry.timestamp()


def client_for(agent: Agent, **kwargs: object) -> WorkloadApiClient:
    return WorkloadApiClient(f"unix://{agent.socket_path}", **kwargs)  # type: ignore[arg-type]


async def test_we_05_fetch_x509_context_parses_svids_keys_and_bundles(agent: Agent) -> None:
    svids = agent.add(
        entry("a", "/db", MY_UID, hint="db"),
        entry("b", "/web", MY_UID, federates_with=[FED]),
        entry("c", "/theirs", NOBODY_UID),
    )
    agent.set_federation(agent.fed.bundle())
    async with client_for(agent) as client:
        ctx = await client.fetch_x509_context()
    assert [str(s.spiffe_id) for s in ctx.svids] == [
        "spiffe://example.org/db",
        "spiffe://example.org/web",
    ]
    assert ctx.hints == ("db", "")
    assert ctx.default_svid.leaf == svids["a"].leaf
    assert ctx.svids[1].private_key.public_key() == svids["b"].leaf.public_key()
    assert ctx.bundle_for(ctx.default_svid).authorities == (agent.ca.ca_cert,)
    assert ctx.get_x509_bundle_for_trust_domain(FED).authorities == (agent.fed.ca_cert,)
    assert set(ctx.federated_bundles()) == {FED}


async def test_we_09_address_from_spiffe_endpoint_socket(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent.add(entry("a", "/db", MY_UID))
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", f"unix://{agent.socket_path}")
    async with WorkloadApiClient() as client:
        ctx = await client.fetch_x509_context()
    assert str(ctx.default_svid.spiffe_id) == "spiffe://example.org/db"


async def test_watch_x509_context_yields_rotations(agent: Agent) -> None:
    e = entry("a", "/db", MY_UID)
    first = agent.add(e)["a"]
    async with client_for(agent) as client:
        updates = client.watch_x509_context()
        try:
            async with asyncio.timeout(DEADLINE):
                ctx = await anext(updates)
                assert ctx.default_svid.leaf == first.leaf
                rotated = agent.rotate(e)
                ctx = await anext(updates)
                assert ctx.default_svid.leaf == rotated.leaf
                agent.remove("a")
                with pytest.raises(WorkloadApiError) as err:
                    await anext(updates)
        finally:
            await updates.aclose()
    assert err.value.status is Status.PERMISSION_DENIED


async def test_x509_bundles_fetch_and_watch(agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID, federates_with=[FED]))
    async with client_for(agent) as client:
        bundles = await client.fetch_x509_bundles()
        assert set(bundles.bundles) == {TD}
        assert bundles.get_x509_bundle_for_trust_domain(TD).authorities == (agent.ca.ca_cert,)
        updates = client.watch_x509_bundles()
        try:
            async with asyncio.timeout(DEADLINE):
                assert set((await anext(updates)).bundles) == {TD}
                agent.set_federation(agent.fed.bundle())
                assert set((await anext(updates)).bundles) == {TD, FED}
        finally:
            await updates.aclose()


async def test_jwt_svid_fetch_with_audiences_and_spiffe_id(agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID, hint="db"), entry("b", "/web", MY_UID))
    async with client_for(agent) as client:
        svid = await client.fetch_jwt_svid("aud1", "aud2")
        assert str(svid.spiffe_id) == "spiffe://example.org/db"
        assert svid.audience == ("aud1", "aud2")
        all_svids = await client.fetch_jwt_svids("aud1")
        assert [(str(h.svid.spiffe_id), h.hint) for h in all_svids] == [
            ("spiffe://example.org/db", "db"),
            ("spiffe://example.org/web", ""),
        ]
        web = await client.fetch_jwt_svid("x", spiffe_id=SpiffeId.parse("spiffe://example.org/web"))
        assert str(web.spiffe_id) == "spiffe://example.org/web"
        with pytest.raises(WorkloadApiError) as err:
            await client.fetch_jwt_svid("x", spiffe_id="spiffe://example.org/not-mine")
        assert err.value.status is Status.PERMISSION_DENIED


async def test_jwt_bundles_fetch_and_watch(agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID, federates_with=[FED]))
    async with client_for(agent) as client:
        bundles = await client.fetch_jwt_bundles()
        own = bundles.get_jwt_bundle_for_trust_domain(TD)
        assert own is not None and set(own.authorities) == {agent.ca.jwt_kid}
        updates = client.watch_jwt_bundles()
        try:
            async with asyncio.timeout(DEADLINE):
                assert set((await anext(updates)).bundles) == {TD}
                agent.set_federation(agent.fed.bundle())
                assert set((await anext(updates)).bundles) == {TD, FED}
        finally:
            await updates.aclose()


async def test_validate_jwt_svid_valid_and_invalid(agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID))
    async with client_for(agent) as client:
        token = (await client.fetch_jwt_svid("svc")).marshal()
        result = await client.validate_jwt_svid(token, "svc")
        assert str(result.spiffe_id) == "spiffe://example.org/db"
        assert result.claims["aud"] == ["svc"]
        assert result.claims["exp"] == int(token_exp(token))
        assert isinstance(result.claims["exp"], int)
        with pytest.raises(WorkloadApiError) as err:
            await client.validate_jwt_svid(token, "other-audience")
        assert err.value.status is Status.INVALID_ARGUMENT
        # Signed by a key the agent does not trust: an attacker's forged token.
        forged = Authority(TD).jwt(SpiffeId.parse("spiffe://example.org/db"), ["svc"])
        with pytest.raises(WorkloadApiError) as err:
            await client.validate_jwt_svid(forged, "svc")
        assert err.value.status is Status.INVALID_ARGUMENT
        assert "invalid JWT-SVID" in err.value.message


async def test_no_identity_is_permission_denied(agent: Agent) -> None:
    agent.add(entry("c", "/theirs", NOBODY_UID))
    async with client_for(agent) as client:
        for call in (
            client.fetch_x509_context(),
            client.fetch_jwt_svid("aud"),
            client.fetch_jwt_bundles(),
        ):
            with pytest.raises(WorkloadApiError) as err:
                await call
            assert err.value.status is Status.PERMISSION_DENIED
            assert err.value.message == "no identity issued"


async def test_not_ready_agent_is_unavailable(tmp_path: Path) -> None:
    async with running_agent(tmp_path / "a.sock", ready=False) as agent:
        async with client_for(agent) as client:
            with pytest.raises(WorkloadApiError) as err:
                await client.fetch_x509_context()
    assert err.value.status is Status.UNAVAILABLE


async def test_missing_socket_is_unavailable(tmp_path: Path) -> None:
    async with WorkloadApiClient(f"unix://{tmp_path}/nothing.sock") as client:
        with pytest.raises(WorkloadApiError) as err:
            await client.fetch_x509_context()
        assert err.value.status is Status.UNAVAILABLE
        assert "nothing.sock" in err.value.message
        with pytest.raises(WorkloadApiError) as err:
            await client.fetch_jwt_svid("aud")
        assert err.value.status is Status.UNAVAILABLE


async def test_fetch_waits_at_most_timeout(agent: Agent) -> None:
    # An entry without an SVID yet: the stream sends nothing until it is signed.
    agent.add(entry("a", "/db", MY_UID), sign=False)
    async with client_for(agent, timeout=0.2) as client:
        with pytest.raises(WorkloadApiError) as err:
            await client.fetch_x509_context()
    assert err.value.status is Status.DEADLINE_EXCEEDED


def test_bad_address_is_invalid_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPIFFE_ENDPOINT_SOCKET", raising=False)
    with pytest.raises(WorkloadApiError) as err:
        WorkloadApiClient()
    assert err.value.status is Status.INVALID_ARGUMENT
    assert "SPIFFE_ENDPOINT_SOCKET" in err.value.message
    with pytest.raises(WorkloadApiError) as err:
        WorkloadApiClient("unix://tmp/relative.sock")
    assert err.value.status is Status.INVALID_ARGUMENT


def test_wa_11_malformed_response_is_invalid_response_error() -> None:
    with pytest.raises(InvalidResponseError, match="no SVIDs") as err:
        parse_x509_context(pb.X509SVIDResponse())
    assert err.value.status is Status.INTERNAL
    ca = Authority(TD)
    svid = ca.svid(SpiffeId.parse("spiffe://example.org/x"))
    chain, key = svid.marshal_der()
    lying = pb.X509SVIDResponse(
        svids=[
            pb.X509SVID(
                spiffe_id="spiffe://example.org/y", x509_svid=chain, x509_svid_key=key, bundle=chain
            )
        ]
    )
    with pytest.raises(InvalidResponseError, match="does not match"):
        parse_x509_context(lying)
    empty_bundle = pb.X509SVIDResponse(
        svids=[
            pb.X509SVID(
                spiffe_id="spiffe://example.org/x", x509_svid=chain, x509_svid_key=key, bundle=b""
            )
        ]
    )
    with pytest.raises(InvalidResponseError, match="no certificates"):
        parse_x509_context(empty_bundle)


def _svid_msg(svid: X509Svid, bundle: bytes, **fields: Any) -> pb.X509SVID:
    chain, key = svid.marshal_der()
    values: dict[str, Any] = {
        "spiffe_id": str(svid.spiffe_id),
        "x509_svid": chain,
        "x509_svid_key": key,
        "bundle": bundle,
    }
    values.update(fields)
    return pb.X509SVID(**values)


def test_7_7_rows_10_11_bad_fields_reject_the_message() -> None:
    ca = Authority(TD)
    svid = ca.svid(SpiffeId.parse("spiffe://example.org/x"))
    other = ca.svid(SpiffeId.parse("spiffe://example.org/x"))
    bundle = ca.ca_cert.public_bytes(serialization.Encoding.DER)
    chain_pem, _ = svid.marshal_pem()
    bad = {
        "empty spiffe_id": {"spiffe_id": ""},
        "empty chain": {"x509_svid": b""},
        "empty key": {"x509_svid_key": b""},
        "PEM chain": {"x509_svid": chain_pem},
        "key of another SVID": {"x509_svid_key": other.marshal_der()[1]},
        "leaf not first": {
            "x509_svid": bundle + svid.marshal_der()[0],
        },
    }
    for what, fields in bad.items():
        msg = pb.X509SVIDResponse(svids=[_svid_msg(svid, bundle, **fields)])
        with pytest.raises(InvalidResponseError):
            parse_x509_context(msg)
            pytest.fail(what)
    ok = parse_x509_context(pb.X509SVIDResponse(svids=[_svid_msg(svid, bundle)]))
    assert ok.default_svid.leaf == svid.leaf


def test_wa_26_federated_bundle_keys_in_both_forms() -> None:
    ca, fed = Authority(TD), Authority(FED)
    svid = ca.svid(SpiffeId.parse("spiffe://example.org/x"))
    der = ca.ca_cert.public_bytes(serialization.Encoding.DER)
    fed_der = fed.ca_cert.public_bytes(serialization.Encoding.DER)
    for key in ("spiffe://federated.org", "federated.org"):
        msg = pb.X509SVIDResponse(svids=[_svid_msg(svid, der)], federated_bundles={key: fed_der})
        assert set(parse_x509_context(msg).federated_bundles()) == {FED}
    msg = pb.X509SVIDResponse(svids=[_svid_msg(svid, der)], federated_bundles={"bad key!": der})
    with pytest.raises(InvalidResponseError, match="trust domain"):
        parse_x509_context(msg)


def test_wa_27_7_7_row_12_duplicate_hints_keep_the_first() -> None:
    ca = Authority(TD)
    a = ca.svid(SpiffeId.parse("spiffe://example.org/a"))
    b = ca.svid(SpiffeId.parse("spiffe://example.org/b"))
    c = ca.svid(SpiffeId.parse("spiffe://example.org/c"))
    der = ca.ca_cert.public_bytes(serialization.Encoding.DER)
    msg = pb.X509SVIDResponse(
        svids=[
            _svid_msg(a, der, hint="same"),
            _svid_msg(b, der, hint="same"),
            _svid_msg(c, der),
        ]
    )
    ctx = parse_x509_context(msg)
    assert [str(s.spiffe_id) for s in ctx.svids] == [
        "spiffe://example.org/a",
        "spiffe://example.org/c",
    ]
    assert ctx.hints == ("same", "")


async def test_wa_09_watch_drops_federated_bundles_when_the_map_empties(agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID, federates_with=[FED]))
    agent.set_federation(agent.fed.bundle())
    async with client_for(agent) as client:
        updates = client.watch_x509_context()
        try:
            async with asyncio.timeout(DEADLINE):
                assert set((await anext(updates)).federated_bundles()) == {FED}
                agent.set_federation()
                ctx = await anext(updates)
                assert ctx.federated_bundles() == {}
                assert ctx.get_x509_bundle_for_trust_domain(FED) is None
        finally:
            await updates.aclose()
