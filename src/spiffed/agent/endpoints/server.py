"""Start the Workload API on a Unix socket, with the security header enforced (WE-06).

The header check is a grpclib ``RecvRequest`` listener, so it runs before any handler, even
for methods the service does not implement.
"""

from __future__ import annotations

import os

from grpclib.server import Server

from spiffed.agent.endpoints.workload import WorkloadApiService
from spiffed.grpcutil import start_unix_server
from spiffed.workloadapi.security import require_security_header

__all__ = ["start_workload_api"]


async def start_workload_api(
    service: WorkloadApiService,
    socket_path: str | os.PathLike[str],
    *,
    dir_mode: int = 0o755,
    socket_mode: int = 0o777,
) -> Server:
    """Serve ``service`` on ``socket_path`` and return the running grpclib server.

    The socket is world-connectable by default (as SPIRE's): callers are told apart by the
    kernel (SO_PEERCRED), not by who may open the socket. Stop it with ``server.close()``
    then ``await server.wait_closed()``; open streams are cancelled.
    """
    server = Server([service])
    require_security_header(server)
    await start_unix_server(server, socket_path, dir_mode=dir_mode, socket_mode=socket_mode)
    return server
