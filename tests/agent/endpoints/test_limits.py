"""What one caller can hold of the agent: calls per UID, connections, the wait for a
request's message, and its share of the JWT-SVID cache (attacker's side)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from spiffed._proto.workload import workload_grpc
from spiffed._proto.workload import workload_pb2 as pb
from spiffed.agent.cache import IdentityCache
from spiffed.agent.endpoints import WorkloadApiService
from spiffed.spiffeid import SpiffeId
from tests.agent.endpoints.support import (
    MD,
    MY_UID,
    REQ_X509,
    TD,
    entry,
    open_stream,
    running_agent,
    stub,
)

UID = os.getuid()


async def poll(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_calls_per_uid_are_capped_resource_exhausted(tmp_path: Path) -> None:
    async with running_agent(tmp_path / "agent.sock", max_calls_per_uid=3) as agent:
        agent.add(entry("a", "/db", MY_UID))
        with agent.channel() as ch:
            async with contextlib.AsyncExitStack() as held:
                for _ in range(3):
                    s = await held.enter_async_context(open_stream(ch, "FetchX509SVID", REQ_X509))
                    await s.next()
                assert agent.service.open_calls(UID) == 3
                # The fourth, a stream or a unary call, is refused with a clear message.
                with pytest.raises(GRPCError) as info:
                    async with open_stream(ch, "FetchX509Bundles", pb.X509BundlesRequest()) as s:
                        await s.next()
                assert info.value.status is Status.RESOURCE_EXHAUSTED
                assert f"uid {UID} (limit 3)" in str(info.value.message)
                with pytest.raises(GRPCError) as info:
                    await stub(ch).FetchJWTSVID(pb.JWTSVIDRequest(audience=["x"]), metadata=MD)
                assert info.value.status is Status.RESOURCE_EXHAUSTED
            # Closing streams gives the slots back.
            await poll(lambda: agent.service.open_calls(UID) == 0, "the slots to be released")
            async with open_stream(ch, "FetchX509SVID", REQ_X509) as s:
                assert (await s.next()).svids


async def test_a_request_message_that_never_comes_ends_the_call(tmp_path: Path) -> None:
    async with running_agent(tmp_path / "agent.sock", first_message_timeout=0.2) as agent:
        agent.add(entry("a", "/db", MY_UID))
        with agent.channel() as ch:
            api = workload_grpc.SpiffeWorkloadAPIStub(ch)
            for method in (api.FetchX509SVID, api.FetchJWTSVID):
                with pytest.raises(GRPCError) as info:
                    async with method.open(metadata=MD, timeout=30) as stream:
                        await stream.send_request()  # headers only; no message ever comes
                        await stream.recv_message()
                assert info.value.status is Status.DEADLINE_EXCEEDED
                assert "no request message within 0.2 s" in str(info.value.message)
            await poll(lambda: agent.service.open_calls(UID) == 0, "the slots to be released")


async def read_to_end(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass


async def test_connections_are_capped(tmp_path: Path) -> None:
    async with running_agent(tmp_path / "agent.sock", max_connections=2) as agent:
        agent.add(entry("a", "/db", MY_UID))
        path = str(agent.socket_path)
        conns = [await asyncio.open_unix_connection(path) for _ in range(2)]
        await poll(lambda: len(agent.service.connections) == 2, "two connections")
        reader, writer = await asyncio.open_unix_connection(path)
        async with asyncio.timeout(10):
            await read_to_end(reader)  # closed by the agent at once
        writer.close()
        assert agent.service.connections.refused == 1
        assert len(agent.service.connections) == 2
        # A connection that ends frees its place.
        conns[0][1].close()
        await poll(lambda: len(agent.service.connections) == 1, "a connection to end")
        with agent.channel() as ch:
            async with open_stream(ch, "FetchX509SVID", REQ_X509) as s:
                assert (await s.next()).svids
        conns[1][1].close()


async def test_one_identity_cannot_evict_the_others_jwt_svids(tmp_path: Path) -> None:
    async with running_agent(
        tmp_path / "agent.sock", jwt_cache_size=10, jwt_cache_per_identity=3
    ) as agent:
        agent.add(entry("a", "/greedy", MY_UID), entry("b", "/quiet", MY_UID))
        greedy, quiet = SpiffeId.from_path(TD, "/greedy"), SpiffeId.from_path(TD, "/quiet")
        with agent.channel() as ch:
            api = stub(ch)
            first = await api.FetchJWTSVID(
                pb.JWTSVIDRequest(audience=["svc"], spiffe_id=str(quiet)), metadata=MD
            )
            for n in range(20):  # many audiences: more than the whole cache holds
                await api.FetchJWTSVID(
                    pb.JWTSVIDRequest(audience=[f"aud-{n}"], spiffe_id=str(greedy)), metadata=MD
                )
            assert agent.service.cached_jwts(greedy) == 3
            minted = len(agent.minter.calls)
            again = await api.FetchJWTSVID(
                pb.JWTSVIDRequest(audience=["svc"], spiffe_id=str(quiet)), metadata=MD
            )
            assert again.svids[0].svid == first.svids[0].svid  # still cached
            assert len(agent.minter.calls) == minted


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_calls_per_uid": 0},
        {"max_connections": 0},
        {"jwt_cache_per_identity": 0},
        {"first_message_timeout": 0},
    ],
)
def test_limits_must_be_positive(kwargs: dict[str, int]) -> None:
    async def mint(*_: object) -> str:
        raise AssertionError

    with pytest.raises(ValueError, match=next(iter(kwargs))):
        WorkloadApiService(IdentityCache(TD), [], mint, **kwargs)  # type: ignore[arg-type]


async def test_limits_default_as_documented() -> None:
    from spiffed.agent.endpoints import workload

    assert workload.DEFAULT_MAX_CALLS_PER_UID == 100
    assert workload.DEFAULT_MAX_CONNECTIONS == 4096
    assert workload.DEFAULT_FIRST_MESSAGE_TIMEOUT == 10.0
    assert workload.DEFAULT_JWT_CACHE_PER_IDENTITY == 100
