"""SPIFFE mTLS from X509Sources of the in-process agent: rotation, CA change, authorizers,
attackers (unauthorized ID, untrusted CA, another trust domain's CA), grpclib, http.server."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from grpclib.client import Channel
from grpclib.events import RecvRequest, listen
from grpclib.health.service import Health
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.server import Server

from spiffed.authorize import (
    AuthorizationError,
    authorize_any,
    authorize_id,
    authorize_if,
    authorize_member_of,
    authorize_one_of,
)
from spiffed.backoff import Backoff
from spiffed.bundle import SpiffeBundle, X509Bundle
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.x509 import X509Svid
from spiffed.svid.x509_issue import create_intermediate_ca, create_x509_svid
from spiffed.tls import (
    PeerRejectedError,
    SpiffeHTTPServer,
    SpiffeTls,
    StaticSource,
    parse_certificate_message,
    peer_certificate,
    peer_spiffe_id,
)
from spiffed.workloadapi import X509Source
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

SERVER_ID = SpiffeId.from_path(TD, "/server")
CLIENT_ID = SpiffeId.from_path(TD, "/client")
INTRUDER_ID = SpiffeId.from_path(TD, "/intruder")


def pick(spiffe_id: SpiffeId) -> Callable[[Sequence[X509Svid]], X509Svid]:
    def picker(svids: Sequence[X509Svid]) -> X509Svid:
        return next(s for s in svids if s.spiffe_id == spiffe_id)

    return picker


def fast() -> Backoff:
    return Backoff(initial=0.01, maximum=0.05)


async def until(predicate: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(DEADLINE):
        while not predicate():
            await asyncio.sleep(0.01)
    assert predicate(), what


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    async with running_agent(tmp_path / "agent.sock") as a:
        a.add(
            entry("server", "/server", MY_UID, federates_with=[FED]),
            entry("client", "/client", MY_UID),
            entry("intruder", "/intruder", MY_UID),
        )
        yield a


async def source_for(agent: Agent, spiffe_id: SpiffeId) -> X509Source:
    return await X509Source(
        address=f"unix://{agent.socket_path}", picker=pick(spiffe_id), backoff=fast
    ).start()


@dataclass
class EchoServer:
    """An asyncio server over SPIFFE mTLS that records each client it served."""

    tls: SpiffeTls
    served: list[tuple[SpiffeId | None, x509.Certificate | None]] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> int:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            cert = peer_certificate(writer.get_extra_info("ssl_object"))
            self.served.append((peer_spiffe_id(writer), cert))
            writer.write(await reader.readexactly(4))
            await writer.drain()
            writer.close()

        self.server = await self.tls.start_server(on_client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def exchange(tls: SpiffeTls, port: int) -> tuple[SpiffeId | None, x509.Certificate | None]:
    """Connect, echo 4 bytes; return the server's verified ID and certificate."""
    async with asyncio.timeout(DEADLINE):
        reader, writer = await tls.open_connection("127.0.0.1", port)
        try:
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            return peer_spiffe_id(writer), peer_certificate(writer.get_extra_info("ssl_object"))
        finally:
            writer.close()


async def refused_by_server(tls: SpiffeTls, port: int, server: EchoServer) -> None:
    """The client's handshake may complete (TLS 1.3), but the server drops it before the
    application sees it."""
    before = len(server.served)
    async with asyncio.timeout(DEADLINE):
        try:
            reader, writer = await tls.open_connection("127.0.0.1", port)
        except (ssl.SSLError, ConnectionError):
            return
        try:
            writer.write(b"ping")
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
                await reader.readexactly(4)
        finally:
            writer.close()
    assert len(server.served) == before


@pytest.fixture
async def pair(agent: Agent) -> AsyncIterator[tuple[X509Source, X509Source]]:
    server_source = await source_for(agent, SERVER_ID)
    client_source = await source_for(agent, CLIENT_ID)
    yield server_source, client_source
    await server_source.close()
    await client_source.close()


async def test_mtls_pair_follows_svid_rotation(agent: Agent, pair: Any) -> None:
    server_source, client_source = pair
    echo = EchoServer(SpiffeTls(server_source, authorize_id(CLIENT_ID)))
    port = await echo.start()
    client = SpiffeTls(client_source, authorize_id(SERVER_ID))
    try:
        server_id, server_cert = await exchange(client, port)
        assert server_id == SERVER_ID
        assert server_cert == server_source.get_x509_svid().leaf
        assert echo.served[-1] == (CLIENT_ID, client_source.get_x509_svid().leaf)

        entries = {e.id: e for e in agent.cache.entries()}
        new_server = agent.rotate(entries["server"])
        new_client = agent.rotate(entries["client"])
        await until(lambda: server_source.get_x509_svid().leaf == new_server.leaf, "server")
        await until(lambda: client_source.get_x509_svid().leaf == new_client.leaf, "client")

        _, server_cert = await exchange(client, port)
        assert server_cert == new_server.leaf  # the listener was never restarted
        assert echo.served[-1] == (CLIENT_ID, new_client.leaf)  # the client context reloaded
    finally:
        await echo.stop()


async def test_mtls_pair_survives_ca_change(agent: Agent, pair: Any) -> None:
    """New root added to the bundle, then SVIDs from the new CA, then the old root removed:
    every step's new connections succeed; an SVID of the old CA is refused at the end."""
    server_source, client_source = pair
    echo = EchoServer(SpiffeTls(server_source, authorize_id(CLIENT_ID)))
    port = await echo.start()
    client = SpiffeTls(client_source, authorize_id(SERVER_ID))
    old, new = agent.ca, Authority(TD)
    old_client_svid = client_source.get_x509_svid()
    entries = {e.id: e for e in agent.cache.entries()}

    def bundle_has(*roots: x509.Certificate) -> Callable[[], bool]:
        def check() -> bool:
            return all(
                (b := s.get_x509_bundle_for_trust_domain(TD)) is not None and b.authorities == roots
                for s in (server_source, client_source)
            )

        return check

    try:
        assert (await exchange(client, port))[0] == SERVER_ID

        # 1. the new root is published next to the old one
        agent.cache.set_bundles(SpiffeBundle(TD, (old.ca_cert, new.ca_cert)), {})
        await until(bundle_has(old.ca_cert, new.ca_cert), "both roots")
        assert (await exchange(client, port))[0] == SERVER_ID

        # 2. the new CA signs the SVIDs
        agent.ca = new
        new_server = agent.rotate(entries["server"])
        new_client = agent.rotate(entries["client"])
        await until(lambda: server_source.get_x509_svid().leaf == new_server.leaf, "server")
        await until(lambda: client_source.get_x509_svid().leaf == new_client.leaf, "client")
        _, server_cert = await exchange(client, port)
        assert server_cert == new_server.leaf
        assert echo.served[-1] == (CLIENT_ID, new_client.leaf)

        # 3. the old root is removed
        agent.cache.set_bundles(SpiffeBundle(TD, (new.ca_cert,)), {})
        await until(bundle_has(new.ca_cert), "new root only")
        assert (await exchange(client, port))[0] == SERVER_ID

        # an SVID of the removed CA no longer gets in, although it is still valid
        stale = SpiffeTls(
            StaticSource.of(old_client_svid, *client_source.get_x509_bundles().values()),
            authorize_id(SERVER_ID),
        )
        await refused_by_server(stale, port, echo)
        # and a server still presenting one is refused by an up-to-date client
        stale_server = EchoServer(
            SpiffeTls(StaticSource.of(old_client_svid, X509Bundle(TD, (new.ca_cert,))))
        )
        stale_port = await stale_server.start()
        try:
            # OpenSSL (root not in the fresh store) or the SPIFFE check refuses it first
            with pytest.raises(ssl.SSLCertVerificationError):
                await exchange(SpiffeTls(client_source, authorize_any()), stale_port)
        finally:
            await stale_server.stop()
    finally:
        await echo.stop()


async def test_unauthorized_client_id_is_refused(agent: Agent, pair: Any) -> None:
    server_source, _ = pair
    echo = EchoServer(SpiffeTls(server_source, authorize_id(CLIENT_ID)))
    port = await echo.start()
    intruder_source = await source_for(agent, INTRUDER_ID)
    try:
        intruder = SpiffeTls(intruder_source, authorize_id(SERVER_ID))
        await refused_by_server(intruder, port, echo)
        assert echo.served == []
    finally:
        await intruder_source.close()
        await echo.stop()


async def test_client_without_certificate_is_refused(agent: Agent, pair: Any) -> None:
    server_source, _ = pair
    echo = EchoServer(SpiffeTls(server_source))
    port = await echo.start()
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(DEADLINE):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=anonymous)
            writer.write(b"ping")
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
                await reader.readexactly(4)
            writer.close()
        assert echo.served == []
    finally:
        await echo.stop()


async def test_client_refuses_unauthorized_server_id(agent: Agent, pair: Any) -> None:
    server_source, client_source = pair
    echo = EchoServer(SpiffeTls(server_source))
    port = await echo.start()
    try:
        expecting_other = SpiffeTls(client_source, authorize_id(INTRUDER_ID))
        with pytest.raises(PeerRejectedError, match="not authorized") as err:
            await exchange(expecting_other, port)
        assert err.value.peer_id == SERVER_ID
        assert isinstance(err.value, ssl.SSLCertVerificationError)
    finally:
        await echo.stop()


async def test_peer_from_untrusted_ca_is_refused(agent: Agent, pair: Any) -> None:
    """An attacker with its own CA issues itself the client's very ID."""
    server_source, client_source = pair
    echo = EchoServer(SpiffeTls(server_source, authorize_id(CLIENT_ID)))
    port = await echo.start()
    rogue_ca = Authority(TD)
    forged = rogue_ca.svid(CLIENT_ID)
    try:
        attacker = SpiffeTls(
            StaticSource.of(forged, *client_source.get_x509_bundles().values()),
            authorize_any(),
        )
        await refused_by_server(attacker, port, echo)
        assert echo.served == []
        # and the other way round: a client does not accept a server from that CA
        rogue = EchoServer(
            SpiffeTls(StaticSource.of(rogue_ca.svid(SERVER_ID), agent.ca.bundle().x509_bundle()))
        )
        rogue_port = await rogue.start()
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await exchange(SpiffeTls(client_source, authorize_id(SERVER_ID)), rogue_port)
        finally:
            await rogue.stop()
    finally:
        await echo.stop()


def forge_svid(spiffe_id: SpiffeId, ca: Authority) -> X509Svid:
    """A leaf for ``spiffe_id`` signed by ``ca`` whatever its trust domain (an attacker
    holding a federated CA's key; spiffed's own issuer refuses to do this)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]), True
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, True, False, False, False, False), True
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.ca_key.public_key()), False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(ca.ca_key, hashes.SHA256())
    )
    return X509Svid.from_certificates([leaf], key)


async def test_federated_peer_accepted_and_cross_domain_forgery_refused(
    agent: Agent, pair: Any
) -> None:
    """The server trusts FED's bundle for FED's IDs only: FED's CA cannot mint IDs of
    example.org (X5-21), although OpenSSL alone would accept the chain."""
    server_source, _ = pair
    agent.set_federation(agent.fed.bundle())
    await until(lambda: server_source.get_x509_bundle_for_trust_domain(FED) is not None, "fed")
    echo = EchoServer(
        SpiffeTls(server_source, authorize_one_of(CLIENT_ID, SpiffeId.from_path(FED, "/partner")))
    )
    port = await echo.start()
    fed_roots = X509Bundle(TD, (agent.ca.ca_cert,)), X509Bundle(FED, (agent.fed.ca_cert,))
    try:
        partner = agent.fed.svid(SpiffeId.from_path(FED, "/partner"))
        await exchange(SpiffeTls(StaticSource.of(partner, *fed_roots)), port)
        assert echo.served[-1][0] == SpiffeId.from_path(FED, "/partner")

        forged = forge_svid(CLIENT_ID, agent.fed)  # FED's CA signing an example.org ID
        with pytest.raises(PeerRejectedError, match="X5-20"):  # not anchored in TD's bundle
            SpiffeTls(server_source).verify_peer_chain(forged.cert_chain)
        await refused_by_server(SpiffeTls(StaticSource.of(forged, *fed_roots)), port, echo)
        assert all(peer != CLIENT_ID for peer, _ in echo.served)
    finally:
        await echo.stop()


async def test_grpclib_server_and_client_over_spiffe_tls(agent: Agent, pair: Any) -> None:
    server_source, client_source = pair
    server_tls = SpiffeTls(server_source, authorize_id(CLIENT_ID), alpn_protocols=["h2"])
    client_tls = SpiffeTls(client_source, authorize_id(SERVER_ID), alpn_protocols=["h2"])
    server = Server([Health()])
    callers: list[SpiffeId | None] = []

    async def on_request(event: RecvRequest) -> None:
        callers.append(peer_spiffe_id(event.peer))

    listen(server, RecvRequest, on_request)
    await server.start("127.0.0.1", 0, ssl=server_tls.server_context())
    assert server._server is not None
    port = server._server.sockets[0].getsockname()[1]
    channel = Channel("127.0.0.1", port, ssl=client_tls.client_context())
    try:
        async with asyncio.timeout(DEADLINE):
            reply = await HealthStub(channel).Check(HealthCheckRequest())
        assert reply.status == HealthCheckResponse.SERVING
        assert callers == [CLIENT_ID]

        intruder_source = await source_for(agent, INTRUDER_ID)
        intruder = SpiffeTls(intruder_source, authorize_id(SERVER_ID), alpn_protocols=["h2"])
        bad = Channel("127.0.0.1", port, ssl=intruder.client_context())
        try:
            with pytest.raises(Exception):  # noqa: B017 (grpclib reports it its way)
                async with asyncio.timeout(DEADLINE):
                    await HealthStub(bad).Check(HealthCheckRequest())
            assert callers == [CLIENT_ID]
        finally:
            bad.close()
            await intruder_source.close()
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


class WhoAmI(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = str(peer_spiffe_id(self.request)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def static_pki() -> Iterator[tuple[Authority, X509Bundle]]:
    ca = Authority(TD)
    yield ca, X509Bundle(TD, (ca.ca_cert,))


def test_http_server_with_http_client(static_pki: Any) -> None:
    ca, bundle = static_pki
    server_tls = SpiffeTls(StaticSource.of(ca.svid(SERVER_ID), bundle), authorize_id(CLIENT_ID))
    httpd = SpiffeHTTPServer(("127.0.0.1", 0), WhoAmI, server_tls)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    port = httpd.server_address[1]
    try:
        client_tls = SpiffeTls(StaticSource.of(ca.svid(CLIENT_ID), bundle), authorize_id(SERVER_ID))
        conn = http.client.HTTPSConnection(
            "127.0.0.1", port, context=client_tls.client_context(), timeout=DEADLINE
        )
        conn.request("GET", "/")
        assert conn.getresponse().read() == str(CLIENT_ID).encode()
        conn.close()

        intruder_tls = SpiffeTls(StaticSource.of(ca.svid(INTRUDER_ID), bundle))
        conn = http.client.HTTPSConnection(
            "127.0.0.1", port, context=intruder_tls.client_context(), timeout=DEADLINE
        )
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            conn.request("GET", "/")
            conn.getresponse().read()
        conn.close()
        assert any("not authorized" in r for r in httpd.refused)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(DEADLINE)


async def test_chain_with_intermediate_ca_verified_to_the_bundle_root() -> None:
    """The peer's intermediates come from its Certificate message (Python 3.11's ssl gives
    only the leaf), so SVIDs from an intermediate CA (UpstreamAuthority) work."""
    root = Authority(TD)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = create_intermediate_ca(
        TD, inter_key.public_key(), signer_cert=root.ca_cert, signer_key=root.ca_key
    )

    def svid(spiffe_id: SpiffeId) -> X509Svid:
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = create_x509_svid(
            spiffe_id, key.public_key(), signer_cert=inter, signer_key=inter_key
        )
        return X509Svid.from_certificates([leaf, inter], key)

    bundle = X509Bundle(TD, (root.ca_cert,))
    echo = EchoServer(SpiffeTls(StaticSource.of(svid(SERVER_ID), bundle), authorize_id(CLIENT_ID)))
    port = await echo.start()
    try:
        client = SpiffeTls(StaticSource.of(svid(CLIENT_ID), bundle), authorize_id(SERVER_ID))
        assert (await exchange(client, port))[0] == SERVER_ID
        assert echo.served[-1][0] == CLIENT_ID
        # a leaf alone (intermediate withheld) does not verify
        lone = svid(CLIENT_ID)
        withheld = X509Svid.from_certificates([lone.leaf], lone.private_key)
        await refused_by_server(SpiffeTls(StaticSource.of(withheld, bundle)), port, echo)
    finally:
        await echo.stop()


async def test_tls12_client_is_refused(static_pki: Any) -> None:
    ca, bundle = static_pki
    echo = EchoServer(SpiffeTls(StaticSource.of(ca.svid(SERVER_ID), bundle)))
    port = await echo.start()
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            async with asyncio.timeout(DEADLINE):
                await asyncio.open_connection("127.0.0.1", port, ssl=old)
        assert echo.served == []
    finally:
        await echo.stop()


def test_authorizers() -> None:
    chains: list[list[x509.Certificate]] = []
    authorize_any()(CLIENT_ID, chains)
    authorize_id(CLIENT_ID)(CLIENT_ID, chains)
    authorize_id("spiffe://example.org/client")(CLIENT_ID, chains)
    with pytest.raises(AuthorizationError, match=r"unexpected ID 'spiffe://example\.org/server'"):
        authorize_id(CLIENT_ID)(SERVER_ID, chains)
    authorize_one_of(CLIENT_ID, SERVER_ID)(SERVER_ID, chains)
    with pytest.raises(AuthorizationError):
        authorize_one_of(CLIENT_ID, SERVER_ID)(INTRUDER_ID, chains)
    with pytest.raises(ValueError, match="at least one"):
        authorize_one_of()
    authorize_member_of(TD)(CLIENT_ID, chains)
    with pytest.raises(AuthorizationError, match=r"a member of 'federated\.org'"):
        authorize_member_of("federated.org")(CLIENT_ID, chains)
    lower = authorize_if(lambda i: i.path.startswith("/cl"), "a /cl* workload")
    lower(CLIENT_ID, chains)
    with pytest.raises(AuthorizationError, match="is not a /cl\\* workload"):
        lower(SERVER_ID, chains)
    assert isinstance(TrustDomain("x.org"), TrustDomain)


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (b"", "not a Certificate"),
        (b"\x0b\x00\x00\x05\x00\x00\x00\x01", "length does not match"),
        (b"\x0b\x00\x00\x04\x00\x00\x00\x05", "certificate_list length"),
        (b"\x0b\x00\x00\x07\x00\x00\x00\x03\x00\x00\x00", "bad certificate length"),
    ],
)
def test_malformed_certificate_message_is_a_clear_error(message: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_certificate_message(message, tls13=True)
