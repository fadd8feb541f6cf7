"""The SPIFFE Workload API service (SPIFFE_Workload_API.md, ``SpiffeWorkloadAPI``).

The caller is the process that opened the connection. When the connection is accepted,
the kernel's SO_PEERCRED gives its PID and UID and the PID is pinned with a pidfd, its start
time recorded (as SPIRE's peer tracker does in ``Accept``). Every call on the connection
then attests that process: it must still be alive and the same process (start time
unchanged) before and after the workload attestors read ``/proc``; once it has exited,
calls on its connection are refused (UNAVAILABLE), whoever holds the connection or its PID
now. The resulting selectors pick the entries from the agent's
:class:`~spiffed.agent.cache.IdentityCache`. Nothing the request or its metadata says about
the caller is ever used.

Limits (constructor arguments): at most ``max_connections`` open connections (more are
closed at once), ``max_calls_per_uid`` calls or streams open at once per caller UID (more
-> RESOURCE_EXHAUSTED), ``first_message_timeout`` seconds for a call's request message
(DEADLINE_EXCEEDED), and at most ``jwt_cache_per_identity`` cached JWT-SVIDs per SPIFFE
ID, so that one workload asking for many audiences cannot evict the others' tokens.

Status codes (WE-15): caller not attestable or cache not ready -> UNAVAILABLE; no entry for
the caller -> PERMISSION_DENIED; malformed request -> INVALID_ARGUMENT; a rejected token
-> INVALID_ARGUMENT (AMB-14); the WIT profile -> UNIMPLEMENTED (WA-60); a caller's UID over
its rate limit -> UNAVAILABLE ("shedding load", retried with backoff by clients).

Streams send the complete state at once (WA-08), then a new complete message whenever the
state for the caller changes (WA-06, WA-07), compared with the last message sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from google.protobuf import struct_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from spiffed._proto.workload import workload_pb2 as pb
from spiffed._proto.workload.workload_grpc import SpiffeWorkloadAPIBase
from spiffed.agent.cache import IdentityCache, WorkloadEntry
from spiffed.agent.peertracker import PeerGoneError, TrackedPeer, boot_time_now, track_peer
from spiffed.agent.workloadattestor import WorkloadAttestationError, WorkloadAttestor
from spiffed.bundle import SpiffeBundle
from spiffed.bundle.jwt import JwtBundle
from spiffed.grpcutil import (
    ConnectionTracker,
    GrpcUtilError,
    PeerCredentials,
    transport_peer_credentials,
)
from spiffed.ratelimit import KeyedRateLimiter
from spiffed.selector import Selector
from spiffed.spiffeid import SpiffeId, SpiffeIdError, TrustDomain
from spiffed.svid.jwt import JwtSvid, JwtSvidError

__all__ = [
    "DEFAULT_FIRST_MESSAGE_TIMEOUT",
    "DEFAULT_JWT_CACHE_PER_IDENTITY",
    "DEFAULT_MAX_CALLS_PER_UID",
    "DEFAULT_MAX_CONNECTIONS",
    "MAX_HINT_BYTES",
    "JwtMinter",
    "WorkloadApiService",
]

log = logging.getLogger(__name__)

#: Hints longer than this are not served (WA-71).
MAX_HINT_BYTES = 1024

#: Calls (streams included) one caller UID may have open at once.
DEFAULT_MAX_CALLS_PER_UID = 100
#: Connections the Workload API keeps open at once.
DEFAULT_MAX_CONNECTIONS = 4096
#: Seconds a call waits for its request message.
DEFAULT_FIRST_MESSAGE_TIMEOUT = 10.0
#: Cached JWT-SVIDs per SPIFFE ID (audience sets); the oldest of that ID's goes first.
DEFAULT_JWT_CACHE_PER_IDENTITY = 100

#: Mints a JWT-SVID for an entry and an audience set; returns the compact token.
JwtMinter = Callable[[WorkloadEntry, tuple[str, ...]], Awaitable[str]]

# Claims kept from a token of a foreign trust domain (WA-51, as SPIRE by default).
_SPIFFE_CLAIMS = frozenset({"sub", "aud", "exp", "iat", "nbf", "iss"})

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


def _deny(status: Status, message: str) -> NoReturn:
    raise GRPCError(status, message)


def _served_hint(entry: WorkloadEntry) -> str:
    """The entry's hint, or "" when it is too long to serve (WA-71)."""
    return entry.hint if len(entry.hint.encode()) <= MAX_HINT_BYTES else ""


def _hint_losers(entries: Sequence[WorkloadEntry]) -> set[str]:
    """IDs of entries left out because an older entry has the same hint (WA-27; SPIRE keeps
    the oldest: lowest ``created_at``, then entry ID)."""
    winners: dict[str, WorkloadEntry] = {}
    for e in entries:
        hint = _served_hint(e)
        if hint:
            best = winners.get(hint)
            if best is None or (e.created_at, e.id) < (best.created_at, best.id):
                winners[hint] = e
    return {e.id for e in entries if _served_hint(e) and winners[_served_hint(e)] is not e}


def _check_minted(token: str, spiffe_id: SpiffeId, audience: tuple[str, ...]) -> JwtSvid:
    """The minted token, parsed, if it is a JWT-SVID for ``spiffe_id`` whose ``aud`` holds
    every requested audience (WA-41, WA-44); a workload is never handed anything else."""
    try:
        svid = JwtSvid.parse_insecure(token)
    except JwtSvidError as exc:
        log.error("the JWT-SVID minted for %s is malformed: %s", spiffe_id, exc)  # noqa: TRY400
        _deny(Status.UNAVAILABLE, f"could not mint a JWT-SVID for {spiffe_id}")
    missing = [a for a in audience if a not in svid.audience]
    if svid.spiffe_id != spiffe_id or missing:
        log.error(
            "the JWT-SVID minted for %s is for %s with audience %s; %s requested",
            spiffe_id,
            svid.spiffe_id,
            list(svid.audience),
            list(audience),
        )
        _deny(Status.UNAVAILABLE, f"could not mint a JWT-SVID for {spiffe_id}")
    return svid


@dataclass(frozen=True, slots=True)
class _CachedJwt:
    token: str
    refresh_at: float  # wall-clock seconds: mint a new one from then on


class _JwtCache:
    """Tokens by (SPIFFE ID, audience set), reused until half their lifetime has passed.

    At most ``per_identity`` tokens per SPIFFE ID: a new one evicts that ID's least recently
    used token, never another identity's (then at most ``max_size`` in all, LRU)."""

    def __init__(self, max_size: int, clock: Callable[[], float], per_identity: int) -> None:
        self._max = max_size
        self._per_id = min(per_identity, max_size)
        self._clock = clock
        self._items: OrderedDict[tuple[SpiffeId, frozenset[str]], _CachedJwt] = OrderedDict()
        self._count: dict[SpiffeId, int] = {}

    def _drop(self, key: tuple[SpiffeId, frozenset[str]]) -> None:
        del self._items[key]
        left = self._count[key[0]] - 1
        if left:
            self._count[key[0]] = left
        else:
            del self._count[key[0]]

    def get(self, key: tuple[SpiffeId, frozenset[str]]) -> str | None:
        item = self._items.get(key)
        if item is None:
            return None
        if self._clock() >= item.refresh_at:
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return item.token

    def put(self, key: tuple[SpiffeId, frozenset[str]], svid: JwtSvid) -> None:
        expiry = svid.expiry.timestamp()
        issued = svid.issued_at.timestamp() if svid.issued_at is not None else self._clock()
        if key in self._items:
            self._drop(key)
        elif self._count.get(key[0], 0) >= self._per_id:
            self._drop(next(k for k in self._items if k[0] == key[0]))
        self._items[key] = _CachedJwt(svid.token, issued + (expiry - issued) / 2)
        self._count[key[0]] = self._count.get(key[0], 0) + 1
        while len(self._items) > self._max:
            self._drop(next(iter(self._items)))

    def count(self, spiffe_id: SpiffeId) -> int:
        """Tokens cached for ``spiffe_id``."""
        return self._count.get(spiffe_id, 0)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(slots=True)
class _Connection:
    """A connection's caller, identified and pinned when it was accepted."""

    creds: PeerCredentials | None
    peer: TrackedPeer | None
    error: str = ""


class WorkloadApiService(SpiffeWorkloadAPIBase):
    """``SpiffeWorkloadAPI`` over an :class:`IdentityCache`; serve it with
    :func:`spiffed.agent.endpoints.server.start_workload_api`.

    ``attestors`` turn the caller's PID into selectors (their selectors are unioned);
    ``jwt_minter`` signs JWT-SVIDs (the agent passes one that asks the server). Tokens are
    cached per (SPIFFE ID, audience set) until half their lifetime, at most
    ``jwt_cache_size`` of them and ``jwt_cache_per_identity`` per SPIFFE ID.
    ``rate_limiter`` is keyed by the caller's UID; each call and each stream opening costs
    one token. ``max_calls_per_uid``, ``max_connections`` and ``first_message_timeout``
    bound what one caller can hold (see the module's docstring). :attr:`connections` must be
    installed on the server that serves it (``start_workload_api`` does).
    """

    def __init__(
        self,
        cache: IdentityCache,
        attestors: Sequence[WorkloadAttestor],
        jwt_minter: JwtMinter,
        *,
        rate_limiter: KeyedRateLimiter | None = None,
        jwt_cache_size: int = 1000,
        jwt_cache_per_identity: int = DEFAULT_JWT_CACHE_PER_IDENTITY,
        max_calls_per_uid: int = DEFAULT_MAX_CALLS_PER_UID,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        first_message_timeout: float = DEFAULT_FIRST_MESSAGE_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name, value in (
            ("jwt_cache_size", jwt_cache_size),
            ("jwt_cache_per_identity", jwt_cache_per_identity),
            ("max_calls_per_uid", max_calls_per_uid),
            ("max_connections", max_connections),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1")
        if not first_message_timeout > 0:
            raise ValueError("first_message_timeout must be positive")
        self._cache = cache
        self._attestors = tuple(attestors)
        self._mint = jwt_minter
        self._limiter = rate_limiter if rate_limiter is not None else KeyedRateLimiter(50, 100)
        self._jwts = _JwtCache(jwt_cache_size, clock, jwt_cache_per_identity)
        self._max_calls = max_calls_per_uid
        self._first_message_timeout = first_message_timeout
        self._calls: dict[int, int] = {}
        #: The server's connections, each with its caller pinned at accept time.
        self.connections: ConnectionTracker[_Connection] = ConnectionTracker(
            on_accept=self._accepted, on_close=self._closed, max_connections=max_connections
        )

    # --- caller --------------------------------------------------------------------------

    def open_calls(self, uid: int) -> int:
        """Calls (streams included) the caller UID ``uid`` has open now."""
        return self._calls.get(uid, 0)

    def cached_jwts(self, spiffe_id: SpiffeId) -> int:
        """JWT-SVIDs cached for ``spiffe_id``."""
        return self._jwts.count(spiffe_id)

    def _accepted(self, transport: asyncio.BaseTransport) -> _Connection:
        """Identify and pin the process that opened a new connection (at accept time)."""
        accepted = boot_time_now()
        try:
            creds = transport_peer_credentials(transport)
        except (GrpcUtilError, OSError) as exc:
            return _Connection(None, None, f"cannot identify the caller: {exc}")
        try:
            peer = track_peer(creds.pid, accepted)
        except PeerGoneError as exc:
            return _Connection(creds, None, str(exc))
        except OSError as exc:
            return _Connection(creds, None, f"cannot watch process {creds.pid}: {exc}")
        return _Connection(creds, peer)

    @staticmethod
    def _closed(conn: _Connection) -> None:
        if conn.peer is not None:
            conn.peer.close()

    @asynccontextmanager
    async def _caller(self, stream: Stream[Any, Any]) -> AsyncIterator[frozenset[Selector]]:
        """Attest the process that opened the connection; never anything the request says.

        Holds one of the caller UID's call slots until the call ends."""
        conn = self.connections.state(stream)
        if conn is None:
            _deny(Status.UNAVAILABLE, "cannot identify the caller: connection not tracked")
        if conn.creds is None or conn.peer is None:
            _deny(Status.UNAVAILABLE, f"workload attestation failed: {conn.error}")
        uid = conn.creds.uid
        if not self._limiter.allow(uid):
            _deny(Status.UNAVAILABLE, f"rate limit exceeded for uid {uid}; retry later")
        open_calls = self._calls.get(uid, 0)
        if open_calls >= self._max_calls:
            _deny(
                Status.RESOURCE_EXHAUSTED,
                f"too many Workload API calls open for uid {uid} (limit {self._max_calls}); "
                "close some streams",
            )
        self._calls[uid] = open_calls + 1
        try:
            yield await self._attest(conn.peer)
        finally:
            left = self._calls[uid] - 1
            if left:
                self._calls[uid] = left
            else:
                del self._calls[uid]

    async def _attest(self, peer: TrackedPeer) -> frozenset[Selector]:
        selectors: set[Selector] = set()
        try:
            peer.verify()
            for attestor in self._attestors:
                selectors.update(await attestor.attest(peer.pid))
            peer.verify()
        except (PeerGoneError, WorkloadAttestationError) as exc:
            _deny(Status.UNAVAILABLE, f"workload attestation failed: {exc}")
        except Exception:
            log.exception("workload attestation of pid %d failed", peer.pid)
            _deny(Status.UNAVAILABLE, "workload attestation failed")
        if not self._cache.ready:
            _deny(Status.UNAVAILABLE, "agent is not ready yet: no trust bundle")
        return frozenset(selectors)

    async def _request(self, stream: Stream[_Req, Any]) -> _Req | None:
        """The call's request message, if it comes within ``first_message_timeout``."""
        try:
            async with asyncio.timeout(self._first_message_timeout):
                return await stream.recv_message()
        except TimeoutError:
            _deny(
                Status.DEADLINE_EXCEEDED,
                f"no request message within {self._first_message_timeout:g} s",
            )

    def _entries(self, selectors: frozenset[Selector]) -> list[WorkloadEntry]:
        entries = self._cache.entries_for(selectors)
        if not entries:
            _deny(Status.PERMISSION_DENIED, "no identity issued")
        return entries

    def _own_bundle(self) -> SpiffeBundle:
        bundle = self._cache.bundle
        if bundle is None:
            _deny(Status.UNAVAILABLE, "agent is not ready yet: no trust bundle")
        return bundle

    def _federated(self, entries: Sequence[WorkloadEntry]) -> dict[TrustDomain, SpiffeBundle]:
        wanted = {td for e in entries for td in e.federates_with}
        own = self._cache.trust_domain
        return {
            td: b for td, b in self._cache.federated_bundles.items() if td in wanted and td != own
        }

    # --- X.509 ---------------------------------------------------------------------------

    def _x509_svid_response(self, selectors: frozenset[Selector]) -> pb.X509SVIDResponse | None:
        """The full state, or None while some matching entry waits for its first SVID."""
        entries = self._entries(selectors)
        identities = self._cache.identities_for(selectors)
        if len(identities) < len(entries):
            return None
        own = self._own_bundle().x509_bundle().marshal_der()
        resp = pb.X509SVIDResponse()
        losers = _hint_losers(entries)
        for identity in identities:
            if identity.entry.id in losers:
                continue
            hint = _served_hint(identity.entry)
            chain, key = identity.svid.marshal_der()
            resp.svids.append(
                pb.X509SVID(
                    spiffe_id=str(identity.svid.spiffe_id),
                    x509_svid=chain,
                    x509_svid_key=key,
                    bundle=own,
                    hint=hint,
                )
            )
        for td, bundle in self._federated(entries).items():
            if bundle.x509_authorities:
                resp.federated_bundles[td.id_string()] = bundle.x509_bundle().marshal_der()
        return resp

    def _x509_bundles_response(self, selectors: frozenset[Selector]) -> pb.X509BundlesResponse:
        entries = self._entries(selectors)
        own = self._own_bundle()
        resp = pb.X509BundlesResponse()
        resp.bundles[own.trust_domain.id_string()] = own.x509_bundle().marshal_der()
        for td, bundle in self._federated(entries).items():
            if bundle.x509_authorities:
                resp.bundles[td.id_string()] = bundle.x509_bundle().marshal_der()
        return resp

    def _jwt_bundles_response(self, selectors: frozenset[Selector]) -> pb.JWTBundlesResponse:
        entries = self._entries(selectors)
        own = self._own_bundle()
        resp = pb.JWTBundlesResponse()
        resp.bundles[own.trust_domain.id_string()] = own.jwt_bundle().marshal_jwks()
        for td, bundle in self._federated(entries).items():
            if bundle.jwt_authorities:
                resp.bundles[td.id_string()] = bundle.jwt_bundle().marshal_jwks()
        return resp

    async def _serve_stream(
        self,
        stream: Stream[_Req, _Resp],
        build: Callable[[frozenset[Selector]], _Resp | None],
    ) -> None:
        """Send the state now and after every change that alters it, until the client leaves."""
        async with self._caller(stream) as selectors:
            await self._request(stream)
            with self._cache.subscribe(selectors) as changes:
                last: _Resp | None = None
                while True:
                    current = build(selectors)
                    if current is not None and current != last:
                        await stream.send_message(current)
                        last = current
                    await changes.__anext__()

    async def FetchX509SVID(self, stream: Stream[pb.X509SVIDRequest, pb.X509SVIDResponse]) -> None:
        """Stream the caller's X509-SVIDs (default first), own and federated bundles."""
        await self._serve_stream(stream, self._x509_svid_response)

    async def FetchX509Bundles(
        self, stream: Stream[pb.X509BundlesRequest, pb.X509BundlesResponse]
    ) -> None:
        """Stream the X.509 bundles: own trust domain and the caller's federated ones."""
        await self._serve_stream(stream, self._x509_bundles_response)

    async def FetchJWTBundles(
        self, stream: Stream[pb.JWTBundlesRequest, pb.JWTBundlesResponse]
    ) -> None:
        """Stream the JWT bundles as plain JWKS without ``use`` (WA-45)."""
        await self._serve_stream(stream, self._jwt_bundles_response)

    # --- JWT -----------------------------------------------------------------------------

    async def FetchJWTSVID(self, stream: Stream[pb.JWTSVIDRequest, pb.JWTSVIDResponse]) -> None:
        """Mint (or reuse) a JWT-SVID per entitled identity, or for the one asked for."""
        async with self._caller(stream) as selectors:
            await self._fetch_jwt_svid(stream, selectors)

    async def _fetch_jwt_svid(
        self,
        stream: Stream[pb.JWTSVIDRequest, pb.JWTSVIDResponse],
        selectors: frozenset[Selector],
    ) -> None:
        request = await self._request(stream)
        if request is None:
            _deny(Status.INVALID_ARGUMENT, "request message missing")
        audience = tuple(dict.fromkeys(request.audience))
        if not audience or not all(audience):
            _deny(Status.INVALID_ARGUMENT, "audience must be specified")
        wanted: SpiffeId | None = None
        if request.spiffe_id:
            try:
                wanted = SpiffeId.parse(request.spiffe_id)
            except SpiffeIdError as exc:
                _deny(Status.INVALID_ARGUMENT, f"invalid requested SPIFFE ID: {exc}")
        entries = self._entries(selectors)
        if wanted is not None:
            entries = [e for e in entries if e.spiffe_id == wanted]
            if not entries:
                _deny(Status.PERMISSION_DENIED, f"no identity issued for {wanted}")
        resp = pb.JWTSVIDResponse()
        seen_ids: set[SpiffeId] = set()
        losers = _hint_losers(entries)
        for entry in entries:
            if entry.spiffe_id in seen_ids or entry.id in losers:
                continue
            seen_ids.add(entry.spiffe_id)
            hint = _served_hint(entry)
            key = (entry.spiffe_id, frozenset(audience))
            token = self._jwts.get(key)
            if token is None:
                try:
                    token = await self._mint(entry, audience)
                except Exception:
                    log.exception("minting a JWT-SVID for %s failed", entry.spiffe_id)
                    _deny(Status.UNAVAILABLE, f"could not mint a JWT-SVID for {entry.spiffe_id}")
                self._jwts.put(key, _check_minted(token, entry.spiffe_id, audience))
            resp.svids.append(pb.JWTSVID(spiffe_id=str(entry.spiffe_id), svid=token, hint=hint))
        await stream.send_message(resp)

    async def ValidateJWTSVID(
        self, stream: Stream[pb.ValidateJWTSVIDRequest, pb.ValidateJWTSVIDResponse]
    ) -> None:
        """Validate a token against the own and the caller's federated JWT bundles."""
        async with self._caller(stream) as selectors:
            await self._validate_jwt_svid(stream, selectors)

    async def _validate_jwt_svid(
        self,
        stream: Stream[pb.ValidateJWTSVIDRequest, pb.ValidateJWTSVIDResponse],
        selectors: frozenset[Selector],
    ) -> None:
        request = await self._request(stream)
        if request is None:
            _deny(Status.INVALID_ARGUMENT, "request message missing")
        if not request.audience:
            _deny(Status.INVALID_ARGUMENT, "audience must be specified")
        if not request.svid:
            _deny(Status.INVALID_ARGUMENT, "svid must be specified")
        own = self._own_bundle()
        bundles = {own.trust_domain: own}
        bundles.update(self._federated(self._cache.entries_for(selectors)))
        try:
            svid = JwtSvid.parse_and_validate(request.svid, _Bundles(bundles), request.audience)
        except JwtSvidError as exc:
            _deny(Status.INVALID_ARGUMENT, f"invalid JWT-SVID: {exc}")
        claims = dict(svid.claims)
        if svid.spiffe_id.trust_domain != own.trust_domain:
            claims = {k: v for k, v in claims.items() if k in _SPIFFE_CLAIMS}
        struct = struct_pb2.Struct()
        try:
            struct.update(claims)
        except (TypeError, ValueError) as exc:
            _deny(Status.INVALID_ARGUMENT, f"JWT-SVID claims cannot be represented: {exc}")
        await stream.send_message(
            pb.ValidateJWTSVIDResponse(spiffe_id=str(svid.spiffe_id), claims=struct)
        )

    # --- WIT (Incubating, not supported) ---------------------------------------------------

    async def FetchWITSVID(self, stream: Stream[pb.WITSVIDRequest, pb.WITSVIDResponse]) -> None:
        """The WIT-SVID profile is not implemented (WA-60)."""
        _deny(Status.UNIMPLEMENTED, "the WIT-SVID profile is not implemented")

    async def FetchWITBundles(
        self, stream: Stream[pb.WITBundlesRequest, pb.WITBundlesResponse]
    ) -> None:
        """The WIT-SVID profile is not implemented (WA-60)."""
        _deny(Status.UNIMPLEMENTED, "the WIT-SVID profile is not implemented")


@dataclass(frozen=True, slots=True)
class _Bundles:
    """A JWT bundle source over a fixed map of SPIFFE bundles."""

    bundles: dict[TrustDomain, SpiffeBundle]

    def get_jwt_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> JwtBundle | None:
        bundle = self.bundles.get(trust_domain)
        return bundle.get_jwt_bundle_for_trust_domain(trust_domain) if bundle else None
