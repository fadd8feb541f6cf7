"""Stopping the Workload API while a workload holds a stream open.

Since Python 3.12 ``asyncio.Server.wait_closed()`` waits for every client connection, and
grpclib's ``close()`` leaves them open: the agent's stop hung for as long as any workload
kept a stream. :func:`stop_workload_api` ends the connections after a grace period.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError

from spiffed._proto.workload import workload_grpc
from spiffed.agent.endpoints import stop_workload_api
from tests.agent.endpoints.support import MD, MY_UID, REQ_X509, entry, running_agent

#: A bound that only a hang exceeds (the grace given is 0.5 s).
HANG = 30.0


async def test_stop_with_an_open_stream_returns_and_ends_the_stream(tmp_path: Path) -> None:
    async with running_agent(tmp_path / "agent.sock") as agent:
        agent.add(entry("a", "/db", MY_UID))
        channel = Channel(path=str(agent.socket_path))
        try:
            stub = workload_grpc.SpiffeWorkloadAPIStub(channel)
            async with stub.FetchX509SVID.open(metadata=MD, timeout=HANG * 2) as stream:
                await stream.send_message(REQ_X509, end=True)
                assert await stream.recv_message() is not None
                assert len(agent.service.connections) == 1

                async with asyncio.timeout(HANG):
                    await stop_workload_api(agent.server, grace=0.5)
                assert len(agent.service.connections) == 0

                # The client sees its stream end (an error: the call did not complete).
                with pytest.raises((GRPCError, StreamTerminatedError)):
                    async with asyncio.timeout(HANG):
                        msg = await stream.recv_message()
                        assert msg is None
                        await stream.recv_trailing_metadata()
            # No new connection is accepted.
            with pytest.raises((ConnectionError, OSError)):
                await asyncio.open_unix_connection(str(agent.socket_path))
        finally:
            channel.close()


async def test_stop_without_connections_is_clean(tmp_path: Path) -> None:
    async with running_agent(tmp_path / "agent.sock") as agent:
        async with asyncio.timeout(HANG):
            assert await stop_workload_api(agent.server, grace=0.5)
