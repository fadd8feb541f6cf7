"""SpiffeTls fails closed when its handshake check cannot run: a missing or replaced ssl
message callback, a callback that does not refuse, a switched server context; no session
tickets; CompressedCertificate refused; the grpclib guard; atomic client reloads."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.service import Health
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.server import Server

from spiffed import tls
from spiffed.authorize import authorize_any, authorize_id
from spiffed.bundle import X509Bundle
from spiffed.spiffeid import SpiffeId
from spiffed.svid.x509 import X509Svid
from spiffed.tls import (
    PeerRejectedError,
    SpiffeTls,
    StaticSource,
    TlsHookError,
    guard_grpclib_server,
    peer_spiffe_id,
)
from tests.agent.endpoints.support import DEADLINE, TD, Authority

SERVER_ID = SpiffeId.from_path(TD, "/server")
CLIENT_ID = SpiffeId.from_path(TD, "/client")
INTRUDER_ID = SpiffeId.from_path(TD, "/intruder")


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority(TD)


def tls_for(ca: Authority, spiffe_id: SpiffeId, allowed: SpiffeId | None = None) -> SpiffeTls:
    source = StaticSource.of(ca.svid(spiffe_id), X509Bundle(TD, (ca.ca_cert,)))
    return SpiffeTls(source, authorize_id(allowed) if allowed else authorize_any())


class Pair:
    """A client and a server connection over memory BIOs, pumped by hand."""

    def __init__(self, client: ssl.SSLContext, server: ssl.SSLContext) -> None:
        self.bios = [ssl.MemoryBIO() for _ in range(4)]
        c_in, c_out, s_in, s_out = self.bios
        self.client = client.wrap_bio(c_in, c_out)
        self.server = server.wrap_bio(s_in, s_out, server_side=True)

    def pump(self) -> None:
        c_in, c_out, s_in, s_out = self.bios
        s_in.write(c_out.read())
        c_in.write(s_out.read())

    def handshake(self) -> dict[str, BaseException | None]:
        """Drive both handshakes to their end; what each side raised (None: completed)."""
        result: dict[str, BaseException | None] = {}
        for _ in range(20):
            for name, side in (("client", self.client), ("server", self.server)):
                if name in result:
                    continue
                try:
                    side.do_handshake()
                    result[name] = None
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLError, OSError) as exc:
                    result[name] = exc
            self.pump()
            if len(result) == 2:
                break
        self.pump()
        return result


@pytest.fixture
def fresh_self_test(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run the once-per-process self-test again within this test."""
    monkeypatch.setattr(tls._SelfTest, "passed", False)
    yield


def test_missing_hook_refuses_to_build_a_context(
    ca: Authority, monkeypatch: pytest.MonkeyPatch, fresh_self_test: None
) -> None:
    """A Python whose SSLContext._msg_callback is not CPython's hook (here a plain property:
    assignment succeeds, OpenSSL never calls back) gets no context, rather than contexts that
    accept every peer OpenSSL accepts."""
    server = tls_for(ca, SERVER_ID, CLIENT_ID)
    monkeypatch.setattr(
        ssl.SSLContext,
        "_msg_callback",
        property(lambda s: s.__dict__.get("cb"), lambda s, v: s.__dict__.__setitem__("cb", v)),
    )
    with pytest.raises(TlsHookError, match="_msg_callback"):
        server.server_context()
    with pytest.raises(TlsHookError, match="_msg_callback"):
        server.client_context()


def test_absent_hook_refuses_to_build_a_context(
    ca: Authority, monkeypatch: pytest.MonkeyPatch, fresh_self_test: None
) -> None:
    monkeypatch.delattr(ssl.SSLContext, "_msg_callback")
    with pytest.raises(TlsHookError, match=r"no usable SSLContext\._msg_callback"):
        tls_for(ca, SERVER_ID).server_context()


def test_self_test_catches_a_check_that_does_not_refuse(
    ca: Authority, monkeypatch: pytest.MonkeyPatch, fresh_self_test: None
) -> None:
    """A hook that is installed but lets refused peers through (an ssl that ignores the
    callback's exception, say; simulated by a check that accepts everything) is caught by the
    in-memory handshake self-test: no context is built."""
    monkeypatch.setattr(SpiffeTls, "verify_peer_chain", lambda self, chain: CLIENT_ID)
    with pytest.raises(TlsHookError, match="self-test failed"):
        tls_for(ca, SERVER_ID).server_context()


def test_self_test_catches_a_hook_never_called(
    ca: Authority, monkeypatch: pytest.MonkeyPatch, fresh_self_test: None
) -> None:
    monkeypatch.setattr(SpiffeTls, "_on_message", lambda self, *args: None)
    with pytest.raises(TlsHookError, match="self-test failed"):
        tls_for(ca, CLIENT_ID).client_context()


def test_self_test_passes_and_contexts_work(ca: Authority, fresh_self_test: None) -> None:
    server = tls_for(ca, SERVER_ID, CLIENT_ID)
    pair = Pair(tls_for(ca, CLIENT_ID, SERVER_ID).client_context(), server.server_context())
    assert pair.handshake() == {"client": None, "server": None}
    assert tls._SelfTest.passed
    assert peer_spiffe_id(pair.server) == CLIENT_ID
    assert peer_spiffe_id(pair.client) == SERVER_ID


def test_replacing_the_callback_of_a_context_is_refused(ca: Authority) -> None:
    ctx = tls_for(ca, CLIENT_ID).client_context()
    with pytest.raises(TlsHookError, match="cannot be replaced"):
        ctx._msg_callback = None  # type: ignore[attr-defined]


@pytest.mark.parametrize("side", ["client", "server"])
def test_context_whose_callback_was_removed_makes_no_connection(ca: Authority, side: str) -> None:
    """Going round the guard (clearing the C-level callback) leaves a context that refuses
    every new connection instead of one that skips the SPIFFE check."""
    server_tls = tls_for(ca, SERVER_ID, CLIENT_ID)
    ctx = server_tls.server_context() if side == "server" else server_tls.client_context()
    _prop, slot = tls._hook_descriptors()
    slot.__set__(ctx, None)
    with pytest.raises(TlsHookError, match="not installed"):
        ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=side == "server")


def test_server_refuses_handshake_when_inner_context_lost_its_callback(ca: Authority) -> None:
    """OpenSSL calls back when the connection's first context had a callback, but ssl runs
    the callback of the context switched to at SNI time; a switched-to context without ours
    stops the handshake instead of letting an intruder in unchecked."""
    server_tls = tls_for(ca, SERVER_ID, CLIENT_ID)
    front = server_tls.server_context()
    inner = server_tls._server_for_now()
    assert inner is not front
    tls._hook_descriptors()[1].__set__(inner, None)
    intruder = tls_for(ca, INTRUDER_ID, SERVER_ID).client_context()
    pair = Pair(intruder, front)
    result = pair.handshake()
    assert isinstance(result["server"], ssl.SSLError)
    assert not isinstance(result["server"], PeerRejectedError)  # stopped before any check
    assert peer_spiffe_id(pair.server) is None


def test_server_sends_no_session_tickets(ca: Authority) -> None:
    """No ticket reaches the client (OP_NO_TICKET alone still sends TLS 1.3 tickets, and a
    refusal at Finished could be lost while they are written)."""
    pair = Pair(
        tls_for(ca, CLIENT_ID, SERVER_ID).client_context(),
        tls_for(ca, SERVER_ID, CLIENT_ID).server_context(),
    )
    assert pair.handshake() == {"client": None, "server": None}
    pair.server.write(b"ping")
    pair.pump()
    assert pair.client.read(4) == b"ping"
    session = pair.client.session
    assert session is None or not session.has_ticket


def test_compressed_certificate_is_refused(ca: Authority) -> None:
    """A peer sending its certificates in a CompressedCertificate (RFC 8879), which the
    check does not read, is refused when it arrives and again at its Finished."""
    server_tls = tls_for(ca, SERVER_ID)

    class Conn:
        pass

    conn = Conn()
    message = bytes([25, 0, 0, 4, 0, 1, 0, 0])
    with pytest.raises(PeerRejectedError, match="CompressedCertificate"):
        server_tls._hook(conn, "read", ssl.TLSVersion.TLSv1_3, 22, 25, message)
    with pytest.raises(PeerRejectedError, match="CompressedCertificate"):
        server_tls._hook(conn, "read", ssl.TLSVersion.TLSv1_3, 22, 20, b"\x14\x00\x00\x00")
    assert peer_spiffe_id(conn) is None


def test_certificate_compression_turned_off_where_ssl_offers_it(
    ca: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenSSL 3.2+ option bits (this OpenSSL may not have them; the ssl module then has no
    # constants and nothing is set)
    monkeypatch.setattr(ssl, "OP_NO_TX_CERTIFICATE_COMPRESSION", 1 << 32, raising=False)
    monkeypatch.setattr(ssl, "OP_NO_RX_CERTIFICATE_COMPRESSION", 1 << 33, raising=False)
    for ctx in (tls_for(ca, SERVER_ID).server_context(), tls_for(ca, CLIENT_ID).client_context()):
        assert int(ctx.options) & (3 << 32) == 3 << 32


class RecordingLock:
    """A lock that counts how often it was taken."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.taken = 0

    def __enter__(self) -> None:
        self.inner.acquire()
        self.taken += 1

    def __exit__(self, *exc: object) -> None:
        self.inner.release()

    def locked(self) -> bool:
        return bool(self.inner.locked())


def test_client_reload_and_new_connections_share_a_lock(
    ca: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload in place loads certificate and key while holding the context's lock, which
    every new connection takes too: no connection is created between the two (which would
    present the new certificate without its key)."""

    class Rotating:
        def __init__(self) -> None:
            self.svid: X509Svid = ca.svid(CLIENT_ID)

        def get_x509_svid(self) -> X509Svid:
            return self.svid

        def get_x509_bundle_for_trust_domain(self, td: Any) -> X509Bundle | None:
            return X509Bundle(TD, (ca.ca_cert,)) if td == TD else None

        def get_x509_bundles(self) -> Any:
            return {TD: X509Bundle(TD, (ca.ca_cert,))}

    source = Rotating()
    client_tls = SpiffeTls(source, authorize_id(SERVER_ID))
    ctx = client_tls.client_context()
    lock = RecordingLock(ctx._reload_lock)  # type: ignore[attr-defined]
    monkeypatch.setattr(ctx, "_reload_lock", lock)
    loads: list[bool] = []
    real_load = tls.load_identity

    def load(target: ssl.SSLContext, chain: Any, key: Any) -> None:
        if target is ctx:
            loads.append(lock.locked())
        real_load(target, chain, key)

    monkeypatch.setattr(tls, "load_identity", load)
    source.svid = ca.svid(CLIENT_ID)
    client_tls.refresh()
    assert loads == [True]
    taken = lock.taken
    Pair(ctx, tls_for(ca, SERVER_ID, CLIENT_ID).server_context())
    assert lock.taken == taken + 1
    pair = Pair(ctx, tls_for(ca, SERVER_ID, CLIENT_ID).server_context())
    assert pair.handshake() == {"client": None, "server": None}
    assert tls.peer_certificate(pair.server) == source.svid.leaf


async def test_grpclib_guard_refuses_requests_without_verified_peer(ca: Authority) -> None:
    """With guard_grpclib_server, a grpclib server answers UNAUTHENTICATED on a connection
    whose peer no SpiffeTls handshake verified (here: a listener started without TLS by
    mistake), and serves verified peers."""
    server_tls = tls_for(ca, SERVER_ID, CLIENT_ID)
    client_tls = SpiffeTls(
        StaticSource.of(ca.svid(CLIENT_ID), X509Bundle(TD, (ca.ca_cert,))),
        authorize_id(SERVER_ID),
        alpn_protocols=["h2"],
    )
    for use_tls in (False, True):
        server = Server([Health()])
        guard_grpclib_server(server)
        tls_server = SpiffeTls(server_tls._source, server_tls.authorizer, alpn_protocols=["h2"])
        ssl_ctx = tls_server.server_context() if use_tls else None
        await server.start("127.0.0.1", 0, ssl=ssl_ctx)
        assert server._server is not None
        port = server._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        channel = Channel("127.0.0.1", port, ssl=client_tls.client_context() if use_tls else None)
        try:
            async with asyncio.timeout(DEADLINE):
                if use_tls:
                    reply = await HealthStub(channel).Check(HealthCheckRequest())
                    assert reply.status == HealthCheckResponse.SERVING
                else:
                    with pytest.raises(GRPCError) as err:
                        await HealthStub(channel).Check(HealthCheckRequest())
                    assert err.value.status == Status.UNAUTHENTICATED
                    assert "not verified" in str(err.value.message)
        finally:
            channel.close()
            server.close()
            await server.wait_closed()
