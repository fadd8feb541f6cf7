"""Start the Workload API on a Unix socket, with the security header enforced (WE-06).

The header check is a grpclib ``RecvRequest`` listener, so it runs before any handler, even
for methods the service does not implement. gRPC server reflection (WE-17, SHOULD) is
served from a descriptor pool holding ``workload.proto`` **without a package**, as it is on
the wire: the generated module carries the package ``spiffed.workload`` only so that it
does not clash with py-spiffe's package-less symbols in one process.
"""

from __future__ import annotations

import os

from google.protobuf import descriptor_pb2, descriptor_pool, struct_pb2
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server

from spiffed._proto.workload import workload_pb2
from spiffed.agent.endpoints.workload import WorkloadApiService
from spiffed.grpcutil import start_unix_server
from spiffed.workloadapi.security import require_security_header

__all__ = ["reflection_pool", "start_workload_api"]

WIRE_FILE_NAME = "workload.proto"


def _strip_package(names: list[str], prefix: str) -> list[str]:
    return ["." + n[len(prefix) :] if n.startswith(prefix) else n for n in names]


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """A descriptor pool with ``workload.proto`` as SPIFFE defines it: no package, so the
    service is ``SpiffeWorkloadAPI`` and its messages are top-level (§12)."""
    pool = descriptor_pool.DescriptorPool()
    struct_file = descriptor_pb2.FileDescriptorProto()
    struct_pb2.DESCRIPTOR.CopyToProto(struct_file)
    pool.Add(struct_file)
    wire = descriptor_pb2.FileDescriptorProto()
    workload_pb2.DESCRIPTOR.CopyToProto(wire)
    prefix = f".{wire.package}."
    wire.ClearField("package")
    wire.name = WIRE_FILE_NAME
    messages = list(wire.message_type)
    while messages:
        message = messages.pop()
        messages.extend(message.nested_type)
        for fld in message.field:
            if fld.type_name:
                fld.type_name = _strip_package([fld.type_name], prefix)[0]
    for service in wire.service:
        for method in service.method:
            method.input_type, method.output_type = _strip_package(
                [method.input_type, method.output_type], prefix
            )
    pool.Add(wire)
    return pool


async def start_workload_api(
    service: WorkloadApiService,
    socket_path: str | os.PathLike[str],
    *,
    dir_mode: int = 0o755,
    socket_mode: int = 0o777,
    reflection: bool = True,
) -> Server:
    """Serve ``service`` on ``socket_path`` and return the running grpclib server.

    The socket is world-connectable by default (as SPIRE's): callers are told apart by the
    kernel (SO_PEERCRED), not by who may open the socket. Stop it with ``server.close()``
    then ``await server.wait_closed()``; open streams are cancelled. With ``reflection``
    the gRPC reflection service lists ``SpiffeWorkloadAPI`` (§6.2 row 9).
    """
    services = (
        ServerReflection.extend([service], pool=reflection_pool()) if reflection else [service]
    )
    server = Server(services)
    require_security_header(server)
    await start_unix_server(server, socket_path, dir_mode=dir_mode, socket_mode=socket_mode)
    return server
