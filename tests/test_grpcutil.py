"""Unix-socket listeners and kernel-reported peer credentials."""

import asyncio
import contextlib
import os
import stat
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.health.service import Health
from grpclib.health.v1.health_grpc import HealthBase, HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.server import Server

from spiffed.grpcutil import (
    ConnectionTracker,
    GrpcUtilError,
    is_unix_peer,
    peer_credentials,
    start_unix_server,
    stop_server,
    track_connections,
)


class WhoAmI(HealthBase):
    """Records the caller's kernel credentials on every Check."""

    def __init__(self) -> None:
        self.seen: list = []

    async def Check(self, stream) -> None:
        await stream.recv_message()
        self.seen.append((is_unix_peer(stream), peer_credentials(stream)))
        await stream.send_message(HealthCheckResponse(status=HealthCheckResponse.SERVING))

    async def Watch(self, stream) -> None:
        raise NotImplementedError


async def test_peer_credentials_come_from_the_kernel(tmp_path: Path) -> None:
    service = WhoAmI()
    server = Server([service])
    path = tmp_path / "private" / "api.sock"
    await start_unix_server(server, path, dir_mode=0o700, socket_mode=0o600)
    try:
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        channel = Channel(path=str(path))
        try:
            reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=10)
        finally:
            channel.close()
        assert reply.status == HealthCheckResponse.SERVING
        unix, creds = service.seen[-1]
        assert unix
        assert (creds.pid, creds.uid, creds.gid) == (os.getpid(), os.getuid(), os.getgid())
    finally:
        server.close()
        await server.wait_closed()


async def test_stale_socket_is_replaced_but_a_regular_file_is_not(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    first = Server([WhoAmI()])
    await start_unix_server(first, path, dir_mode=0o700, socket_mode=0o600)
    first.close()
    await first.wait_closed()
    second = Server([WhoAmI()])
    await start_unix_server(second, path, dir_mode=0o700, socket_mode=0o777)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777
    second.close()
    await second.wait_closed()

    victim = tmp_path / "important.txt"
    victim.write_text("data")
    with pytest.raises(GrpcUtilError, match="exists and is not a socket"):
        await start_unix_server(Server([WhoAmI()]), victim, dir_mode=0o700, socket_mode=0o600)
    assert victim.read_text() == "data"


async def test_oversized_request_is_refused_before_it_is_buffered(tmp_path: Path) -> None:
    """A caller announcing a message over 4 MiB gets RESOURCE_EXHAUSTED; 3 MiB still works."""
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError

    from spiffed.grpclimits import MAX_RECEIVE_MESSAGE_LENGTH

    service = WhoAmI()
    server = Server([service])
    path = tmp_path / "api.sock"
    await start_unix_server(server, path, dir_mode=0o700, socket_mode=0o600)
    channel = Channel(path=str(path))
    try:
        stub = HealthStub(channel)
        ok = await stub.Check(HealthCheckRequest(service="x" * (3 * 1024 * 1024)), timeout=30)
        assert ok.status == HealthCheckResponse.SERVING
        with pytest.raises(GRPCError) as err:
            await stub.Check(
                HealthCheckRequest(service="x" * (MAX_RECEIVE_MESSAGE_LENGTH + 1)), timeout=30
            )
        assert err.value.status is Status.RESOURCE_EXHAUSTED
        assert "larger than the limit" in (err.value.message or "")
        assert len(service.seen) == 1, "the oversized call never reached the handler"
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


async def _open_watch(channel: Channel):  # type: ignore[no-untyped-def]
    """An open Health.Watch stream (it streams until the server ends it) and its first
    answer."""
    cm = HealthStub(channel).Watch.open(timeout=60)
    stream = await cm.__aenter__()
    await stream.send_message(HealthCheckRequest(), end=True)
    assert await stream.recv_message() is not None
    return cm, stream


async def test_stop_server_ends_open_streams_on_tcp_and_unix(tmp_path: Path) -> None:
    """grpclib's close() leaves connections open, and since Python 3.12 wait_closed() waits
    for them: stop_server must end them (here a client holding a stream that never ends)."""
    tcp, unix = Server([Health()]), Server([Health()])
    tcp_tracker = track_connections(tcp)
    await tcp.start("127.0.0.1", 0)
    await start_unix_server(unix, tmp_path / "api.sock", dir_mode=0o700, socket_mode=0o600)
    port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    unix_tracker = track_connections(unix)  # the one start_unix_server installed
    channels = [Channel("127.0.0.1", port), Channel(path=str(tmp_path / "api.sock"))]
    try:
        streams = [await _open_watch(ch) for ch in channels]
        assert len(tcp_tracker) == 1
        assert len(unix_tracker) == 1
        async with asyncio.timeout(30):  # only a hang exceeds it
            await asyncio.gather(stop_server(tcp, grace=0.5), stop_server(unix, grace=0.5))
        assert len(tcp_tracker) == 0
        assert len(unix_tracker) == 0
        for _, stream in streams:
            with pytest.raises((GRPCError, StreamTerminatedError)):
                async with asyncio.timeout(30):
                    assert await stream.recv_message() is None
                    await stream.recv_trailing_metadata()
    finally:
        for ch in channels:
            ch.close()


async def test_connection_tracker_keeps_state_per_connection_and_caps_them(
    tmp_path: Path,
) -> None:
    made: list[object] = []
    closed: list[object] = []

    def on_accept(transport: asyncio.BaseTransport) -> object:
        made.append(state := object())
        return state

    tracker = ConnectionTracker(on_accept=on_accept, on_close=closed.append, max_connections=1)
    server = Server([Health()])
    tracker.install(server)
    path = tmp_path / "api.sock"
    await start_unix_server(server, path, dir_mode=0o700, socket_mode=0o600)
    assert track_connections(server) is tracker
    try:
        _, first = await asyncio.open_unix_connection(str(path))
        await _until(lambda: len(tracker) == 1)
        reader, second = await asyncio.open_unix_connection(str(path))
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(10):
                while await reader.read(65536):
                    pass  # the second is closed at once
        second.close()
        assert tracker.refused == 1
        assert len(made) == 1
        first.close()
        await _until(lambda: len(tracker) == 0)
        assert closed == made
    finally:
        await stop_server(server, grace=0.5)


async def _until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_open_file_limit_is_raised_towards_the_wanted_value_never_lowered() -> None:
    import resource
    import subprocess
    import sys

    # In a child with a low soft limit, so this test process is left as it was.
    code = (
        "import resource\n"
        "from spiffed.grpcutil import raise_open_file_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "now = raise_open_file_limit(4096)\n"
        "assert now == resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
        "assert now == (4096 if hard == resource.RLIM_INFINITY else min(4096, hard)), now\n"
        "assert raise_open_file_limit(512) == now, 'never lowered'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "ok", out.stderr
    assert resource.getrlimit(resource.RLIMIT_NOFILE)  # this process untouched and readable
