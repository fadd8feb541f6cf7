"""The server side of ``bench_workload``, run as its own process so that its memory and CPU are
its own: ``python -m bench._workload_agent workload SOCKET ENTRIES MINE`` or ``... echo SOCKET``.

``workload`` serves the real Workload API (``start_workload_api`` over ``WorkloadApiService``
with the unix attestor) from an :class:`IdentityCache` holding ``ENTRIES`` entries, each with
its own X509-SVID (own key, signed by a test CA), as an agent holds them: ``MINE`` of them
select this UID, the others select other UIDs. ``echo`` serves a trivial unary grpclib
service (``/bench.Echo/Echo``, a ``BytesValue`` sent back) on the same kind of socket.

Prints one JSON line on stdout once serving; stops when stdin closes. With the environment
variable ``BENCH_TRACEMALLOC=1`` the workload mode traces allocations, prints the largest
sources to stderr once built, and on each SIGUSR1 the growth since the previous snapshot.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import os
import resource
import signal
import sys
import time
import tracemalloc
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import wrappers_pb2
from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

from spiffed.agent.cache import IdentityCache, WorkloadEntry
from spiffed.agent.endpoints import WorkloadApiService, start_workload_api
from spiffed.agent.workloadattestor.unix import UnixAttestor
from spiffed.bundle import SpiffeBundle
from spiffed.grpcutil import start_unix_server
from spiffed.keys import KeyType
from spiffed.ratelimit import KeyedRateLimiter
from spiffed.selector import Selector
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.jwt import sign_jwt_svid
from spiffed.svid.x509 import X509Svid
from spiffed.svid.x509_issue import create_root_ca, create_x509_svid

TD = TrustDomain("example.org")
ECHO_METHOD = "/bench.Echo/Echo"
#: Other workloads' UIDs: entries are spread over this many of them.
OTHER_UIDS = 2000
OTHER_UID_BASE = 200_000


class Echo:
    """A unary service that sends the request back; no .proto needed."""

    async def echo(self, stream: Stream[wrappers_pb2.BytesValue, wrappers_pb2.BytesValue]) -> None:
        request = await stream.recv_message()
        assert request is not None
        await stream.send_message(request)

    def __mapping__(self) -> dict[str, Handler]:
        return {
            ECHO_METHOD: Handler(
                self.echo,
                Cardinality.UNARY_UNARY,
                wrappers_pb2.BytesValue,
                wrappers_pb2.BytesValue,
            )
        }


class _Ca:
    def __init__(self) -> None:
        self.key = KeyType.EC_P256.generate()
        self.cert = create_root_ca(TD, self.key, ttl=dt.timedelta(hours=24))
        self.jwt_key = ec.generate_private_key(ec.SECP256R1())
        self.jwt_kid = "bench-jwt-1"

    def bundle(self) -> SpiffeBundle:
        return SpiffeBundle(TD, (self.cert,), {self.jwt_kid: self.jwt_key.public_key()})

    def svid(self, spiffe_id: SpiffeId) -> X509Svid:
        """An SVID as the agent gets one: own key, the leaf parsed from the DER the server
        sends (as ``spiffed.agent.client.svid_from_proto`` does)."""
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = create_x509_svid(
            spiffe_id,
            key.public_key(),
            signer_cert=self.cert,
            signer_key=self.key,
            ttl=dt.timedelta(hours=1),
        )
        der = leaf.public_bytes(serialization.Encoding.DER)
        return X509Svid.from_certificates([x509.load_der_x509_certificate(der)], key)

    async def mint(self, entry: WorkloadEntry, audience: tuple[str, ...]) -> str:
        now = dt.datetime.now(dt.UTC)
        return sign_jwt_svid(
            entry.spiffe_id,
            audience,
            self.jwt_key,
            self.jwt_kid,
            dt.timedelta(minutes=5),
            issued_at=now,
        )


def build_cache(ca: _Ca, entries: int, mine: int) -> IdentityCache:
    """A cache with ``entries`` entries and their SVIDs; the first ``mine`` select this UID."""
    cache = IdentityCache(TD)
    cache.set_bundles(ca.bundle(), {})
    me = Selector("unix", f"uid:{os.getuid()}")
    all_entries = []
    for i in range(entries):
        if i < mine:
            selectors = frozenset({me})
            path = f"/bench/mine/{i}"
        else:
            uid = OTHER_UID_BASE + i % OTHER_UIDS
            selectors = frozenset({Selector("unix", f"uid:{uid}")})
            path = f"/bench/uid{uid}/w{i}"
        all_entries.append(
            WorkloadEntry(
                f"entry-{i:06d}",
                SpiffeId.from_path(TD, path),
                selectors,
                revision=1,
                created_at=1_700_000_000 + i,
            )
        )
    cache.set_entries(all_entries)
    for e in all_entries:
        cache.set_svid(e.id, ca.svid(e.spiffe_id))
    return cache


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _until_stdin_closes() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)


async def serve_workload(socket: str, entries: int, mine: int) -> None:
    trace = os.environ.get("BENCH_TRACEMALLOC") == "1"
    if trace:
        tracemalloc.start(5)
    start = time.perf_counter()
    ca = _Ca()
    cache = build_cache(ca, entries, mine)
    built = time.perf_counter() - start
    # Same service as the agent's, but the per-UID rate limit is lifted: every caller of the
    # benchmark is one UID, and the default (50/s, burst 100) would refuse most calls.
    service = WorkloadApiService(
        cache, [UnixAttestor()], ca.mint, rate_limiter=KeyedRateLimiter(1e9, 1e9)
    )
    server = await start_workload_api(service, socket)
    gc.collect()
    if trace:
        snapshots = [tracemalloc.take_snapshot()]
        current, _ = tracemalloc.get_traced_memory()
        print(f"traced: {current / 2**20:.1f} MiB", file=sys.stderr)
        for stat in snapshots[0].statistics("lineno")[:20]:
            print(stat, file=sys.stderr)

        def growth() -> None:
            gc.collect()
            snapshots.append(tracemalloc.take_snapshot())
            current, _ = tracemalloc.get_traced_memory()
            print(f"traced: {current / 2**20:.1f} MiB; growth:", file=sys.stderr)
            for stat in snapshots[-1].compare_to(snapshots[-2], "lineno")[:25]:
                print(stat, file=sys.stderr)

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, growth)
    print(json.dumps({"pid": os.getpid(), "entries": len(cache.entries()), "build_s": built}))
    sys.stdout.flush()
    try:
        await _until_stdin_closes()
    finally:
        server.close()
        await server.wait_closed()


async def serve_echo(socket: str) -> None:
    server = Server([Echo()])
    await start_unix_server(server, socket, dir_mode=0o755, socket_mode=0o777)
    print(json.dumps({"pid": os.getpid()}))
    sys.stdout.flush()
    try:
        await _until_stdin_closes()
    finally:
        server.close()
        await server.wait_closed()


def main(argv: list[str]) -> int:
    _raise_fd_limit()
    mode, *args = argv
    coro: Any
    if mode == "workload":
        socket, entries, mine = args
        coro = serve_workload(socket, int(entries), int(mine))
    elif mode == "echo":
        (socket,) = args
        coro = serve_echo(socket)
    else:
        print(f"unknown mode {mode!r}: workload or echo", file=sys.stderr)
        return 2
    asyncio.run(coro)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
