"""Workload Endpoint (§6, WE-xx) and Workload API (§7, WA-xx) rules on the server side.

Each test names the rules it proves; rules that are pure guidance are in the "Conformance"
table of docs/workload-api.md. The caller is this test process, attested by its real UID.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from google.protobuf import descriptor_pb2
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from spiffed._proto.workload import workload_pb2 as pb
from spiffed.agent.endpoints.server import reflection_pool
from spiffed.bundle import SpiffeBundle
from spiffed.bundle.x509 import split_der_certificates
from spiffed.keys import KeyType
from spiffed.spiffeid import SpiffeId
from spiffed.svid.jwt import sign_jwt_svid
from spiffed.svid.x509_issue import create_root_ca
from tests.agent.endpoints.support import (
    FED,
    MD,
    MY_UID,
    NOBODY_UID,
    REQ_JWT_BUNDLES,
    REQ_X509,
    REQ_X509_BUNDLES,
    TD,
    Agent,
    entry,
    open_stream,
    running_agent,
    stub,
)


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    async with running_agent(tmp_path / "agent.sock") as a:
        yield a


async def expect_status(coro, status: Status) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await coro
    assert err.value.status is status, err.value
    return err.value


def served_methods(agent: Agent) -> dict[str, Cardinality]:
    return {path: h.cardinality for path, h in agent.server._mapping.items()}


# --- §6 Workload Endpoint ---------------------------------------------------------------


async def test_we_01_to_we_04_grpc_served_only_on_a_local_unix_socket(agent: Agent) -> None:
    """WE-03: a UDS (preferred); WE-01/WE-04: every listening socket is AF_UNIX, so nothing is
    reachable from another host or over TCP; WE-02: it speaks gRPC (a plain gRPC client gets
    an answer with a gRPC status)."""
    listening = agent.server._server.sockets  # type: ignore[union-attr]
    assert listening and {s.family for s in listening} == {socket.AF_UNIX}
    assert stat.S_ISSOCK(os.stat(agent.socket_path).st_mode)
    agent.add(entry("a", "/a", MY_UID))
    with agent.channel() as ch:
        resp = await stub(ch).FetchJWTSVID(pb.JWTSVIDRequest(audience=["x"]), metadata=MD)
    assert [s.spiffe_id for s in resp.svids] == ["spiffe://example.org/a"]


async def test_we_13_no_credentials_are_asked_of_the_caller(agent: Agent) -> None:
    """The security header is all a caller sends: no token, no TLS, no secret; a bogus
    credential in the metadata neither helps nor hurts (the kernel identifies the caller)."""
    agent.add(entry("a", "/a", MY_UID))
    with agent.channel() as ch:
        async with open_stream(ch, "FetchX509SVID", REQ_X509) as s:
            plain = await s.next()
        bogus = [*MD.items(), ("authorization", "Bearer nonsense")]
        async with open_stream(ch, "FetchX509SVID", REQ_X509, metadata=bogus) as s:
            with_bogus = await s.next()
    assert [m.spiffe_id for m in plain.svids] == ["spiffe://example.org/a"]
    assert [m.spiffe_id for m in with_bogus.svids] == ["spiffe://example.org/a"]


async def test_we_15_appendix_a_error_codes(tmp_path: Path) -> None:
    """Header missing -> INVALID_ARGUMENT; not initialised -> UNAVAILABLE; no identity for
    the caller -> PERMISSION_DENIED; an RPC that does not exist -> UNIMPLEMENTED."""
    async with running_agent(tmp_path / "cold.sock", ready=False) as cold:
        with cold.channel() as ch:
            await expect_status(
                stub(ch).FetchJWTSVID(pb.JWTSVIDRequest(audience=["x"]), metadata=MD),
                Status.UNAVAILABLE,
            )
    async with running_agent(tmp_path / "warm.sock") as warm:
        warm.add(entry("t", "/theirs", NOBODY_UID))
        with warm.channel() as ch:
            await expect_status(
                stub(ch).FetchJWTSVID(pb.JWTSVIDRequest(audience=["x"]), metadata={}),
                Status.INVALID_ARGUMENT,
            )
            await expect_status(
                stub(ch).FetchJWTSVID(pb.JWTSVIDRequest(audience=["x"]), metadata=MD),
                Status.PERMISSION_DENIED,
            )
            # A proper gRPC answer (with content-type), so that every client reads the code;
            # the header is still checked first (WE-06). Other services' paths too.
            for path, metadata, status in (
                ("/SpiffeWorkloadAPI/FetchSomethingElse", MD, Status.UNIMPLEMENTED),
                ("/SpiffeWorkloadAPI/FetchSomethingElse", {}, Status.INVALID_ARGUMENT),
                ("/spiffe.NewService/Fetch", {}, Status.UNIMPLEMENTED),
            ):
                async with ch.request(
                    path,
                    Cardinality.UNARY_UNARY,
                    pb.JWTSVIDRequest,
                    pb.JWTSVIDResponse,
                    metadata=metadata,
                ) as call:
                    await call.send_message(pb.JWTSVIDRequest(), end=True)
                    await expect_status(call.recv_message(), status)


# The standard's SpiffeWorkloadAPI: method -> (request, response, server streaming).
STANDARD_METHODS = {
    "FetchX509SVID": ("X509SVIDRequest", "X509SVIDResponse", True),
    "FetchX509Bundles": ("X509BundlesRequest", "X509BundlesResponse", True),
    "FetchJWTSVID": ("JWTSVIDRequest", "JWTSVIDResponse", False),
    "FetchJWTBundles": ("JWTBundlesRequest", "JWTBundlesResponse", True),
    "ValidateJWTSVID": ("ValidateJWTSVIDRequest", "ValidateJWTSVIDResponse", False),
    "FetchWITSVID": ("WITSVIDRequest", "WITSVIDResponse", True),
    "FetchWITBundles": ("WITBundlesRequest", "WITBundlesResponse", True),
}


def _fields(message: descriptor_pb2.DescriptorProto) -> dict[str, tuple[int, int, int, str]]:
    return {f.name: (f.number, f.type, f.label, f.type_name) for f in message.field}


async def test_we_16_wa_03_the_service_is_exactly_the_standard_one(agent: Agent) -> None:
    """Under /SpiffeWorkloadAPI/ only the standard's seven methods are served, with the
    standard's shapes; every message that py-spiffe (built from the upstream proto) knows
    has the same fields, numbers and types; anything else (health, reflection) is a
    separate, uniquely named service."""
    served = served_methods(agent)
    ours = {p.rsplit("/", 1)[1] for p in served if p.startswith("/SpiffeWorkloadAPI/")}
    assert ours == set(STANDARD_METHODS)
    others = {p.split("/")[1] for p in served if not p.startswith("/SpiffeWorkloadAPI/")}
    assert others <= {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    pool = reflection_pool()
    service = pool.FindServiceByName("SpiffeWorkloadAPI")
    for method in service.methods:
        request, response, streaming = STANDARD_METHODS[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (request, response)
        assert method.server_streaming is streaming and not method.client_streaming
        expected = Cardinality.UNARY_STREAM if streaming else Cardinality.UNARY_UNARY
        assert served[f"/SpiffeWorkloadAPI/{method.name}"] is expected

    from spiffe._proto import workload_pb2 as upstream  # py-spiffe's copy of workload.proto

    for name, message in upstream.DESCRIPTOR.message_types_by_name.items():
        theirs, mine = descriptor_pb2.DescriptorProto(), descriptor_pb2.DescriptorProto()
        message.CopyToProto(theirs)
        pool.FindMessageTypeByName(name).CopyToProto(mine)
        assert _fields(mine) == _fields(theirs), name


def test_wa_20_wa_31_wa_40_wa_45_wa_47_rpc_cardinalities() -> None:
    """FetchJWTSVID and ValidateJWTSVID are unary (WA-40, WA-47); the fetches of SVIDs and
    bundles are server streams (WA-20, WA-31, WA-45)."""
    methods = {m.name: m for m in reflection_pool().FindServiceByName("SpiffeWorkloadAPI").methods}
    for unary in ("FetchJWTSVID", "ValidateJWTSVID"):
        assert not methods[unary].server_streaming and not methods[unary].client_streaming
    for streamed in ("FetchX509SVID", "FetchX509Bundles", "FetchJWTBundles"):
        assert methods[streamed].server_streaming and not methods[streamed].client_streaming


def test_wa_61_wa_62_wa_64_wit_messages_have_the_standard_shape() -> None:
    """The WIT profile is not served (WA-60), but what reflection publishes for it is the
    standard's: FetchWITSVID a server stream with an optional spiffe_id (WA-61), WITSVID with
    spiffe_id, wit_svid, wit_svid_key and hint as strings (WA-62), WITBundlesResponse a
    map<string,string> (WA-64)."""
    pool = reflection_pool()
    method = pool.FindServiceByName("SpiffeWorkloadAPI").FindMethodByName("FetchWITSVID")
    assert method.server_streaming
    request = pool.FindMessageTypeByName("WITSVIDRequest")
    assert [(f.name, f.type) for f in request.fields] == [("spiffe_id", f_string())]
    svid = pool.FindMessageTypeByName("WITSVID")
    assert {f.name: f.type for f in svid.fields} == {
        "spiffe_id": f_string(),
        "wit_svid": f_string(),
        "wit_svid_key": f_string(),
        "hint": f_string(),
    }
    bundles = pool.FindMessageTypeByName("WITBundlesResponse").fields_by_name["bundles"]
    entry_type = bundles.message_type
    assert entry_type.GetOptions().map_entry
    assert [f.type for f in entry_type.fields] == [f_string(), f_string()]


def f_string() -> int:
    return descriptor_pb2.FieldDescriptorProto.TYPE_STRING


# --- §7.1 general -----------------------------------------------------------------------


async def test_wa_01_x509_and_jwt_profiles_are_both_served(agent: Agent) -> None:
    agent.add(entry("a", "/a", MY_UID))
    with agent.channel() as ch:
        async with open_stream(ch, "FetchX509SVID", REQ_X509) as s:
            x509_msg = await s.next()
        async with open_stream(ch, "FetchJWTBundles", REQ_JWT_BUNDLES) as s:
            jwt_bundles = await s.next()
        jwt = await stub(ch).FetchJWTSVID(pb.JWTSVIDRequest(audience=["x"]), metadata=MD)
        valid = await stub(ch).ValidateJWTSVID(
            pb.ValidateJWTSVIDRequest(audience="x", svid=jwt.svids[0].svid), metadata=MD
        )
    assert x509_msg.svids[0].spiffe_id == jwt.svids[0].spiffe_id == valid.spiffe_id
    assert "spiffe://example.org" in jwt_bundles.bundles


async def test_wa_06_wa_07_a_bundle_rotation_sends_the_complete_state_on_every_stream(
    agent: Agent,
) -> None:
    """A new CA and JWT key in the own bundle (an event) produce a new message on each
    stream, each holding everything: every SVID, the own and the federated bundles."""
    agent.add(entry("a", "/a", MY_UID, federates_with=[FED]), entry("b", "/b", MY_UID))
    agent.set_federation(agent.fed.bundle())
    new_ca_key = KeyType.EC_P256.generate()
    new_ca = create_root_ca(TD, new_ca_key, ttl=dt.timedelta(hours=1))
    new_jwt = KeyType.EC_P256.generate()
    old = agent.ca.bundle()
    rotated = SpiffeBundle(
        TD,
        (*old.x509_authorities, new_ca),
        {**old.jwt_authorities, "next-key": new_jwt.public_key()},
    )
    with agent.channel() as ch:
        async with (
            open_stream(ch, "FetchX509SVID", REQ_X509) as svids,
            open_stream(ch, "FetchX509Bundles", REQ_X509_BUNDLES) as x509s,
            open_stream(ch, "FetchJWTBundles", REQ_JWT_BUNDLES) as jwts,
        ):
            for s in (svids, x509s, jwts):
                await s.next()
            agent.cache.set_bundles(rotated, {FED: agent.fed.bundle()})
            svid_msg, x509_msg, jwt_msg = await svids.next(), await x509s.next(), await jwts.next()
    assert [m.spiffe_id for m in svid_msg.svids] == [
        "spiffe://example.org/a",
        "spiffe://example.org/b",
    ]
    for m in svid_msg.svids:
        assert split_der_certificates(m.bundle) == [agent.ca.ca_cert, new_ca]
    assert list(svid_msg.federated_bundles) == ["spiffe://federated.org"]
    assert sorted(x509_msg.bundles) == ["spiffe://example.org", "spiffe://federated.org"]
    assert split_der_certificates(x509_msg.bundles["spiffe://example.org"])[-1] == new_ca
    assert sorted(jwt_msg.bundles) == ["spiffe://example.org", "spiffe://federated.org"]
    kids = [k["kid"] for k in json.loads(jwt_msg.bundles["spiffe://example.org"])["keys"]]
    assert sorted(kids) == sorted([agent.ca.jwt_kid, "next-key"])


async def test_wa_08_each_stream_answers_its_request_at_once(agent: Agent) -> None:
    """The first message of every stream is sent on the request alone: no cache change
    happens after the streams are opened."""
    agent.add(entry("a", "/a", MY_UID))
    with agent.channel() as ch:
        async with (
            open_stream(ch, "FetchX509SVID", REQ_X509) as svids,
            open_stream(ch, "FetchX509Bundles", REQ_X509_BUNDLES) as x509s,
            open_stream(ch, "FetchJWTBundles", REQ_JWT_BUNDLES) as jwts,
        ):
            first = await asyncio.gather(svids.next(), x509s.next(), jwts.next())
    assert [type(m) for m in first] == [
        pb.X509SVIDResponse,
        pb.X509BundlesResponse,
        pb.JWTBundlesResponse,
    ]


# --- §7.2 X.509 -------------------------------------------------------------------------


async def test_wa_21_wa_22_one_complete_x509svid_per_identity(agent: Agent) -> None:
    agent.add(
        entry("a", "/a", MY_UID),
        entry("b", "/b", MY_UID, hint="b-hint"),
        entry("c", "/c", NOBODY_UID),
    )
    with agent.channel() as ch:
        async with open_stream(ch, "FetchX509SVID", REQ_X509) as s:
            msg = await s.next()
    assert [m.spiffe_id for m in msg.svids] == ["spiffe://example.org/a", "spiffe://example.org/b"]
    for m in msg.svids:
        assert m.spiffe_id and m.x509_svid and m.x509_svid_key and m.bundle
    assert [m.hint for m in msg.svids] == ["", "b-hint"]


async def test_wa_12_wa_30_wa_47_tokens_validate_only_with_the_jwt_bundle_of_their_sub(
    agent: Agent,
) -> None:
    """From the attacker's side: a token naming a federated sub but signed with the own
    trust domain's JWT key (kid and key both in a bundle the agent holds) is refused, as is a
    token signed with the own X.509 CA key (X.509 authorities never validate a JWT)."""
    agent.add(entry("a", "/a", MY_UID, federates_with=[FED]))
    agent.set_federation(agent.fed.bundle())
    now = dt.datetime.now(dt.UTC)
    foreign_sub_own_key = sign_jwt_svid(
        SpiffeId.parse("spiffe://federated.org/w"),
        ["x"],
        agent.ca.jwt_key,
        agent.ca.jwt_kid,
        dt.timedelta(minutes=5),
        issued_at=now,
    )
    ca_signed = sign_jwt_svid(
        SpiffeId.parse("spiffe://example.org/a"),
        ["x"],
        agent.ca.ca_key,
        agent.ca.jwt_kid,
        dt.timedelta(minutes=5),
        issued_at=now,
    )
    control = agent.fed.jwt(SpiffeId.parse("spiffe://federated.org/w"), ["x"])
    with agent.channel() as ch:
        api = stub(ch)
        ok = await api.ValidateJWTSVID(
            pb.ValidateJWTSVIDRequest(audience="x", svid=control), metadata=MD
        )
        assert ok.spiffe_id == "spiffe://federated.org/w"
        for token in (foreign_sub_own_key, ca_signed):
            await expect_status(
                api.ValidateJWTSVID(
                    pb.ValidateJWTSVIDRequest(audience="x", svid=token), metadata=MD
                ),
                Status.INVALID_ARGUMENT,
            )


async def test_wa_32_wa_46_bundle_streams_deny_callers_without_entitlement(agent: Agent) -> None:
    agent.add(entry("t", "/theirs", NOBODY_UID))
    with agent.channel() as ch:
        for method, request in (
            ("FetchX509Bundles", REQ_X509_BUNDLES),
            ("FetchJWTBundles", REQ_JWT_BUNDLES),
        ):
            async with open_stream(ch, method, request) as s:
                await expect_status(s.next(), Status.PERMISSION_DENIED)


async def test_wa_29_wa_32_wa_46_losing_the_last_entry_ends_every_stream_denied(
    agent: Agent,
) -> None:
    """Redaction from the server: once the caller has no identity left, each stream ends
    with PERMISSION_DENIED, which tells the client to stop using what it was given."""
    agent.add(entry("a", "/a", MY_UID))
    with agent.channel() as ch:
        async with (
            open_stream(ch, "FetchX509SVID", REQ_X509) as svids,
            open_stream(ch, "FetchX509Bundles", REQ_X509_BUNDLES) as x509s,
            open_stream(ch, "FetchJWTBundles", REQ_JWT_BUNDLES) as jwts,
        ):
            for s in (svids, x509s, jwts):
                await s.next()
            agent.remove("a")
            for s in (svids, x509s, jwts):
                await expect_status(s.next(), Status.PERMISSION_DENIED)


# --- §7.3 JWT ---------------------------------------------------------------------------


def _b64json(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


async def test_wa_44_jwt_svids_are_complete_compact_jws_with_unique_hints(agent: Agent) -> None:
    agent.add(
        entry("a", "/a", MY_UID, hint="same", created_at=1),
        entry("b", "/b", MY_UID, hint="same", created_at=2),
        entry("c", "/c", MY_UID, hint="other"),
        entry("d", "/d", MY_UID),
    )
    with agent.channel() as ch:
        resp = await stub(ch).FetchJWTSVID(pb.JWTSVIDRequest(audience=["x"]), metadata=MD)
    assert len(resp.svids) >= 1
    hints = [s.hint for s in resp.svids if s.hint]
    assert len(hints) == len(set(hints)) == 2
    for s in resp.svids:
        header, payload, signature = s.svid.split(".")
        assert _b64json(header)["alg"] and signature
        assert _b64json(payload)["sub"] == s.spiffe_id
    assert [s.spiffe_id for s in resp.svids] == [
        "spiffe://example.org/a",
        "spiffe://example.org/c",
        "spiffe://example.org/d",
    ]


@pytest.mark.parametrize(
    "minted",
    [
        lambda ca, sid, aud: ca.jwt(SpiffeId.parse("spiffe://example.org/other"), aud),
        lambda ca, sid, aud: ca.jwt(sid, aud[:1]),
        lambda ca, sid, aud: "not-a-token",
    ],
    ids=["wrong-sub", "missing-audience", "garbage"],
)
async def test_wa_41_wa_44_a_minted_token_unlike_the_request_is_never_served(
    agent: Agent, minted
) -> None:
    """What the minter (the server) returns is checked: a token for another ID, one missing
    a requested audience, or no JWT at all gives UNAVAILABLE and is not cached."""
    agent.add(entry("a", "/a", MY_UID))
    good = agent.service._mint

    async def bad(e, audience):
        return minted(agent.ca, e.spiffe_id, list(audience))

    agent.service._mint = bad
    request = pb.JWTSVIDRequest(audience=["x", "y"])
    with agent.channel() as ch:
        await expect_status(stub(ch).FetchJWTSVID(request, metadata=MD), Status.UNAVAILABLE)
        agent.service._mint = good
        resp = await stub(ch).FetchJWTSVID(request, metadata=MD)
    claims = _b64json(resp.svids[0].svid.split(".")[1])
    assert claims["sub"] == "spiffe://example.org/a" and claims["aud"] == ["x", "y"]


async def test_wa_48_wa_49_7_7_rows_6_to_8_bad_validate_requests_are_invalid_argument(
    agent: Agent,
) -> None:
    agent.add(entry("a", "/a", MY_UID))
    good = agent.ca.jwt(SpiffeId.parse("spiffe://example.org/a"), ["x"])
    expired = sign_jwt_svid(
        SpiffeId.parse("spiffe://example.org/a"),
        ["x"],
        agent.ca.jwt_key,
        agent.ca.jwt_kid,
        dt.timedelta(minutes=1),
        issued_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
    )
    cases = [("", good), ("x", ""), ("y", good), ("x", expired), ("x", good + "x")]
    with agent.channel() as ch:
        api = stub(ch)
        for audience, token in cases:
            await expect_status(
                api.ValidateJWTSVID(
                    pb.ValidateJWTSVIDRequest(audience=audience, svid=token), metadata=MD
                ),
                Status.INVALID_ARGUMENT,
            )


async def test_wa_50_validate_returns_sub_and_the_spiffe_claims_with_aud_a_list(
    agent: Agent,
) -> None:
    agent.add(entry("a", "/a", MY_UID))
    sid = SpiffeId.parse("spiffe://example.org/a")
    token = agent.ca.jwt(sid, ["x"])  # one audience: aud is a plain string in the token
    assert isinstance(_b64json(token.split(".")[1])["aud"], str)
    with agent.channel() as ch:
        resp = await stub(ch).ValidateJWTSVID(
            pb.ValidateJWTSVIDRequest(audience="x", svid=token), metadata=MD
        )
    claims = dict(resp.claims)
    assert resp.spiffe_id == claims["sub"] == str(sid)
    assert list(claims["aud"]) == ["x"]
    assert claims["exp"] == _b64json(token.split(".")[1])["exp"]


# --- §7.5 default identity --------------------------------------------------------------


async def test_wa_70_the_default_identity_is_first_and_stays_first(agent: Agent) -> None:
    """The order is the entry ID's, whatever the insertion or rotation order, so the default
    (first) identity does not change when SVIDs rotate."""
    z = entry("z", "/zeta", MY_UID)
    agent.add(z)
    agent.add(entry("m", "/mu", MY_UID))
    with agent.channel() as ch:
        async with open_stream(ch, "FetchX509SVID", REQ_X509) as s:
            first = await s.next()
            agent.rotate(agent.cache.entries()[0])  # "m", the default
            after_rotation = await s.next()
        jwts = await stub(ch).FetchJWTSVID(pb.JWTSVIDRequest(audience=["x"]), metadata=MD)
    expected = ["spiffe://example.org/mu", "spiffe://example.org/zeta"]
    assert [m.spiffe_id for m in first.svids] == expected
    assert [m.spiffe_id for m in after_rotation.svids] == expected
    assert first.svids[0].x509_svid != after_rotation.svids[0].x509_svid
    assert [m.spiffe_id for m in jwts.svids] == expected
    key = serialization.load_der_private_key(after_rotation.svids[0].x509_svid_key, None)
    leaf = split_der_certificates(after_rotation.svids[0].x509_svid)[0]
    assert key.public_key() == leaf.public_key()
