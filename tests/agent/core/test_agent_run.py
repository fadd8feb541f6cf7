"""spiffed.agent.run.serve in-process against an in-process spiffed-server: Workload API on
the socket, JWT-SVIDs through NewJWTSVID, propagation through the Watch stream, restart with
the disk and memory KeyManagers, eviction (join_token stops, x509pop re-attests)."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import os
import ssl
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from spiffed.agent.attest import fetch_bundle
from spiffed.agent.cache import IdentityCache
from spiffed.agent.client import ServerChannel, ServerClientError, fetch_bootstrap_bundle
from spiffed.agent.config import AgentConfig, parse_agent_config
from spiffed.agent.manager import Manager, SyncResult
from spiffed.agent.manager.run import build_manager
from spiffed.agent.manager.storage import KEY_FILE, SVID_FILE, AgentState, load_state, save_state
from spiffed.agent.run import AgentRunError, RunningAgent, serve
from spiffed.backoff import Backoff
from spiffed.bundle import SpiffeBundle, X509Bundle
from spiffed.keys import KeyType
from spiffed.spiffeid import TrustDomain
from spiffed.svid.jwt import JwtSvid
from spiffed.svid.x509 import X509Svid
from spiffed.svid.x509_issue import create_root_ca, create_x509_svid
from spiffed.workloadapi.client import WorkloadApiClient, WorkloadApiError
from tests.agent.core.conftest import SpiffedServer, run_spiffed_server
from tests.interop.spireserver.server import free_port
from tests.server.nodeattestor.pki import make_cert

UID_SELECTOR = f"unix:uid:{os.getuid()}"
TD = TrustDomain("example.org")


def agent_conf(
    server_port: int,
    data_dir: Path,
    socket_path: Path,
    *,
    token: str = "",
    key_manager: str = "disk",
    attestor: str = 'NodeAttestor "join_token" { plugin_data {} }',
    trust: str = "insecure_bootstrap = true",
) -> AgentConfig:
    km = (
        f'KeyManager "disk" {{ plugin_data {{ directory = "{data_dir}" }} }}'
        if key_manager == "disk"
        else 'KeyManager "memory" { plugin_data {} }'
    )
    token_line = f'join_token = "{token}"' if token else ""
    return parse_agent_config(f"""
agent {{
    trust_domain = "example.org"
    server_address = "127.0.0.1"
    server_port = "{server_port}"
    data_dir = "{data_dir}"
    socket_path = "{socket_path}"
    log_level = "DEBUG"
    {token_line}
    {trust}
}}
plugins {{
    {attestor}
    {km}
    WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
""")


def short_dir() -> Path:
    """A directory with a short path (Unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="sa-", dir="/tmp"))


async def wait_until(condition: Callable[[], object], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def fetch_ids(socket_path: Path, *, want: int = 1, timeout: float = 10) -> list[str]:
    """The SPIFFE IDs of the caller's X509-SVIDs, once there are ``want`` of them."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            async with WorkloadApiClient(f"unix://{socket_path}", timeout=5) as client:
                ctx = await client.fetch_x509_context()
            ids = sorted(str(s.spiffe_id) for s in ctx.svids)
            if len(ids) >= want:
                return ids
        except WorkloadApiError as exc:  # not ready yet / no identity yet
            last = exc
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {want} X509-SVIDs from {socket_path} in {timeout}s: {last}")


@asynccontextmanager
async def running_agent(
    config: AgentConfig,
) -> AsyncIterator[tuple[RunningAgent, asyncio.Task[None]]]:
    stop = asyncio.Event()
    ready: asyncio.Future[RunningAgent] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config, stop=stop, on_ready=ready.set_result))
    done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    assert ready in done, "the agent did not start"
    try:
        yield ready.result(), task
    finally:
        stop.set()
        if not task.done():
            await asyncio.wait_for(task, timeout=30)


async def test_serve_workload_api_jwt_and_watch_propagation(
    spiffed: SpiffedServer, tmp_path: Path
) -> None:
    token = await spiffed.generate_token()
    agent_id = f"spiffe://example.org/spire/agent/join_token/{token}"
    await spiffed.create_entry(agent_id, "spiffe://example.org/web", UID_SELECTOR)
    sock = short_dir() / "public" / "api.sock"
    config = agent_conf(spiffed.port, tmp_path / "agent", sock, token=token)
    async with running_agent(config) as (agent, task):
        assert oct(sock.stat().st_mode & 0o777) == oct(0o777), "every local user may connect"
        assert await fetch_ids(sock) == ["spiffe://example.org/web"]
        m = agent.manager
        assert m.sync_supported is True, "SyncAuthorizedEntries is used"
        await wait_until(lambda: m.watch_supported, timeout=10, what="the Watch stream")

        # JWT-SVIDs come from the server's NewJWTSVID, signed by its JWT authority
        async with WorkloadApiClient(f"unix://{sock}") as client:
            jwt = await client.fetch_jwt_svid("my-audience")
            bundles = await client.fetch_jwt_bundles()
        assert str(jwt.spiffe_id) == "spiffe://example.org/web"
        parsed = JwtSvid.parse_and_validate(jwt.token, bundles, ["my-audience"])
        assert str(parsed.spiffe_id) == "spiffe://example.org/web"

        # With polling out of the way, only the Watch notification can bring a new entry.
        m.sync_interval = 3600.0
        notes = m.notifications
        await spiffed.create_entry(agent_id, "spiffe://example.org/api", UID_SELECTOR)
        ids = await fetch_ids(sock, want=2, timeout=10)
        assert ids == ["spiffe://example.org/api", "spiffe://example.org/web"]
        assert m.notifications > notes
        assert not task.done()
    assert not sock.exists(), "the socket is removed on stop"


async def test_disk_key_manager_restart_reuses_the_svid(
    spiffed: SpiffedServer, tmp_path: Path
) -> None:
    token = await spiffed.generate_token()
    agent_id = f"spiffe://example.org/spire/agent/join_token/{token}"
    await spiffed.create_entry(agent_id, "spiffe://example.org/web", UID_SELECTOR)
    sock = short_dir() / "api.sock"
    config = agent_conf(spiffed.port, tmp_path / "agent", sock, token=token)
    async with running_agent(config) as (agent, _):
        assert agent.manager.attestations == 1
        await fetch_ids(sock)
    key = tmp_path / "agent" / KEY_FILE
    assert key.exists() and key.stat().st_mode & 0o777 == 0o600
    # the token is spent: attesting again would be refused
    async with running_agent(config) as (agent, _):
        assert agent.manager.attestations == 0, "the stored SVID is reused"
        assert await fetch_ids(sock) == ["spiffe://example.org/web"]


async def test_memory_key_manager_keeps_nothing_and_restart_attests(
    spiffed: SpiffedServer, tmp_path: Path
) -> None:
    token = await spiffed.generate_token()
    sock = short_dir() / "api.sock"
    config = agent_conf(spiffed.port, tmp_path / "agent", sock, token=token, key_manager="memory")
    async with running_agent(config) as (agent, _):
        assert agent.manager.attestations == 1
    assert not (tmp_path / "agent" / KEY_FILE).exists()
    assert not (tmp_path / "agent" / SVID_FILE).exists()
    # a restart must attest, and the spent token is refused: the agent stops with the reason
    with pytest.raises(AgentRunError, match="agent attestation failed: attestation refused"):
        await serve(config, stop=asyncio.Event())
    assert not sock.exists()


async def test_no_join_token_and_nothing_stored_stops_the_agent(
    spiffed: SpiffedServer, tmp_path: Path
) -> None:
    config = agent_conf(spiffed.port, tmp_path / "agent", short_dir() / "api.sock")
    with pytest.raises(AgentRunError, match='NodeAttestor "join_token" needs join_token'):
        await asyncio.wait_for(serve(config, stop=asyncio.Event()), timeout=10)


async def test_refused_attestation_stops_the_agent(spiffed: SpiffedServer, tmp_path: Path) -> None:
    config = agent_conf(spiffed.port, tmp_path / "agent", short_dir() / "api.sock", token="bogus")
    with pytest.raises(AgentRunError, match="attestation refused: INVALID_ARGUMENT"):
        await serve(config, stop=asyncio.Event())


async def test_evicted_join_token_agent_stops_and_forgets_its_svid(
    spiffed: SpiffedServer, tmp_path: Path
) -> None:
    token = await spiffed.generate_token()
    agent_id = f"spiffe://example.org/spire/agent/join_token/{token}"
    sock = short_dir() / "api.sock"
    config = agent_conf(spiffed.port, tmp_path / "agent", sock, token=token)
    async with running_agent(config) as (agent, task):
        agent.manager.sync_interval = 0.1
        await wait_until(lambda: agent.manager.syncs > 0, timeout=10, what="a first sync")
        await spiffed.evict(agent_id)
        await wait_until(task.done, timeout=20, what="the agent to stop")
        with pytest.raises(AgentRunError, match="agent needs to re-attest"):
            task.result()
    assert not (tmp_path / "agent" / SVID_FILE).exists(), "as SPIRE: the SVID is removed"
    assert not sock.exists()


def x509pop_files(tmp_path: Path) -> tuple[Path, str]:
    """A node CA file for the server and the agent's x509pop NodeAttestor block."""
    root = make_cert("node-ca", ca=True)
    node = make_cert("node", issuer=root)
    ca_pem = tmp_path / "node-ca.pem"
    ca_pem.write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))
    key_pem = tmp_path / "node.key"
    key_pem.write_bytes(
        node.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_pem = tmp_path / "node.pem"
    cert_pem.write_bytes(node.cert.public_bytes(serialization.Encoding.PEM))
    attestor = (
        f'NodeAttestor "x509pop" {{ plugin_data {{ private_key_path = "{key_pem}" '
        f'certificate_path = "{cert_pem}" }} }}'
    )
    return ca_pem, attestor


async def test_evicted_x509pop_agent_attests_again(tmp_path: Path) -> None:
    ca_pem, attestor = x509pop_files(tmp_path)
    async with run_spiffed_server(tmp_path / "server", x509pop_ca=ca_pem) as spiffed:
        sock = short_dir() / "api.sock"
        config = agent_conf(spiffed.port, tmp_path / "agent", sock, attestor=attestor)
        async with running_agent(config) as (agent, task):
            m = agent.manager
            m.sync_interval = 0.1
            await wait_until(lambda: m.syncs > 0, timeout=10, what="a first sync")
            assert m.attestations == 1 and m.can_reattest
            await spiffed.evict(str(m.svid.spiffe_id))
            await wait_until(lambda: m.attestations == 2, timeout=20, what="re-attestation")
            syncs = m.syncs
            await wait_until(lambda: m.syncs > syncs, timeout=10, what="a sync after it")
            assert not task.done()


# --- trust_bundle_url -------------------------------------------------------------------


@contextmanager
def https_server(tmp_path: Path, routes: dict[str, bytes]) -> Iterator[tuple[str, ssl.SSLContext]]:
    """A local HTTPS server answering GET ``routes`` (404 otherwise); yields its base URL and
    a client context trusting its self-signed certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bundle-host")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = tmp_path / "https.crt"
    key_pem = tmp_path / "https.key"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = routes.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_pem, key_pem)
    httpd.socket = server_ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(cert_pem))
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}", client_ctx
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


async def server_bundle(spiffed: SpiffedServer) -> SpiffeBundle:
    channel = ServerChannel("127.0.0.1", spiffed.port, trust_domain=TD, roots=None)
    try:
        return await fetch_bundle(channel, TD)
    finally:
        channel.close()


@pytest.mark.parametrize("fmt", ["pem", "spiffe"])
async def test_trust_bundle_url_bootstraps_attestation(
    spiffed: SpiffedServer, tmp_path: Path, fmt: str
) -> None:
    bundle = await server_bundle(spiffed)
    body = (
        X509Bundle(TD, bundle.x509_authorities).marshal_pem()
        if fmt == "pem"
        else (bundle.marshal())
    )
    with https_server(tmp_path, {"/bundle": body}) as (base, client_ctx):
        config = agent_conf(
            spiffed.port,
            tmp_path / "agent",
            short_dir() / "api.sock",
            token=await spiffed.generate_token(),
            trust=f'trust_bundle_url = "{base}/bundle"\ntrust_bundle_format = "{fmt}"',
        )
        m = build_manager(config, IdentityCache(TD))
        m.bootstrap_ssl = client_ctx
        await m.initialize()
    assert m.attestations == 1
    assert m.bundle.x509_authorities == bundle.x509_authorities


async def test_trust_bundle_url_errors_are_clear(tmp_path: Path) -> None:
    with https_server(tmp_path, {"/empty": b""}) as (base, client_ctx):
        with pytest.raises(ServerClientError, match="HTTP status 404"):
            fetch_bootstrap_bundle(f"{base}/missing", "pem", TD, ssl_context=client_ctx)
        with pytest.raises(ServerClientError, match="no certificates"):
            fetch_bootstrap_bundle(f"{base}/empty", "pem", TD, ssl_context=client_ctx)
        # without trusting the self-signed certificate the download is refused
        with pytest.raises(ServerClientError, match="CERTIFICATE_VERIFY_FAILED"):
            fetch_bootstrap_bundle(f"{base}/empty", "pem", TD)
    with pytest.raises(ServerClientError, match="must start with https://"):
        fetch_bootstrap_bundle("http://127.0.0.1/bundle", "pem", TD)


async def sync_until_ok(m: Manager, *, timeout: float = 10) -> SyncResult:
    """sync_once, retried while the server pushes back (attestation is limited to 1/s/IP)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await m.sync_once()
        except ServerClientError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_at_renewal_time_x509pop_reattests_and_join_token_renews(tmp_path: Path) -> None:
    ca_pem, attestor = x509pop_files(tmp_path)
    async with run_spiffed_server(tmp_path / "server", x509pop_ca=ca_pem) as spiffed:
        pop = build_manager(
            agent_conf(spiffed.port, tmp_path / "pop", short_dir() / "a.sock", attestor=attestor),
            IdentityCache(TD),
        )
        joined = build_manager(
            agent_conf(
                spiffed.port,
                tmp_path / "jt",
                short_dir() / "a.sock",
                token=await spiffed.generate_token(),
            ),
            IdentityCache(TD),
        )
        for m in (pop, joined):
            await m.start()  # retried while attestation is rate limited
            before = m.svid.leaf.serial_number
            m._agent_renew_at = datetime.now(UTC) - timedelta(seconds=1)  # past half-life
            result = await sync_until_ok(m)
            assert result.agent_renewed
            assert m.svid.leaf.serial_number != before
        assert pop.attestations == 2, "a re-attestable agent attests again (SPIRE)"
        assert joined.attestations == 1, "a join_token agent calls RenewAgent"


async def test_server_down_keeps_serving_then_reconnects_and_watches_again(
    tmp_path: Path,
) -> None:
    root = tmp_path / "server"
    port = free_port()
    sock = short_dir() / "api.sock"
    async with run_spiffed_server(root, port=port, key_manager="disk") as spiffed:
        token = await spiffed.generate_token()
        agent_id = f"spiffe://example.org/spire/agent/join_token/{token}"
        await spiffed.create_entry(agent_id, "spiffe://example.org/web", UID_SELECTOR)
        config = agent_conf(port, tmp_path / "agent", sock, token=token)
        async with running_agent(config) as (agent, task):
            m = agent.manager
            m.sync_interval = 3600.0  # only the Watch stream (or a failure) starts a sync
            m.backoff = Backoff(initial=0.05, maximum=0.2)
            assert await fetch_ids(sock) == ["spiffe://example.org/web"]
            await wait_until(lambda: m.watch_supported, timeout=10, what="the Watch stream")
            spiffed.stop.set()
            await asyncio.wait_for(spiffed.task, timeout=30)
            m.wake()
            await wait_until(lambda: m.failures >= 2, timeout=20, what="failed syncs")
            assert await fetch_ids(sock) == ["spiffe://example.org/web"], "cached SVID served"

            async with run_spiffed_server(root, port=port, key_manager="disk") as again:
                notes = m.notifications
                await wait_until(
                    lambda: m.notifications > notes, timeout=20, what="the Watch reconnecting"
                )
                await again.create_entry(agent_id, "spiffe://example.org/api", UID_SELECTOR)
                ids = await fetch_ids(sock, want=2, timeout=10)
                assert ids == ["spiffe://example.org/api", "spiffe://example.org/web"]
                assert m.failures == 0 and m.attestations == 1
                assert not task.done()


async def test_expired_svid_reattests_trusting_the_stored_bundle(
    spiffed: SpiffedServer, tmp_path: Path
) -> None:
    data = tmp_path / "agent"
    first = build_manager(
        agent_conf(
            spiffed.port, data, short_dir() / "a.sock", token=await spiffed.generate_token()
        ),
        IdentityCache(TD),
    )
    await first.start()
    stored = load_state(data, TD)
    assert stored is not None
    # the stored SVID expired while the agent was down
    other_ca_key = KeyType.EC_P256.generate()
    other_ca = create_root_ca(TD, other_ca_key, ttl=timedelta(hours=1))
    key = KeyType.EC_P256.generate()
    expired = create_x509_svid(
        stored.svid.spiffe_id,
        key.public_key(),
        signer_cert=other_ca,
        signer_key=other_ca_key,
        ttl=timedelta(minutes=1),
        now=datetime.now(UTC) - timedelta(minutes=10),
    )
    save_state(data, AgentState(X509Svid.from_certificates([expired], key), stored.bundle))
    # a bootstrap bundle that does not hold the server's CA: using it would fail
    wrong = tmp_path / "wrong.pem"
    wrong.write_bytes(X509Bundle(TD, (other_ca,)).marshal_pem())
    second = build_manager(
        agent_conf(
            spiffed.port,
            data,
            short_dir() / "a.sock",
            token=await spiffed.generate_token(),
            trust=f'trust_bundle_path = "{wrong}"',
        ),
        IdentityCache(TD),
    )
    second.backoff = Backoff(initial=0.05, maximum=0.2)
    await asyncio.wait_for(second.start(), timeout=20)
    assert second.attestations == 1
    assert second.svid.spiffe_id != stored.svid.spiffe_id  # the new token's agent ID


async def test_socket_directory_other_users_can_write_is_refused(
    spiffed: SpiffedServer, tmp_path: Path
) -> None:
    shared = short_dir()
    shared.chmod(0o777)  # anyone could swap the socket for their own
    config = agent_conf(
        spiffed.port, tmp_path / "agent", shared / "api.sock", token=await spiffed.generate_token()
    )
    with pytest.raises(AgentRunError, match=r"writable by other users \(mode 0777\)"):
        await serve(config, stop=asyncio.Event())
    assert not (shared / "api.sock").exists()
    shared.chmod(0o1777)  # sticky, as /tmp: others cannot remove our socket
    config = agent_conf(spiffed.port, tmp_path / "agent", shared / "api.sock")
    async with running_agent(config):
        assert (shared / "api.sock").exists()


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
async def test_socket_directory_owned_by_another_user_is_refused(
    spiffed: SpiffedServer, tmp_path: Path
) -> None:
    theirs = short_dir()
    os.chown(theirs, 65534, 65534)
    config = agent_conf(
        spiffed.port, tmp_path / "agent", theirs / "api.sock", token=await spiffed.generate_token()
    )
    with pytest.raises(AgentRunError, match="owned by uid 65534"):
        await serve(config, stop=asyncio.Event())
