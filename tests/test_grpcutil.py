"""Unix-socket listeners and kernel-reported peer credentials."""

import os
import stat
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthBase, HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.server import Server

from spiffed.grpcutil import GrpcUtilError, is_unix_peer, peer_credentials, start_unix_server


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
