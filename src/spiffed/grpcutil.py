"""gRPC plumbing shared by the server and the agent: Unix-socket listeners and peer identity.

The caller of a Unix-socket RPC is identified by the kernel (SO_PEERCRED), never by
anything it sends. grpclib exposes the connection's transport, from which the socket, and
so the peer credentials, are read.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpclib.server import Server, Stream

import spiffed.grpclimits  # noqa: F401 - installs the receive-size limit for every process

__all__ = [
    "GrpcUtilError",
    "PeerCredentials",
    "is_unix_peer",
    "peer_credentials",
    "start_unix_server",
]

_UCRED = struct.Struct("3i")


class GrpcUtilError(Exception):
    """A listener cannot be set up, or a peer cannot be identified."""


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The process at the other end of a Unix socket, as the kernel saw it at connect time."""

    pid: int
    uid: int
    gid: int


def _socket_of(stream: Stream[Any, Any]) -> Any:
    # grpclib's Peer keeps the asyncio transport privately; it is the only way to the socket.
    # asyncio hands out a TransportSocket, a restricted view with family and getsockopt.
    transport = getattr(stream.peer, "_transport", None)
    if transport is None:
        return None
    return transport.get_extra_info("socket")


def peer_credentials(stream: Stream[Any, Any]) -> PeerCredentials:
    """The kernel-reported PID/UID/GID of the peer of ``stream`` (Unix sockets only)."""
    sock = _socket_of(stream)
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        raise GrpcUtilError("peer credentials are only available on Unix-socket connections")
    raw: bytes = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid=pid, uid=uid, gid=gid)


def is_unix_peer(stream: Stream[Any, Any]) -> bool:
    """True when ``stream`` arrived over a Unix socket."""
    sock = _socket_of(stream)
    return sock is not None and getattr(sock, "family", None) == socket.AF_UNIX


async def start_unix_server(
    server: Server, path: str | os.PathLike[str], *, dir_mode: int, socket_mode: int
) -> None:
    """Start ``server`` on the Unix socket ``path``.

    The socket's directory is created with ``dir_mode`` if missing. A stale socket left by a
    previous run is removed, but any other kind of file at ``path`` is an error (never
    deleted). The socket file gets ``socket_mode`` (0o777 for the public Workload API
    socket, 0o700/0o600 for private admin sockets, as SPIRE's defaults).
    """
    sock_path = Path(path)
    directory = sock_path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=dir_mode)
    except OSError as exc:
        raise GrpcUtilError(f"cannot create socket directory {directory}: {exc}") from None
    try:
        st = sock_path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise GrpcUtilError(f"{sock_path} exists and is not a socket; refusing to replace it")
        sock_path.unlink()
    try:
        await server.start(path=str(sock_path))
        os.chmod(sock_path, socket_mode)
    except OSError as exc:
        server.close()
        raise GrpcUtilError(f"cannot listen on {sock_path}: {exc}") from None
