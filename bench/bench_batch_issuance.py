"""End-to-end X509-SVID issuance through BatchNewX509SVID over mTLS, on one core.

A real server in this process: CA, in-memory datastore, entry cache, the API services behind
:class:`spiffed.server.endpoints.Endpoints` on a TCP port of 127.0.0.1. An attested agent (its
node in the datastore) presents its SVID and asks, one request at a time, for batches of
``BATCH`` SVIDs of ``BATCH`` entries parented to it. The CSRs are made before timing. Client
and server share the one core, so the figure includes the client's share (TLS, protobuf).

The ceiling is the same as ``bench_issuance``: per SVID the server verifies one ECDSA P-256
CSR signature and makes one signature, so ``1 / (1/sign + 1/verify)`` from ``openssl speed``
(run here, single process) bounds the rate. ``openssl speed`` divides by the CPU time it used
(user time, unless ``-elapsed``), so the rate compared with it here is SVIDs per CPU second
of this process (client, server and the datastore's thread together); the wall-clock rate,
which a machine shared with other work lowers, is printed beside it. For scale, the signing
path alone (``CaManager.sign_x509_svid_der`` from the CSR, as in ``bench_issuance``) is
measured in the same run the same way.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from grpclib.client import Channel

from bench.bench_issuance import make_csrs, openssl_ecdsap256
from spiffed import tls
from spiffed._proto.spire.api.server.svid.v1 import svid_grpc, svid_pb2
from spiffed.keys import KeyType
from spiffed.server.api.services import build_services
from spiffed.server.ca.manager import CaManager, CaSettings
from spiffed.server.cache import ServerCache
from spiffed.server.context import ServerContext
from spiffed.server.datastore import AttestedNode, DataStore, RegistrationEntry, Selector
from spiffed.server.endpoints import Endpoints
from spiffed.server.keymanager.memory import MemoryKeyManager
from spiffed.server.run_store import DatastoreCaStore
from spiffed.server.svid import ServerSvid
from spiffed.spiffeid import SpiffeId, TrustDomain

BATCH = 500
BATCHES = 6
ROUNDS = 3
TD = TrustDomain("example.org")
AGENT = SpiffeId.parse("spiffe://example.org/spire/agent/bench/node1")


class _StaticCache:
    """Authorized entries by parent, for when the server cache is not available."""

    def __init__(self, entries: list[RegistrationEntry]) -> None:
        self._by_id = {e.id: e for e in entries}
        self._children: defaultdict[str, list[RegistrationEntry]] = defaultdict(list)
        for e in entries:
            self._children[e.parent_id].append(e)

    def entry(self, entry_id: str) -> RegistrationEntry | None:
        return self._by_id.get(entry_id)

    def authorized_entries(self, agent_id: SpiffeId) -> list[RegistrationEntry]:
        return list(self._children.get(str(agent_id), []))


async def _cache(store: DataStore, entries: list[RegistrationEntry]) -> tuple[Any, str]:
    cache = ServerCache(store, TD)
    try:
        await cache.start()
    except NotImplementedError:
        return _StaticCache(entries), "static stand-in (ServerCache not implemented yet)"
    return cache, "ServerCache"


async def _run() -> tuple[list[tuple[float, float]], float, str]:
    os.environ.setdefault("SPIFFED_LOG_LEVEL", "error")
    store = await DataStore.memory()
    ca_store = DatastoreCaStore(store, TD.name)
    ca = CaManager(CaSettings(trust_domain=TD), MemoryKeyManager(), ca_store)
    await ca.start()
    server_svid = ServerSvid(ca)
    server_svid.rotate(force=True)

    entries = [
        await store.create_entry(
            RegistrationEntry(
                spiffe_id=f"spiffe://example.org/workload/{i}",
                parent_id=str(AGENT),
                selectors=(Selector("unix", f"uid:{1000 + i}"),),
            )
        )
        for i in range(BATCH)
    ]
    agent_key = KeyType.EC_P256.generate()
    agent_chain = ca.sign_x509_svid(AGENT, agent_key.public_key())
    await store.create_node(
        AttestedNode(
            spiffe_id=str(AGENT),
            attestation_data_type="bench",
            cert_serial_number=str(agent_chain[0].serial_number),
            cert_not_after=int(agent_chain[0].not_valid_after_utc.timestamp()),
        )
    )
    cache, cache_kind = await _cache(store, entries)
    ctx = ServerContext(TD, store, ca, server_svid, cache=cache)
    endpoints = Endpoints(
        ctx,
        build_services(ctx),
        socket_path=_socket_path(),
        bind_address="127.0.0.1",
        bind_port=0,
    )
    bundle = await ca_store.get_bundle()
    endpoints.set_bundle(bundle)
    roots = [x509.load_der_x509_certificate(a.asn1) for a in bundle.x509_authorities]
    await endpoints.start()
    assert endpoints.tcp_address is not None
    csrs = [c.public_bytes(Encoding.DER) for c in make_csrs(BATCH * BATCHES)]
    requests = [
        svid_pb2.BatchNewX509SVIDRequest(
            params=[
                svid_pb2.NewX509SVIDParams(entry_id=entries[j].id, csr=csrs[b * BATCH + j])
                for j in range(BATCH)
            ]
        )
        for b in range(BATCHES)
    ]
    channel = Channel(
        "127.0.0.1",
        endpoints.tcp_address[1],
        ssl=tls.client_context(roots, agent_chain, agent_key),
    )
    stub = svid_grpc.SVIDStub(channel)
    rates = []
    try:
        await _issue(stub, requests[:1])  # handshake and warm-up
        for _ in range(ROUNDS):
            wall, cpu = time.perf_counter(), time.process_time()
            await _issue(stub, requests)
            n = BATCH * BATCHES
            rates.append((n / (time.process_time() - cpu), n / (time.perf_counter() - wall)))
        direct = _direct(ca, csrs)
    finally:
        channel.close()
        await endpoints.stop(grace=1.0)
        if isinstance(cache, ServerCache):
            await cache.stop()
        await store.close()
    return rates, direct, cache_kind


def _direct(ca: CaManager, csrs: list[bytes]) -> float:
    """SVIDs per CPU second of the signing path alone (best of ``ROUNDS``)."""
    parsed = [x509.load_der_x509_csr(c) for c in csrs]
    ids = [SpiffeId.parse(f"spiffe://example.org/workload/{i}") for i in range(len(csrs))]
    best = 0.0
    for _ in range(ROUNDS):
        cpu = time.process_time()
        for spiffe_id, csr in zip(ids, parsed, strict=True):
            ca.sign_x509_svid_der(spiffe_id, csr)
        best = max(best, len(csrs) / (time.process_time() - cpu))
    return best


async def _issue(
    stub: svid_grpc.SVIDStub, requests: list[svid_pb2.BatchNewX509SVIDRequest]
) -> None:
    for req in requests:
        resp = await stub.BatchNewX509SVID(req)
        bad = [r.status for r in resp.results if r.status.code != 0]
        if bad or len(resp.results) != len(req.params):
            raise SystemExit(f"issuance failed: {bad[:1]} ({len(resp.results)} results)")


def _socket_path() -> Any:
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="spiffed-bench-")) / "private" / "api.sock"


def main() -> None:
    """Print end-to-end batch issuance figures (this process and openssl on one core)."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    sign_s, verify_s = openssl_ecdsap256()
    limit = 1 / (1 / sign_s + 1 / verify_s)
    rates, direct, cache_kind = asyncio.run(_run())
    rate, wall = max(rates)
    shown = ", ".join(f"{r:,.0f}" for r, _ in rates)
    print(f"openssl ecdsap256: {sign_s:,.0f} sign/s, {verify_s:,.0f} verify/s (per CPU second)")
    print(f"sign+verify limit: {limit:,.0f}/s")
    print(
        f"BatchNewX509SVID over mTLS, {BATCHES} batches of {BATCH} per round "
        f"(entry lookup: {cache_kind}):"
    )
    print(f"  {rate:,.0f} SVIDs per CPU second, best of [{shown}]; {wall:,.0f} SVIDs/s wall clock")
    print(f"  per SVID: {1e6 / rate:.0f} us CPU end to end (client and server on one core)")
    print(f"  ratio to the limit: {rate / limit:.2f}")
    print(
        f"signing path alone (sign_x509_svid_der from CSR): {direct:,.0f} per CPU second, "
        f"ratio {direct / limit:.2f}; end to end is {rate / direct:.2f} of it"
    )


if __name__ == "__main__":
    main()
