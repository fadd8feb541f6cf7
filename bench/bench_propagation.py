"""Propagation: from ``entry create`` returning to the workload holding the new X509-SVID.

Real processes: ``spiffed-server run`` (SQLite, memory KeyManager) and an agent on free
ports and temporary directories; this process is the admin (``BatchCreateEntry`` over the
server's Unix socket, as ``spiffed-server entry create`` does) and the workload (one
``FetchX509SVID`` stream kept open through :class:`WorkloadApiClient`, over the agent's
socket).

Each sample: wait a random moment, create an entry for this UID (selector
``unix:uid:<uid>``, a new SPIFFE ID, parented to the agent), start the clock when the RPC
returns, stop it when the stream delivers an update holding an SVID for that ID. In between,
the server commits, its cache applies the event and tells the agent (Watch), the agent syncs
(SyncAuthorizedEntries), has the SVID signed (BatchNewX509SVID) and the Workload API pushes
the new set.

Two agents in turn against the same server, each with SPIRE's default sync interval (5 s):

* ``spiffed-agent`` as shipped: it keeps spiffed's Watch stream open and syncs when told;
* the baseline, a SPIRE-like polling agent: the same agent code with the Watch stream
  switched off (``bench._polling_agent``; the agent has no configuration key for it), so it
  learns of the entry at its next poll. The random wait before each creation is uniform over
  one interval, so the creation falls at a random point of the poll cycle.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from grpclib.client import Channel

from spiffed._proto.spire.api.server.agent.v1 import agent_grpc, agent_pb2
from spiffed._proto.spire.api.server.entry.v1 import entry_grpc, entry_pb2
from spiffed._proto.spire.api.types import entry_pb2 as types_entry
from spiffed._proto.spire.api.types import selector_pb2, spiffeid_pb2
from spiffed.cli._spire import check_health
from spiffed.workloadapi.client import WorkloadApiClient, WorkloadApiError

SAMPLES = 50
BASELINE_SAMPLES = 30
SYNC_INTERVAL = 5.0  # SPIRE's default agent sync interval
WATCH_GAP = 0.5  # the random wait before each creation with Watch: uniform in [0, this)
TARGET_P95 = 1.0
DEADLINE = 60.0  # for start-up and for each sample
TD = "example.org"
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
WATCH_LINE = "watching the server for entry changes"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass
class Series:
    """One agent's samples (seconds from the create RPC returning to the stream update)."""

    name: str
    samples: list[float] = field(default_factory=list)
    watching: bool = False  # the agent's log says it watches the server

    @property
    def p50(self) -> float:
        return pct(self.samples, 50)

    @property
    def p95(self) -> float:
        return pct(self.samples, 95)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def over_1s(self) -> int:
        return sum(1 for s in self.samples if s > 1.0)


@dataclass
class Results:
    sync_interval: float
    watch: Series
    baseline: Series


def server_conf(root: Path, port: int) -> Path:
    data = root / "data"
    conf = root / "server.conf"
    conf.write_text(f"""
server {{
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = "{root}/private/api.sock"
    trust_domain = "{TD}"
    data_dir = "{data}"
    log_level = "WARN"
}}
plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{data}/datastore.sqlite3"
        }}
    }}
    NodeAttestor "join_token" {{ plugin_data {{}} }}
    KeyManager "memory" {{ plugin_data {{}} }}
}}
""")
    return conf


def agent_conf(root: Path, port: int, sock: Path, sync_interval: float) -> Path:
    conf = root / "agent.conf"
    conf.write_text(f"""
agent {{
    trust_domain = "{TD}"
    server_address = "127.0.0.1"
    server_port = "{port}"
    data_dir = "{root}/data"
    socket_path = "{sock}"
    log_level = "INFO"
    insecure_bootstrap = true
    experimental {{ sync_interval = "{int(sync_interval * 1000)}ms" }}
}}
plugins {{
    NodeAttestor "join_token" {{ plugin_data {{}} }}
    KeyManager "memory" {{ plugin_data {{}} }}
    WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
""")
    return conf


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


@asynccontextmanager
async def process(argv: list[str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out, cwd=REPO)
    try:
        yield proc
    finally:
        await _stop(proc)


async def until(
    what: str, log: Path, proc: asyncio.subprocess.Process, check: Callable[[], Awaitable[bool]]
) -> None:
    """Poll ``check()`` until it is true; fail if the process exits or at the deadline."""
    deadline = time.monotonic() + DEADLINE
    while not await check():
        if proc.returncode is not None:
            raise RuntimeError(f"{what}: process exited ({proc.returncode}):\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {DEADLINE} s:\n{log.read_text()}")
        await asyncio.sleep(0.05)


class Admin:
    """The server's admin API over its Unix socket."""

    def __init__(self, socket_path: Path) -> None:
        self.channel = Channel(path=str(socket_path))

    async def join_token(self) -> str:
        resp = await agent_grpc.AgentStub(self.channel).CreateJoinToken(
            agent_pb2.CreateJoinTokenRequest(ttl=600), timeout=30
        )
        return str(resp.value)

    async def create_entry(self, parent_path: str, spiffe_path: str) -> None:
        entry = types_entry.Entry(
            spiffe_id=spiffeid_pb2.SPIFFEID(trust_domain=TD, path=spiffe_path),
            parent_id=spiffeid_pb2.SPIFFEID(trust_domain=TD, path=parent_path),
            selectors=[selector_pb2.Selector(type="unix", value=f"uid:{os.getuid()}")],
        )
        resp = await entry_grpc.EntryStub(self.channel).BatchCreateEntry(
            entry_pb2.BatchCreateEntryRequest(entries=[entry]), timeout=30
        )
        status = resp.results[0].status
        if status.code != 0:
            raise RuntimeError(f"BatchCreateEntry {spiffe_path}: {status.code} {status.message}")


class Workload:
    """One FetchX509SVID stream; records when each SPIFFE ID first appears in it."""

    def __init__(self, sock: Path) -> None:
        self.client = WorkloadApiClient(f"unix://{sock}", timeout=None)
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.seen: set[str] = set()
        self.task: asyncio.Task[None] | None = None

    def expect(self, spiffe_id: str) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters[spiffe_id] = fut
        return fut

    async def open(self, first_id: str) -> None:
        """Open the stream (retrying while the agent has no identity for us yet) and follow
        it until ``first_id`` has been seen."""
        first = self.expect(first_id)
        deadline = time.monotonic() + DEADLINE

        async def follow() -> None:
            while True:
                try:
                    async for ctx in self.client.watch_x509_context():
                        now = time.perf_counter()
                        for svid in ctx.svids:
                            sid = str(svid.spiffe_id)
                            if sid not in self.seen:
                                self.seen.add(sid)
                                fut = self.waiters.pop(sid, None)
                                if fut is not None and not fut.done():
                                    fut.set_result(now)
                except WorkloadApiError:
                    if first.done() or time.monotonic() > deadline:
                        raise
                self.client.close()
                await asyncio.sleep(0.05)

        self.task = asyncio.create_task(follow())
        done, _ = await asyncio.wait(
            {first, self.task}, timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED
        )
        if self.task in done:
            self.task.result()
        if first not in done:
            raise RuntimeError(f"the workload never got {first_id}")

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with suppress(asyncio.CancelledError, WorkloadApiError):
                await self.task
        self.client.close()


async def measure_agent(
    name: str,
    agent_cmd: list[str],
    *,
    root: Path,
    port: int,
    admin: Admin,
    samples: int,
    gap: float,
    sync_interval: float,
) -> Series:
    """Start one agent, open the workload stream, take ``samples`` samples, stop it."""
    root.mkdir()
    sock = Path(tempfile.mkdtemp(prefix="sp-", dir="/tmp")) / "api.sock"  # short path
    conf = agent_conf(root, port, sock, sync_interval)
    token = await admin.join_token()
    agent_path = f"/spire/agent/join_token/{token}"
    await admin.create_entry(agent_path, f"/bench/{name}/first")
    series = Series(name)
    log = root / "agent.log"
    rng = random.Random(f"{name}-{samples}")
    async with process([*agent_cmd, "run", "-config", str(conf), "-joinToken", token], log) as ag:
        await until("agent socket", log, ag, lambda: _exists(sock))
        workload = Workload(sock)
        try:
            await workload.open(f"spiffe://{TD}/bench/{name}/first")
            for i in range(samples):
                await asyncio.sleep(rng.uniform(0, gap))
                sid = f"/bench/{name}/s{i}"
                arrived = workload.expect(f"spiffe://{TD}{sid}")
                await admin.create_entry(agent_path, sid)
                created = time.perf_counter()
                assert workload.task is not None
                done, _ = await asyncio.wait(
                    {arrived, workload.task}, timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED
                )
                if workload.task in done:
                    workload.task.result()  # the stream failed: raise its error
                if arrived not in done:
                    raise RuntimeError(
                        f"{name}: no SVID for {sid} within {DEADLINE} s:\n{log.read_text()}"
                    )
                series.samples.append(arrived.result() - created)
        finally:
            await workload.close()
    series.watching = WATCH_LINE in log.read_text()
    return series


async def _exists(path: Path) -> bool:
    return path.exists()


async def run(
    *,
    samples: int = SAMPLES,
    baseline_samples: int = BASELINE_SAMPLES,
    sync_interval: float = SYNC_INTERVAL,
    watch_gap: float = WATCH_GAP,
) -> Results:
    """Start the server, measure the Watch agent then the polling agent, stop everything."""
    with tempfile.TemporaryDirectory(prefix="spiffed-bench-prop-") as tmp:
        root = Path(tmp)
        port = free_port()
        (root / "server").mkdir()
        conf = server_conf(root / "server", port)
        api_sock = root / "server" / "private" / "api.sock"
        log = root / "server" / "server.log"
        server_cmd = [str(BIN / "spiffed-server"), "run", "-config", str(conf)]
        async with process(server_cmd, log) as srv:

            async def healthy() -> bool:
                return api_sock.exists() and (await check_health(str(api_sock)))[0]

            await until("server health", log, srv, healthy)
            admin = Admin(api_sock)
            try:
                common = {"port": port, "admin": admin, "sync_interval": sync_interval}
                watch = await measure_agent(
                    "watch",
                    [str(BIN / "spiffed-agent")],
                    root=root / "watch",
                    samples=samples,
                    gap=watch_gap,
                    **common,  # type: ignore[arg-type]
                )
                baseline = await measure_agent(
                    "polling",
                    [sys.executable, "-m", "bench._polling_agent"],
                    root=root / "polling",
                    samples=baseline_samples,
                    gap=sync_interval,
                    **common,  # type: ignore[arg-type]
                )
            finally:
                admin.channel.close()
    return Results(sync_interval, watch, baseline)


def report(r: Results) -> None:
    """Print the figures."""
    ms = 1e3
    print(f"cores: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()[0]:.2f}")
    print(f"agent sync interval: {r.sync_interval:g} s (SPIRE's default 5 s) for both agents")
    print(
        f"{'agent':<34}{'samples':>8}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'> 1 s':>7}"
        f"{'watching':>10}"
    )
    for label, s in (
        ("spiffed-agent (Watch push)", r.watch),
        ("polling agent (baseline)", r.baseline),
    ):
        print(
            f"{label:<34}{len(s.samples):>8}{s.p50 * ms:>9.0f}{s.p95 * ms:>9.0f}"
            f"{s.max * ms:>9.0f}{s.over_1s:>7}{'yes' if s.watching else 'no':>10}"
        )
    print(
        f"p95 with Watch: {r.watch.p95 * ms:.0f} ms (target < {TARGET_P95 * ms:.0f} ms: "
        f"{'met' if r.watch.p95 < TARGET_P95 else 'NOT met'}); "
        f"baseline p50 / Watch p50: {r.baseline.p50 / r.watch.p50:.1f}x, "
        f"p95: {r.baseline.p95 / r.watch.p95:.1f}x"
    )


def main() -> None:
    report(asyncio.run(run()))


if __name__ == "__main__":
    main()
