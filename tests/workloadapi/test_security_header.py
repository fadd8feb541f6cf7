"""The security header, enforced by a real server on a Unix socket (WE-05, WE-06, WE-08,
§6.2 rows 1, 2, 4, 5, 6; AMB-12)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpclib.client import Channel, UnaryStreamMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from spiffed._proto.workload import workload_grpc, workload_pb2
from spiffed.grpcutil import start_unix_server
from spiffed.workloadapi.security import (
    MISSING_HEADER_MESSAGE,
    client_metadata,
    require_security_header,
)

REACHED = "reached the handler"


class Handlers(workload_grpc.SpiffeWorkloadAPIBase):
    """Every method answers FAILED_PRECONDITION: proof the header check let it through."""

    async def _reached(self, stream) -> None:
        raise GRPCError(Status.FAILED_PRECONDITION, REACHED)

    FetchX509SVID = FetchX509Bundles = FetchJWTSVID = FetchJWTBundles = _reached
    ValidateJWTSVID = FetchWITSVID = FetchWITBundles = _reached


CALLS = [
    ("FetchX509SVID", workload_pb2.X509SVIDRequest()),
    ("FetchX509Bundles", workload_pb2.X509BundlesRequest()),
    ("FetchJWTSVID", workload_pb2.JWTSVIDRequest(audience=["a"])),
    ("FetchJWTBundles", workload_pb2.JWTBundlesRequest()),
    ("ValidateJWTSVID", workload_pb2.ValidateJWTSVIDRequest(audience="a", svid="x")),
    ("FetchWITSVID", workload_pb2.WITSVIDRequest()),
    ("FetchWITBundles", workload_pb2.WITBundlesRequest()),
]


@pytest.fixture
async def channel(tmp_path: Path) -> AsyncIterator[Channel]:
    server = Server([Handlers()])
    require_security_header(server)
    path = tmp_path / "api.sock"
    await start_unix_server(server, path, dir_mode=0o755, socket_mode=0o777)
    ch = Channel(path=str(path))
    try:
        yield ch
    finally:
        ch.close()
        server.close()
        await server.wait_closed()


async def call(channel: Channel, name: str, request, metadata) -> GRPCError:
    stub = workload_grpc.SpiffeWorkloadAPIStub(channel)
    method = getattr(stub, name)
    with pytest.raises(GRPCError) as err:
        if isinstance(method, UnaryStreamMethod):
            async with method.open(metadata=metadata, timeout=10) as stream:
                await stream.send_message(request, end=True)
                await stream.recv_message()
        else:
            await method(request, metadata=metadata, timeout=10)
    return err.value


@pytest.mark.parametrize(("name", "request_msg"), CALLS)
async def test_we_06_row_1_every_rpc_without_the_header_is_invalid_argument(
    channel, name, request_msg
) -> None:
    err = await call(channel, name, request_msg, None)
    assert err.status is Status.INVALID_ARGUMENT
    assert err.message == MISSING_HEADER_MESSAGE


@pytest.mark.parametrize("value", ["True", "TRUE", "1", "yes"])
async def test_we_06_row_2_only_the_exact_value_true_counts(channel, value: str) -> None:
    err = await call(channel, *CALLS[2], {"workload.spiffe.io": value})
    assert err.status is Status.INVALID_ARGUMENT


async def test_row_4_amb_12_header_sent_twice_is_refused(channel) -> None:
    twice = [("workload.spiffe.io", "true"), ("workload.spiffe.io", "true")]
    err = await call(channel, *CALLS[0], twice)
    assert err.status is Status.INVALID_ARGUMENT


@pytest.mark.parametrize(("name", "request_msg"), CALLS)
async def test_we_05_we_08_row_5_client_header_over_plaintext_uds_reaches_the_handler(
    channel, name, request_msg
) -> None:
    err = await call(channel, name, request_msg, client_metadata())
    assert (err.status, err.message) == (Status.FAILED_PRECONDITION, REACHED)


def _grpcio_call(path: str, method: str, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    """One unary call with grpcio (Google's gRPC, as py-spiffe uses), returning its status."""
    with grpc.insecure_channel(f"unix://{path}") as ch:
        call = ch.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
        try:
            call(b"", metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture
async def socket_path(tmp_path: Path) -> AsyncIterator[str]:
    server = Server([Handlers()])
    require_security_header(server)
    path = tmp_path / "api.sock"
    await start_unix_server(server, path, dir_mode=0o755, socket_mode=0o777)
    try:
        yield str(path)
    finally:
        server.close()
        await server.wait_closed()


async def test_row_2_empty_header_value_is_refused(socket_path: str) -> None:
    code = await asyncio.to_thread(
        _grpcio_call, socket_path, "/SpiffeWorkloadAPI/FetchJWTSVID", [("workload.spiffe.io", "")]
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT


async def test_row_6_undefined_method_is_unimplemented(socket_path: str) -> None:
    code = await asyncio.to_thread(
        _grpcio_call,
        socket_path,
        "/SpiffeWorkloadAPI/FetchEverything",
        [("workload.spiffe.io", "true")],
    )
    assert code is grpc.StatusCode.UNIMPLEMENTED
