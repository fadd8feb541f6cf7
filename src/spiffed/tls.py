"""TLS contexts for SPIFFE mTLS, built from in-memory SVIDs and bundles.

Two levels: the plain builders (:func:`server_context`, :func:`client_context`) used by the
SPIRE-style server and agent, and :class:`SpiffeTls`, which builds contexts from an
X509-SVID source (such as :class:`spiffed.workloadapi.X509Source`) that verify the peer's
X509-SVID with the SPIFFE rules and an authorizer during the handshake, and follow rotated
SVIDs and bundles for new connections. docs/library.md explains the design.

Private keys never touch a disk: the PEM key and chain are handed to OpenSSL through an
anonymous in-memory file (``memfd_create``) that is closed as soon as it is loaded.

Host names are not checked (SPIFFE IDs are URI SANs): OpenSSL checks the chain against the
trust anchors, and the caller then authorizes the peer's SPIFFE ID before any request is
served. Roots can be added to a live context (new CA keys appear in the bundle before they
sign anything); removing a root needs the application-level check, which uses the current
bundle every time.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import ssl
import threading
import types
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from typing import Any, Protocol

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from spiffed.authorize import AuthorizationError, Authorizer, authorize_any
from spiffed.bundle import X509Bundle, X509BundleSource
from spiffed.keys import PrivateKey
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.x509 import X509Svid, X509SvidError, verify_chain
from spiffed.svid.x509_issue import create_root_ca, create_x509_svid, generate_key

__all__ = [
    "PeerRejectedError",
    "SpiffeHTTPServer",
    "SpiffeTls",
    "StaticSource",
    "TlsError",
    "TlsHookError",
    "TlsSource",
    "add_trust_anchors",
    "client_context",
    "guard_grpclib_server",
    "load_identity",
    "parse_certificate_message",
    "peer_certificate",
    "peer_spiffe_id",
    "server_context",
]


log = structlog.get_logger(__name__)


class TlsError(Exception):
    """A TLS context cannot be built from the given certificates or key."""


class TlsHookError(TlsError, ssl.SSLError):
    """The ``ssl`` message callback that runs the SPIFFE check during the handshake is not
    available, not installed or not effective: no context is built and no connection made
    (an ``ssl.SSLError``, so servers drop the connection)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "SPIFFE check unavailable"


def _pem_certs(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def load_identity(ctx: ssl.SSLContext, chain: Sequence[x509.Certificate], key: PrivateKey) -> None:
    """Make ``ctx`` present ``chain`` (leaf first) and ``key`` on new connections.

    Calling it again on a live context replaces the identity for later handshakes, which is
    how a rotated SVID is picked up without restarting a listener.
    """
    if not chain:
        raise TlsError("an identity needs at least one certificate")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.memfd_create("spiffed-identity", os.MFD_CLOEXEC)
    try:
        os.write(fd, key_pem + _pem_certs(chain))
        ctx.load_cert_chain(certfile=f"/proc/self/fd/{fd}")
    except ssl.SSLError as exc:
        raise TlsError(f"cannot load the certificate chain and key: {exc}") from None
    finally:
        os.close(fd)


def add_trust_anchors(ctx: ssl.SSLContext, roots: Iterable[x509.Certificate]) -> None:
    """Add trust anchors to ``ctx``; handshakes after the call accept chains to them."""
    data = _pem_certs(roots)
    if data:
        ctx.load_verify_locations(cadata=data.decode())


def _base(protocol: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    return ctx


def server_context(
    chain: Sequence[x509.Certificate],
    key: PrivateKey,
    roots: Iterable[x509.Certificate],
    *,
    require_client_certificate: bool,
) -> ssl.SSLContext:
    """A server context presenting ``chain``/``key``.

    Client certificates are requested, and verified against ``roots`` when sent; with
    ``require_client_certificate`` a client without one is refused during the handshake.
    Otherwise (as SPIRE's server port, where attestation happens before an agent has an
    SVID) it may connect and the caller decides per RPC. Session tickets are off, so a
    resumed session never skips the check of the current bundle.
    """
    ctx = _base(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0  # TLS 1.3 sends tickets despite OP_NO_TICKET
    load_identity(ctx, chain, key)
    add_trust_anchors(ctx, roots)
    return ctx


def client_context(
    roots: Iterable[x509.Certificate],
    chain: Sequence[x509.Certificate] = (),
    key: PrivateKey | None = None,
) -> ssl.SSLContext:
    """A client context that verifies the server against ``roots``.

    With ``chain`` and ``key`` it also presents a client certificate (mTLS).
    """
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    add_trust_anchors(ctx, roots)
    if chain or key is not None:
        if key is None or not chain:
            raise TlsError("a client identity needs both a certificate chain and a key")
        load_identity(ctx, chain, key)
    return ctx


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> x509.Certificate | None:
    """The peer's leaf certificate after a handshake, or None when it sent none."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


# --- SPIFFE mTLS from an X509-SVID source --------------------------------------------------


class TlsSource(Protocol):
    """Where :class:`SpiffeTls` gets the SVID to present and the bundles to verify with.

    :class:`spiffed.workloadapi.X509Source` (async or sync) is one; :class:`StaticSource` is a
    fixed one. A source may also have ``subscribe(callback) -> unsubscribe`` to announce
    updates (used to refresh client contexts in place).
    """

    def get_x509_svid(self) -> X509Svid:
        """The X509-SVID to present."""
        ...

    def get_x509_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> X509Bundle | None:
        """The bundle to verify a peer of ``trust_domain`` with, or None."""
        ...

    def get_x509_bundles(self) -> Mapping[TrustDomain, X509Bundle]:
        """Every bundle (own trust domain and federated ones)."""
        ...


@dataclass(frozen=True, slots=True)
class StaticSource:
    """A :class:`TlsSource` that never changes (tests, tools, the agent's own cache)."""

    svid: X509Svid
    bundles: Mapping[TrustDomain, X509Bundle]

    @classmethod
    def of(cls, svid: X509Svid, *bundles: X509Bundle) -> StaticSource:
        """A source of ``svid`` trusting ``bundles``."""
        return cls(svid, MappingProxyType({b.trust_domain: b for b in bundles}))

    def get_x509_svid(self) -> X509Svid:
        """The SVID."""
        return self.svid

    def get_x509_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> X509Bundle | None:
        """The bundle of ``trust_domain``, or None."""
        return self.bundles.get(trust_domain)

    def get_x509_bundles(self) -> Mapping[TrustDomain, X509Bundle]:
        """Every bundle."""
        return self.bundles


class PeerRejectedError(ssl.SSLCertVerificationError):
    """The peer's certificate is not a valid X509-SVID of a trusted trust domain, or its
    SPIFFE ID is not authorized. Raised from the handshake, so TLS clients (asyncio, httpx,
    aiohttp, grpclib) report it as a certificate verification failure."""

    def __init__(self, message: str, peer_id: SpiffeId | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.peer_id = peer_id

    def __str__(self) -> str:
        return self.message


# The SPIFFE ID verified during each connection's handshake, by SSLObject/SSLSocket.
_verified_peers: weakref.WeakKeyDictionary[Any, SpiffeId] = weakref.WeakKeyDictionary()
# Why a peer was refused, for connections whose handshake is still running.
_refusals: weakref.WeakKeyDictionary[Any, PeerRejectedError] = weakref.WeakKeyDictionary()
_verified_lock = threading.Lock()

# TLS record and handshake message types (RFC 8446 B.1, B.3), as ssl's message callback
# reports them (IntEnums).
_HANDSHAKE = 22
_CERTIFICATE = 11
_FINISHED = 20
_COMPRESSED_CERTIFICATE = 25  # RFC 8879

# Certificate compression (OpenSSL 3.2+) would replace the peer's Certificate message by a
# CompressedCertificate, which the check does not read: it is turned off where ``ssl`` has
# the options, and a CompressedCertificate is refused anyway.
_NO_CERTIFICATE_COMPRESSION = (
    "OP_NO_TX_CERTIFICATE_COMPRESSION",
    "OP_NO_RX_CERTIFICATE_COMPRESSION",
)


def _u24(data: bytes, pos: int) -> int:
    if pos + 3 > len(data):
        raise ValueError("truncated length")
    return int.from_bytes(data[pos : pos + 3], "big")


def parse_certificate_message(message: bytes, tls13: bool) -> list[x509.Certificate]:
    """The certificates of a TLS ``Certificate`` handshake message (with its 4-byte header),
    in the order sent (leaf first); ValueError when it is malformed."""
    if len(message) < 4 or message[0] != _CERTIFICATE:
        raise ValueError("not a Certificate handshake message")
    end = 4 + _u24(message, 1)
    if end != len(message):
        raise ValueError("Certificate message length does not match")
    pos = 4
    if tls13:
        if pos >= end:
            raise ValueError("truncated certificate_request_context")
        pos += 1 + message[pos]
    list_end = pos + 3 + _u24(message, pos)
    pos += 3
    if list_end != end:
        raise ValueError("certificate_list length does not match")
    certs = []
    while pos < list_end:
        size = _u24(message, pos)
        pos += 3
        if size == 0 or pos + size > list_end:
            raise ValueError("bad certificate length")
        certs.append(x509.load_der_x509_certificate(message[pos : pos + size]))
        pos += size
        if tls13:
            if pos + 2 > list_end:
                raise ValueError("truncated certificate extensions")
            pos += 2 + int.from_bytes(message[pos : pos + 2], "big")
    if pos != list_end:
        raise ValueError("trailing bytes in certificate_list")
    return certs


def _ssl_object_of(obj: Any) -> Any:
    """The SSLObject/SSLSocket behind a connection-like object (asyncio stream writer or
    transport, grpclib Peer or Stream, SSLSocket, SSLObject), or None."""
    if isinstance(obj, ssl.SSLObject | ssl.SSLSocket):
        return obj
    peer = getattr(obj, "peer", None)  # grpclib Stream
    if peer is not None and not callable(peer):
        obj = peer
    transport = getattr(obj, "_transport", None)  # grpclib Peer
    if transport is not None and hasattr(transport, "get_extra_info"):
        obj = transport
    if hasattr(obj, "get_extra_info"):  # asyncio StreamWriter / Transport
        return obj.get_extra_info("ssl_object")
    return None


def peer_spiffe_id(connection: Any) -> SpiffeId | None:
    """The peer's SPIFFE ID verified and authorized during the handshake of ``connection``
    (an asyncio ``StreamWriter`` or transport, a grpclib ``Stream`` or ``Peer``, an
    ``SSLSocket`` or ``SSLObject``), or None when it was not made by a :class:`SpiffeTls`
    context."""
    ssl_object = _ssl_object_of(connection)
    if ssl_object is None:
        return None
    with _verified_lock:
        return _verified_peers.get(ssl_object)


# --- the message-callback hook: present, installed, effective ------------------------------


def _hook_descriptors() -> tuple[Any, Any]:
    """CPython's ``SSLContext._msg_callback`` property and the C-level slot it stores the
    callback in; :class:`TlsHookError` when this Python does not have them."""
    prop = inspect.getattr_static(ssl.SSLContext, "_msg_callback", None)
    slot = next(
        (
            attr
            for klass in ssl.SSLContext.__mro__[1:]
            if isinstance(attr := vars(klass).get("_msg_callback"), types.GetSetDescriptorType)
        ),
        None,
    )
    if not isinstance(prop, property) or slot is None:
        raise TlsHookError(
            "this Python's ssl module has no usable SSLContext._msg_callback hook (CPython's "
            "property over the C-level message callback); SpiffeTls cannot verify peers "
            "during the handshake and refuses to build a context"
        )
    return prop, slot


def _hook_in_place(ctx: ssl.SSLContext, hook: Callable[..., None]) -> bool:
    """True when OpenSSL's message callback of ``ctx`` ends in ``hook``."""
    try:
        prop, slot = _hook_descriptors()
        inner = slot.__get__(ctx, type(ctx))
        return bool(
            prop.__get__(ctx, type(ctx)) is hook
            and (inner is hook or getattr(inner, "user_function", None) is hook)
        )
    except Exception:
        return False


class _SpiffeContext(ssl.SSLContext):
    """A context of :class:`SpiffeTls`: its message callback cannot be replaced, every new
    connection checks that it is still in place, and a client context's identity is reloaded
    under a lock that new connections also take (OpenSSL copies the certificate and key into
    a connection when it is created, so it never sees a new certificate without its key)."""

    _spiffe_hook: Callable[..., None] | None = None
    _reload_lock: threading.Lock

    @property
    def _msg_callback(self) -> Any:
        return _hook_descriptors()[0].__get__(self, type(self))

    @_msg_callback.setter
    def _msg_callback(self, callback: Any) -> None:
        if self._spiffe_hook is not None:
            raise TlsHookError("the SPIFFE check of a SpiffeTls context cannot be replaced")
        _hook_descriptors()[0].__set__(self, callback)

    def _install(self, hook: Callable[..., None]) -> None:
        self._reload_lock = threading.Lock()
        _hook_descriptors()[0].__set__(self, hook)
        if not _hook_in_place(self, hook):
            raise TlsHookError(
                "the ssl message callback did not take the SPIFFE check (SSLContext."
                "_msg_callback is not CPython's hook); refusing to build a context"
            )
        self._spiffe_hook = hook

    def _checked(self) -> None:
        hook = self._spiffe_hook
        if hook is None or not _hook_in_place(self, hook):
            raise TlsHookError("the SPIFFE check is not installed on this context")

    def _wrap_socket(self, *args: Any, **kwargs: Any) -> Any:
        self._checked()
        with self._reload_lock:
            return super()._wrap_socket(*args, **kwargs)  # type: ignore[misc]

    def _wrap_bio(self, *args: Any, **kwargs: Any) -> Any:
        self._checked()
        with self._reload_lock:
            return super()._wrap_bio(*args, **kwargs)  # type: ignore[misc]


class _SelfTest:
    """A handshake in memory, once per process, proving that a refused peer fails it."""

    lock = threading.RLock()
    passed = False
    running = False


def _memory_handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> list[BaseException]:
    """Run a handshake between ``client`` and ``server`` over memory BIOs; the exceptions
    each side raised (client's first)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    sides = [client.wrap_bio(c_in, c_out), server.wrap_bio(s_in, s_out, server_side=True)]
    done = [False, False]
    errors: list[BaseException] = []
    for _round in range(20):
        for i, side in enumerate(sides):
            if done[i]:
                continue
            try:
                side.do_handshake()
                done[i] = True
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLError, OSError) as exc:
                errors.append(exc)
                done[i] = True
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done) and not c_out.pending and not s_out.pending:
            break
    return errors


def _ensure_hook_works() -> None:
    """Prove once that the hook refuses peers (:class:`TlsHookError` otherwise)."""
    if _SelfTest.passed:
        return
    with _SelfTest.lock:
        if _SelfTest.passed or _SelfTest.running:  # running: building its own contexts
            return
        _SelfTest.running = True
        try:
            _self_test()
        finally:
            _SelfTest.running = False
        _SelfTest.passed = True


def _refuse_all(peer_id: SpiffeId, chains: Sequence[Sequence[x509.Certificate]]) -> None:
    raise AuthorizationError(f"{peer_id}: the self-test refuses every peer")


def _self_test() -> None:
    td = TrustDomain("spiffed-self-test.invalid")
    ca_key, key = generate_key(), generate_key()
    ca = create_root_ca(td, ca_key)
    leaf = create_x509_svid(
        SpiffeId.from_path(td, "/peer"), key.public_key(), signer_cert=ca, signer_key=ca_key
    )
    svid = X509Svid.from_certificates([leaf], key)
    refusing = SpiffeTls(StaticSource.of(svid, X509Bundle(td, (ca,))), _refuse_all)
    plain_server = server_context([leaf], key, [ca], require_client_certificate=True)
    plain_client = client_context([ca], [leaf], key)
    for role, client, server in (
        ("server", plain_client, refusing.server_context()),
        ("client", refusing.client_context(), plain_server),
    ):
        errors = _memory_handshake(client, server)
        if not any(isinstance(e, PeerRejectedError) for e in errors):
            raise TlsHookError(
                f"self-test failed: a {role} context of SpiffeTls completed a handshake with a "
                f"peer its check refuses ({errors or 'no error'}); the ssl message callback "
                "does not fail handshakes on this Python, so no context is built"
            )


def guard_grpclib_server(server: Server) -> None:
    """Make a grpclib ``server`` refuse every request (UNAUTHENTICATED) whose connection has
    no peer verified and authorized by a :class:`SpiffeTls` handshake: a second line of
    defence after the handshake check, as :meth:`SpiffeTls.start_server` has. Call it before
    ``server.start(..., ssl=tls.server_context())``."""

    async def refuse_unverified(event: RecvRequest) -> None:
        if peer_spiffe_id(event.peer) is None:
            raise GRPCError(
                Status.UNAUTHENTICATED,
                "the client's X509-SVID was not verified during the TLS handshake",
            )

    listen(server, RecvRequest, refuse_unverified)


class SpiffeTls:
    """SPIFFE mTLS contexts from an X509-SVID source, with an authorizer.

    * :meth:`server_context` and :meth:`client_context` return ordinary
      :class:`ssl.SSLContext` objects (TLS 1.3, CERT_REQUIRED, no host name check) for
      asyncio, http.server, httpx, aiohttp or grpclib.
    * During the handshake the peer's chain is verified with the SPIFFE rules
      (:func:`~spiffed.svid.x509.verify_chain` against the current bundle of the peer's own
      trust domain, federated ones included) and its SPIFFE ID goes to ``authorizer``; a
      refusal aborts the handshake with :class:`PeerRejectedError`. The verified ID is then
      available from :func:`peer_spiffe_id`.
    * Server contexts pick the current SVID and bundles for every new connection; client
      contexts are reloaded in place when the source announces an update (``subscribe``).

    ``alpn_protocols`` is set on every context (``("h2",)`` for gRPC).

    The check relies on CPython's ``SSLContext._msg_callback``: building a context raises
    :class:`TlsHookError` when that hook is missing or does not take, or when a one-time
    in-memory handshake shows that a refused peer does not fail the handshake. The
    contexts refuse a replacement of the callback and new connections once it is gone.
    """

    def __init__(
        self,
        source: TlsSource,
        authorizer: Authorizer | None = None,
        *,
        bundle_source: X509BundleSource | None = None,
        alpn_protocols: Sequence[str] = (),
    ) -> None:
        self._source = source
        self._bundle_source: X509BundleSource = bundle_source or source
        self._authorizer = authorizer or authorize_any()
        self._alpn = tuple(alpn_protocols)
        self._lock = threading.Lock()
        self._state: tuple[X509Svid, Mapping[TrustDomain, X509Bundle]] | None = None
        self._server_ctx: ssl.SSLContext | None = None
        self._clients: weakref.WeakSet[_SpiffeContext] = weakref.WeakSet()
        self._client_roots: set[x509.Certificate] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._helper_client: ssl.SSLContext | None = None
        self._hook = self._on_message  # one bound method, compared by identity
        subscribe = getattr(source, "subscribe", None)
        if callable(subscribe):
            self._unsubscribe = subscribe(lambda _source: self.refresh())

    @property
    def authorizer(self) -> Authorizer:
        """The authorizer peers' SPIFFE IDs are checked with."""
        return self._authorizer

    def close(self) -> None:
        """Stop following the source's updates (contexts keep their last identity)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    # --- verification during the handshake ----------------------------------------------

    def verify_peer_chain(self, chain: Sequence[x509.Certificate]) -> SpiffeId:
        """Verify a presented chain (leaf first) and authorize its ID, as the handshake
        does; raises :class:`PeerRejectedError`."""
        if not chain:
            raise PeerRejectedError("peer presented no certificate")
        try:
            peer_id, verified = verify_chain(chain, self._bundle_source)
        except X509SvidError as exc:
            raise PeerRejectedError(f"peer X509-SVID rejected: {exc}") from None
        try:
            self._authorizer(peer_id, verified)
        except AuthorizationError as exc:
            raise PeerRejectedError(f"peer {peer_id} is not authorized: {exc}", peer_id) from None
        return peer_id

    def _on_message(  # noqa: PLR0917 (the ssl module's message callback signature)
        self,
        conn: Any,
        direction: str,
        version: Any,
        content_type: Any,
        msg_type: Any,
        data: bytes,
    ) -> None:
        """Called by ``ssl`` for every TLS message; checks the peer's ``Certificate`` and
        refuses to let a handshake finish without a checked one.

        An exception raised here fails the ``do_handshake`` call that processed the message.
        When that call would only have asked for more data, ``ssl`` drops the exception, so
        the refusal is remembered and raised again at the peer's ``Finished``.
        """
        if direction != "read" or content_type != _HANDSHAKE:
            return
        if msg_type == _COMPRESSED_CERTIFICATE:
            refusal = PeerRejectedError(
                "the peer sent a CompressedCertificate (RFC 8879); certificate compression is "
                "not accepted, the peer's certificates must come in a plain Certificate"
            )
            with _verified_lock:
                _refusals[conn] = refusal
            raise refusal
        if msg_type == _CERTIFICATE:
            try:
                chain = parse_certificate_message(data, version == ssl.TLSVersion.TLSv1_3)
                peer_id = self.verify_peer_chain(chain)
            except PeerRejectedError as exc:
                refusal = exc
            except ValueError as exc:
                refusal = PeerRejectedError(f"cannot read the peer's certificates: {exc}")
            except Exception as exc:  # never let a bug accept a peer
                refusal = PeerRejectedError(f"cannot verify the peer: {exc!r}")
            else:
                with _verified_lock:
                    _verified_peers[conn] = peer_id
                return
            with _verified_lock:
                _refusals[conn] = refusal
            raise refusal
        if msg_type == _FINISHED:
            with _verified_lock:
                earlier = _refusals.get(conn)
                checked = conn in _verified_peers
            if earlier is not None:
                raise earlier
            if not checked:  # e.g. a resumed session: the peer's SVID was never seen
                raise PeerRejectedError("the peer's certificate was not verified")

    # --- contexts ------------------------------------------------------------------------

    def _current(self) -> tuple[X509Svid, Mapping[TrustDomain, X509Bundle]]:
        return self._source.get_x509_svid(), self._source.get_x509_bundles()

    def _build(self, protocol: int) -> _SpiffeContext:
        _hook_descriptors()  # a clear error first when this Python has no hook
        _ensure_hook_works()
        svid, bundles = self._current()
        ctx = _SpiffeContext(protocol)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.options |= ssl.OP_NO_TICKET
        for name in _NO_CERTIFICATE_COMPRESSION:
            option = getattr(ssl, name, None)
            if option is not None:
                ctx.options |= option
        if protocol == ssl.PROTOCOL_TLS_SERVER:
            ctx.num_tickets = 0  # TLS 1.3 sends tickets despite OP_NO_TICKET
        if self._alpn:
            ctx.set_alpn_protocols(list(self._alpn))
        load_identity(ctx, svid.cert_chain, svid.private_key)
        add_trust_anchors(ctx, _roots(bundles))
        ctx._install(self._hook)
        return ctx

    def _server_for_now(self) -> ssl.SSLContext:
        with self._lock:
            svid, bundles = self._current()
            if (
                self._server_ctx is None
                or self._state is None
                or self._state[0] is not svid
                or self._state[1] is not bundles
            ):
                self._server_ctx = self._build(ssl.PROTOCOL_TLS_SERVER)
                self._state = (svid, bundles)
            return self._server_ctx

    def _select(self, ssl_object: Any, server_name: str | None, ctx: ssl.SSLContext) -> int | None:
        # OpenSSL calls the message callback when the connection's first context (``ctx``)
        # had one, and ssl then runs the callback of the connection's current context: both
        # must be ours, or the handshake is stopped here.
        try:
            current = self._server_for_now()
            if not (_hook_in_place(ctx, self._hook) and _hook_in_place(current, self._hook)):
                raise TlsHookError("the SPIFFE check is not installed on the server context")
            if current is not ctx:
                ssl_object.context = current
        except Exception as exc:
            log.exception("TLS handshake refused: no SPIFFE check", error=str(exc))
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None

    def server_context(self) -> ssl.SSLContext:
        """A server context: each new connection presents the source's current SVID and
        trusts its current bundles (the context switches to a fresh inner context at the
        start of every handshake), and clients must present an authorized X509-SVID."""
        front = self._build(ssl.PROTOCOL_TLS_SERVER)
        front.sni_callback = self._select
        return front

    def client_context(self) -> ssl.SSLContext:
        """A client context presenting the current SVID; the server must present an
        authorized X509-SVID. It is reloaded in place on every update of a source with
        ``subscribe``; with another source build a new one when the SVID changes."""
        ctx = self._build(ssl.PROTOCOL_TLS_CLIENT)
        with self._lock:
            self._clients.add(ctx)
            self._client_roots |= set(_roots(self._source.get_x509_bundles()))
        return ctx

    def refresh(self) -> None:
        """Load the source's current SVID and new roots into the live client contexts.

        Roots cannot be taken out of a live context; a peer chaining to a removed root is
        still refused, because the handshake check uses the current bundles.
        """
        svid, bundles = self._current()
        with self._lock:
            roots = [r for r in _roots(bundles) if r not in self._client_roots]
            self._client_roots |= set(roots)
            for ctx in list(self._clients):
                with ctx._reload_lock:  # new connections wait: never a certificate without its key
                    load_identity(ctx, svid.cert_chain, svid.private_key)
                    add_trust_anchors(ctx, roots)

    # --- helpers for asyncio ---------------------------------------------------------------

    async def open_connection(
        self, host: str, port: int, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """``asyncio.open_connection`` over SPIFFE mTLS; raises :class:`PeerRejectedError`
        when the server's SVID is not valid or not authorized."""
        reader, writer = await asyncio.open_connection(
            host, port, ssl=self._client_for_helpers(), **kwargs
        )
        if peer_spiffe_id(writer) is None:  # never expected: the handshake checks it
            writer.close()
            raise PeerRejectedError("the server's certificate was not verified")
        return reader, writer

    def _client_for_helpers(self) -> ssl.SSLContext:
        if self._helper_client is None:
            self._helper_client = self.client_context()
        return self._helper_client

    async def start_server(
        self,
        client_connected_cb: Callable[
            [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
        ],
        host: str | None = None,
        port: int | None = None,
        **kwargs: Any,
    ) -> asyncio.Server:
        """``asyncio.start_server`` over SPIFFE mTLS: ``client_connected_cb`` only sees
        clients whose X509-SVID was verified and authorized (:func:`peer_spiffe_id` gives
        their ID); others are refused during the handshake."""

        async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if peer_spiffe_id(writer) is None:
                writer.close()
                return
            await client_connected_cb(reader, writer)

        return await asyncio.start_server(guarded, host, port, ssl=self.server_context(), **kwargs)


def _roots(bundles: Mapping[TrustDomain, X509Bundle]) -> list[x509.Certificate]:
    seen: list[x509.Certificate] = []
    for bundle in bundles.values():
        for cert in bundle.authorities:
            if cert not in seen:
                seen.append(cert)
    return seen


class SpiffeHTTPServer(ThreadingHTTPServer):
    """An ``http.server`` over SPIFFE mTLS: each connection's handshake runs in its own
    thread (bounded by ``handshake_timeout``); clients whose X509-SVID is not valid or not
    authorized are dropped before the handler runs. Handlers find the client's ID with
    ``peer_spiffe_id(self.request)``."""

    def __init__(
        self,
        server_address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        tls: SpiffeTls,
        *,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self.refused: list[str] = []
        self._context = tls.server_context()
        super().__init__(server_address, handler)

    def get_request(self) -> tuple[Any, Any]:
        """Accept a connection; its TLS handshake runs later, in the request's thread."""
        sock, address = self.socket.accept()
        conn = self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return conn, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Handshake (verifying and authorizing the client), then serve the request."""
        try:
            request.settimeout(self.handshake_timeout)
            request.do_handshake()
            request.settimeout(None)
        except (OSError, ValueError) as exc:
            self.refused.append(str(exc))
            return
        if peer_spiffe_id(request) is None:
            self.refused.append("the client's certificate was not verified")
            return
        super().finish_request(request, client_address)
