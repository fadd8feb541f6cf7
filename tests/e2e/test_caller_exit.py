"""Issue #5: a caller that exits before its workload attestation completes gets no identity,
and never another process's, with real processes under different UIDs.

The Workload API tells callers apart by the process that connected (SO_PEERCRED). A process
(uid ``nobody``) connects to the agent's socket, hands the connected socket to this test
process (root, which has an identity of its own) and exits. Whoever then asks on that
connection must get an error: not ``nobody``'s SVID (its process is gone, and its PID could
be anyone's by now) and not the holder's (it did not connect). While ``nobody`` is still
alive the same hand-over yields ``nobody``'s SVID, which shows the setup is live. A burst of
callers that send a request and exit at once leaves the agent healthy.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h2.config
import h2.connection
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol

from spiffed._proto.workload import workload_grpc, workload_pb2
from spiffed.workloadapi.client import parse_x509_context
from tests.e2e.conftest import AgentProcess, E2EServer, apoll, fetch_ids, uid_selector

JT = "spiffe://example.org/spire/agent/join_token/"
NOBODY = 65534
ROOT_ID = "spiffe://example.org/caller-exit/root"
NOBODY_ID = "spiffe://example.org/caller-exit/nobody"
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a caller as nobody")

# Connect to the socket (argv[1]); with argv[4] == "send", write stdin's bytes on the
# connection, else pass the connection over the inherited socket (fd argv[2]); with
# argv[3] == "stay", wait for a byte on that socket before exiting.
CHILD = """
import os, socket, sys
hand = socket.socket(fileno=int(sys.argv[2]))
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(sys.argv[1])
if len(sys.argv) > 4:
    conn.sendall(sys.stdin.buffer.read())
else:
    socket.send_fds(hand, [b"x"], [conn.fileno()])
if sys.argv[3] == "stay":
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


def spawn(
    socket_path: Path, mode: str, request: bytes | None = None
) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """A ``nobody`` process running :data:`CHILD`; our end of the hand-over socket."""
    ours, theirs = socket.socketpair()
    args = [PYTHON, "-I", "-c", CHILD, str(socket_path), str(theirs.fileno()), mode]
    if request is not None:
        args.append("send")
    proc = subprocess.Popen(
        args,
        pass_fds=[theirs.fileno()],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        cwd="/",
        stdin=subprocess.PIPE if request is not None else subprocess.DEVNULL,
    )
    theirs.close()
    if request is not None:
        assert proc.stdin is not None
        proc.stdin.write(request)
        proc.stdin.close()
    return proc, ours


def received_connection(hand: socket.socket) -> socket.socket:
    _, fds, _, _ = socket.recv_fds(hand, 1, 1)
    assert len(fds) == 1, "the caller handed over its connection"
    return socket.socket(fileno=fds[0])


async def fetch_on(conn: socket.socket) -> list[str]:
    """FetchX509SVID's first answer on ``conn``: the SPIFFE IDs (GRPCError when refused)."""
    channel = FdChannel(conn)
    try:
        stub = workload_grpc.SpiffeWorkloadAPIStub(channel)
        async with stub.FetchX509SVID.open(
            metadata={"workload.spiffe.io": "true"}, timeout=10
        ) as stream:
            await stream.send_message(workload_pb2.X509SVIDRequest(), end=True)
            msg = await stream.recv_message()
            if msg is None:
                await stream.recv_trailing_metadata()
                raise AssertionError("the stream ended without an answer or an error")
            await stream.cancel()
        return sorted(str(s.spiffe_id) for s in parse_x509_context(msg).svids)
    finally:
        channel.close()


def fetch_request_bytes() -> bytes:
    """A complete FetchX509SVID call as a client would write it (HTTP/2 preface onward)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(
        1,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/SpiffeWorkloadAPI/FetchX509SVID"),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("workload.spiffe.io", "true"),
        ],
    )
    body = workload_pb2.X509SVIDRequest().SerializeToString()
    conn.send_data(1, b"\0" + len(body).to_bytes(4, "big") + body, end_stream=True)
    return conn.data_to_send()


async def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """The caller's exit status, once it exited (and was reaped: its PID is free for anyone
    now)."""
    await apoll(lambda: proc.poll() is not None, timeout=10, what="the caller to exit")
    return proc.wait()


async def test_caller_that_exits_gets_no_identity_and_not_anothers(
    shared_server: E2EServer, agents: Callable[..., AgentProcess]
) -> None:
    server = shared_server
    token, _ = server.token()
    server.entry(JT + token, ROOT_ID, uid_selector())
    server.entry(JT + token, NOBODY_ID, uid_selector(NOBODY))
    agent = agents(server, token=token)
    agent.socket_path.parent.chmod(0o755)  # a temporary directory: let nobody reach the socket
    await agent.start()
    await agent.wait_ready()
    assert await fetch_ids(agent.socket_path) == [ROOT_ID]

    # Control: while the caller lives, its connection is attested as the caller.
    proc, hand = spawn(agent.socket_path, "stay")
    try:
        conn = received_connection(hand)
        assert await fetch_on(conn) == [NOBODY_ID]
    finally:
        hand.send(b"x")
        hand.close()
        assert await wait_exit(proc) == 0

    # The caller exits before anything is asked on its connection.
    proc, hand = spawn(agent.socket_path, "exit")
    conn = received_connection(hand)
    hand.close()
    assert await wait_exit(proc) == 0
    with pytest.raises(GRPCError) as info:
        ids = await fetch_on(conn)
        raise AssertionError(f"a caller that exited got identities {ids}")
    # (SPIRE fails such a call too, with UNAUTHENTICATED "could not verify existence of the
    # original caller" when its pid watcher notices, or with the attestor's error.)
    assert info.value.status in (Status.UNAVAILABLE, Status.UNAUTHENTICATED)
    assert "exited before it could be attested" in (info.value.message or "")

    # A burst of callers that send a complete request and exit at once.
    request = fetch_request_bytes()
    burst = [spawn(agent.socket_path, "exit", request) for _ in range(20)]
    for proc, hand in burst:
        hand.close()
        assert await wait_exit(proc) == 0

    # The agent is healthy: still running, still serving its callers, nothing crashed.
    assert agent.running
    assert await fetch_ids(agent.socket_path) == [ROOT_ID]
    proc, hand = spawn(agent.socket_path, "stay")
    try:
        assert await fetch_on(received_connection(hand)) == [NOBODY_ID]
    finally:
        hand.send(b"x")
        hand.close()
        await wait_exit(proc)
    assert "Traceback" not in agent.log
