"""Entry sync at scale: one server with 100,000 entries, 1,000 simulated agents.

One process. A SQLite datastore (a file) holds 1,000 attested nodes and 100,000 entries in
the shape of ``bench_sync_index``: 95 entries parented to each agent, and 10 node aliases
(entries parented to the server, matching a node selector every tenth agent has) with 499
entries under each, so every agent is authorized for 594 entries. The entries are written
in bulk (rows as the datastore writes them); the nodes through the datastore's own
``create_node``. The server's CA and SVID are set up as ``spiffed-server`` does (memory
KeyManager), the server cache (:class:`ServerCache`, following datastore events) is
started, and the real Entry service is served in-process (``grpclib.testing.ChannelFor``)
behind a thin wrapper that does what the TLS listener does once the peer's SVID is verified:
it looks the agent up in the cache (as the listener's agent check does) and sets the caller.
A subset of the agents (100) then also syncs through the real TLS listener
(:class:`Endpoints`, the server's services, SPIRE's page size) with SVIDs signed by the
server's CA, on a new connection per sync as the agent does.

Each simulated agent syncs as ``spiffed-agent`` (and SPIRE's agent) does, with
``SyncAuthorizedEntries``: 594 entries are more than one page (500), so the server sends the
(id, revision) pairs first and the agent asks only for entries that are new or changed.
Rounds: every agent syncs once, one after another:

1. cold: the agents know nothing, so each asks for all of its entries;
2. unchanged: nothing changed since, so each gets the revisions and asks for nothing;
3. after 100 entry changes (``update_entry`` through the datastore; the cache catches up
   from the change events before the round starts);
4. unchanged, with ``GetAuthorizedEntries`` (every entry sent every time; for comparison);
5. over TLS, 100 agents: cold, then unchanged.

Datastore queries are counted with a SQLAlchemy ``before_cursor_execute`` listener and
split by who made them: the cache's event follower (which polls the events table once a
second whatever the agents do) and everything else (the sync RPCs). Baseline in the same
run: the in-memory index lookup alone for all agents (``cache.authorized_entries``), i.e.
what a round costs before any message is built or sent.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from cryptography import x509
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.testing import ChannelFor
from sqlalchemy import event

from spiffed._proto.spire.api.server.entry.v1 import entry_grpc, entry_pb2
from spiffed.agent.client import ServerChannel
from spiffed.keys import KeyType
from spiffed.server.api import Caller, Role, allowed, caller_context
from spiffed.server.api.entry import EntryService
from spiffed.server.api.services import build_services
from spiffed.server.ca.manager import CaManager, CaSettings
from spiffed.server.cache import ServerCache
from spiffed.server.context import ServerContext
from spiffed.server.datastore import AttestedNode, RegistrationEntry, Selector, open_datastore
from spiffed.server.datastore import schema as ds_schema
from spiffed.server.datastore._entries import _row_values, normalize_entry
from spiffed.server.endpoints import Endpoints
from spiffed.server.keymanager.memory import MemoryKeyManager
from spiffed.server.run_store import DatastoreCaStore
from spiffed.server.svid import ServerSvid
from spiffed.spiffeid import SpiffeId, TrustDomain

AGENTS = 1000
DIRECT = 95
ALIASES = 10
PER_ALIAS = 500  # the alias entry and 499 entries under it
CHANGES = 100
TLS_AGENTS = 100  # the subset that also syncs over the real TLS listener
TD = TrustDomain("example.org")
SERVER_ID = f"spiffe://{TD}/spire/server"
AGENT_MD = "x-bench-agent"
FOLLOWER_TASK = "server-cache-follow"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class QueryCounter:
    """Counts statements sent to the database, split by the asyncio task that sent them."""

    def __init__(self) -> None:
        self.follower = 0
        self.other = 0
        self.statements: list[str] = []

    def reset(self) -> None:
        self.follower = self.other = 0
        self.statements = []

    def __call__(self, conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        try:
            task = asyncio.current_task()
        except RuntimeError:
            task = None
        if task is not None and task.get_name() == FOLLOWER_TASK:
            self.follower += 1
        else:
            self.other += 1
            self.statements.append(" ".join(statement.split())[:120])


class AsAgent:
    """The Entry service behind what the TLS listener does for a verified agent SVID: the
    agent is looked up in the cache (refused if not attested) and becomes the caller. The
    agent's SPIFFE ID comes in the ``x-bench-agent`` metadata instead of a certificate."""

    def __init__(self, service: EntryService, cache: ServerCache) -> None:
        self._service = service
        self._cache = cache

    def __mapping__(self) -> dict[str, Any]:
        return {
            name: handler._replace(func=self._wrap(name, handler.func))
            for name, handler in self._service.__mapping__().items()
        }

    def _wrap(self, method: str, func: Callable[[Any], Any]) -> Callable[[Any], Any]:
        async def run(stream: Any) -> None:
            agent = SpiffeId.parse(dict(stream.metadata)[AGENT_MD])
            node = await self._cache.node(agent)
            roles = {Role.ANY}
            if node is not None and node.cert_serial_number:
                roles.add(Role.AGENT)
            caller = Caller(address="127.0.0.1:1", spiffe_id=agent, roles=frozenset(roles))
            if not allowed(method, caller):
                raise GRPCError(Status.PERMISSION_DENIED, f"{method} not allowed for {agent}")
            token = caller_context.set(caller)
            try:
                await func(stream)
            finally:
                caller_context.reset(token)

        return run


@dataclass
class Agent:
    """A simulated agent: its ID and what it synced last (id -> (revision, created_at))."""

    spiffe_id: str
    known: dict[str, tuple[int, int]] = field(default_factory=dict)

    async def sync(self, stub: entry_grpc.EntryStub) -> tuple[int, int]:
        """One SyncAuthorizedEntries exchange as the agent does it: (entries, fetched)."""
        md = {AGENT_MD: self.spiffe_id}
        full: list[Any] = []
        revisions: list[Any] = []
        async with stub.SyncAuthorizedEntries.open(metadata=md) as stream:
            await stream.send_message(entry_pb2.SyncAuthorizedEntriesRequest())
            await _pages(stream, full, revisions)
            if revisions:
                wanted = [
                    r.id
                    for r in revisions
                    if self.known.get(r.id) != (r.revision_number, r.created_at)
                ]
                if wanted:
                    await stream.send_message(entry_pb2.SyncAuthorizedEntriesRequest(ids=wanted))
                    await _pages(stream, full, [])
            await stream.end()
        if revisions:
            self.known = {r.id: (r.revision_number, r.created_at) for r in revisions}
        else:
            self.known = {e.id: (e.revision_number, e.created_at) for e in full}
        return len(self.known), len(full)

    async def get(self, stub: entry_grpc.EntryStub) -> tuple[int, int]:
        """One GetAuthorizedEntries call: (entries, fetched) -- every entry is sent."""
        resp = await stub.GetAuthorizedEntries(
            entry_pb2.GetAuthorizedEntriesRequest(), metadata={AGENT_MD: self.spiffe_id}
        )
        return len(resp.entries), len(resp.entries)


@dataclass
class TlsAgent(Agent):
    """A simulated agent that syncs over the server's TLS listener with its own SVID, on a
    new connection each time (as the agent does)."""

    key: Any = None
    chain: list[Any] = field(default_factory=list)

    async def sync_tls(self, port: int, roots: list[Any]) -> tuple[int, int]:
        channel = ServerChannel(
            "127.0.0.1", port, trust_domain=TD, roots=roots, chain=self.chain, key=self.key
        )
        try:
            return await self.sync(entry_grpc.EntryStub(channel))
        finally:
            channel.close()


async def _pages(stream: Any, full: list[Any], revisions: list[Any]) -> None:
    while True:
        resp = await stream.recv_message()
        if resp is None:
            raise RuntimeError("SyncAuthorizedEntries ended too early")
        full.extend(resp.entries)
        revisions.extend(resp.entry_revisions)
        if not resp.more:
            return


@dataclass
class Round:
    name: str
    wall: float
    cpu: float  # this process's CPU time over the round
    per_agent: list[float]
    sync_queries: int
    follower_queries: int
    entries_per_agent: int
    fetched: int  # full entries sent, all agents together
    statements: list[str]

    @property
    def p50(self) -> float:
        return pct(self.per_agent, 50)

    @property
    def p95(self) -> float:
        return pct(self.per_agent, 95)


@dataclass
class Results:
    agents: int
    entries: int
    populate_s: float
    cache_load_s: float
    index_round_s: float  # baseline: the index lookup alone, every agent once
    rounds: list[Round]
    rss_loaded: float
    rss_end: float


def agent_id(i: int) -> str:
    return f"spiffe://{TD}/spire/agent/join_token/bench-{i:05d}"


def build_entries(
    agents: int, direct: int, aliases: int, per_alias: int
) -> list[RegistrationEntry]:
    out: list[RegistrationEntry] = []
    for a in range(agents):
        for w in range(direct):
            out.append(
                RegistrationEntry(
                    f"spiffe://{TD}/a{a}/w{w}",
                    agent_id(a),
                    (Selector("unix", f"uid:{1000 + w}"),),
                )
            )
    for g in range(aliases):
        alias = f"spiffe://{TD}/group/{g}"
        out.append(RegistrationEntry(alias, SERVER_ID, (Selector("x509pop", f"group:{g}"),)))
        for w in range(per_alias - 1):
            out.append(
                RegistrationEntry(f"{alias}/w{w}", alias, (Selector("unix", f"uid:{2000 + w}"),))
            )
    return out


async def populate(
    store: Any, agents: int, direct: int, aliases: int, per_alias: int, serials: dict[int, int]
) -> list[RegistrationEntry]:
    """Write the entries in bulk (one transaction, rows as ``create_entry`` writes them) and
    the nodes through ``create_node``."""
    now = int(time.time())
    entries = [
        replace(normalize_entry(e), id=str(uuid.uuid4()), created_at=now)
        for e in build_entries(agents, direct, aliases, per_alias)
    ]
    rows = []
    sel_rows = []
    for pk, e in enumerate(entries, start=1):
        rows.append({"id": pk, "entry_id": e.id, "created_at": e.created_at, **_row_values(e)})
        sel_rows.extend(
            {"registered_entry_id": pk, "type": s.type, "value": s.value} for s in e.selectors
        )
    async with store.engine.begin() as conn:
        await conn.execute(sa.insert(ds_schema.registered_entries), rows)
        await conn.execute(sa.insert(ds_schema.selectors), sel_rows)
    expires = now + 24 * 3600
    for a in range(agents):
        await store.create_node(
            AttestedNode(
                agent_id(a),
                "join_token",
                cert_serial_number=str(serials.get(a, a + 1)),
                cert_not_after=expires,
                selectors=(Selector("x509pop", f"group:{a % aliases}"),) if aliases else (),
            )
        )
    return entries


async def caught_up(store: Any, cache: ServerCache) -> None:
    """Wait until the cache has applied every event written so far (the follower runs on
    its own; this only watches it)."""
    last = await store.last_event_id()
    deadline = time.monotonic() + 120
    while cache.revision < last:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cache did not catch up ({cache.revision} < {last})")
        await asyncio.sleep(0.01)


async def run_round(
    name: str,
    agents: list[Any],
    call: Callable[[Any], Awaitable[tuple[int, int]]],
    counter: QueryCounter,
) -> Round:
    gc.collect()
    per_agent: list[float] = []
    fetched = 0
    sizes: set[int] = set()
    counter.reset()
    start = time.perf_counter()
    cpu = time.process_time()
    for agent in agents:
        t0 = time.perf_counter()
        size, got = await call(agent)
        per_agent.append(time.perf_counter() - t0)
        fetched += got
        sizes.add(size)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    return Round(
        name,
        wall,
        cpu,
        per_agent,
        counter.other,
        counter.follower,
        max(sizes),
        fetched,
        counter.statements[:5],
    )


async def run(
    *,
    agents: int = AGENTS,
    direct: int = DIRECT,
    aliases: int = ALIASES,
    per_alias: int = PER_ALIAS,
    changes: int = CHANGES,
    tls_agents: int = TLS_AGENTS,
    page_size: int = 0,
) -> Results:
    """Build the datastore, start the cache, run the rounds. ``page_size``: the Entry
    service's page size (0: SPIRE's 500)."""
    with tempfile.TemporaryDirectory(prefix="spiffed-bench-sync-") as tmp:
        store = await open_datastore("sqlite3", str(Path(tmp) / "datastore.sqlite3"))
        counter = QueryCounter()
        event.listen(store.engine.sync_engine, "before_cursor_execute", counter)
        cache = ServerCache(store, TD)
        endpoints: Endpoints | None = None
        try:
            # The server's CA and SVID, as spiffed-server sets them up (memory KeyManager).
            ca_store = DatastoreCaStore(store, TD.name)
            ca = CaManager(CaSettings(trust_domain=TD), MemoryKeyManager(), ca_store)
            await ca.start()
            server_svid = ServerSvid(ca)
            server_svid.rotate(force=True)
            # SVIDs for the agents that also sync over TLS; their nodes get these serials.
            tls_sims = []
            for a in range(min(tls_agents, agents)):
                key = KeyType.EC_P256.generate()
                chain = ca.sign_x509_svid(SpiffeId.parse(agent_id(a)), key.public_key())
                tls_sims.append(TlsAgent(agent_id(a), key=key, chain=chain))
            serials = {a: t.chain[0].serial_number for a, t in enumerate(tls_sims)}

            start = time.perf_counter()
            entries = await populate(store, agents, direct, aliases, per_alias, serials)
            populated = time.perf_counter() - start
            start = time.perf_counter()
            await cache.start()
            await caught_up(store, cache)
            loaded = time.perf_counter() - start
            gc.collect()
            rss_loaded = rss_mib()
            ctx = ServerContext(
                trust_domain=TD, datastore=store, ca=ca, server_svid=server_svid, cache=cache
            )
            sims = [Agent(agent_id(a)) for a in range(agents)]
            ids = [SpiffeId.parse(a.spiffe_id) for a in sims]
            start = time.perf_counter()
            for sid in ids:
                cache.authorized_entries(sid)
            index_round = time.perf_counter() - start

            rounds = []
            service = AsAgent(EntryService(ctx, entry_page_size=page_size), cache)
            async with ChannelFor([service]) as channel:
                stub = entry_grpc.EntryStub(channel)

                async def sync(agent: Agent) -> tuple[int, int]:
                    return await agent.sync(stub)

                async def get(agent: Agent) -> tuple[int, int]:
                    return await agent.get(stub)

                rounds.append(await run_round("cold", sims, sync, counter))
                rounds.append(await run_round("unchanged", sims, sync, counter))
                rng = random.Random(changes)
                for e in rng.sample(entries, min(changes, len(entries))):
                    await store.update_entry(
                        replace(e, x509_svid_ttl=e.x509_svid_ttl + 600), {"x509_svid_ttl"}
                    )
                await caught_up(store, cache)
                rounds.append(
                    await run_round(f"after {changes} entry changes", sims, sync, counter)
                )
                rounds.append(await run_round("unchanged, GetAuthorized", sims, get, counter))

            if tls_sims:
                # The real listener: TLS handshake with the agent's SVID, the agent check
                # against the cache, then the same Entry service.
                endpoints = Endpoints(
                    ctx,
                    build_services(ctx),
                    socket_path=Path(tmp) / "api.sock",
                    bind_address="127.0.0.1",
                    bind_port=0,
                )
                bundle = await ca_store.get_bundle()
                endpoints.set_bundle(bundle)
                await endpoints.start()
                assert endpoints.tcp_address is not None
                port = endpoints.tcp_address[1]
                roots = [x509.load_der_x509_certificate(a.asn1) for a in bundle.x509_authorities]

                async def sync_tls(agent: TlsAgent) -> tuple[int, int]:
                    return await agent.sync_tls(port, roots)

                n = len(tls_sims)
                for name in (f"TLS, {n} agents: cold", f"TLS, {n} agents: unchanged"):
                    rounds.append(await run_round(name, tls_sims, sync_tls, counter))
            gc.collect()
            return Results(
                agents,
                len(entries),
                populated,
                loaded,
                index_round,
                rounds,
                rss_loaded,
                rss_mib(),
            )
        finally:
            if endpoints is not None:
                await endpoints.stop()
            await cache.stop()
            await store.close()


def report(r: Results) -> None:
    """Print the figures."""
    ms = 1e3
    print(f"cores: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()[0]:.2f}")
    print(
        f"entries: {r.entries:,}  agents: {r.agents:,}  populate: {r.populate_s:.1f} s  "
        f"cache load: {r.cache_load_s:.1f} s  RSS loaded: {r.rss_loaded:.0f} MiB"
    )
    print(
        f"baseline, index lookup alone for every agent: {r.index_round_s * ms:.0f} ms "
        f"({r.index_round_s / r.agents * 1e6:.0f} us per agent)"
    )
    print(
        f"{'round (SyncAuthorizedEntries)':<32}{'total s':>8}{'CPU s':>7}{'p50 ms':>8}{'p95 ms':>8}"
        f"{'x index':>8}{'entries':>8}{'fetched':>9}{'ds queries':>11}{'follower':>9}"
    )
    for rd in r.rounds:
        print(
            f"{rd.name:<32}{rd.wall:>8.2f}{rd.cpu:>7.2f}{rd.p50 * ms:>8.2f}{rd.p95 * ms:>8.2f}"
            f"{rd.wall / len(rd.per_agent) / (r.index_round_s / r.agents):>8.1f}"
            f"{rd.entries_per_agent:>8}{rd.fetched:>9,}"
            f"{rd.sync_queries:>11}{rd.follower_queries:>9}"
        )
        for stmt in rd.statements:
            print(f"    query: {stmt}")
    print(
        "ds queries: statements sent by the sync RPCs during the round (target 0); "
        "follower: the cache's event poll (once a second, whatever the agents do); "
        "x index: mean time per agent / index lookup per agent"
    )
    print(f"process RSS at the end: {r.rss_end:.0f} MiB")


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    report(asyncio.run(run()))


if __name__ == "__main__":
    main()
