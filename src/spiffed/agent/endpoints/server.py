"""Start the Workload API on a Unix socket, with the security header enforced (WE-06).

The header check is a grpclib ``RecvRequest`` listener, so it runs before any handler, even
for methods the service does not implement. A path the server does not serve is answered by
a handler that ends the call with UNIMPLEMENTED (WE-15) after that check (WE-06: a missing
header is INVALID_ARGUMENT first, as SPIRE), in a proper gRPC response: grpclib's own
answer to an unknown path has no ``content-type``, which grpc-go (and grpclib) clients read
as UNKNOWN rather than UNIMPLEMENTED, so they would retry it.

gRPC server reflection (WE-17, SHOULD) is served from a descriptor pool holding
``workload.proto`` **without a package**, as it is on the wire: the generated module carries
the package ``spiffed.workload`` only so that it does not clash with py-spiffe's
package-less symbols in one process.

The socket also serves ``grpc.health.v1.Health`` (what ``spiffed-agent healthcheck`` asks,
as SPIRE's agent does): ``Check`` fetches an X.509 context from the socket itself, as a
workload would, and answers SERVING when that works or ends with PERMISSION_DENIED (the
agent's own process rarely has an identity), NOT_SERVING otherwise (not ready, attestation
failing, no answer in time). It needs no security header: it is not a Workload API method.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2, struct_pb2
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1 import health_pb2
from grpclib.health.v1.health_grpc import HealthBase
from grpclib.reflection.service import ServerReflection
from grpclib.server import Server, Stream

from spiffed._proto.workload import workload_pb2
from spiffed._proto.workload.workload_grpc import SpiffeWorkloadAPIBase
from spiffed.agent.endpoints.workload import WorkloadApiService
from spiffed.grpcutil import STOP_GRACE, start_unix_server, stop_server
from spiffed.workloadapi.address import UnixAddress
from spiffed.workloadapi.client import WorkloadApiClient, WorkloadApiError
from spiffed.workloadapi.security import require_security_header

__all__ = ["WorkloadHealth", "reflection_pool", "start_workload_api", "stop_workload_api"]

log = logging.getLogger(__name__)

WIRE_FILE_NAME = "workload.proto"

#: How long a health check waits for the Workload API to answer it.
HEALTH_CHECK_TIMEOUT = 5.0


class WorkloadHealth(HealthBase):
    """``grpc.health.v1.Health`` for the Workload API socket at ``socket_path``."""

    def __init__(self, socket_path: str, *, timeout: float = HEALTH_CHECK_TIMEOUT) -> None:
        self._address = UnixAddress(os.path.abspath(socket_path))
        self._timeout = timeout

    async def serving(self) -> bool:
        """Whether a workload on this host gets an answer from the Workload API now."""
        async with WorkloadApiClient(self._address, timeout=self._timeout) as client:
            try:
                await client.fetch_x509_context()
            except WorkloadApiError as exc:
                if exc.status is Status.PERMISSION_DENIED:
                    return True
                log.warning("health check failed: cannot fetch an X.509 context: %s", exc)
                return False
        return True

    async def Check(
        self, stream: Stream[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]
    ) -> None:
        """SERVING or NOT_SERVING for the whole agent; per-service health is refused."""
        request = await stream.recv_message()
        if request is not None and request.service:
            raise GRPCError(Status.INVALID_ARGUMENT, "per-service health is not supported")
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if await self.serving()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await stream.send_message(health_pb2.HealthCheckResponse(status=status))

    async def Watch(
        self, stream: Stream[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]
    ) -> None:
        """Not offered (as SPIRE's agent)."""
        raise GRPCError(Status.UNIMPLEMENTED, "method Watch not implemented")


async def _unimplemented(stream: Stream[Any, Any]) -> None:
    raise GRPCError(Status.UNIMPLEMENTED, "method not implemented by this server")


_UNIMPLEMENTED = Handler(_unimplemented, Cardinality.UNARY_UNARY, empty_pb2.Empty, empty_pb2.Empty)


class _Methods(dict[str, Handler]):
    """The server's method table; a path it does not hold gets :data:`_UNIMPLEMENTED`."""

    def get(self, key: str, default: Any = None) -> Handler:
        return super().get(key, _UNIMPLEMENTED)


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
    health_file = descriptor_pb2.FileDescriptorProto()
    health_pb2.DESCRIPTOR.CopyToProto(health_file)
    pool.Add(health_file)
    return pool


async def start_workload_api(
    service: WorkloadApiService,
    socket_path: str | os.PathLike[str],
    *,
    dir_mode: int = 0o755,
    socket_mode: int = 0o777,
    reflection: bool = True,
    health: bool = True,
) -> Server:
    """Serve ``service`` on ``socket_path`` and return the running grpclib server.

    The socket is world-connectable by default (as SPIRE's): callers are told apart by the
    kernel (SO_PEERCRED), read and pinned when a connection is accepted, not by who may open
    the socket. Stop it with :func:`stop_workload_api` (not grpclib's ``close()`` and
    ``wait_closed()`` alone: since Python 3.12 that waits for every client to hang up).
    With ``reflection``
    the gRPC reflection service lists ``SpiffeWorkloadAPI`` (§6.2 row 9); with ``health``
    the socket serves ``grpc.health.v1.Health`` (:class:`WorkloadHealth`).
    """
    served: list[SpiffeWorkloadAPIBase | HealthBase] = [service]
    if health:
        served.append(WorkloadHealth(os.fspath(socket_path)))
    services = ServerReflection.extend(served, pool=reflection_pool()) if reflection else served
    server = Server(services)
    server._mapping = _Methods(server._mapping)  # grpclib looks methods up with .get()
    require_security_header(server)
    service.connections.install(server)
    await start_unix_server(server, socket_path, dir_mode=dir_mode, socket_mode=socket_mode)
    return server


async def stop_workload_api(server: Server, *, grace: float = STOP_GRACE) -> bool:
    """Stop a server from :func:`start_workload_api`: no new connections, open calls and
    streams cancelled (clients see their stream end), every connection closed within
    ``grace`` seconds (aborted if need be). True when all ended cleanly within ``grace``."""
    return await stop_server(server, grace=grace)
