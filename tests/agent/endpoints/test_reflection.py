"""gRPC server reflection on the Workload API socket (WE-17, §6.2 row 9)."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2
from grpclib.client import Channel
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest

from spiffed.agent.endpoints.server import reflection_pool
from tests.agent.endpoints.support import DEADLINE, running_agent


async def reflect(path: Path, request: ServerReflectionRequest):
    ch = Channel(path=str(path))
    try:
        async with ServerReflectionStub(ch).ServerReflectionInfo.open(timeout=DEADLINE) as s:
            await s.send_message(request, end=True)
            return await s.recv_message()
    finally:
        ch.close()


async def test_we_17_row_9_reflection_lists_and_describes_spiffe_workload_api(
    tmp_path: Path,
) -> None:
    async with running_agent(tmp_path / "a.sock") as agent:
        listed = await reflect(agent.socket_path, ServerReflectionRequest(list_services=""))
        described = await reflect(
            agent.socket_path, ServerReflectionRequest(file_containing_symbol="SpiffeWorkloadAPI")
        )
    names = [s.name for s in listed.list_services_response.service]
    assert "SpiffeWorkloadAPI" in names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    wire = next(f for f in files if f.service)
    assert wire.package == ""  # §12: no package, so paths are /SpiffeWorkloadAPI/<Method>
    methods = {m.name: (m.input_type, m.output_type) for m in wire.service[0].method}
    assert methods["FetchX509SVID"] == (".X509SVIDRequest", ".X509SVIDResponse")
    assert len(methods) == 7


def test_reflection_pool_types_resolve_without_a_package() -> None:
    pool = reflection_pool()
    response = pool.FindMessageTypeByName("X509SVIDResponse")
    assert response.fields_by_name["svids"].message_type.full_name == "X509SVID"
    assert (
        response.fields_by_name["federated_bundles"].message_type.full_name
        == "X509SVIDResponse.FederatedBundlesEntry"
    )
    validate = pool.FindMessageTypeByName("ValidateJWTSVIDResponse")
    assert validate.fields_by_name["claims"].message_type.full_name == "google.protobuf.Struct"
