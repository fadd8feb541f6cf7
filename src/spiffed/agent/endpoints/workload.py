"""The SPIFFE Workload API service (SPIFFE_Workload_API.md, ``SpiffeWorkloadAPI``).

Every call starts by attesting the caller: the kernel's SO_PEERCRED gives its PID and UID,
the PID is pinned with a pidfd while the workload attestors read ``/proc`` (so a PID reused
meanwhile is caught), and the resulting selectors pick the entries from the agent's
:class:`~spiffed.agent.cache.IdentityCache`. Nothing the request or its metadata says about
the caller is ever used.

Status codes (WE-15): caller not attestable or cache not ready -> UNAVAILABLE; no entry for
the caller -> PERMISSION_DENIED; malformed request -> INVALID_ARGUMENT; a rejected token
-> INVALID_ARGUMENT (AMB-14); the WIT profile -> UNIMPLEMENTED (WA-60); a caller's UID over
its rate limit -> UNAVAILABLE ("shedding load", retried with backoff by clients).

Streams send the complete state at once (WA-08), then a new complete message whenever the
state for the caller changes (WA-06, WA-07), compared with the last message sent.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from google.protobuf import struct_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from spiffed._proto.workload import workload_pb2 as pb
from spiffed._proto.workload.workload_grpc import SpiffeWorkloadAPIBase
from spiffed.agent.cache import IdentityCache, WorkloadEntry
from spiffed.agent.peertracker import PeerGoneError, boot_time_now, track_peer
from spiffed.agent.workloadattestor import WorkloadAttestationError, WorkloadAttestor
from spiffed.bundle import SpiffeBundle
from spiffed.bundle.jwt import JwtBundle
from spiffed.grpcutil import GrpcUtilError, peer_credentials
from spiffed.ratelimit import KeyedRateLimiter
from spiffed.selector import Selector
from spiffed.spiffeid import SpiffeId, SpiffeIdError, TrustDomain
from spiffed.svid.jwt import JwtSvid, JwtSvidError

__all__ = ["MAX_HINT_BYTES", "JwtMinter", "WorkloadApiService"]

log = logging.getLogger(__name__)

#: Hints longer than this are not served (WA-71).
MAX_HINT_BYTES = 1024

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
    """Tokens by (SPIFFE ID, audience set), reused until half their lifetime has passed."""

    def __init__(self, max_size: int, clock: Callable[[], float]) -> None:
        self._max = max_size
        self._clock = clock
        self._items: OrderedDict[tuple[SpiffeId, frozenset[str]], _CachedJwt] = OrderedDict()

    def get(self, key: tuple[SpiffeId, frozenset[str]]) -> str | None:
        item = self._items.get(key)
        if item is None:
            return None
        if self._clock() >= item.refresh_at:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return item.token

    def put(self, key: tuple[SpiffeId, frozenset[str]], svid: JwtSvid) -> None:
        expiry = svid.expiry.timestamp()
        issued = svid.issued_at.timestamp() if svid.issued_at is not None else self._clock()
        self._items[key] = _CachedJwt(svid.token, issued + (expiry - issued) / 2)
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class WorkloadApiService(SpiffeWorkloadAPIBase):
    """``SpiffeWorkloadAPI`` over an :class:`IdentityCache`; serve it with
    :func:`spiffed.agent.endpoints.server.start_workload_api`.

    ``attestors`` turn the caller's PID into selectors (their selectors are unioned);
    ``jwt_minter`` signs JWT-SVIDs (the agent passes one that asks the server). Tokens are
    cached per (SPIFFE ID, audience set) until half their lifetime, at most
    ``jwt_cache_size`` of them. ``rate_limiter`` is keyed by the caller's UID; each call
    and each stream opening costs one token.
    """

    def __init__(
        self,
        cache: IdentityCache,
        attestors: Sequence[WorkloadAttestor],
        jwt_minter: JwtMinter,
        *,
        rate_limiter: KeyedRateLimiter | None = None,
        jwt_cache_size: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if jwt_cache_size < 1:
            raise ValueError("jwt_cache_size must be at least 1")
        self._cache = cache
        self._attestors = tuple(attestors)
        self._mint = jwt_minter
        self._limiter = rate_limiter if rate_limiter is not None else KeyedRateLimiter(50, 100)
        self._jwts = _JwtCache(jwt_cache_size, clock)

    # --- caller --------------------------------------------------------------------------

    async def _caller(self, stream: Stream[Any, Any]) -> frozenset[Selector]:
        """Attest the caller from the kernel's view of the socket; never from the request."""
        arrived = boot_time_now()
        try:
            creds = peer_credentials(stream)
        except (GrpcUtilError, OSError) as exc:
            _deny(Status.UNAVAILABLE, f"cannot identify the caller: {exc}")
        if not self._limiter.allow(creds.uid):
            _deny(Status.UNAVAILABLE, f"rate limit exceeded for uid {creds.uid}; retry later")
        selectors: set[Selector] = set()
        try:
            with track_peer(creds.pid, arrived) as peer:
                for attestor in self._attestors:
                    selectors.update(await attestor.attest(creds.pid))
                peer.check()
        except (PeerGoneError, WorkloadAttestationError) as exc:
            _deny(Status.UNAVAILABLE, f"workload attestation failed: {exc}")
        except Exception:
            log.exception("workload attestation of pid %d failed", creds.pid)
            _deny(Status.UNAVAILABLE, "workload attestation failed")
        if not self._cache.ready:
            _deny(Status.UNAVAILABLE, "agent is not ready yet: no trust bundle")
        return frozenset(selectors)

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
        selectors = await self._caller(stream)
        await stream.recv_message()
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
        selectors = await self._caller(stream)
        request = await stream.recv_message()
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
        selectors = await self._caller(stream)
        request = await stream.recv_message()
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
