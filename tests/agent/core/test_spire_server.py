"""The agent core against a real spire-server v1.15.3: attestation, persistence, sync, rotation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from grpclib.const import Status

from spiffed.agent.attest import AttestationError, JoinTokenAttestor, attest
from spiffed.agent.cache import IdentityCache
from spiffed.agent.client import ServerChannel
from spiffed.agent.config import parse_agent_config
from spiffed.agent.manager import Manager, SyncResult
from spiffed.agent.manager.run import run_agent
from spiffed.agent.manager.storage import load_state
from spiffed.agent.nodeattestor.x509pop import X509PopAgentAttestor
from spiffed.backoff import Backoff
from spiffed.bundle import X509Bundle
from spiffed.spiffeid import TrustDomain
from spiffed.svid.x509 import X509Svid, verify_chain
from tests.interop.spireserver.server import SpireServer
from tests.server.nodeattestor.pki import make_cert

pytestmark = pytest.mark.interop

TD = TrustDomain("example.org")


def server_bundle(spire: SpireServer) -> X509Bundle:
    return X509Bundle.parse_pem(TD, spire.bundle_pem())


async def attest_with(spire: SpireServer, token: str, *, insecure: bool = True):  # type: ignore[no-untyped-def]
    roots = None if insecure else list(server_bundle(spire).authorities)
    channel = ServerChannel("127.0.0.1", spire.port, trust_domain=TD, roots=roots)
    try:
        return await attest(channel, JoinTokenAttestor(token), TD)
    finally:
        channel.close()


async def wait_until(condition: Callable[[], object], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("insecure", [True, False], ids=["insecure_bootstrap", "bundle"])
async def test_join_token_attestation_gives_a_verifiable_agent_svid(
    spire: SpireServer, insecure: bool
) -> None:
    token = spire.generate_token()
    result = await attest_with(spire, token, insecure=insecure)
    assert str(result.svid.spiffe_id) == f"spiffe://example.org/spire/agent/join_token/{token}"
    spiffe_id, _ = verify_chain(result.svid.cert_chain, server_bundle(spire))
    assert spiffe_id == result.svid.spiffe_id
    assert result.bundle.x509_authorities == server_bundle(spire).authorities
    assert spire.agent_count() == 1


async def test_reused_join_token_is_refused(spire: SpireServer) -> None:
    token = spire.generate_token()
    await attest_with(spire, token)
    with pytest.raises(AttestationError) as info:
        await attest_with(spire, token)
    assert info.value.status is not None
    assert info.value.status.status == Status.INVALID_ARGUMENT
    assert "join token does not exist or has already been used" in str(info.value)


async def test_bogus_join_token_is_refused(spire: SpireServer) -> None:
    with pytest.raises(AttestationError) as info:
        await attest_with(spire, "not-a-token")
    assert info.value.status is not None
    assert info.value.status.status == Status.INVALID_ARGUMENT
    assert "join token does not exist or has already been used" in str(info.value)
    assert spire.agent_count() == 0


async def sync_until(
    m: Manager, done: Callable[[SyncResult], bool], *, timeout: float
) -> SyncResult:
    deadline = time.monotonic() + timeout
    while not done(result := await m.sync_once()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no sync matched within {timeout}s; last: {result}")
        await asyncio.sleep(0.2)
    return result


def manager(spire: SpireServer, data_dir: Path, token: str, **kw: object) -> Manager:
    return Manager(
        trust_domain=TD,
        server_address="127.0.0.1",
        server_port=spire.port,
        data_dir=data_dir,
        attestor=JoinTokenAttestor(token),
        cache=IdentityCache(TD),
        bootstrap_roots=list(server_bundle(spire).authorities),
        **kw,  # type: ignore[arg-type]
    )


async def test_restarted_agent_reuses_its_stored_svid(spire: SpireServer, tmp_path: Path) -> None:
    token = spire.generate_token()
    first = manager(spire, tmp_path / "data", token)
    await first.initialize()
    assert first.attestations == 1
    second = manager(spire, tmp_path / "data", token)  # the token is spent: attesting would fail
    await second.initialize()
    assert second.attestations == 0
    assert second.svid.cert_chain == first.svid.cert_chain
    assert spire.agent_count() == 1
    result = await second.sync_once()  # the stored SVID still authenticates to the server
    assert result.entries == 0


async def test_sync_fills_the_cache_with_entry_svids(spire: SpireServer, tmp_path: Path) -> None:
    token = spire.generate_token()
    m = manager(spire, tmp_path / "data", token)
    await m.initialize()
    agent_id = str(m.svid.spiffe_id)
    spire.check(
        "entry", "create", "-parentID", agent_id, "-spiffeID", "spiffe://example.org/web",
        "-selector", "unix:uid:1000",
    )  # fmt: skip
    # spire-server's authorized-entry cache picks new entries up within seconds
    # (`token generate -spiffeID .../host` made an entry for the node too: two entries)
    result = await sync_until(m, lambda r: r.entries == 2, timeout=30)
    assert (result.entries, result.minted, result.failed) == (2, 2, 0)
    by_id = {str(e.spiffe_id): e for e in m.cache.entries()}
    assert sorted(by_id) == ["spiffe://example.org/host", "spiffe://example.org/web"]
    entry = by_id["spiffe://example.org/web"]
    assert {(s.type, s.value) for s in entry.selectors} == {("unix", "uid:1000")}
    assert [i.entry.id for i in m.cache.identities_for(entry.selectors)] == [entry.id]
    svid = m.cache.svid(entry.id)
    assert svid is not None
    assert verify_chain(svid.cert_chain, server_bundle(spire))[0] == entry.spiffe_id
    assert m.cache.bundle is not None
    assert m.cache.bundle.x509_authorities == server_bundle(spire).authorities
    again = await m.sync_once()
    assert again.minted == 0, "a fresh SVID is not minted again"
    assert m.cache.svid(entry.id) is svid
    spire.check("entry", "delete", "-entryID", entry.id)
    await sync_until(m, lambda r: r.entries == 1, timeout=30)
    assert [str(e.spiffe_id) for e in m.cache.entries()] == ["spiffe://example.org/host"]
    assert m.cache.svid(entry.id) is None
    assert m.cache.identities_for(entry.selectors) == []


def assert_renewed_near_half_life(old: x509.Certificate, renewed_at: datetime) -> None:
    """Renewed before the old certificate expired, and not before 40% of its life.

    The agent renews at half of the life the certificate had when it arrived (SPIRE backdates
    not_before by 10 s; see ``spiffed.backoff.renewal_time``), made earlier by at most 10%
    jitter. Only bounds that a slow machine cannot break are checked: being late is allowed
    up to expiry, being early is never allowed.
    """
    life = old.not_valid_after_utc - old.not_valid_before_utc
    earliest = old.not_valid_before_utc + life * 0.4
    assert earliest <= renewed_at < old.not_valid_after_utc, (renewed_at, earliest, life)


async def test_run_renews_agent_and_rotates_workload_svids_at_half_life(
    short_ttl_spire: SpireServer, tmp_path: Path
) -> None:
    spire = short_ttl_spire
    token = spire.generate_token()
    m = manager(spire, tmp_path / "data", token, sync_interval=0.2)
    await m.initialize()
    spire.check(
        "entry", "create", "-parentID", str(m.svid.spiffe_id),
        "-spiffeID", "spiffe://example.org/web", "-selector", "unix:uid:1000",
    )  # fmt: skip
    first_agent = m.svid.leaf
    task = asyncio.create_task(m.run())

    def web_svid() -> X509Svid | None:
        for e in m.cache.entries():
            if str(e.spiffe_id) == "spiffe://example.org/web":
                return m.cache.svid(e.id)
        return None

    try:
        await wait_until(web_svid, timeout=30, what="the first SVID for /web")
        first_svid = web_svid()
        assert first_svid is not None
        await wait_until(lambda: m.svid.leaf != first_agent, timeout=40, what="agent renewal")
        assert_renewed_near_half_life(first_agent, datetime.now(UTC))
        await wait_until(
            lambda: (s := web_svid()) is not None and s.leaf != first_svid.leaf,
            timeout=40,
            what="workload SVID rotation",
        )
        assert_renewed_near_half_life(first_svid.leaf, datetime.now(UTC))
        rotated = web_svid()
        assert rotated is not None
        assert verify_chain(rotated.cert_chain, server_bundle(spire))[0] == rotated.spiffe_id
        assert str(m.svid.spiffe_id) == f"spiffe://example.org/spire/agent/join_token/{token}"
        stored = load_state(tmp_path / "data", TD)
        assert stored is not None
        assert stored.svid.cert_chain == m.svid.cert_chain, "the renewed SVID is persisted"
        assert m.attestations == 1, "renewal is RenewAgent, not a new attestation"
        assert spire.agent_count() == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_x509pop_attestation_answers_spire_server_challenge(
    spire_server_binary: Path, tmp_path: Path
) -> None:
    root = make_cert("node-ca", ca=True)
    node = make_cert("node", issuer=root)
    ca_pem = tmp_path / "node-ca.pem"
    ca_pem.write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))
    spire = SpireServer(spire_server_binary, tmp_path / "spire", x509pop_ca=ca_pem).start()
    try:
        channel = ServerChannel("127.0.0.1", spire.port, trust_domain=TD, roots=None)
        try:
            result = await attest(channel, X509PopAgentAttestor(node.key, [node.cert]), TD)
        finally:
            channel.close()
        fingerprint = node.cert.fingerprint(hashes.SHA1()).hex()
        assert (
            str(result.svid.spiffe_id) == f"spiffe://example.org/spire/agent/x509pop/{fingerprint}"
        )
        assert (
            verify_chain(result.svid.cert_chain, server_bundle(spire))[0] == result.svid.spiffe_id
        )
        assert result.reattestable, "x509pop agents can re-attest"
    finally:
        spire.stop()


async def test_run_backs_off_while_the_server_is_down_and_recovers(
    spire_server_binary: Path, tmp_path: Path
) -> None:
    spire = SpireServer(spire_server_binary, tmp_path / "spire", key_manager="disk").start()
    try:
        m = manager(
            spire,
            tmp_path / "data",
            spire.generate_token(),
            sync_interval=0.2,
            backoff=Backoff(initial=0.1, maximum=0.4),
        )
        await m.initialize()
        await asyncio.to_thread(spire.stop)
        task = asyncio.create_task(m.run())
        try:
            await wait_until(lambda: m.failures >= 3, timeout=30, what="failed syncs")
            assert m.last_sync is None
            await asyncio.to_thread(spire.start)  # same port, datastore and CA keys
            await wait_until(
                lambda: m.failures == 0 and m.last_sync is not None,
                timeout=30,
                what="a successful sync after the restart",
            )
            assert m.attestations == 1
            assert m.cache.ready
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        spire.stop()


async def test_run_agent_from_agent_conf(spire: SpireServer, tmp_path: Path) -> None:
    token = spire.generate_token()
    bundle_path = tmp_path / "bootstrap.pem"
    bundle_path.write_bytes(spire.bundle_pem())
    config = parse_agent_config(f"""
agent {{
    trust_domain = "example.org"
    server_address = "127.0.0.1"
    server_port = "{spire.port}"
    data_dir = "{tmp_path}/agent-data"
    join_token = "{token}"
    trust_bundle_path = "{bundle_path}"
}}
plugins {{
    NodeAttestor "join_token" {{ plugin_data {{}} }}
    KeyManager "memory" {{ plugin_data {{}} }}
}}
""")
    cache = IdentityCache(TD)
    task = asyncio.create_task(run_agent(config, cache))
    try:
        # the node entry made by `token generate -spiffeID .../host` gets an SVID
        await wait_until(
            lambda: any(cache.svid(e.id) for e in cache.entries()),
            timeout=60,  # spire-server's entry cache lag plus the 5 s sync interval
            what="an SVID for the node's entry",
        )
        [entry] = cache.entries()
        assert str(entry.spiffe_id) == "spiffe://example.org/host"
        assert cache.bundle is not None
        assert cache.bundle.x509_authorities == server_bundle(spire).authorities
        # KeyManager "memory": nothing private is written (a restart attests again)
        assert not (tmp_path / "agent-data" / "agent_svid.key").exists()
        assert not (tmp_path / "agent-data" / "agent_svid.der").exists()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
