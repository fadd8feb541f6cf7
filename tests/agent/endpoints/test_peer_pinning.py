"""The caller of the Workload API is the process that opened the connection, pinned when the
connection was accepted (as SPIRE's peer tracker in ``Accept``), never whoever holds the
connection or the PID at the time of a later request.

The attack: process A connects and hands its connection to B (a fork of A in the review's
reproduction; here the test process), then exits; a victim process gets A's PID; B's next
request on A's connection must not be attested as the victim. The interleaving is forced:
the test decides when A exits, waits until it is reaped, then forces the PID's reuse with
``/proc/sys/kernel/ns_last_pid`` (root only).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol

from spiffed._proto.workload import workload_grpc
from spiffed.agent.workloadattestor.unix import UnixAttestor
from spiffed.selector import Selector
from tests.agent.endpoints.support import MD, REQ_X509, TD, entry, running_agent

NOBODY = 65534
VICTIM_UID = 4242
NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable

# Connect to the socket argv[1], pass the connection over the inherited socket (fd argv[2]),
# exit when a byte arrives on it.
CHILD = """
import socket, sys, os
hand = socket.socket(fileno=int(sys.argv[2]))
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(sys.argv[1])
socket.send_fds(hand, [b"x"], [conn.fileno()])
hand.recv(1)
os._exit(0)
"""


class FdChannel(Channel):
    """A grpclib channel over an already connected Unix socket."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(path="unused")
        self._sock = sock

    async def _create_connection(self) -> H2Protocol:
        _, protocol = await asyncio.get_running_loop().create_unix_connection(
            self._protocol_factory, sock=self._sock
        )
        return protocol


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory other UIDs can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="spiffed-pin-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def poll(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def spawn_caller(
    socket_path: Path, user: int | None
) -> tuple[subprocess.Popen[bytes], socket.socket, socket.socket]:
    """Process A: connected to the agent, its connection handed to us; (A, A's connection,
    the hand-over socket: a byte on it makes A exit)."""
    ours, theirs = socket.socketpair()
    extra: dict[str, object] = {}
    if user is not None:
        extra = {"user": user, "group": user, "extra_groups": []}
    proc = subprocess.Popen(
        [PYTHON, "-I", "-c", CHILD, str(socket_path), str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        cwd="/",
        **extra,  # type: ignore[call-overload]
    )
    theirs.close()
    _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    assert len(fds) == 1, "A handed over its connection"
    return proc, socket.socket(fileno=fds[0]), ours


async def fetch_ids(channel: Channel) -> list[str]:
    """FetchX509SVID's first answer on ``channel`` (GRPCError when refused)."""
    stub = workload_grpc.SpiffeWorkloadAPIStub(channel)
    async with stub.FetchX509SVID.open(metadata=MD, timeout=10) as stream:
        await stream.send_message(REQ_X509, end=True)
        msg = await stream.recv_message()
        if msg is None:
            await stream.recv_trailing_metadata()
            raise AssertionError("the stream ended without an answer or an error")
        await stream.cancel()
    return sorted(s.spiffe_id for s in msg.svids)


async def exit_and_reap(proc: subprocess.Popen[bytes], hand: socket.socket) -> int:
    hand.send(b"x")
    hand.close()
    await poll(lambda: proc.poll() is not None, "A to exit")
    return proc.wait()


async def test_connection_of_an_exited_caller_is_refused(tmp_path: Path) -> None:
    """Control and the simple case (no root needed): while A lives its connection is A;
    once A exited, calls on it are refused though someone else still holds it."""
    async with running_agent(tmp_path / "agent.sock") as agent:
        me = Selector("unix", f"uid:{os.getuid()}")
        agent.add(entry("a", "/caller", me))
        proc, conn, hand = spawn_caller(agent.socket_path, None)
        channel = FdChannel(conn)
        try:
            assert await fetch_ids(channel) == [f"spiffe://{TD.name}/caller"]
            assert len(agent.service.connections) == 1
            assert await exit_and_reap(proc, hand) == 0
            with pytest.raises(GRPCError) as info:
                await fetch_ids(channel)
            assert info.value.status is Status.UNAVAILABLE
            assert f"process {proc.pid} exited before it could be attested" in str(
                info.value.message
            )
        finally:
            channel.close()
        # The connection's state (and its pidfd) is dropped when the connection ends.
        await poll(lambda: len(agent.service.connections) == 0, "the connection to be dropped")


def reuse_pid(pid: int, uid: int) -> subprocess.Popen[bytes] | None:
    """A process of ``uid`` with PID ``pid`` (free now), made by steering the kernel's next
    PID; None if other processes kept taking it."""
    for _ in range(100):
        NS_LAST_PID.write_text(str(pid - 1))
        victim = subprocess.Popen(["sleep", "60"], user=uid, group=uid, extra_groups=[])
        if victim.pid == pid:
            return victim
        victim.kill()
        victim.wait()
    return None


@pytest.mark.skipif(os.getuid() != 0, reason="needs root: other UIDs and ns_last_pid")
async def test_pid_reused_by_a_victim_is_not_attested_on_the_exited_callers_connection(
    public_dir: Path,
) -> None:
    async with running_agent(public_dir / "agent.sock") as agent:
        agent.add(entry("attacker", "/attacker", Selector("unix", f"uid:{NOBODY}")))
        agent.add(entry("victim", "/victim", Selector("unix", f"uid:{VICTIM_UID}")))
        proc, conn, hand = spawn_caller(agent.socket_path, NOBODY)
        channel = FdChannel(conn)
        victim = None
        try:
            # Control: while A lives, its connection (held by us) is attested as A.
            assert await fetch_ids(channel) == [f"spiffe://{TD.name}/attacker"]
            a_pid = proc.pid
            assert await exit_and_reap(proc, hand) == 0
            victim = reuse_pid(a_pid, VICTIM_UID)
            if victim is None:
                pytest.skip(f"PID {a_pid} kept being taken by other processes")
            # The victim, now at A's PID, is attestable: a per-request check would pass.
            assert Selector("unix", f"uid:{VICTIM_UID}") in await UnixAttestor().attest(a_pid)
            with pytest.raises(GRPCError) as info:
                ids = await fetch_ids(channel)
                raise AssertionError(f"A's connection was attested as {ids}")
            assert info.value.status is Status.UNAVAILABLE
            assert f"process {a_pid} exited before it could be attested" in str(info.value.message)
        finally:
            channel.close()
            if victim is not None:
                victim.kill()
                victim.wait()
