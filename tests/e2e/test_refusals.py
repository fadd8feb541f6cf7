"""Issue #4 refusals, with a real ``spiffed-agent`` against a real ``spiffed-server``.

Each refusal is checked with the status code SPIRE v1.15.3 uses, from the side that would
try it (an agent with a spent or expired token, a node with a wrong x509pop proof, a banned
or evicted agent, an agent asking for an entry that is not its own), and nothing is issued:
no new attested agent in ``spiffed-server agent list``, no SVID stored by the agent, no
Workload API socket, no SVID in the server's answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from spiffed._proto.spire.api.server.svid.v1 import svid_grpc, svid_pb2
from spiffed.agent.attest import AttestationError, attest
from spiffed.agent.client import ServerChannel, denied_reason
from spiffed.agent.manager.storage import SVID_FILE, AgentState
from spiffed.agent.nodeattestor.x509pop import X509PopAgentAttestor
from spiffed.spiffeid import SpiffeId
from tests.e2e.conftest import (
    TD,
    AgentProcess,
    E2EServer,
    X509PopMaterial,
    apoll,
    fetch_ids,
    uid_selector,
)
from tests.server.nodeattestor.pki import make_cert

JT = "spiffe://example.org/spire/agent/join_token/"


@pytest.fixture
def server(shared_server: E2EServer) -> E2EServer:
    return shared_server


async def refused(agent: AgentProcess) -> str:
    """Start ``agent``, expect it to exit 1 without serving anything; its log."""
    await agent.start()
    code = await agent.wait_exit()
    log = agent.log
    assert code == 1, log
    assert "Starting Workload API" not in log
    assert not agent.socket_path.exists(), "no Workload API socket"
    assert not (agent.data_dir / SVID_FILE).exists(), "no agent SVID stored"
    return log


def channel(server: E2EServer, state: AgentState) -> ServerChannel:
    """An mTLS channel to the server with an agent's stored SVID (as an attacker on that
    node, or a stale agent, would open it)."""
    return ServerChannel(
        "127.0.0.1",
        server.port,
        trust_domain=TD,
        roots=state.bundle.x509_authorities,
        chain=state.svid.cert_chain,
        key=state.svid.private_key,
    )


def csr(spiffe_id: str | None = None) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US")])
    )
    if spiffe_id:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=False,
        )
    der = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    return key, der


async def batch_new(server: E2EServer, state: AgentState, *params: tuple[str, bytes]) -> list:  # type: ignore[type-arg]
    ch = channel(server, state)
    try:
        resp = await svid_grpc.SVIDStub(ch).BatchNewX509SVID(
            svid_pb2.BatchNewX509SVIDRequest(
                params=[svid_pb2.NewX509SVIDParams(entry_id=e, csr=c) for e, c in params]
            ),
            timeout=10,
        )
    finally:
        ch.close()
    return list(resp.results)


# --- join token -------------------------------------------------------------------------


async def test_reused_join_token_is_refused_invalid_argument(
    server: E2EServer, agents: Callable[..., AgentProcess]
) -> None:
    token, _ = server.token()
    first = agents(server, token=token)
    await first.start()
    await first.wait_ready()
    before = server.agents()[JT + token]

    second = agents(server, token=token)  # another node presenting the same token
    log = await refused(second)
    assert "attestation refused: INVALID_ARGUMENT" in log
    assert "join token does not exist or has already been used" in log
    after = server.agents()
    assert after[JT + token] == before, "the first agent's record is untouched"
    assert first.running


async def test_expired_join_token_is_refused_invalid_argument(
    server: E2EServer, agents: Callable[..., AgentProcess]
) -> None:
    token, expires_at = server.token(ttl=1)
    # The server refuses a token once its expiry is in the past (whole seconds).
    await apoll(lambda: time.time() > expires_at + 0.05, timeout=5, what="the token to expire")
    log = await refused(agents(server, token=token))
    assert "attestation refused: INVALID_ARGUMENT: join token expired" in log
    assert JT + token not in server.agents()
    # SPIRE consumes an expired token: trying again says it does not exist any more
    log = await refused(agents(server, token=token))
    assert "join token does not exist or has already been used" in log
    assert JT + token not in server.agents()


# --- x509pop ----------------------------------------------------------------------------


def pop_ids(server: E2EServer) -> set[str]:
    return {k for k, a in server.agents().items() if a["attestation_type"] == "x509pop"}


async def _attest_past_rate_limit(
    server: E2EServer, attestor: X509PopAgentAttestor, timeout: float = 15.0
) -> AttestationError:
    """The error of an attestation from 127.0.0.1 that got past the server's per-IP limit
    (1 attestation per second, as SPIRE): the agents of the test before were attesting from
    the same address a moment ago, and a RESOURCE_EXHAUSTED answer says nothing about the
    proof. Retried until another answer comes, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        ch = ServerChannel("127.0.0.1", server.port, trust_domain=TD, roots=None)
        try:
            with pytest.raises(AttestationError) as info:
                await attest(ch, attestor, TD)
        finally:
            ch.close()
        status = info.value.status
        limited = status is not None and status.status == Status.RESOURCE_EXHAUSTED
        if not limited or time.monotonic() > deadline:
            return info.value
        await asyncio.sleep(0.25)  # back off as an agent does, then ask again


async def test_x509pop_wrong_proof_is_refused_permission_denied(
    server: E2EServer, pop: X509PopMaterial, agents: Callable[..., AgentProcess]
) -> None:
    known = pop_ids(server)

    # A node certificate from a CA the server does not trust.
    other_ca = make_cert("other-ca", ca=True)
    log = await refused(agents(server, attestor=pop.node("foreign", issuer=other_ca)))
    assert "attestation refused: PERMISSION_DENIED" in log
    assert "certificate verification failed" in log

    # A stolen certificate without its key: the agent refuses to start with it...
    stranger = make_cert("stranger")
    log = await refused(agents(server, attestor=pop.node("stolen", key_of=stranger)))
    assert "the private key does not match the certificate" in log

    # ...and an attacker who answers the challenge with another key is refused by the server.
    victim = make_cert("victim", issuer=pop.root)
    attacker = X509PopAgentAttestor(victim.key, [victim.cert])
    attacker._key = stranger.key  # sign the challenge with a key that is not the cert's
    error = await _attest_past_rate_limit(server, attacker)
    assert error.status is not None
    assert error.status.status == Status.PERMISSION_DENIED
    assert "challenge response verification failed" in str(error)
    assert pop_ids(server) == known, "no x509pop agent was admitted"


# --- banned -----------------------------------------------------------------------------


async def test_banned_agent_is_refused_and_stops(
    server: E2EServer, pop: X509PopMaterial, agents: Callable[..., AgentProcess]
) -> None:
    agent = agents(server, attestor=pop.node("banned-node"), sync_interval="500ms")
    await agent.start()
    await agent.wait_ready()
    agent_id = agent.agent_id()
    stolen = agent.state()  # what the agent held before the ban
    assert stolen is not None
    entry = server.entry(agent_id, "spiffe://example.org/banned-workload", uid_selector())
    assert await fetch_ids(agent.socket_path) == ["spiffe://example.org/banned-workload"]

    assert "Agent banned successfully" in server.ok("agent", "ban", "-spiffeID", agent_id)
    assert server.agents()[agent_id]["banned"] is True

    # The running agent's next sync is refused (AGENT_BANNED): as SPIRE's, it removes its
    # SVID and shuts down, without trying to attest again.
    code = await agent.wait_exit()
    log = agent.log
    assert code == 1, log
    assert "agent is banned: removing SVID and shutting down" in log
    assert log.count("node attested") == 1
    assert not agent.socket_path.exists()
    assert not (agent.data_dir / SVID_FILE).exists()

    # The server signs nothing for the banned agent's SVID.
    with pytest.raises(GRPCError) as info:
        await batch_new(server, stolen, (entry, csr()[1]))
    assert info.value.status == Status.PERMISSION_DENIED

    # A restart attests again (x509pop can) and is refused as SPIRE: "agent is banned".
    await agent.start()
    code = await agent.wait_exit()
    log = agent.log
    assert code == 1, log
    assert "PERMISSION_DENIED: failed to attest: agent is banned" in log
    assert not agent.socket_path.exists()
    record = server.agents()[agent_id]
    assert record["banned"] is True and not record["x509svid_serial_number"]


async def test_banned_and_evicted_agents_get_spire_reasons(
    server: E2EServer, agents: Callable[..., AgentProcess]
) -> None:
    """A call with a banned or evicted agent's SVID carries SPIRE's PermissionDeniedDetails
    reason, which a stock spire-agent needs to shut down or attest again."""
    got, want = {}, {}
    for verb, message, reason in (
        ("ban", "is banned", "AGENT_BANNED"),
        ("evict", "is not attested", "AGENT_NOT_ATTESTED"),
    ):
        token, _ = server.token()
        agent = agents(server, token=token)
        await agent.start()
        await agent.wait_ready()
        state = agent.state()
        assert state is not None
        await agent.stop()
        agent_id = JT + token
        entry = server.entry(agent_id, f"spiffe://example.org/{verb}", uid_selector())
        server.ok("agent", verb, "-spiffeID", agent_id)
        with pytest.raises(GRPCError) as info:
            await batch_new(server, state, (entry, csr()[1]))
        assert info.value.status == Status.PERMISSION_DENIED
        # SPIRE's wording is `agent "<id>" is banned` (Go's %q); the reason is what agents act on
        text = info.value.message or ""
        got[verb] = (agent_id in text and message in text, denied_reason(info.value.details))
        want[verb] = (True, reason)
    assert got == want


# --- evicted ----------------------------------------------------------------------------


async def test_evicted_join_token_agent_is_refused_and_stops(
    server: E2EServer, agents: Callable[..., AgentProcess]
) -> None:
    token, _ = server.token()
    agent = agents(server, token=token, sync_interval="500ms")
    await agent.start()
    await agent.wait_ready()
    agent_id = JT + token
    stolen = agent.state()
    assert stolen is not None
    entry = server.entry(agent_id, "spiffe://example.org/evicted-workload", uid_selector())
    assert await fetch_ids(agent.socket_path) == ["spiffe://example.org/evicted-workload"]

    assert "Agent evicted successfully" in server.ok("agent", "evict", "-spiffeID", agent_id)
    code = await agent.wait_exit()
    log = agent.log
    assert code == 1, log
    assert "agent needs to re-attest: removing SVID and shutting down" in log
    assert "give the agent a new join token" in log
    assert not (agent.data_dir / SVID_FILE).exists()
    assert not agent.socket_path.exists()
    assert agent_id not in server.agents()
    with pytest.raises(GRPCError) as info:
        await batch_new(server, stolen, (entry, csr()[1]))
    assert info.value.status == Status.PERMISSION_DENIED

    # A restart cannot attest again with the spent token.
    log = await refused(agent)
    assert "join token does not exist or has already been used" in log
    assert agent_id not in server.agents()


async def test_evicted_x509pop_agent_attests_again(
    server: E2EServer, pop: X509PopMaterial, agents: Callable[..., AgentProcess]
) -> None:
    agent = agents(server, attestor=pop.node("evicted-node"), sync_interval="500ms")
    await agent.start()
    await agent.wait_ready()
    agent_id = agent.agent_id()
    first_serial = server.agents()[agent_id]["x509svid_serial_number"]
    server.entry(agent_id, "spiffe://example.org/pop-workload", uid_selector())
    assert await fetch_ids(agent.socket_path) == ["spiffe://example.org/pop-workload"]

    server.ok("agent", "evict", "-spiffeID", agent_id)
    await apoll(lambda: agent.log.count("node attested") == 2, timeout=15, what="re-attestation")

    def readmitted() -> bool:
        record = server.agents().get(agent_id)
        return record is not None and record["x509svid_serial_number"] != first_serial

    await apoll(readmitted, timeout=10, what="the agent back in agent list", every=0.2)
    assert agent.running
    assert agent.agent_id() == agent_id, "the same node, the same agent ID"
    assert await fetch_ids(agent.socket_path) == ["spiffe://example.org/pop-workload"]


# --- an entry that is not the agent's ---------------------------------------------------


async def test_svid_for_another_agents_entry_is_refused_per_result(
    server: E2EServer, agents: Callable[..., AgentProcess]
) -> None:
    token, _ = server.token()
    agent = agents(server, token=token)
    await agent.start()
    await agent.wait_ready()
    mine = server.entry(JT + token, "spiffe://example.org/mine", uid_selector())
    other_token, _ = server.token()
    other_agent = agents(server, token=other_token)
    await other_agent.start()
    await other_agent.wait_ready()
    theirs = server.entry(JT + other_token, "spiffe://example.org/theirs", uid_selector())
    state = agent.state()
    assert state is not None

    # The agent's own SVID, over mTLS, asks for the other agent's entry, for an entry that
    # does not exist, and for its own entry with a CSR naming the other's SPIFFE ID.
    results = await batch_new(
        server,
        state,
        (theirs, csr("spiffe://example.org/theirs")[1]),
        ("no-such-entry", csr()[1]),
        (mine, csr("spiffe://example.org/theirs")[1]),
    )
    for refused_result in results[:2]:
        assert refused_result.status.code == Status.NOT_FOUND.value
        assert refused_result.status.message == "entry not found or not authorized"
        assert not refused_result.HasField("svid")
    ok = results[2]
    assert ok.status.code == Status.OK.value
    leaf = x509.load_der_x509_certificate(ok.svid.cert_chain[0])
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/mine"
    ], "the entry, never the CSR, names the SVID"
    assert str(SpiffeId.parse(f"spiffe://{TD}{ok.svid.id.path}")) == "spiffe://example.org/mine"

    # JWT-SVIDs too: the other agent's entry is refused, and no token comes back.
    ch = channel(server, state)
    try:
        stub = svid_grpc.SVIDStub(ch)
        with pytest.raises(GRPCError) as info:
            await stub.NewJWTSVID(
                svid_pb2.NewJWTSVIDRequest(entry_id=theirs, audience=["aud"]), timeout=10
            )
        assert info.value.status == Status.NOT_FOUND
        assert info.value.message == "entry not found or not authorized"
        mine_jwt = await stub.NewJWTSVID(
            svid_pb2.NewJWTSVIDRequest(entry_id=mine, audience=["aud"]), timeout=10
        )
        assert mine_jwt.svid.token
    finally:
        ch.close()
