"""The server's listeners in-process: who is admitted on the Unix socket and on TLS (§1.1, §1.3).

A real CA, datastore and the API services, on a real Unix socket and a real TLS port.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from spiffed import tls
from spiffed._proto.spire.api.server.bundle.v1 import bundle_grpc, bundle_pb2
from spiffed._proto.spire.api.server.entry.v1 import entry_grpc, entry_pb2
from spiffed.keys import KeyType, PrivateKey
from spiffed.server.api.services import build_services
from spiffed.server.ca.manager import CaManager, CaSettings
from spiffed.server.context import ServerContext
from spiffed.server.datastore import DataStore, RegistrationEntry, Selector
from spiffed.server.endpoints import Endpoints
from spiffed.server.keymanager.memory import MemoryKeyManager
from spiffed.server.run_store import DatastoreCaStore
from spiffed.server.svid import ServerSvid
from spiffed.spiffeid import SpiffeId, TrustDomain

TD = TrustDomain.parse("example.org")
ADMIN = SpiffeId.parse("spiffe://example.org/ops/admin")
ENTRY_ADMIN = SpiffeId.parse("spiffe://example.org/ops/entry-admin")
WORKLOAD = SpiffeId.parse("spiffe://example.org/workload")


@dataclass
class Running:
    endpoints: Endpoints
    ca: CaManager
    store: DatastoreCaStore
    socket_path: Path
    roots: list[x509.Certificate]

    @property
    def port(self) -> int:
        assert self.endpoints.tcp_address is not None
        return self.endpoints.tcp_address[1]

    def svid(self, spiffe_id: SpiffeId) -> tuple[list[x509.Certificate], PrivateKey]:
        key = KeyType.EC_P256.generate()
        return self.ca.sign_x509_svid(spiffe_id, key.public_key()), key

    def tls_channel(
        self, chain: list[x509.Certificate] | None = None, key: PrivateKey | None = None
    ) -> Channel:
        ctx = tls.client_context(self.roots, chain or (), key)
        return Channel("127.0.0.1", self.port, ssl=ctx)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Running]:
    ds = await DataStore.memory()
    store = DatastoreCaStore(ds, TD.name)
    ca = CaManager(CaSettings(trust_domain=TD), MemoryKeyManager(), store)
    await ca.start()
    svid = ServerSvid(ca)
    svid.rotate(force=True)
    ctx = ServerContext(TD, ds, ca, svid, admin_ids=frozenset({ADMIN}))
    sock = tmp_path / "private" / "api.sock"
    endpoints = Endpoints(
        ctx, build_services(ctx), socket_path=sock, bind_address="127.0.0.1", bind_port=0
    )
    svid.on_rotate(endpoints.set_svid)
    bundle = await store.get_bundle()
    endpoints.set_bundle(bundle)
    roots = [x509.load_der_x509_certificate(a.asn1) for a in bundle.x509_authorities]
    await endpoints.start()
    try:
        yield Running(endpoints, ca, store, sock, roots)
    finally:
        await endpoints.stop()
        await ds.close()


async def test_socket_directory_is_private_and_local_caller_is_admitted(server: Running) -> None:
    assert server.socket_path.parent.stat().st_mode & 0o777 == 0o700
    channel = Channel(path=str(server.socket_path))
    try:
        reply = await HealthStub(channel).Check(HealthCheckRequest())
        assert reply.status == HealthCheckResponse.SERVING
        count = await entry_grpc.EntryStub(channel).CountEntries(entry_pb2.CountEntriesRequest())
        assert count.count == 0
    finally:
        channel.close()


async def test_socket_removed_on_stop(tmp_path: Path, server: Running) -> None:
    await server.endpoints.stop()
    assert not server.socket_path.exists()


async def test_tls_presents_server_svid(server: Running) -> None:
    channel = server.tls_channel()
    try:
        reply = await bundle_grpc.BundleStub(channel).GetBundle(bundle_pb2.GetBundleRequest())
        assert reply.trust_domain == "example.org"
        assert len(reply.x509_authorities) >= 1
    finally:
        channel.close()


async def test_tls_without_certificate_refused_admin_rpc(server: Running) -> None:
    channel = server.tls_channel()
    try:
        with pytest.raises(GRPCError) as err:
            await entry_grpc.EntryStub(channel).CountEntries(entry_pb2.CountEntriesRequest())
        assert err.value.status is Status.PERMISSION_DENIED
    finally:
        channel.close()


async def test_tls_health_is_not_served(server: Running) -> None:
    chain, key = server.svid(ADMIN)
    channel = server.tls_channel(chain, key)
    try:
        with pytest.raises(GRPCError) as err:
            await HealthStub(channel).Check(HealthCheckRequest())
        # grpclib answers an unrouted method with a bare UNIMPLEMENTED abort, which its
        # client reports as UNKNOWN ("Missing content-type header").
        assert err.value.status in (Status.UNIMPLEMENTED, Status.UNKNOWN)
    finally:
        channel.close()


async def test_tls_non_admin_svid_refused_admin_id_admitted(server: Running) -> None:
    chain, key = server.svid(WORKLOAD)
    channel = server.tls_channel(chain, key)
    try:
        with pytest.raises(GRPCError) as err:
            await entry_grpc.EntryStub(channel).CountEntries(entry_pb2.CountEntriesRequest())
        assert err.value.status is Status.PERMISSION_DENIED
        got = await bundle_grpc.BundleStub(channel).GetBundle(bundle_pb2.GetBundleRequest())
        assert got.trust_domain == "example.org"
    finally:
        channel.close()
    chain, key = server.svid(ADMIN)
    channel = server.tls_channel(chain, key)
    try:
        count = await entry_grpc.EntryStub(channel).CountEntries(entry_pb2.CountEntriesRequest())
        assert count.count == 0
    finally:
        channel.close()


async def test_tls_admin_entry_grants_admin(server: Running) -> None:
    ds = server.endpoints._ctx.datastore
    chain, key = server.svid(ENTRY_ADMIN)
    channel = server.tls_channel(chain, key)
    try:
        stub = entry_grpc.EntryStub(channel)
        with pytest.raises(GRPCError) as err:
            await stub.CountEntries(entry_pb2.CountEntriesRequest())
        assert err.value.status is Status.PERMISSION_DENIED
        await ds.create_entry(
            RegistrationEntry(
                spiffe_id=str(ENTRY_ADMIN),
                parent_id="spiffe://example.org/spire/server",
                selectors=(Selector("unix", "uid:0"),),
                admin=True,
            )
        )
        count = await stub.CountEntries(entry_pb2.CountEntriesRequest())
        assert count.count == 1
    finally:
        channel.close()


async def test_tls_revoked_root_checked_on_every_request(server: Running) -> None:
    """A connection made while a root was trusted loses access once the bundle drops it."""
    chain, key = server.svid(ADMIN)
    channel = server.tls_channel(chain, key)
    try:
        stub = entry_grpc.EntryStub(channel)
        assert (await stub.CountEntries(entry_pb2.CountEntriesRequest())).count == 0
        bundle = await server.store.get_bundle()
        del bundle.x509_authorities[:]
        server.endpoints.set_bundle(bundle)
        with pytest.raises(GRPCError) as err:
            await stub.CountEntries(entry_pb2.CountEntriesRequest())
        assert err.value.status in (Status.UNAUTHENTICATED, Status.PERMISSION_DENIED)
    finally:
        channel.close()


def test_client_context_fixture_checks_server_id(server: Running) -> None:
    leaf = server.endpoints._ctx.server_svid.chain[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/spire/server"
    ]
    assert isinstance(tls.client_context([leaf]), ssl.SSLContext)


async def test_tls_agent_role_needs_current_serial_and_not_banned(server: Running) -> None:
    """§1.3: an agent caller is an attested node presenting its current SVID."""
    from spiffed.server.datastore import AttestedNode

    ds = server.endpoints._ctx.datastore
    agent_id = SpiffeId.parse("spiffe://example.org/spire/agent/join_token/t1")
    chain, key = server.svid(agent_id)
    req = bundle_pb2.GetFederatedBundleRequest(trust_domain="other.org")

    async def status() -> Status:
        channel = server.tls_channel(chain, key)
        try:
            await bundle_grpc.BundleStub(channel).GetFederatedBundle(req)
        except GRPCError as exc:
            return exc.status
        finally:
            channel.close()
        return Status.OK

    # not attested: refused before the handler
    assert await status() is Status.PERMISSION_DENIED
    await ds.create_node(
        AttestedNode(
            spiffe_id=str(agent_id),
            attestation_data_type="join_token",
            cert_serial_number=str(chain[0].serial_number + 1),
            cert_not_after=int(chain[0].not_valid_after_utc.timestamp()),
        )
    )
    # attested, but this is not its current SVID
    assert await status() is Status.PERMISSION_DENIED
    await ds.delete_node(str(agent_id))
    await ds.create_node(
        AttestedNode(
            spiffe_id=str(agent_id),
            attestation_data_type="join_token",
            cert_serial_number=str(chain[0].serial_number),
            cert_not_after=int(chain[0].not_valid_after_utc.timestamp()),
        )
    )
    # admitted: the handler answers (no such federated bundle)
    assert await status() is Status.NOT_FOUND
    await ds.ban_node(str(agent_id))
    assert await status() is Status.PERMISSION_DENIED


async def test_rotated_server_svid_presented_on_new_handshakes(server: Running) -> None:
    svid = server.endpoints._ctx.server_svid
    first = svid.chain[0]
    assert svid.rotate(force=True)
    second = svid.chain[0]
    assert second.serial_number != first.serial_number

    ctx = tls.client_context(server.roots)
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        assert tls.peer_certificate(ssl_object) == second
    finally:
        writer.close()


async def test_stop_does_not_wait_forever_for_open_streams(server: Running) -> None:
    """A stream that never ends (Health.Watch) cannot hold shutdown past the grace period."""
    channel = Channel(path=str(server.socket_path))
    stream = HealthStub(channel).Watch.open()
    await asyncio.wait_for(stream.__aenter__(), 5)
    try:
        await asyncio.wait_for(stream.send_message(HealthCheckRequest(), end=True), 5)
        first = await asyncio.wait_for(stream.recv_message(), 5)
        assert first is not None
        assert first.status == HealthCheckResponse.SERVING
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(server.endpoints.stop(grace=0.5), 10)
        assert loop.time() - started < 5
        assert not server.socket_path.exists()
    finally:
        channel.close()
