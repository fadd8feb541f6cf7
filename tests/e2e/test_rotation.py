"""Issue #5 rotation end to end, with real processes and short TTLs.

The server issues 20 s X509-SVIDs (workloads' and the agent's). The servers' CA backdates
every SVID by 10 s (as SPIRE's), and agents renew at half of the whole validity (40-50 %
with jitter), so a TTL must be above 15 s for the renewal to come after the issuance at all;
with 20 s an SVID is renewed 2-5 s after it was issued, with 15 s or more of validity left.
(Neither SPIRE nor spiffed has a lower bound: any positive duration is accepted; 16 s was
tried, and then two SVIDs issued within the same second can share their not-after.)

Two workloads (a TLS server ``web`` and a client ``api``, both in this test process, each on
its own ``FetchX509SVID`` stream) connect with mTLS over and over, every connection built
from what their streams last said. Meanwhile the SVIDs rotate at least three times, and then
the X.509 CA is rotated by hand (``localauthority x509 prepare`` / ``activate``): the new root
reaches both bundles, then SVIDs signed by the new CA arrive, and no connection ever fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from spiffed.svid.x509 import X509Svid
from spiffed.tls import client_context, peer_certificate, server_context
from spiffed.workloadapi.client import WorkloadApiClient, X509Context
from tests.e2e.conftest import TD, AgentProcess, E2EServer, apoll, uid_selector

JT = "spiffe://example.org/spire/agent/join_token/"
WEB = "spiffe://example.org/web"
API = "spiffe://example.org/api"
SVID_TTL = "20s"


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def signed_by(leaf: x509.Certificate, root: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(root)
    except Exception:  # another issuer (wrong signature or name)
        return False
    return True


def uri(cert: x509.Certificate | None) -> str:
    assert cert is not None, "the peer sent no certificate"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    (value,) = san.get_values_for_type(x509.UniformResourceIdentifier)
    return str(value)


@dataclass
class Workload:
    """One identity's view of its ``FetchX509SVID`` stream."""

    spiffe_id: str
    socket: str
    seen: list[tuple[float, X509Svid, tuple[x509.Certificate, ...]]] = field(default_factory=list)
    """(wall time received, this workload's SVID, the trust domain's roots), per message."""
    task: asyncio.Task[None] | None = None

    async def follow(self) -> None:
        async with WorkloadApiClient(self.socket) as client:
            async for ctx in client.watch_x509_context():
                self._record(ctx)

    def _record(self, ctx: X509Context) -> None:
        mine = next(s for s in ctx.svids if str(s.spiffe_id) == self.spiffe_id)
        roots = ctx.bundles[TD].authorities
        self.seen.append((time.time(), mine, roots))

    @property
    def current(self) -> tuple[X509Svid, tuple[x509.Certificate, ...]]:
        _, svid, roots = self.seen[-1]
        return svid, roots

    def distinct_svids(self) -> list[tuple[float, X509Svid]]:
        """Each new SVID with when it first arrived."""
        out: list[tuple[float, X509Svid]] = []
        for at, svid, _ in self.seen:
            if not out or out[-1][1].leaf.serial_number != svid.leaf.serial_number:
                out.append((at, svid))
        return out


@dataclass
class Connections:
    """mTLS connections from ``api`` to ``web``, each built from the streams' latest state."""

    web: Workload
    api: Workload
    phase: str = "before"
    ok: list[tuple[str, x509.Certificate, x509.Certificate]] = field(default_factory=list)
    """(phase, web leaf, api leaf) of each successful connection."""
    failed: list[tuple[str, str]] = field(default_factory=list)

    async def once(self) -> None:
        web_svid, web_roots = self.web.current
        api_svid, api_roots = self.api.current
        server_ctx = server_context(
            web_svid.cert_chain, web_svid.private_key, web_roots, require_client_certificate=True
        )
        seen_client: list[str] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                seen_client.append(uri(peer_certificate(writer.get_extra_info("ssl_object"))))
                writer.write(await reader.readexactly(5))
                await writer.drain()
            finally:
                writer.close()

        listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = listener.sockets[0].getsockname()[1]
        try:
            client_ctx = client_context(api_roots, api_svid.cert_chain, api_svid.private_key)
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname="web"
            )
            try:
                assert uri(peer_certificate(writer.get_extra_info("ssl_object"))) == WEB
                writer.write(b"hello")
                assert await reader.readexactly(5) == b"hello"
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            assert seen_client == [API]
        finally:
            listener.close()
            await listener.wait_closed()
        self.ok.append((self.phase, web_svid.leaf, api_svid.leaf))

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.once(), timeout=10)
            except Exception as exc:  # every failure is recorded and fails the test
                self.failed.append((self.phase, repr(exc)))
            await asyncio.sleep(0.05)

    def count(self, phase: str) -> int:
        return sum(1 for p, _, _ in self.ok if p == phase)


async def test_rotation_and_ca_rotation_keep_mtls_working(
    server_factory: Callable[..., E2EServer], agents: Callable[..., AgentProcess]
) -> None:
    server = server_factory(
        server_extra=f'default_x509_svid_ttl = "{SVID_TTL}"\n  agent_ttl = "{SVID_TTL}"'
    )
    token, _ = server.token()
    agent_id = JT + token
    server.entry(agent_id, WEB, uid_selector())
    server.entry(agent_id, API, uid_selector())
    agent = agents(server, token=token, sync_interval="1s")
    await agent.start()
    await agent.wait_ready()

    socket = f"unix://{agent.socket_path}"
    web, api = Workload(WEB, socket), Workload(API, socket)
    conns = Connections(web, api)
    tasks: list[asyncio.Task[None]] = []
    try:
        for w in (web, api):
            tasks.append(asyncio.create_task(w.follow()))
        # both streams carry both SVIDs once the agent has minted them
        await apoll(lambda: web.seen and api.seen, timeout=20, what="both SVIDs")
        tasks.append(asyncio.create_task(conns.run()))

        # --- SVID rotation: each new SVID arrives before the previous one expires -------
        await apoll(
            lambda: len(web.distinct_svids()) >= 4 and len(api.distinct_svids()) >= 4,
            timeout=40,
            what="three rotations of both SVIDs",
            every=0.1,
        )
        for w in (web, api):
            svids = w.distinct_svids()
            for (_, prev), (at, new) in itertools.pairwise(svids):
                assert at < prev.leaf.not_valid_after_utc.timestamp(), (
                    f"{w.spiffe_id}: SVID {new.leaf.serial_number} arrived after the previous "
                    "one expired"
                )
                assert new.leaf.not_valid_after_utc > prev.leaf.not_valid_after_utc
        assert "agent SVID renewed" in agent.log, "the agent's own 20 s SVID was renewed too"
        assert conns.count("before") >= 3 and not conns.failed, conns.failed

        # --- CA rotation ----------------------------------------------------------------
        old_roots = {der(r) for r in web.current[1]}
        assert len(old_roots) == 1
        (old_root,) = web.current[1]
        prepared = server.json("localauthority", "x509", "prepare")
        authority_id = prepared["prepared_authority"]["authority_id"]
        conns.phase = "prepared"

        def new_root(w: Workload) -> x509.Certificate | None:
            fresh = [r for r in w.current[1] if der(r) not in old_roots]
            return fresh[0] if fresh else None

        await apoll(
            lambda: new_root(web) and new_root(api),
            timeout=20,
            what="the prepared CA's root in both workloads' bundles",
        )
        root = new_root(web)
        assert root is not None
        assert {der(r) for r in web.current[1]} == old_roots | {der(root)}, "old root kept"
        # prepared, not active: SVIDs are still signed by the old CA
        assert signed_by(web.current[0].leaf, old_root)
        await apoll(lambda: conns.count("prepared") >= 5, timeout=10, what="connections")

        server.ok("localauthority", "x509", "activate", "-authorityID", authority_id)
        conns.phase = "activated"
        await apoll(
            lambda: signed_by(web.current[0].leaf, root) and signed_by(api.current[0].leaf, root),
            timeout=20,
            what="SVIDs signed by the new CA on both streams",
            every=0.1,
        )
        for w in (web, api):
            # the new root was in this workload's bundle before its first new-CA SVID came
            first_new = next(i for i, (_, s, _) in enumerate(w.seen) if signed_by(s.leaf, root))
            first_root = next(i for i, (_, _, rs) in enumerate(w.seen) if der(root) in map(der, rs))
            assert first_root < first_new
        conns.phase = "new-ca"
        await apoll(lambda: conns.count("new-ca") >= 5, timeout=10, what="connections")
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
    assert not conns.failed, conns.failed
    signers = {(signed_by(w, root), signed_by(a, root)) for p, w, a in conns.ok if p == "activated"}
    print(  # shown with -s: the figures of this run
        "mTLS connections per phase:",
        {p: conns.count(p) for p in ("before", "prepared", "activated", "new-ca")},
        "(web, api) signed by the new CA while activating:",
        sorted(signers),
        "SVIDs seen:",
        {w.spiffe_id: len(w.distinct_svids()) for w in (web, api)},
    )
    assert conns.count("before") >= 3
    assert all(conns.count(p) >= 5 for p in ("prepared", "new-ca"))
    assert all(signed_by(w, old_root) for p, w, _ in conns.ok if p in ("before", "prepared"))
    assert all(signed_by(w, root) and signed_by(a, root) for p, w, a in conns.ok if p == "new-ca")
