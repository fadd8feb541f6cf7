"""AttestAgent, RenewAgent and PostStatus over a real datastore and CA, with SPIRE's codes.

Every refusal is checked from the attacker's side: the right status, and nothing issued or
stored (no node, no selectors, the join token still there unless SPIRE consumes it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.testing import ChannelFor

from spiffed._proto.spire.api.server.agent.v1 import agent_grpc, agent_pb2
from spiffed._proto.spire.api.types import attestation_pb2
from spiffed.agent.client import make_csr
from spiffed.agent.nodeattestor.x509pop import X509PopAgentAttestor
from spiffed.config.plugins import PluginConfig
from spiffed.nodeattestation import x509pop as proto
from spiffed.server import datastore as ds
from spiffed.server.api import Caller, Role, allowed, caller_context
from spiffed.server.api.agent import AgentService
from spiffed.server.api.limits import RateLimits
from spiffed.server.ca.manager import CaManager, CaSettings
from spiffed.server.config import ServerConfig
from spiffed.server.context import ServerContext
from spiffed.server.datastore import open_datastore
from spiffed.server.keymanager.memory import MemoryKeyManager
from spiffed.server.run_store import DatastoreCaStore
from spiffed.server.signing import SigningLimiter
from spiffed.server.svid import ServerSvid
from spiffed.spiffeid import SpiffeId, TrustDomain

from ..nodeattestor.pki import Issued, make_cert

TD = TrustDomain("example.org")
AGENT_TTL = dt.timedelta(minutes=30)
IP_A = "192.0.2.10:40001"
IP_B = "192.0.2.20:40001"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class AsCaller:
    """The agent service with handlers run as ``holder[0]``, after the listener's policy."""

    def __init__(self, service: Any, holder: list[Caller]) -> None:
        self._service = service
        self._holder = holder

    def __mapping__(self) -> dict[str, Any]:
        return {
            name: handler._replace(func=self._wrap(name, handler.func))
            for name, handler in self._service.__mapping__().items()
        }

    def _wrap(self, method: str, func: Callable[[Any], Any]) -> Callable[[Any], Any]:
        async def run(stream: Any) -> None:
            caller = self._holder[0]
            if not allowed(method, caller):
                raise GRPCError(Status.PERMISSION_DENIED, f"{method} not allowed")
            token = caller_context.set(caller)
            try:
                await func(stream)
            finally:
                caller_context.reset(token)

        return run


@dataclass
class Env:
    ctx: ServerContext
    stub: agent_grpc.AgentStub
    holder: list[Caller]
    clock: FakeClock
    pki: dict[str, Issued]

    @property
    def ds(self) -> Any:
        return self.ctx.datastore

    def from_address(self, address: str) -> None:
        self.holder[0] = Caller(address=address)

    def as_agent(self, agent_id: str, address: str = IP_A) -> None:
        self.holder[0] = Caller(
            address=address,
            spiffe_id=SpiffeId.parse(agent_id),
            roles=frozenset({Role.ANY, Role.AGENT}),
        )


@pytest.fixture(scope="module")
def pki() -> dict[str, Issued]:
    root = make_cert("root", ca=True)
    inter = make_cert("intermediate", issuer=root, ca=True)
    leaf = make_cert("node-1", issuer=inter, serial=0xABC)
    return {"root": root, "inter": inter, "leaf": leaf}


@pytest.fixture
async def env(tmp_path: Path, pki: dict[str, Issued]) -> AsyncIterator[Env]:
    bundle = tmp_path / "x509pop-ca.pem"
    bundle.write_bytes(pki["root"].cert.public_bytes(serialization.Encoding.PEM))
    config = ServerConfig(
        trust_domain=TD,
        data_dir=tmp_path,
        datastore=PluginConfig("DataStore", "sql"),
        key_manager=PluginConfig("KeyManager", "memory"),
        agent_ttl=AGENT_TTL,
        node_attestors=(
            PluginConfig("NodeAttestor", "join_token"),
            PluginConfig("NodeAttestor", "x509pop", {"ca_bundle_path": str(bundle)}),
        ),
    )
    store = await open_datastore("sqlite3", str(tmp_path / "ds.sqlite3"))
    settings = CaSettings(trust_domain=TD, ca_ttl=dt.timedelta(hours=2))
    ca = CaManager(settings, MemoryKeyManager(), DatastoreCaStore(store, TD.name))
    await ca.start()
    svid = ServerSvid(ca)
    svid.rotate(force=True)
    clock = FakeClock()
    ctx = ServerContext(
        trust_domain=TD,
        datastore=store,
        ca=ca,
        server_svid=svid,
        config=config,
        rate_limits=RateLimits.from_config(config, clock),
    )
    holder = [Caller(address=IP_A)]
    try:
        async with ChannelFor([AsCaller(AgentService(ctx), holder)]) as channel:
            yield Env(ctx, agent_grpc.AgentStub(channel), holder, clock, pki)
    finally:
        await store.close()


def csr_der(key: Any = None) -> bytes:
    return make_csr(key or ec.generate_private_key(ec.SECP256R1()))


def attest_req(kind: str, payload: bytes, csr: bytes | None = None) -> Any:
    return agent_pb2.AttestAgentRequest(
        params=agent_pb2.AttestAgentRequest.Params(
            data=attestation_pb2.AttestationData(type=kind, payload=payload),
            params=agent_pb2.AgentX509SVIDParams(csr=csr_der() if csr is None else csr),
        )
    )


Responder = Callable[[bytes], bytes]


async def attest(
    env: Env, req: Any, respond: Responder | None = None
) -> agent_pb2.AttestAgentResponse.Result:
    """Run one AttestAgent stream; ``respond`` answers challenges."""
    async with env.stub.AttestAgent.open() as stream:
        await stream.send_message(req)
        for _ in range(4):
            resp = await stream.recv_message()
            assert resp is not None, "stream ended without a result"
            if resp.WhichOneof("step") == "result":
                await stream.end()
                return resp.result
            assert respond is not None, "unexpected challenge"
            await stream.send_message(
                agent_pb2.AttestAgentRequest(challenge_response=respond(resp.challenge))
            )
    raise AssertionError("too many challenges")


async def refused(env: Env, req: Any, respond: Responder | None = None) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await attest(env, req, respond)
    return err.value


async def add_token(env: Env, token: str, ttl: int = 600) -> None:
    await env.ds.create_join_token(ds.JoinToken(token, int(time.time()) + ttl))


async def token_left(env: Env, token: str) -> bool:
    try:
        await env.ds.consume_join_token(token)
    except ds.NotFoundError:
        return False
    await add_token(env, token)
    return True


def x509pop_agent(env: Env, key: Any = None) -> X509PopAgentAttestor:
    leaf, inter = env.pki["leaf"], env.pki["inter"]
    return X509PopAgentAttestor(key or leaf.key, [leaf.cert, inter.cert])


def leaf_of(result: Any) -> x509.Certificate:
    return x509.load_der_x509_certificate(result.svid.cert_chain[0])


# --- join_token -------------------------------------------------------------------------------


async def test_join_token_attests_signs_agent_ttl_and_stores_the_node(env: Env) -> None:
    await add_token(env, "tok-1")
    key = ec.generate_private_key(ec.SECP256R1())
    result = await attest(env, attest_req("join_token", b"tok-1", csr_der(key)))

    agent_id = f"spiffe://{TD}/spire/agent/join_token/tok-1"
    assert result.reattestable is False
    assert (result.svid.id.trust_domain, result.svid.id.path) == (
        TD.name,
        "/spire/agent/join_token/tok-1",
    )
    leaf = leaf_of(result)
    assert leaf.public_key() == key.public_key()
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [agent_id]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert abs(lifetime - AGENT_TTL) <= dt.timedelta(seconds=30)
    assert result.svid.expires_at == int(leaf.not_valid_after_utc.timestamp())

    node = await env.ds.get_node(agent_id)
    assert node.attestation_data_type == "join_token"
    assert node.cert_serial_number == str(leaf.serial_number)
    assert node.cert_not_after == result.svid.expires_at
    assert node.can_reattest is False
    assert node.selectors == ()
    assert not await token_left(env, "tok-1"), "the token is consumed"


async def test_reused_join_token_is_invalid_argument_and_issues_nothing(env: Env) -> None:
    await add_token(env, "once")
    await attest(env, attest_req("join_token", b"once"))
    env.clock.now += 10  # past the attestation rate limit
    err = await refused(env, attest_req("join_token", b"once"))
    assert err.status is Status.INVALID_ARGUMENT
    assert err.message == "failed to attest: join token does not exist or has already been used"
    assert await env.ds.count_nodes() == 1


async def test_unknown_join_token_is_invalid_argument(env: Env) -> None:
    err = await refused(env, attest_req("join_token", b"never-created"))
    assert err.status is Status.INVALID_ARGUMENT
    assert "join token does not exist" in (err.message or "")
    assert await env.ds.count_nodes() == 0


async def test_expired_join_token_is_invalid_argument_and_issues_nothing(env: Env) -> None:
    await env.ds.create_join_token(ds.JoinToken("old", int(time.time()) - 5))
    err = await refused(env, attest_req("join_token", b"old"))
    assert err.status is Status.INVALID_ARGUMENT
    assert err.message == "join token expired"
    assert await env.ds.count_nodes() == 0
    assert not await token_left(env, "old"), "SPIRE deletes an expired token it was shown"


async def test_existing_join_token_node_is_updated_as_spire_does(env: Env) -> None:
    """SPIRE refuses a used token, but a token of the same value created again re-attests the
    (unbanned) node: its certificate is replaced, its attestation type kept."""
    await add_token(env, "again")
    first = await attest(env, attest_req("join_token", b"again"))
    await add_token(env, "again")
    env.clock.now += 10
    second = await attest(env, attest_req("join_token", b"again"))
    node = await env.ds.get_node(f"spiffe://{TD}/spire/agent/join_token/again")
    assert node.cert_serial_number == str(leaf_of(second).serial_number)
    assert node.cert_serial_number != str(leaf_of(first).serial_number)
    assert await env.ds.count_nodes() == 1


async def test_banned_agent_cannot_attest_and_stays_banned(env: Env) -> None:
    agent_id = f"spiffe://{TD}/spire/agent/join_token/banned"
    await add_token(env, "banned")
    await attest(env, attest_req("join_token", b"banned"))
    await env.ds.ban_node(agent_id)
    await add_token(env, "banned")
    env.clock.now += 10
    err = await refused(env, attest_req("join_token", b"banned"))
    assert err.status is Status.PERMISSION_DENIED
    assert err.message == "failed to attest: agent is banned"
    node = await env.ds.get_node(agent_id)
    assert node.banned, "a refused attestation must not lift the ban"
    assert await token_left(env, "banned"), "a refused node gets its token back"


async def test_signing_busy_is_resource_exhausted_and_gives_the_token_back(env: Env) -> None:
    env.ctx.signing = SigningLimiter(max_concurrent=1, max_wait=0.01)
    await add_token(env, "busy")
    async with env.ctx.signing.slot():  # every slot is taken for the whole attempt
        err = await refused(env, attest_req("join_token", b"busy"))
    assert err.status is Status.RESOURCE_EXHAUSTED
    assert await env.ds.count_nodes() == 0
    assert await token_left(env, "busy"), "the agent may retry with its token"
    env.clock.now += 10
    await attest(env, attest_req("join_token", b"busy"))


# --- x509pop ----------------------------------------------------------------------------------


async def test_x509pop_attests_through_a_challenge_and_is_reattestable(env: Env) -> None:
    agent = x509pop_agent(env)
    result = await attest(env, attest_req("x509pop", agent.payload()), agent.respond)
    fp = proto.fingerprint(env.pki["leaf"].cert)
    agent_id = f"spiffe://{TD}/spire/agent/x509pop/{fp}"
    assert result.reattestable is True
    assert result.svid.id.path == f"/spire/agent/x509pop/{fp}"
    node = await env.ds.get_node(agent_id)
    assert node.attestation_data_type == "x509pop"
    assert node.can_reattest is True
    assert node.cert_serial_number == str(leaf_of(result).serial_number)
    values = {s.value for s in node.selectors}
    assert {s.type for s in node.selectors} == {"x509pop"}
    assert "subject:cn:node-1" in values
    assert "serialnumber:0abc" in values

    # Re-attestation (a reattestable method) replaces the certificate of the same node.
    await env.ds.update_node(
        ds.AttestedNode(agent_id, new_cert_serial_number="12345", new_cert_not_after=1),
        ("new_cert_serial_number", "new_cert_not_after"),
    )
    env.clock.now += 10
    again = await attest(env, attest_req("x509pop", agent.payload()), agent.respond)
    node = await env.ds.get_node(agent_id)
    assert node.cert_serial_number == str(leaf_of(again).serial_number)
    assert (node.new_cert_serial_number, node.new_cert_not_after) == ("", 0)
    assert await env.ds.count_nodes() == 1


async def test_x509pop_wrong_proof_is_permission_denied_and_issues_nothing(env: Env) -> None:
    impostor = ec.generate_private_key(ec.SECP256R1())
    agent = x509pop_agent(env)

    def forged(challenge: bytes) -> bytes:
        return proto.calculate_response(impostor, challenge)

    err = await refused(env, attest_req("x509pop", agent.payload()), forged)
    assert err.status is Status.PERMISSION_DENIED
    assert (err.message or "").startswith(
        "nodeattestor(x509pop): challenge response verification failed"
    )
    assert await env.ds.count_nodes() == 0


async def test_x509pop_chain_from_another_pki_is_refused_before_any_challenge(
    env: Env,
) -> None:
    other_root = make_cert("other root", ca=True)
    leaf = make_cert("rogue", issuer=other_root)
    agent = X509PopAgentAttestor(leaf.key, [leaf.cert])
    err = await refused(env, attest_req("x509pop", agent.payload()))  # no responder
    assert err.status is Status.PERMISSION_DENIED
    assert await env.ds.count_nodes() == 0


async def test_banned_x509pop_agent_is_refused(env: Env) -> None:
    agent = x509pop_agent(env)
    await attest(env, attest_req("x509pop", agent.payload()), agent.respond)
    agent_id = f"spiffe://{TD}/spire/agent/x509pop/{proto.fingerprint(env.pki['leaf'].cert)}"
    await env.ds.ban_node(agent_id)
    env.clock.now += 10
    err = await refused(env, attest_req("x509pop", agent.payload()), agent.respond)
    assert err.status is Status.PERMISSION_DENIED
    assert err.message == "failed to attest: agent is banned"
    assert (await env.ds.get_node(agent_id)).banned


async def _wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (yielding to the loop) until it holds; fail after a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def test_ban_while_reattestation_waits_for_signing_is_not_undone(env: Env) -> None:
    """An attacker re-attests while the server is busy; the operator bans the agent while
    that attestation waits for a signing slot. The ban must hold: the write is refused."""
    agent = x509pop_agent(env)
    await attest(env, attest_req("x509pop", agent.payload()), agent.respond)
    agent_id = f"spiffe://{TD}/spire/agent/x509pop/{proto.fingerprint(env.pki['leaf'].cert)}"
    env.ctx.signing = SigningLimiter(max_concurrent=1, max_wait=30)
    release = asyncio.Event()

    async def hold_the_only_slot() -> None:
        async with env.ctx.signing.slot():
            await release.wait()

    holder = asyncio.create_task(hold_the_only_slot())
    await _wait_for(lambda: env.ctx.signing.busy == 1, "the slot to be taken")
    env.clock.now += 10
    task = asyncio.create_task(attest(env, attest_req("x509pop", agent.payload()), agent.respond))
    await _wait_for(lambda: env.ctx.signing.waiting == 1, "the attestation to wait for a slot")
    await env.ds.ban_node(agent_id)
    release.set()
    await holder
    with pytest.raises(GRPCError) as err:
        await task
    assert err.value.status is Status.PERMISSION_DENIED
    assert err.value.message == "failed to attest: agent is banned"
    node = await env.ds.get_node(agent_id)
    assert node.banned, "the ban made during the attestation must stay"


# --- malformed requests -------------------------------------------------------------------------


async def test_unknown_attestor_type_is_failed_precondition(env: Env) -> None:
    err = await refused(env, attest_req("aws_iid", b"{}"))
    assert err.status is Status.FAILED_PRECONDITION
    assert err.message == (
        'error getting node attestor: could not find node attestor type "aws_iid"'
    )
    assert await env.ds.count_nodes() == 0


def _no_data() -> Any:
    return agent_pb2.AttestAgentRequest(
        params=agent_pb2.AttestAgentRequest.Params(params=agent_pb2.AgentX509SVIDParams(csr=b"x"))
    )


def _no_svid_params() -> Any:
    return agent_pb2.AttestAgentRequest(
        params=agent_pb2.AttestAgentRequest.Params(
            data=attestation_pb2.AttestationData(type="join_token", payload=b"t")
        )
    )


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (agent_pb2.AttestAgentRequest, "missing params"),
        (lambda: agent_pb2.AttestAgentRequest(challenge_response=b"x"), "missing params"),
        (_no_data, "missing attestation data"),
        (_no_svid_params, "missing X509-SVID parameters"),
        (lambda: attest_req("join_token", b"t", csr=b""), "missing CSR"),
        (lambda: attest_req("", b"t"), "missing attestation data type"),
        (lambda: attest_req("join_token", b""), "missing attestation data payload"),
    ],
)
async def test_missing_params_are_invalid_argument(
    env: Env, make: Callable[[], Any], problem: str
) -> None:
    await add_token(env, "t")
    err = await refused(env, make())
    assert err.status is Status.INVALID_ARGUMENT
    assert err.message == f"malformed param: {problem}"
    assert await env.ds.count_nodes() == 0
    assert await token_left(env, "t")


async def test_malformed_csr_is_invalid_argument_and_keeps_the_token(env: Env) -> None:
    await add_token(env, "csr")
    err = await refused(env, attest_req("join_token", b"csr", csr=b"\x30\x03junk"))
    assert err.status is Status.INVALID_ARGUMENT
    assert (err.message or "").startswith("failed to parse CSR")
    assert await env.ds.count_nodes() == 0
    assert await token_left(env, "csr"), "a bad CSR must not burn the token"


async def test_csr_with_a_bad_signature_is_refused(env: Env) -> None:
    """A CSR whose signature does not verify (no proof of possession of the key)."""
    signer = ec.generate_private_key(ec.SECP256R1())
    good = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    der = bytearray(good.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature value
    await add_token(env, "sig")
    err = await refused(env, attest_req("join_token", b"sig", csr=bytes(der)))
    assert err.status is Status.INVALID_ARGUMENT
    assert err.message == "failed to verify CSR signature"
    assert await env.ds.count_nodes() == 0
    assert await token_left(env, "sig")


# --- rate limit ---------------------------------------------------------------------------------


async def test_attestation_rate_limit_is_per_ip(env: Env) -> None:
    for t in ("a1", "a2", "b1", "a3"):
        await add_token(env, t)
    env.from_address(IP_A)
    await attest(env, attest_req("join_token", b"a1"))
    env.from_address("192.0.2.10:40002")  # same IP, another port, same instant
    err = await refused(env, attest_req("join_token", b"a2"))
    assert err.status is Status.RESOURCE_EXHAUSTED
    assert (err.message or "").startswith("rejecting request due to attest agent rate limiting")
    assert await token_left(env, "a2"), "a rate-limited attempt consumes nothing"

    env.from_address(IP_B)
    await attest(env, attest_req("join_token", b"b1"))

    env.clock.now += 1.0  # SPIRE: 1 attestation per second per IP
    env.from_address(IP_A)
    await attest(env, attest_req("join_token", b"a3"))
    assert await env.ds.count_nodes() == 3


# --- slow and numerous unauthenticated callers ----------------------------------------------


class StalledStream:
    """The server side of an AttestAgent stream whose client sends ``messages`` and then
    nothing more until ``release`` is set (then its stream ends)."""

    def __init__(self, *messages: Any) -> None:
        self.messages = list(messages)
        self.sent: list[Any] = []
        self.release = asyncio.Event()

    async def recv_message(self) -> Any:
        if self.messages:
            return self.messages.pop(0)
        await self.release.wait()
        return None

    async def send_message(self, message: Any) -> None:
        self.sent.append(message)


async def _call(service: AgentService, stream: StalledStream, address: str) -> GRPCError:
    """Run AttestAgent's handler on ``stream`` as a caller from ``address``; its refusal."""
    token = caller_context.set(Caller(address=address))
    try:
        with pytest.raises(GRPCError) as err:
            await service.AttestAgent(stream)  # type: ignore[arg-type]
    finally:
        caller_context.reset(token)
    return err.value


async def test_attest_caller_that_never_sends_parameters_is_cut_off(env: Env) -> None:
    """A client opens AttestAgent and sends nothing: the call ends at the overall deadline
    and frees its place, instead of holding a server task for good."""
    service = AgentService(env.ctx, attest_deadline=0.05)
    err = await asyncio.wait_for(_call(service, StalledStream(), IP_A), 10)
    assert err.status is Status.DEADLINE_EXCEEDED
    assert err.message == "attestation did not complete within 0.05s"
    assert service.attestations_in_progress == 0


async def test_attest_caller_stalling_on_a_challenge_is_cut_off(env: Env) -> None:
    agent = x509pop_agent(env)
    service = AgentService(env.ctx, attest_deadline=0.05)
    stream = StalledStream(attest_req("x509pop", agent.payload()))
    err = await asyncio.wait_for(_call(service, stream, IP_A), 10)
    assert err.status is Status.DEADLINE_EXCEEDED
    assert [m.WhichOneof("step") for m in stream.sent] == ["challenge"]  # never answered
    assert await env.ds.count_nodes() == 0
    assert service.attestations_in_progress == 0


async def test_attestations_in_progress_are_capped(env: Env) -> None:
    """Callers from many addresses (each within its per-IP limit) open attestations and
    stall: past the global cap, new ones are refused at once; finished ones free places."""
    service = AgentService(env.ctx, max_attestations=2)
    stalled = [StalledStream(), StalledStream()]
    calls = [
        asyncio.create_task(_call(service, s, f"192.0.2.{100 + i}:1000"))
        for i, s in enumerate(stalled)
    ]
    await _wait_for(lambda: service.attestations_in_progress == 2, "two stalled calls")
    await add_token(env, "third")
    third = StalledStream(attest_req("join_token", b"third"))
    err = await _call(service, third, "192.0.2.200:1000")
    assert err.status is Status.RESOURCE_EXHAUSTED
    assert err.message == "rejecting request due to too many attestations in progress (at most 2)"
    assert await token_left(env, "third")
    for s in stalled:
        s.release.set()
    for call in calls:
        assert (await call).status is Status.INVALID_ARGUMENT  # ended without parameters
    assert service.attestations_in_progress == 0


async def test_token_is_not_given_back_when_cancelled_after_the_node_is_stored(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call is cancelled (client gone, shutdown) just after the node was committed: the
    token must stay consumed, or it would attest a second node (or the same one again)."""
    await add_token(env, "once")
    real = env.ds.create_node

    async def create_then_cancelled(node: Any) -> Any:
        await real(node)
        raise asyncio.CancelledError

    monkeypatch.setattr(env.ds, "create_node", create_then_cancelled)
    service = AgentService(env.ctx)
    token = caller_context.set(Caller(address=IP_A))
    try:
        with pytest.raises(asyncio.CancelledError):
            await service.AttestAgent(StalledStream(attest_req("join_token", b"once")))  # type: ignore[arg-type]
    finally:
        caller_context.reset(token)
    assert await env.ds.count_nodes() == 1
    assert not await token_left(env, "once"), "the token that made the node is spent"


async def test_expired_signing_ca_is_internal_as_spire_and_keeps_the_token(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_token(env, "late")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    monkeypatch.setattr(env.ctx.ca, "_clock", lambda: later)
    err = await refused(env, attest_req("join_token", b"late"))
    assert err.status is Status.INTERNAL
    assert err.message == "failed to sign X509 SVID: the signing CA has expired"
    assert await env.ds.count_nodes() == 0
    assert await token_left(env, "late")


# --- RenewAgent and PostStatus -------------------------------------------------------------------


async def _join(env: Env, token: str) -> tuple[str, Any]:
    await add_token(env, token)
    env.from_address(IP_A)
    env.clock.now += 10
    result = await attest(env, attest_req("join_token", token.encode()))
    return f"spiffe://{TD}/spire/agent/join_token/{token}", result


def renew_req(csr: bytes | None = None) -> Any:
    return agent_pb2.RenewAgentRequest(
        params=agent_pb2.AgentX509SVIDParams(csr=csr_der() if csr is None else csr)
    )


async def test_renew_signs_a_new_svid_recorded_as_the_new_certificate(env: Env) -> None:
    agent_id, first = await _join(env, "renew")
    env.as_agent(agent_id)
    key = ec.generate_private_key(ec.SECP256R1())
    resp = await env.stub.RenewAgent(renew_req(csr_der(key)))
    leaf = x509.load_der_x509_certificate(resp.svid.cert_chain[0])
    assert leaf.public_key() == key.public_key()
    assert resp.svid.id.path == "/spire/agent/join_token/renew"
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert abs(lifetime - AGENT_TTL) <= dt.timedelta(seconds=30)
    node = await env.ds.get_node(agent_id)
    assert node.cert_serial_number == str(leaf_of(first).serial_number), "current unchanged"
    assert node.new_cert_serial_number == str(leaf.serial_number)
    assert node.new_cert_not_after == resp.svid.expires_at


async def test_renew_of_an_evicted_agent_is_not_found(env: Env) -> None:
    agent_id, _ = await _join(env, "evicted")
    await env.ds.delete_node(agent_id)
    env.as_agent(agent_id)
    with pytest.raises(GRPCError) as err:
        await env.stub.RenewAgent(renew_req())
    assert err.value.status is Status.NOT_FOUND
    assert err.value.message == "agent not found"
    assert await env.ds.count_nodes() == 0


async def test_renew_of_a_banned_agent_is_permission_denied(env: Env) -> None:
    agent_id, _ = await _join(env, "ban-renew")
    await env.ds.ban_node(agent_id)
    env.as_agent(agent_id)
    with pytest.raises(GRPCError) as err:
        await env.stub.RenewAgent(renew_req())
    assert err.value.status is Status.PERMISSION_DENIED
    node = await env.ds.get_node(agent_id)
    assert node.banned and node.new_cert_serial_number == ""


async def test_reattestable_agent_must_reattest_instead_of_renew(env: Env) -> None:
    agent = x509pop_agent(env)
    await attest(env, attest_req("x509pop", agent.payload()), agent.respond)
    agent_id = f"spiffe://{TD}/spire/agent/x509pop/{proto.fingerprint(env.pki['leaf'].cert)}"
    env.as_agent(agent_id)
    with pytest.raises(GRPCError) as err:
        await env.stub.RenewAgent(renew_req())
    assert err.value.status is Status.PERMISSION_DENIED
    assert err.value.message == "agent must reattest instead of renew"
    assert (await env.ds.get_node(agent_id)).new_cert_serial_number == ""


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (agent_pb2.RenewAgentRequest(), "params cannot be nil"),
        (renew_req(csr=b""), "missing CSR"),
    ],
)
async def test_renew_without_csr_is_invalid_argument(env: Env, req: Any, message: str) -> None:
    agent_id, _ = await _join(env, "nocsr")
    env.as_agent(agent_id)
    with pytest.raises(GRPCError) as err:
        await env.stub.RenewAgent(req)
    assert err.value.status is Status.INVALID_ARGUMENT
    assert err.value.message == message
    assert (await env.ds.get_node(agent_id)).new_cert_serial_number == ""


async def test_renew_is_refused_to_a_caller_without_the_agent_role(env: Env) -> None:
    env.from_address(IP_A)
    with pytest.raises(GRPCError) as err:
        await env.stub.RenewAgent(renew_req())
    assert err.value.status is Status.PERMISSION_DENIED


async def test_post_status_records_the_agent_version(env: Env) -> None:
    agent_id, _ = await _join(env, "status")
    env.as_agent(agent_id)
    await env.stub.PostStatus(agent_pb2.PostStatusRequest(agent_version="1.15.3"))
    assert (await env.ds.get_node(agent_id)).agent_version == "1.15.3"
    with pytest.raises(GRPCError) as err:
        await env.stub.PostStatus(agent_pb2.PostStatusRequest(agent_version="v" * 256))
    assert err.value.status is Status.INVALID_ARGUMENT
    assert err.value.message == "agent version is too long (max 255 characters)"
    assert (await env.ds.get_node(agent_id)).agent_version == "1.15.3"
    # SPIRE counts bytes: 128 two-byte characters are too long, 127 are not.
    env.clock.now += 10  # past the PostStatus rate limit
    with pytest.raises(GRPCError) as err:
        await env.stub.PostStatus(agent_pb2.PostStatusRequest(agent_version="é" * 128))
    assert err.value.status is Status.INVALID_ARGUMENT
    await env.stub.PostStatus(agent_pb2.PostStatusRequest(agent_version="é" * 127))
    assert (await env.ds.get_node(agent_id)).agent_version == "é" * 127


async def test_renew_with_an_expired_signing_ca_is_internal_as_spire(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent_id, _ = await _join(env, "renew-late")
    env.as_agent(agent_id)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    monkeypatch.setattr(env.ctx.ca, "_clock", lambda: later)
    with pytest.raises(GRPCError) as err:
        await env.stub.RenewAgent(renew_req())
    assert err.value.status is Status.INTERNAL
    assert err.value.message == "failed to sign X509 SVID: the signing CA has expired"
    assert (await env.ds.get_node(agent_id)).new_cert_serial_number == ""
