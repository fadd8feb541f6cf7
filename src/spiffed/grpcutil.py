"""gRPC plumbing shared by the server and the agent: Unix-socket listeners and peer identity.

The caller of a Unix-socket RPC is identified by the kernel (SO_PEERCRED), never by
anything it sends. grpclib exposes the connection's transport, from which the socket, and
so the peer credentials, are read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from grpclib.server import Server, Stream

import spiffed.grpclimits  # noqa: F401 - installs the receive-size limit for every process

__all__ = [
    "STOP_GRACE",
    "ConnectionTracker",
    "GrpcUtilError",
    "PeerCredentials",
    "is_unix_peer",
    "peer_credentials",
    "raise_open_file_limit",
    "start_unix_server",
    "stop_server",
    "track_connections",
    "transport_of",
    "transport_peer_credentials",
]

_UCRED = struct.Struct("3i")
_T = TypeVar("_T")
_log = logging.getLogger(__name__)

#: Seconds :func:`stop_server` gives running calls before it ends their connections.
STOP_GRACE = 5.0


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
    transport = transport_of(stream)
    if transport is None:
        raise GrpcUtilError("peer credentials are only available on Unix-socket connections")
    return transport_peer_credentials(transport)


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
    track_connections(server)
    try:
        await server.start(path=str(sock_path))
        os.chmod(sock_path, socket_mode)
    except OSError as exc:
        server.close()
        raise GrpcUtilError(f"cannot listen on {sock_path}: {exc}") from None


# --- connections -------------------------------------------------------------------------


def transport_of(stream: Stream[Any, Any]) -> asyncio.BaseTransport | None:
    """The asyncio transport of the connection ``stream`` arrived on."""
    transport = getattr(stream.peer, "_transport", None)
    return transport if isinstance(transport, asyncio.BaseTransport) else None


def transport_peer_credentials(transport: asyncio.BaseTransport) -> PeerCredentials:
    """The kernel-reported PID/UID/GID of the process that connected ``transport``."""
    sock = transport.get_extra_info("socket")
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        raise GrpcUtilError("peer credentials are only available on Unix-socket connections")
    raw: bytes = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid=pid, uid=uid, gid=gid)


def _abort(transport: asyncio.BaseTransport) -> None:
    abort = getattr(transport, "abort", None)
    if abort is not None:
        abort()
    else:
        transport.close()


class _TrackedProtocol(asyncio.Protocol):
    """grpclib's protocol for one connection, with the tracker told of its start and end."""

    def __init__(self, tracker: ConnectionTracker[Any], inner: asyncio.Protocol) -> None:
        self._tracker = tracker
        self._inner = inner
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        admitted = self._tracker._made(transport)
        self._inner.connection_made(transport)
        if not admitted:
            _abort(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._tracker._lost(self._transport)
        self._inner.connection_lost(exc)


class ConnectionTracker(Generic[_T]):
    """The open connections of a grpclib :class:`Server`, each with state made when it is
    accepted (``on_accept(transport)``) and released when it ends (``on_close(state)``).

    Install it with :meth:`install` before the server starts. Past ``max_connections``
    open connections a new one is closed at once (logged; the client sees the connection
    reset) without ``on_accept``. :func:`stop_server` uses it to end the connections.
    """

    def __init__(
        self,
        *,
        on_accept: Callable[[asyncio.BaseTransport], _T] | None = None,
        on_close: Callable[[_T], None] | None = None,
        max_connections: int | None = None,
    ) -> None:
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._on_accept = on_accept
        self._on_close = on_close
        self._max = max_connections
        self._open: dict[asyncio.BaseTransport, _T | None] = {}
        self._empty = asyncio.Event()
        self._empty.set()
        self.refused = 0  #: connections closed because ``max_connections`` were open

    def install(self, server: Server) -> None:
        """Route ``server``'s new connections through this tracker (before it starts)."""
        factory = server._protocol_factory
        server._protocol_factory = lambda: _TrackedProtocol(self, factory())  # type: ignore[method-assign, assignment, return-value]
        server._spiffed_connections = self  # type: ignore[attr-defined]

    def _made(self, transport: asyncio.BaseTransport) -> bool:
        if self._max is not None and len(self._open) >= self._max:
            self.refused += 1
            _log.warning(
                "refusing a connection: %d connections are open (the limit)", len(self._open)
            )
            return False
        state: _T | None = None
        if self._on_accept is not None:
            try:
                state = self._on_accept(transport)
            except Exception:
                _log.exception("cannot set up a new connection; closing it")
                return False
        self._open[transport] = state
        self._empty.clear()
        return True

    def _lost(self, transport: asyncio.BaseTransport) -> None:
        if transport not in self._open:
            return
        state = self._open.pop(transport)
        if not self._open:
            self._empty.set()
        if state is not None and self._on_close is not None:
            try:
                self._on_close(state)
            except Exception:
                _log.exception("cannot release a closed connection's state")

    def __len__(self) -> int:
        return len(self._open)

    def state(self, stream: Stream[Any, Any]) -> _T | None:
        """The state made when the connection of ``stream`` was accepted (None if the
        connection is not tracked)."""
        transport = transport_of(stream)
        return self._open.get(transport) if transport is not None else None

    def tracks(self, stream: Stream[Any, Any]) -> bool:
        """True when the connection of ``stream`` went through this tracker."""
        transport = transport_of(stream)
        return transport is not None and transport in self._open

    async def wait_empty(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every connection to end; True if they did."""
        try:
            await asyncio.wait_for(self._empty.wait(), max(0.0, timeout))
        except TimeoutError:
            return not self._open
        return True

    def transports(self) -> list[asyncio.BaseTransport]:
        """The open connections' transports."""
        return list(self._open)


def _tracker_of(server: Server) -> ConnectionTracker[Any]:
    tracker = getattr(server, "_spiffed_connections", None)
    if tracker is None:
        tracker = ConnectionTracker[Any]()
        tracker.install(server)
    return tracker


def track_connections(server: Server) -> ConnectionTracker[Any]:
    """A tracker of ``server``'s connections (installed if it has none yet; call it before
    the server starts), so that :func:`stop_server` can end them."""
    return _tracker_of(server)


async def stop_server(server: Server, *, grace: float = STOP_GRACE) -> bool:
    """Stop ``server``: stop accepting, cancel its running calls (grpclib's ``close()``),
    give them ``grace`` seconds to end, then close every connection, aborting those that
    do not close within what is left of ``grace`` (at least one second).

    Since Python 3.12 ``asyncio.Server.wait_closed()`` waits for every client connection,
    which grpclib's ``close()`` leaves open: a client holding a stream would keep the stop
    waiting forever. True when everything ended within ``grace``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    if server._server is None:
        return True
    server.close()
    clean = True
    handlers = [asyncio.ensure_future(h.wait_closed()) for h in list(server._handlers)]
    if handlers:
        _done, pending = await asyncio.wait(handlers, timeout=grace)
        for task in pending:
            task.cancel()
        clean = not pending
    flush_until = max(deadline, loop.time() + 1.0)
    tracker: ConnectionTracker[Any] | None = getattr(server, "_spiffed_connections", None)
    if tracker is not None:
        for transport in tracker.transports():
            transport.close()  # flushes what the cancelled calls wrote (their status)
        if not await tracker.wait_empty(flush_until - loop.time()):
            clean = False
            for transport in tracker.transports():
                _abort(transport)
    elif hasattr(server._server, "abort_clients"):  # Python 3.13+
        server._server.abort_clients()
    try:
        await asyncio.wait_for(server.wait_closed(), max(1.0, flush_until - loop.time()))
    except TimeoutError:
        _log.warning("the server did not close within %.1f s", grace)
        return False
    return clean


def raise_open_file_limit(wanted: int = 65536) -> int:
    """Raise this process's soft limit on open files towards ``wanted`` (never above the hard
    limit, never lowered); returns the soft limit now in force.

    Each Workload API connection holds a socket and a pidfd, so the common default of 1024
    would refuse connections long before the agent's own connection cap.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            _log.warning("cannot raise the open file limit to %d: %s", target, exc)
            return soft
        return target
    return soft
