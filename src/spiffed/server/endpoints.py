"""The server's listeners: the local Unix socket and the TLS port (SPIRE's endpoints).

* Unix socket at ``socket_path``: every service plus gRPC Health (and logger/debug when
  present); the caller is LOCAL, identified by SO_PEERCRED. The socket's directory is
  created 0700, as SPIRE's ``private`` directory.
* TCP at ``bind_address:bind_port``: TLS presenting the server SVID (renewed in place), a
  client certificate requested but not required, trust anchors from the trust domain's
  bundle. Health, logger and debug are not served here.

Before any handler runs, the caller is worked out and the method's policy checked
(:func:`spiffed.server.api.allowed`); a client certificate is verified again against the
*current* bundle on every request, so a revoked root stops working at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.health.service import Health
from grpclib.server import Server

from spiffed import tls
from spiffed._proto.spire.api.types import bundle_pb2, status_pb2
from spiffed.bundle import X509Bundle
from spiffed.grpcstatus import SpireStatusDetailsCodec
from spiffed.grpcutil import (
    GrpcUtilError,
    PeerCredentials,
    start_unix_server,
    stop_server,
    track_connections,
)
from spiffed.server.api import POLICY, Caller, Role, allowed, caller_context
from spiffed.server.context import ServerContext
from spiffed.server.datastore import (
    AttestedNode,
    DataStoreError,
    FailedPreconditionError,
    NotFoundError,
)
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.x509 import X509SvidError, check_leaf, verify_chain

__all__ = ["Endpoints", "LOCAL_ONLY_PREFIXES"]

LOCAL_ONLY_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/spire.api.server.logger.v1.Logger/",
    "/spire.api.server.debug.v1.Debug/",
)
"""Services SPIRE serves on the Unix socket only."""

GRACEFUL_STOP_TIMEOUT = 10.0
"""How long running calls may take to finish on shutdown (SPIRE's 10 s)."""

_log = structlog.get_logger("spiffed.server.endpoints")


def _service_names(service: object) -> list[str]:
    mapping: dict[str, Any] = service.__mapping__()  # type: ignore[attr-defined]
    return list(mapping)


def _is_local_only(service: object) -> bool:
    return any(name.startswith(LOCAL_ONLY_PREFIXES) for name in _service_names(service))


class _StaticSource:
    """One X.509 bundle, as a bundle source for :func:`verify_chain`."""

    def __init__(self, bundle: X509Bundle | None) -> None:
        self._bundle = bundle

    def get_x509_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> X509Bundle | None:
        if self._bundle is not None and self._bundle.trust_domain == trust_domain:
            return self._bundle
        return None


def _bundle_roots(bundle: bundle_pb2.Bundle) -> list[x509.Certificate]:
    roots = []
    for authority in bundle.x509_authorities:
        try:
            roots.append(x509.load_der_x509_certificate(authority.asn1))
        except ValueError:
            continue
    return roots


def _peer_chain(ssl_object: Any) -> list[x509.Certificate]:
    """The chain the TLS peer sent, leaf first (only its leaf if the runtime hides the rest)."""
    inner = getattr(ssl_object, "_sslobj", None)
    getter = getattr(inner, "get_unverified_chain", None) or getattr(
        ssl_object, "get_unverified_chain", None
    )
    if getter is not None:
        try:
            certs = getter() or []
            chain = [x509.load_der_x509_certificate(_der_of(c)) for c in certs if c is not None]
            if chain:
                return chain
        except (ValueError, TypeError, AttributeError):
            pass
    leaf = tls.peer_certificate(ssl_object)
    return [leaf] if leaf is not None else []


def _der_of(cert: Any) -> bytes:
    if isinstance(cert, bytes):
        return cert
    der: bytes = cert.public_bytes(2)  # _ssl.ENCODING_DER
    return der


def _serial_matches(serial: str, stored: str) -> bool:
    """The presented serial (decimal, as SPIRE stores it) is exactly the stored one."""
    return bool(stored) and stored == serial


_Reason = status_pb2.PermissionDeniedDetails.Reason


@dataclass(frozen=True, slots=True)
class _Denial:
    """Why the agent check refused a caller: SPIRE's reason code and message."""

    reason: int
    message: str


class Endpoints:
    """Runs the Unix-socket and TLS listeners for a set of services."""

    def __init__(
        self,
        ctx: ServerContext,
        services: Sequence[object],
        *,
        socket_path: Path,
        bind_address: str,
        bind_port: int,
    ) -> None:
        self._ctx = ctx
        local_services: list[Any] = [*services, Health()]
        tcp_services: list[Any] = [s for s in services if not _is_local_only(s)]
        codec = SpireStatusDetailsCodec()
        self._unix = Server(local_services, status_details_codec=codec)
        self._tcp = Server(tcp_services, status_details_codec=codec)
        self._socket_path = socket_path
        self._bind = (bind_address, bind_port)
        self._roots: list[x509.Certificate] = []
        self._ssl: Any = None
        self.tcp_address: tuple[str, int] | None = None
        listen(self._unix, RecvRequest, self._on_unix_request)
        listen(self._tcp, RecvRequest, self._on_tcp_request)

    # --- bundle and SVID ---------------------------------------------------------------

    def set_bundle(self, bundle: bundle_pb2.Bundle) -> None:
        """Use ``bundle``'s X.509 authorities from now on (checks and new handshakes)."""
        roots = _bundle_roots(bundle)
        new = [r for r in roots if r not in self._roots]
        self._roots = roots
        if self._ssl is not None and new:
            tls.add_trust_anchors(self._ssl, new)

    def set_svid(self, chain: list[x509.Certificate], key: Any) -> None:
        """Present a renewed server SVID on new handshakes."""
        if self._ssl is not None:
            tls.load_identity(self._ssl, chain, key)

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start both listeners (the socket directory is created 0700)."""
        svid = self._ctx.server_svid
        self._ssl = tls.server_context(
            svid.chain, svid.key, self._roots, require_client_certificate=False
        )
        await start_unix_server(self._unix, self._socket_path, dir_mode=0o700, socket_mode=0o770)
        host, port = self._bind
        track_connections(self._tcp)  # so that stop() can end the agents' connections
        try:
            await self._tcp.start(host, port, ssl=self._ssl, reuse_address=True)
        except OSError as exc:
            self._unix.close()
            raise GrpcUtilError(f"cannot listen on {host}:{port}: {exc}") from None
        server: Any = self._tcp._server  # grpclib keeps the asyncio server privately
        sockets = list(server.sockets) if server is not None else []
        for sock in sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                addr = sock.getsockname()
                self.tcp_address = (str(addr[0]), int(addr[1]))
                break

    async def stop(self, *, grace: float = GRACEFUL_STOP_TIMEOUT) -> None:
        """Stop accepting, give running calls ``grace`` seconds, then close (or abort) the
        remaining connections, remove the socket file. Since Python 3.12 a server's
        ``wait_closed()`` waits for its clients, which grpclib leaves connected: an agent
        holding a stream would otherwise keep the stop waiting."""
        clean = await asyncio.gather(
            stop_server(self._tcp, grace=grace), stop_server(self._unix, grace=grace)
        )
        if not all(clean):
            _log.warning("Calls or connections aborted after the graceful stop", seconds=grace)
        with contextlib.suppress(FileNotFoundError):
            self._socket_path.unlink()

    # --- policy ------------------------------------------------------------------------

    async def _on_unix_request(self, event: RecvRequest) -> None:
        creds = self._local_credentials(event)
        caller = Caller(local=creds, roles=frozenset({Role.ANY, Role.LOCAL}))
        self._admit(event, caller)

    def _local_credentials(self, event: RecvRequest) -> PeerCredentials | None:
        transport = getattr(event.peer, "_transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
            return None
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        pid, uid, gid = struct.unpack("3i", raw)
        return PeerCredentials(pid=pid, uid=uid, gid=gid)

    async def _on_tcp_request(self, event: RecvRequest) -> None:
        method = event.method_name
        if method.startswith(LOCAL_ONLY_PREFIXES):
            raise GRPCError(Status.PERMISSION_DENIED, "only served on the local socket")
        addr = event.peer.addr()
        address = f"{addr[0]}:{addr[1]}" if addr else None
        try:
            caller, denial = await self._tls_caller(event, method, address)
        except DataStoreError as exc:
            # Not left to surface as UNKNOWN: the caller's roles could not be worked out.
            _log.error("Unable to look up caller information", error=str(exc))
            raise GRPCError(
                Status.INTERNAL, f"unable to look up caller information: {exc}"
            ) from None
        self._admit(event, caller, denial)

    def _admit(self, event: RecvRequest, caller: Caller, denial: _Denial | None = None) -> None:
        if not allowed(event.method_name, caller):
            who = str(caller.spiffe_id) if caller.spiffe_id else "caller"
            message = f"authorization denied for method {event.method_name}: {who} is not allowed"
            if denial is None:
                raise GRPCError(Status.PERMISSION_DENIED, message)
            # As SPIRE: the agent check's reason travels as PermissionDeniedDetails, so an
            # agent can tell a ban (stop) from an eviction (re-attest).
            _log.error("Agent refused", agent=who, reason=denial.message)
            raise GRPCError(
                Status.PERMISSION_DENIED,
                f"{message}: {denial.message}",
                [status_pb2.PermissionDeniedDetails(reason=denial.reason)],  # type: ignore[arg-type]
            )
        handler = event.method_func

        async def with_caller(stream: Any) -> None:
            token = caller_context.set(caller)
            try:
                await handler(stream)
            finally:
                caller_context.reset(token)

        event.method_func = with_caller

    async def _tls_caller(
        self, event: RecvRequest, method: str, address: str | None
    ) -> tuple[Caller, _Denial | None]:
        transport = getattr(event.peer, "_transport", None)
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        chain = _peer_chain(ssl_object) if ssl_object is not None else []
        if not chain:
            return Caller(address=address), None
        spiffe_id = await self._verify(chain)
        if spiffe_id is None:
            raise GRPCError(Status.UNAUTHENTICATED, "client certificate is not a valid SVID")
        roles = {Role.ANY}
        denial = None
        wanted = POLICY.get(method, frozenset())
        if Role.ANY not in wanted:
            more, denial = await self._roles(spiffe_id, chain[0], wanted)
            roles |= more
        leaf = chain[0]
        caller = Caller(
            address=address,
            spiffe_id=spiffe_id,
            roles=frozenset(roles),
            serial=str(leaf.serial_number),
            not_after=leaf.not_valid_after_utc.timestamp(),
        )
        return caller, denial

    async def _verify(self, chain: list[x509.Certificate]) -> SpiffeId | None:
        td = self._ctx.trust_domain
        try:
            leaf_td = check_leaf(chain[0]).trust_domain
        except X509SvidError as exc:
            _log.debug("client certificate refused", reason=str(exc))
            return None
        if leaf_td == td:
            bundle: X509Bundle | None = X509Bundle(td, tuple(self._roots))
        else:
            bundle = await self._federated(leaf_td)
        try:
            spiffe_id, _ = verify_chain(chain, _StaticSource(bundle))
        except X509SvidError as exc:
            _log.debug("client certificate refused", reason=str(exc))
            return None
        return spiffe_id

    async def _federated(self, td: TrustDomain) -> X509Bundle | None:
        try:
            stored = await self._ctx.datastore.get_bundle(str(td))
        except Exception:
            return None
        bundle = bundle_pb2.Bundle()
        bundle.ParseFromString(stored.data)
        return X509Bundle(td, tuple(_bundle_roots(bundle)))

    async def _roles(
        self, spiffe_id: SpiffeId, leaf: x509.Certificate, wanted: frozenset[Role]
    ) -> tuple[set[Role], _Denial | None]:
        from spiffed.server.datastore import EntryFilter

        ds = self._ctx.datastore
        roles: set[Role] = set()
        sid = str(spiffe_id)
        if Role.ADMIN in wanted:
            if spiffe_id in self._ctx.admin_ids:
                roles.add(Role.ADMIN)
            else:
                page = await ds.list_entries(EntryFilter(by_spiffe_id=sid))
                if any(e.admin for e in page.items):
                    roles.add(Role.ADMIN)
        if Role.DOWNSTREAM in wanted:
            page = await ds.list_entries(EntryFilter(by_spiffe_id=sid, by_downstream=True))
            if page.items:
                roles.add(Role.DOWNSTREAM)
        denial = None
        if Role.AGENT in wanted and spiffe_id.trust_domain == self._ctx.trust_domain:
            denial = await self._agent_denial(spiffe_id, leaf)
            if denial is None:
                roles.add(Role.AGENT)
        return roles, denial

    async def _agent_denial(self, spiffe_id: SpiffeId, leaf: x509.Certificate) -> _Denial | None:
        """SPIRE's agent check: SVID unexpired, node attested and not banned (no current
        serial), and the SVID's serial the node's current one, or its new one, which is then
        made current (the agent has switched to its renewed SVID).

        As SPIRE, the cache is trusted only to admit an SVID whose serial is the node's
        *current* one; anything else is decided on the node read from the datastore, and a
        promotion is a compare-and-set there (the stored new serial is still the presented
        one and the node is not banned), so a stale cache cannot undo a ban."""

        sid = str(spiffe_id)
        if leaf.not_valid_after_utc <= datetime.now(UTC):
            return _Denial(_Reason.AGENT_EXPIRED, f'agent "{sid}" SVID is expired')
        serial = str(leaf.serial_number)
        cache = self._ctx.cache
        try:
            if cache is not None:
                cached = await cache.node(spiffe_id)
                if cached is not None and _serial_matches(serial, cached.cert_serial_number):
                    return None
            node = await self._stored_node(sid)
        except DataStoreError as exc:
            _log.error("Unable to look up agent information", agent=sid, error=str(exc))
            raise GRPCError(
                Status.INTERNAL, f"unable to look up agent information: {exc}"
            ) from None
        denial = _node_denial(sid, serial, node)
        if denial is not None or node is None or _serial_matches(serial, node.cert_serial_number):
            return denial
        return await self._promote(sid, serial, node)

    async def _stored_node(self, sid: str) -> AttestedNode | None:
        try:
            node: AttestedNode = await self._ctx.datastore.get_node(sid)
        except NotFoundError:
            return None
        return node

    async def _promote(self, sid: str, serial: str, node: AttestedNode) -> _Denial | None:
        """Make the presented (new) serial the node's current one, if the stored node still
        has it as its new serial and is not banned; otherwise refuse as the stored node says."""
        promoted = AttestedNode(
            spiffe_id=sid,
            cert_serial_number=serial,
            cert_not_after=node.new_cert_not_after,
            new_cert_serial_number="",
            new_cert_not_after=0,
        )
        try:
            await self._ctx.datastore.update_node(
                promoted,
                (
                    "cert_serial_number",
                    "cert_not_after",
                    "new_cert_serial_number",
                    "new_cert_not_after",
                ),
                expect_new_serial=serial,
            )
        except (FailedPreconditionError, NotFoundError):
            # Changed since it was read (banned, evicted, renewed again or promoted by
            # another request): decide on what is stored now, without promoting.
            try:
                now = await self._stored_node(sid)
            except DataStoreError as exc:
                raise GRPCError(
                    Status.INTERNAL, f"unable to look up agent information: {exc}"
                ) from None
            denial = _node_denial(sid, serial, now)
            if (
                denial is None
                and now is not None
                and _serial_matches(serial, now.cert_serial_number)
            ):
                return None
            return denial or _not_active(sid, serial, now)
        except DataStoreError as exc:
            _log.warning("Unable to activate the new agent SVID", agent=sid, error=str(exc))
            raise GRPCError(
                Status.INTERNAL, f"unable to activate the new agent SVID: {exc}"
            ) from None
        if self._ctx.cache is not None:
            await self._ctx.cache.refresh()
        return None


def _not_active(sid: str, serial: str, node: AttestedNode | None) -> _Denial:
    current = node.cert_serial_number if node is not None else ""
    return _Denial(
        _Reason.AGENT_NOT_ACTIVE,
        f'agent "{sid}" expected to have serial number "{current}"; has "{serial}"',
    )


def _node_denial(sid: str, serial: str, node: AttestedNode | None) -> _Denial | None:
    """SPIRE's refusal for the stored node, or None when the serial is its current or new one
    (the caller then admits, or promotes the new one)."""
    if node is None:
        return _Denial(_Reason.AGENT_NOT_ATTESTED, f'agent "{sid}" is not attested')
    if not node.cert_serial_number:
        return _Denial(_Reason.AGENT_BANNED, f'agent "{sid}" is banned')
    if _serial_matches(serial, node.cert_serial_number) or _serial_matches(
        serial, node.new_cert_serial_number
    ):
        return None
    return _not_active(sid, serial, node)
