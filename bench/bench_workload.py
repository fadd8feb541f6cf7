"""The Workload API under load: latency beside a plain gRPC echo, and the agent's memory.

Two server processes are started (``bench._workload_agent``): the real Workload API (unix
attestor, an identity cache of 10,000 entries with their own X509-SVIDs, 3 of them for this
UID, the rest for other UIDs) and a trivial unary grpclib echo service on the same kind of
Unix socket. This process is the client (grpclib), one connection per client.

Latency, with 1 client and with 100 concurrent clients (each calling in a loop):
``FetchJWTSVID`` for an audience already minted for (cached), and ``FetchX509SVID`` from
opening the stream to its first message; beside the echo's round trip in the same run, and
as ratios to it. Every Workload API call attests the caller (SO_PEERCRED, pidfd, /proc).

"srv CPU" is the server process's CPU time per call (from /proc/<pid>/stat over the timed
calls): what the call costs the agent whatever the client side does. All clients share this
one process, so with 100 clients it is the client process that saturates first and the
latencies include its queueing (the echo's as much as the Workload API's). The agent's
per-UID rate limit is lifted for the run (every client here is one UID).

Memory: the agent's resident set (VmRSS) after start with 10,000 entries (target <= 150 MiB)
and with 1,000 FetchX509SVID streams open (1,000 connections, each with one stream).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import wrappers_pb2
from grpclib.client import Channel, UnaryUnaryMethod
from h2.exceptions import StreamClosedError

from bench._workload_agent import ECHO_METHOD
from spiffed._proto.workload import workload_grpc, workload_pb2
from spiffed.workloadapi.security import client_metadata

ENTRIES = 10_000
MINE = 3
CLIENTS = (1, 100)
CALLS = 2000  # latency samples per (operation, client count)
STREAMS = 1000
RSS_TARGET_MIB = 150
START_DEADLINE = 600.0
AUDIENCE = ["bench-audience"]
REPO = Path(__file__).resolve().parent.parent
MD = client_metadata()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by ``pid`` (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """The resident set of ``pid`` (``VmRSS`` of /proc/<pid>/status) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class ServerProcess:
    """A server started by ``bench._workload_agent``; ``info`` is its ready line."""

    proc: asyncio.subprocess.Process
    socket: str
    info: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mib(self) -> float:
        return rss_mib(self.proc.pid)


@asynccontextmanager
async def server_process(*args: str) -> AsyncIterator[ServerProcess]:
    """Start ``python -m bench._workload_agent <args>``; wait for its ready line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench._workload_agent",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        async with asyncio.timeout(START_DEADLINE):
            line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server {args[0]} exited before serving ({await proc.wait()})")
        socket = args[1]
        yield ServerProcess(proc, socket, json.loads(line))
    finally:
        proc.stdin.close()
        try:
            async with asyncio.timeout(30):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


@dataclass
class Latencies:
    """Samples in seconds."""

    samples: list[float] = field(default_factory=list)
    wall: float = 0.0
    server_cpu: float = 0.0  # CPU seconds the server used during the timed calls

    def pct(self, p: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    @property
    def p50(self) -> float:
        return self.pct(50)

    @property
    def p99(self) -> float:
        return self.pct(99)

    @property
    def rate(self) -> float:
        return len(self.samples) / self.wall if self.wall else 0.0

    @property
    def server_cpu_per_call(self) -> float:
        return self.server_cpu / len(self.samples) if self.samples else 0.0


Call = Callable[[Channel], Awaitable[None]]


async def echo_call(channel: Channel) -> None:
    method = UnaryUnaryMethod(
        channel, ECHO_METHOD, wrappers_pb2.BytesValue, wrappers_pb2.BytesValue
    )
    reply = await method(wrappers_pb2.BytesValue(value=b"bench-audience"))
    assert reply.value == b"bench-audience"


async def jwt_call(channel: Channel) -> None:
    stub = workload_grpc.SpiffeWorkloadAPIStub(channel)
    resp = await stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=AUDIENCE), metadata=MD)
    assert resp.svids


async def x509_first_message(channel: Channel) -> None:
    stub = workload_grpc.SpiffeWorkloadAPIStub(channel)
    async with stub.FetchX509SVID.open(metadata=MD) as stream:
        await stream.send_message(workload_pb2.X509SVIDRequest(), end=True)
        msg = await stream.recv_message()
        assert msg is not None and msg.svids
        with suppress(StreamClosedError):
            await stream.cancel()


async def measure(server: ServerProcess, call: Call, clients: int, calls: int) -> Latencies:
    """``calls`` calls in all, spread over ``clients`` concurrent clients (own connections)."""
    socket = server.socket
    channels = [Channel(path=socket) for _ in range(clients)]
    try:
        for ch in channels:  # connect and warm up (JWT: the first call mints, later ones reuse)
            await call(ch)
        result = Latencies()
        per_client = max(1, calls // clients)

        async def client(ch: Channel) -> None:
            for _ in range(per_client):
                t0 = time.perf_counter()
                await call(ch)
                result.samples.append(time.perf_counter() - t0)

        cpu = cpu_seconds(server.pid)
        start = time.perf_counter()
        await asyncio.gather(*(client(ch) for ch in channels))
        result.wall = time.perf_counter() - start
        result.server_cpu = cpu_seconds(server.pid) - cpu
        return result
    finally:
        for ch in channels:
            ch.close()


async def open_streams(socket: str, n: int, batch: int = 50) -> tuple[list[Channel], list[Any]]:
    """``n`` FetchX509SVID streams on ``n`` connections, each past its first message."""
    channels: list[Channel] = []
    streams: list[Any] = []

    async def one() -> None:
        ch = Channel(path=socket)
        channels.append(ch)
        stub = workload_grpc.SpiffeWorkloadAPIStub(channel=ch)
        stream = stub.FetchX509SVID.open(metadata=MD)
        await stream.__aenter__()
        streams.append(stream)
        await stream.send_message(workload_pb2.X509SVIDRequest(), end=True)
        msg = await stream.recv_message()
        assert msg is not None and msg.svids

    for start in range(0, n, batch):
        await asyncio.gather(*(one() for _ in range(min(batch, n - start))))
    return channels, streams


async def close_streams(channels: list[Channel], streams: list[Any]) -> None:
    for stream in streams:
        with suppress(StreamClosedError, ConnectionError):
            await stream.cancel()
    for ch in channels:
        ch.close()


@dataclass
class Row:
    name: str
    clients: int
    lat: Latencies
    echo: Latencies


@dataclass
class Results:
    entries: int
    build_s: float
    rows: list[Row]
    rss_echo: float
    rss_start: float
    rss_streams: float
    streams: int


async def run(
    *,
    entries: int = ENTRIES,
    mine: int = MINE,
    clients: tuple[int, ...] = CLIENTS,
    calls: int = CALLS,
    streams: int = STREAMS,
) -> Results:
    """Start both servers, measure, stop them."""
    with tempfile.TemporaryDirectory(prefix="spiffed-bench-") as tmp:
        wl_sock, echo_sock = f"{tmp}/workload.sock", f"{tmp}/echo.sock"
        async with (
            server_process("echo", echo_sock) as echo,
            server_process("workload", wl_sock, str(entries), str(mine)) as agent,
        ):
            rss_echo = echo.rss_mib()
            rss_start = agent.rss_mib()
            rows = []
            for n in clients:
                echo_lat = await measure(echo, echo_call, n, calls)
                for name, call in (
                    ("FetchJWTSVID (cached)", jwt_call),
                    ("FetchX509SVID first msg", x509_first_message),
                ):
                    rows.append(Row(name, n, await measure(agent, call, n, calls), echo_lat))
            channels, open_ = await open_streams(wl_sock, streams)
            try:
                rss_streams = agent.rss_mib()
            finally:
                await close_streams(channels, open_)
            return Results(
                agent.info["entries"],
                agent.info["build_s"],
                rows,
                rss_echo,
                rss_start,
                rss_streams,
                len(open_),
            )


def report(r: Results) -> None:
    """Print the figures as a compact table."""
    ms, us = 1e3, 1e6
    print(f"cores: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()[0]:.2f}")
    print(
        f"{'operation':<25}{'clients':>8}{'p50 ms':>8}{'p99 ms':>8}{'calls/s':>8}"
        f"{'srv CPU us':>11}{'x p50':>7}{'x p99':>7}{'x CPU':>7}"
    )
    shown_echo: set[int] = set()
    for row in r.rows:
        e = row.echo
        if row.clients not in shown_echo:
            shown_echo.add(row.clients)
            print(
                f"{'grpc echo (baseline)':<25}{row.clients:>8}{e.p50 * ms:>8.2f}"
                f"{e.p99 * ms:>8.2f}{e.rate:>8,.0f}{e.server_cpu_per_call * us:>11,.0f}"
            )
        lat = row.lat
        cpu_ratio = lat.server_cpu_per_call / e.server_cpu_per_call if e.server_cpu else 0.0
        print(
            f"{row.name:<25}{row.clients:>8}{lat.p50 * ms:>8.2f}{lat.p99 * ms:>8.2f}"
            f"{lat.rate:>8,.0f}{lat.server_cpu_per_call * us:>11,.0f}"
            f"{lat.p50 / e.p50:>7.1f}{lat.p99 / e.p99:>7.1f}{cpu_ratio:>7.1f}"
        )
    print(
        "(x = ratio to the echo with the same number of clients in the same run; srv CPU = "
        "server process CPU time per call; all clients run in this one process)"
    )
    print(f"echo server RSS: {r.rss_echo:.1f} MiB")
    verdict = "ok" if r.rss_start <= RSS_TARGET_MIB else "OVER"
    print(
        f"agent RSS, {r.entries:,} entries with SVIDs (built in {r.build_s:.1f} s): "
        f"{r.rss_start:.1f} MiB (target <= {RSS_TARGET_MIB}: {verdict})"
    )
    print(
        f"agent RSS with {r.streams:,} open FetchX509SVID streams: {r.rss_streams:.1f} MiB "
        f"(+{(r.rss_streams - r.rss_start) * 1024 / max(1, r.streams):.0f} KiB per stream)"
    )


def main() -> None:
    """Run at full size and print the table."""
    report(asyncio.run(run()))


if __name__ == "__main__":
    main()
