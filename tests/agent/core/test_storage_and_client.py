"""Agent core without a server: persistence in data_dir, bootstrap bundles, server ID check."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from grpclib.exceptions import GRPCError
from grpclib.health.service import Health
from grpclib.health.v1 import health_grpc, health_pb2
from grpclib.server import Server

from spiffed._proto.spire.api.types import bundle_pb2 as types_bundle
from spiffed._proto.spire.api.types import entry_pb2 as types_entry
from spiffed._proto.spire.api.types import selector_pb2, spiffeid_pb2
from spiffed.agent.attest import JoinTokenAttestor, attestor_from_config
from spiffed.agent.client import (
    ServerChannel,
    ServerClientError,
    bundle_from_proto,
    load_bootstrap_bundle,
    make_csr,
)
from spiffed.agent.manager.manager import entry_from_proto
from spiffed.agent.manager.storage import (
    BUNDLE_FILE,
    KEY_FILE,
    SVID_FILE,
    AgentState,
    StateError,
    load_state,
    save_state,
)
from spiffed.agent.nodeattestor import AgentAttestationError
from spiffed.bundle import SpiffeBundle
from spiffed.keys import KeyType
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.x509 import X509Svid
from spiffed.svid.x509_issue import create_root_ca, create_x509_svid
from spiffed.tls import server_context

TD = TrustDomain("example.org")


class CA:
    def __init__(self, td: TrustDomain = TD) -> None:
        self.key = KeyType.EC_P256.generate()
        self.cert = create_root_ca(td, self.key, ttl=dt.timedelta(hours=1))

    def svid(self, spiffe_id: str) -> X509Svid:
        key = KeyType.EC_P256.generate()
        leaf = create_x509_svid(
            SpiffeId.parse(spiffe_id), key.public_key(), signer_cert=self.cert, signer_key=self.key
        )
        return X509Svid.from_certificates([leaf], key)

    def bundle(self) -> SpiffeBundle:
        return SpiffeBundle(TD, (self.cert,))


def test_state_round_trips_and_key_file_is_0600(tmp_path: Path) -> None:
    ca = CA()
    svid = ca.svid("spiffe://example.org/spire/agent/join_token/abc")
    save_state(tmp_path, AgentState(svid, ca.bundle()))
    mode = stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode)
    assert mode == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([BUNDLE_FILE, KEY_FILE, SVID_FILE])
    loaded = load_state(tmp_path, TD)
    assert loaded is not None
    assert loaded.svid.cert_chain == svid.cert_chain
    assert loaded.svid.private_key.public_key() == svid.private_key.public_key()
    assert loaded.bundle == ca.bundle()


def test_no_state_is_none_and_mismatched_key_is_an_error(tmp_path: Path) -> None:
    assert load_state(tmp_path, TD) is None
    ca = CA()
    save_state(tmp_path, AgentState(ca.svid("spiffe://example.org/spire/agent/a"), ca.bundle()))
    other = ca.svid("spiffe://example.org/spire/agent/b")
    save_state(tmp_path / "other", AgentState(other, ca.bundle()))
    (tmp_path / KEY_FILE).write_bytes((tmp_path / "other" / KEY_FILE).read_bytes())
    with pytest.raises(StateError, match="private key does not match"):
        load_state(tmp_path, TD)


def test_state_of_another_trust_domain_is_refused(tmp_path: Path) -> None:
    ca = CA()
    save_state(tmp_path, AgentState(ca.svid("spiffe://example.org/spire/agent/a"), ca.bundle()))
    with pytest.raises(StateError):
        load_state(tmp_path, TrustDomain("other.org"))


def test_bootstrap_bundle_pem_and_spiffe_formats(tmp_path: Path) -> None:
    ca = CA()
    pem = tmp_path / "b.pem"
    pem.write_bytes(ca.bundle().x509_bundle().marshal_pem())
    spiffe = tmp_path / "b.json"
    spiffe.write_bytes(ca.bundle().marshal())
    assert load_bootstrap_bundle(pem, "pem", TD).authorities == (ca.cert,)
    assert load_bootstrap_bundle(spiffe, "spiffe", TD).authorities == (ca.cert,)
    with pytest.raises(ServerClientError, match="cannot parse PEM"):
        load_bootstrap_bundle(spiffe, "pem", TD)
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    with pytest.raises(ServerClientError, match="holds no certificates"):
        load_bootstrap_bundle(empty, "pem", TD)


def test_bundle_from_proto_keeps_x509_and_jwt_authorities() -> None:
    ca = CA()
    from cryptography.hazmat.primitives import serialization

    jwt_key = KeyType.EC_P256.generate().public_key()
    msg = types_bundle.Bundle(
        trust_domain="example.org",
        x509_authorities=[
            types_bundle.X509Certificate(asn1=ca.cert.public_bytes(serialization.Encoding.DER))
        ],
        jwt_authorities=[
            types_bundle.JWTKey(
                key_id="k1",
                public_key=jwt_key.public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
            )
        ],
        sequence_number=3,
    )
    bundle = bundle_from_proto(msg)
    assert bundle.x509_authorities == (ca.cert,)
    assert dict(bundle.jwt_authorities) == {"k1": jwt_key}
    assert bundle.sequence == 3


def test_entry_from_proto() -> None:
    msg = types_entry.Entry(
        id="e1",
        spiffe_id=spiffeid_pb2.SPIFFEID(trust_domain="example.org", path="/web"),
        selectors=[selector_pb2.Selector(type="unix", value="uid:1000")],
        federates_with=["other.org"],
        revision_number=2,
        dns_names=["web"],
    )
    e = entry_from_proto(msg)
    assert str(e.spiffe_id) == "spiffe://example.org/web"
    assert {(s.type, s.value) for s in e.selectors} == {("unix", "uid:1000")}
    assert e.federates_with == frozenset({TrustDomain("other.org")})
    assert (e.revision, e.dns_names) == (2, ("web",))


def test_join_token_attestor_payload_and_no_challenges() -> None:
    a = JoinTokenAttestor("tok")
    assert (a.name, a.payload()) == ("join_token", b"tok")
    with pytest.raises(AgentAttestationError):
        a.respond(b"x")
    # no token: fine for a restart with a stored SVID, an error only when attesting
    tokenless = attestor_from_config("join_token", {}, None)
    with pytest.raises(AgentAttestationError, match="needs join_token"):
        tokenless.payload()
    with pytest.raises(AgentAttestationError, match="not supported"):
        attestor_from_config("aws_iid", {}, None)


def test_csr_is_signed_by_the_key() -> None:
    from cryptography import x509

    key = KeyType.EC_P256.generate()
    csr = x509.load_der_x509_csr(make_csr(key))
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()


async def _serve(ca: CA, presented: X509Svid) -> tuple[Server, int]:
    ctx = server_context(
        presented.cert_chain, presented.private_key, [ca.cert], require_client_certificate=False
    )
    server = Server([Health()])
    await server.start("127.0.0.1", 0, ssl=ctx)
    assert server._server is not None
    port = server._server.sockets[0].getsockname()[1]
    return server, port


async def _check(channel: ServerChannel) -> object:
    return await health_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())


async def test_channel_accepts_the_trust_domain_server_id() -> None:
    ca = CA()
    server, port = await _serve(ca, ca.svid("spiffe://example.org/spire/server"))
    try:
        channel = ServerChannel("127.0.0.1", port, trust_domain=TD, roots=[ca.cert])
        try:
            resp = await _check(channel)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING  # type: ignore[attr-defined]
        finally:
            channel.close()
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "presented", ["spiffe://example.org/web", "spiffe://example.org/spire/agent/x"]
)
async def test_channel_refuses_a_server_with_another_id(presented: str) -> None:
    ca = CA()
    server, port = await _serve(ca, ca.svid(presented))
    try:
        channel = ServerChannel("127.0.0.1", port, trust_domain=TD, roots=[ca.cert])
        try:
            with pytest.raises(ServerClientError, match=f"presented {presented}, expected"):
                await _check(channel)
        finally:
            channel.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_channel_refuses_a_server_outside_the_bundle() -> None:
    ca, stranger = CA(), CA()
    server, port = await _serve(stranger, stranger.svid("spiffe://example.org/spire/server"))
    try:
        channel = ServerChannel("127.0.0.1", port, trust_domain=TD, roots=[ca.cert])
        try:
            with pytest.raises((ConnectionError, GRPCError)):
                await _check(channel)
        finally:
            channel.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_expired_stored_svid_is_not_reused(tmp_path: Path) -> None:
    from spiffed.agent.cache import IdentityCache
    from spiffed.agent.manager import Manager
    from tests.interop.spireserver.server import free_port

    ca = CA()
    key = KeyType.EC_P256.generate()
    leaf = create_x509_svid(
        SpiffeId.parse("spiffe://example.org/spire/agent/join_token/old"),
        key.public_key(),
        signer_cert=ca.cert,
        signer_key=ca.key,
        ttl=dt.timedelta(minutes=1),
        now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10),
    )
    save_state(tmp_path, AgentState(X509Svid.from_certificates([leaf], key), ca.bundle()))
    m = Manager(
        trust_domain=TD,
        server_address="127.0.0.1",
        server_port=free_port(),  # nobody listens: attesting again fails to connect
        data_dir=tmp_path,
        attestor=JoinTokenAttestor("tok"),
        cache=IdentityCache(TD),
        bootstrap_roots=None,
    )
    with pytest.raises(ConnectionError, match="cannot connect to the server"):
        await m.initialize()
    assert m.attestations == 0


async def test_valid_stored_svid_is_reused_without_a_server(tmp_path: Path) -> None:
    from spiffed.agent.cache import IdentityCache
    from spiffed.agent.manager import Manager
    from tests.interop.spireserver.server import free_port

    ca = CA()
    svid = ca.svid("spiffe://example.org/spire/agent/join_token/old")
    save_state(tmp_path, AgentState(svid, ca.bundle()))
    cache = IdentityCache(TD)
    m = Manager(
        trust_domain=TD,
        server_address="127.0.0.1",
        server_port=free_port(),
        data_dir=tmp_path,
        attestor=JoinTokenAttestor("tok"),
        cache=cache,
        bootstrap_roots=None,
    )
    await m.initialize()
    assert m.svid.cert_chain == svid.cert_chain
    assert cache.bundle == ca.bundle(), "the stored bundle is served until the first sync"


def test_next_sync_comes_at_the_first_renewal_time_when_before_the_poll(tmp_path: Path) -> None:
    """Short-lived SVIDs rotate at their renewal time, not at the next 5 s poll."""
    from spiffed.agent.cache import IdentityCache
    from spiffed.agent.manager import Manager
    from spiffed.agent.manager.manager import MIN_SYNC_DELAY

    m = Manager(
        trust_domain=TD,
        server_address="127.0.0.1",
        server_port=1,
        data_dir=tmp_path,
        attestor=JoinTokenAttestor("tok"),
        cache=IdentityCache(TD),
        sync_interval=3600.0,
    )
    assert m.next_sync_delay() == 3600.0
    now = dt.datetime.now(dt.UTC)
    m._renew_at["far"] = now + dt.timedelta(hours=10)
    assert m.next_sync_delay() == 3600.0
    m._renew_at["soon"] = now + dt.timedelta(minutes=10)
    assert 0 < 600 - m.next_sync_delay() < 300  # about ten minutes, not the hour
    m._agent_renew_at = now - dt.timedelta(seconds=1)  # already due
    assert m.next_sync_delay() == MIN_SYNC_DELAY
