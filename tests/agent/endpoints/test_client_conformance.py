"""The client-side rules of §6 and §7, against spiffed's own client and sources
(spiffed.workloadapi): retries, redials, redaction, bundle choice, response checks.

Some tests use the real Workload API (support.running_agent); others a scripted server that
answers exactly what a test needs (statuses, a stream that ends, a malformed response).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import struct_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from spiffed._proto.workload import workload_pb2 as pb
from spiffed._proto.workload.workload_grpc import SpiffeWorkloadAPIBase
from spiffed.backoff import Backoff
from spiffed.spiffeid import SpiffeId
from spiffed.svid.jwt import JwtSvidError, sign_jwt_svid
from spiffed.svid.x509 import X509Svid, X509SvidError, verify_chain
from spiffed.workloadapi import (
    BundleSource,
    JwtSource,
    WorkloadApiClient,
    WorkloadApiError,
    X509Source,
)
from spiffed.workloadapi.client import (
    InvalidResponseError,
    parse_jwt_bundles,
    parse_x509_bundles,
)
from tests.agent.endpoints.support import (
    DEADLINE,
    FED,
    MY_UID,
    TD,
    Agent,
    Authority,
    entry,
    running_agent,
)


def fast() -> Backoff:
    return Backoff(initial=0.01, maximum=0.05)


def glacial() -> Backoff:
    """A back-off no test outlives: whatever happens within the deadline was not backed off."""
    return Backoff(initial=3600.0, maximum=3600.0, jitter=0.0)


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` until it holds (fails after DEADLINE seconds)."""
    async with asyncio.timeout(DEADLINE):
        while not predicate():
            await asyncio.sleep(0.01)
    assert predicate(), what


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    async with running_agent(tmp_path / "agent.sock") as a:
        yield a


def addr(path: Path) -> str:
    return f"unix://{path}"


# --- a scripted server ------------------------------------------------------------------

HOLD = object()  # keep the stream open


class Scripted(SpiffeWorkloadAPIBase):
    """FetchX509SVID call n plays ``x509[n]`` (the last one again when calls outnumber it):
    messages are sent, a Status ends the call with it, HOLD keeps it open, and running out
    ends it with OK. ValidateJWTSVID answers ``validate``."""

    def __init__(self, x509: list[list[Any]], validate: Any = None) -> None:
        self.x509 = x509
        self.validate = validate
        self.calls = 0

    async def FetchX509SVID(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        actions = self.x509[min(self.calls, len(self.x509) - 1)]
        self.calls += 1
        for action in actions:
            if isinstance(action, Status):
                raise GRPCError(action, "scripted")
            if action is HOLD:
                await asyncio.Event().wait()
            await stream.send_message(action)

    async def ValidateJWTSVID(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await stream.send_message(self.validate)

    async def _unimplemented(self, stream: Stream[Any, Any]) -> None:
        raise GRPCError(Status.UNIMPLEMENTED)

    FetchX509Bundles = FetchJWTSVID = FetchJWTBundles = _unimplemented
    FetchWITSVID = FetchWITBundles = _unimplemented


async def serve(service: Scripted, path: Path) -> Server:
    server = Server([service])
    await server.start(path=str(path))
    return server


async def stop(server: Server) -> None:
    server.close()
    await server.wait_closed()


def x509_response(ca: Authority, *paths: str) -> pb.X509SVIDResponse:
    resp = pb.X509SVIDResponse()
    for path in paths:
        chain, key = ca.svid(SpiffeId.from_path(TD, path)).marshal_der()
        resp.svids.append(
            pb.X509SVID(
                spiffe_id=f"spiffe://{TD.name}{path}",
                x509_svid=chain,
                x509_svid_key=key,
                bundle=ca.bundle().x509_bundle().marshal_der(),
            )
        )
    return resp


def ids(source: X509Source) -> list[str]:
    return [str(s.spiffe_id) for s in source.get_x509_svids()]


# --- §6 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [Status.INVALID_ARGUMENT, Status.UNIMPLEMENTED])
async def test_we_07_we_15_invalid_argument_and_unimplemented_are_never_retried(
    tmp_path: Path, status: Status
) -> None:
    scripted = Scripted([[status]])
    server = await serve(scripted, tmp_path / "s.sock")
    try:
        source = X509Source(address=addr(tmp_path / "s.sock"), backoff=fast, timeout=DEADLINE)
        with pytest.raises(WorkloadApiError) as err:
            await source.start()
        assert err.value.status is status
        assert source.closed and all(t.done() for t in source._tasks)  # nothing left to retry
        assert scripted.calls == 1
    finally:
        await stop(server)


@pytest.mark.parametrize("status", [Status.UNAVAILABLE, Status.PERMISSION_DENIED])
async def test_we_15_unavailable_and_permission_denied_are_retried(
    tmp_path: Path, status: Status
) -> None:
    ca = Authority(TD)
    scripted = Scripted([[status], [status], [x509_response(ca, "/a"), HOLD]])
    server = await serve(scripted, tmp_path / "s.sock")
    try:
        async with X509Source(address=addr(tmp_path / "s.sock"), backoff=fast) as source:
            assert ids(source) == ["spiffe://example.org/a"]
        assert scripted.calls == 3
    finally:
        await stop(server)


# --- §7.1 -------------------------------------------------------------------------------


@pytest.mark.parametrize("end", [[], [Status.UNAVAILABLE]], ids=["ok", "unavailable"])
async def test_wa_05_a_stream_that_ends_is_redialled_at_once(tmp_path: Path, end: list) -> None:
    """The server ends a working stream (cleanly, or with UNAVAILABLE): the source dials
    again at once, not after a back-off (the back-off here is an hour)."""
    ca = Authority(TD)
    scripted = Scripted([[x509_response(ca, "/first"), *end], [x509_response(ca, "/second"), HOLD]])
    server = await serve(scripted, tmp_path / "s.sock")
    try:
        async with X509Source(address=addr(tmp_path / "s.sock"), backoff=glacial) as source:
            await until(lambda: ids(source) == ["spiffe://example.org/second"], "redial")
        assert scripted.calls == 2
    finally:
        await stop(server)


async def test_wa_10_wa_29_a_source_stops_using_what_later_messages_leave_out(
    agent: Agent,
) -> None:
    """An SVID or federated bundle missing from a later message is dropped; a stream ended
    with PERMISSION_DENIED drops everything (readers raise it, subscribers are told) until
    the agent grants an identity again."""
    agent.add(entry("a", "/a", MY_UID, federates_with=[FED]), entry("b", "/b", MY_UID))
    agent.set_federation(agent.fed.bundle())
    updates: list[int] = []
    async with X509Source(address=addr(agent.socket_path), backoff=fast) as source:
        source.subscribe(lambda s: updates.append(s.version))
        assert ids(source) == ["spiffe://example.org/a", "spiffe://example.org/b"]
        assert source.get_x509_bundle_for_trust_domain(FED) is not None
        agent.remove("b")
        await until(lambda: ids(source) == ["spiffe://example.org/a"], "b dropped")
        agent.set_federation()
        await until(lambda: source.get_x509_bundle_for_trust_domain(FED) is None, "fed dropped")
        seen = len(updates)
        agent.remove("a")
        await until(lambda: len(updates) > seen, "told about the redaction")
        for read in (
            source.get_x509_svid,
            source.get_x509_svids,
            lambda: source.get_x509_bundle_for_trust_domain(TD),
        ):
            with pytest.raises(WorkloadApiError) as err:
                read()
            assert err.value.status is Status.PERMISSION_DENIED
        svid = agent.add(entry("c", "/c", MY_UID))["c"]
        await until(lambda: not source._denied, "granted again")
        assert source.get_x509_svid().leaf == svid.leaf


async def test_wa_32_wa_46_bundle_sources_are_redacted_on_permission_denied(
    agent: Agent,
) -> None:
    agent.add(entry("a", "/a", MY_UID))
    address = addr(agent.socket_path)
    async with (
        BundleSource(address=address, backoff=fast) as bundles,
        JwtSource(address=address, backoff=fast) as jwts,
    ):
        assert bundles.get_x509_bundle_for_trust_domain(TD) is not None
        assert jwts.get_jwt_bundle_for_trust_domain(TD) is not None
        agent.remove("a")
        await until(lambda: bundles._denied is not None and jwts._denied is not None, "denied")
        for read in (
            lambda: bundles.get_x509_bundle_for_trust_domain(TD),
            lambda: bundles.get_jwt_bundle_for_trust_domain(TD),
            lambda: jwts.get_jwt_bundle_for_trust_domain(TD),
        ):
            with pytest.raises(WorkloadApiError) as err:
                read()
            assert err.value.status is Status.PERMISSION_DENIED
        agent.add(entry("b", "/b", MY_UID))
        await until(lambda: bundles._denied is None and jwts._denied is None, "granted again")
        assert bundles.get_x509_bundle_for_trust_domain(TD) is not None
        assert jwts.get_jwt_bundle_for_trust_domain(TD) is not None
        token = await jwts.fetch_jwt_svid("x")  # JWT-SVIDs are the agent's to decide
        assert str(token.spiffe_id) == "spiffe://example.org/b"


async def test_wa_12_wa_52_peers_are_checked_with_the_bundle_of_their_own_trust_domain(
    agent: Agent,
) -> None:
    """With the own and a federated bundle at hand, a federated ID signed by the own CA (or
    JWT key) is refused: only the bundle of the peer's trust domain authenticates it."""
    agent.add(entry("a", "/a", MY_UID, federates_with=[FED]))
    agent.set_federation(agent.fed.bundle())
    foreign_id = SpiffeId.parse("spiffe://federated.org/peer")
    forged_leaf = forge_leaf(foreign_id, agent.ca)
    genuine = agent.fed.svid(foreign_id)
    forged_token = sign_jwt_svid(
        foreign_id,
        ["x"],
        agent.ca.jwt_key,
        agent.ca.jwt_kid,
        dt.timedelta(minutes=5),
        issued_at=dt.datetime.now(dt.UTC),
    )
    genuine_token = agent.fed.jwt(foreign_id, ["x"])
    address = addr(agent.socket_path)
    async with (
        X509Source(address=address, backoff=fast) as x509s,
        JwtSource(address=address, backoff=fast) as jwts,
    ):
        assert verify_chain(genuine.cert_chain, x509s)[0] == foreign_id
        with pytest.raises(X509SvidError, match=r"X\.509 bundle of federated\.org"):
            verify_chain([forged_leaf], x509s)
        # control: the same forgery with an own-domain ID is a valid SVID
        own_id = SpiffeId.parse("spiffe://example.org/peer")
        assert verify_chain([forge_leaf(own_id, agent.ca)], x509s)[0] == own_id
        assert jwts.validate_jwt_svid(genuine_token, "x").spiffe_id == foreign_id
        with pytest.raises(JwtSvidError):
            jwts.validate_jwt_svid(forged_token, "x")


def forge_leaf(spiffe_id: SpiffeId, ca: Authority) -> x509.Certificate:
    """A well-formed leaf for ``spiffe_id`` signed by ``ca`` whatever its trust domain (our
    issuer refuses to make one, SVID-06)."""
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(minutes=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.ca_cert.public_key()),
            critical=False,
        )
        .sign(ca.ca_key, hashes.SHA256())
    )


def test_wa_11_wa_31_wa_45_an_empty_bundles_response_is_rejected() -> None:
    """Both bundle responses must hold at least the server's own trust domain."""
    with pytest.raises(InvalidResponseError, match="contains no bundles"):
        parse_x509_bundles(pb.X509BundlesResponse())
    with pytest.raises(InvalidResponseError, match="contains no bundles"):
        parse_jwt_bundles(pb.JWTBundlesResponse())


# --- §7.3 -------------------------------------------------------------------------------


def _claims(**values: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


@pytest.mark.parametrize(
    ("response", "complaint"),
    [
        (pb.ValidateJWTSVIDResponse(spiffe_id="spiffe://example.org/a"), "lack"),
        (
            pb.ValidateJWTSVIDResponse(
                spiffe_id="spiffe://example.org/a",
                claims=_claims(sub="spiffe://example.org/b", aud=["x"], exp=2e9),
            ),
            "is not the token's sub",
        ),
        (
            pb.ValidateJWTSVIDResponse(
                claims=_claims(sub="spiffe://example.org/a", aud=["x"], exp=2e9)
            ),
            "ValidateJWTSVIDResponse",
        ),
    ],
    ids=["no-claims", "sub-mismatch", "no-spiffe-id"],
)
async def test_wa_11_wa_48_wa_50_client_rejects_an_incomplete_validate_response(
    tmp_path: Path, response: pb.ValidateJWTSVIDResponse, complaint: str
) -> None:
    server = await serve(Scripted([[HOLD]], validate=response), tmp_path / "s.sock")
    try:
        async with WorkloadApiClient(addr(tmp_path / "s.sock"), timeout=DEADLINE) as client:
            with pytest.raises(InvalidResponseError) as err:
                await client.validate_jwt_svid("a.b.c", "x")
        assert complaint in err.value.message
    finally:
        await stop(server)


async def test_wa_50_client_returns_the_validated_claims(agent: Agent) -> None:
    agent.add(entry("a", "/a", MY_UID))
    token = agent.ca.jwt(SpiffeId.parse("spiffe://example.org/a"), ["x"])
    async with WorkloadApiClient(addr(agent.socket_path), timeout=DEADLINE) as client:
        valid = await client.validate_jwt_svid(token, "x")
    assert str(valid.spiffe_id) == valid.claims["sub"] == "spiffe://example.org/a"
    assert valid.claims["aud"] == ["x"] and isinstance(valid.claims["exp"], int)


# --- §7.5 -------------------------------------------------------------------------------


async def test_wa_70_the_client_default_identity_is_the_first(agent: Agent) -> None:
    agent.add(entry("z", "/zeta", MY_UID), entry("m", "/mu", MY_UID))
    address = addr(agent.socket_path)
    async with WorkloadApiClient(address, timeout=DEADLINE) as client:
        context = await client.fetch_x509_context()
        jwt = await client.fetch_jwt_svid("x")
    async with X509Source(address=address, backoff=fast) as source:
        default = source.get_x509_svid()
    assert str(context.default_svid.spiffe_id) == "spiffe://example.org/mu"
    assert context.default_svid is context.svids[0]
    assert str(jwt.spiffe_id) == "spiffe://example.org/mu"
    assert str(default.spiffe_id) == "spiffe://example.org/mu"
    assert isinstance(default, X509Svid)
