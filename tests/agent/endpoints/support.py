"""A running Workload API for tests: a real socket, a cache filled with real SVIDs and keys.

Shared by tests/agent/endpoints and the interop tests (py-spiffe, go-spiffe, other UIDs).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from grpclib.client import Channel
from grpclib.server import Server
from h2.exceptions import StreamClosedError

from spiffed._proto.workload import workload_grpc, workload_pb2
from spiffed.agent.cache import IdentityCache, WorkloadEntry
from spiffed.agent.endpoints import WorkloadApiService, start_workload_api, stop_workload_api
from spiffed.agent.workloadattestor import WorkloadAttestor
from spiffed.agent.workloadattestor.unix import UnixAttestor
from spiffed.bundle import SpiffeBundle
from spiffed.keys import KeyType
from spiffed.ratelimit import KeyedRateLimiter
from spiffed.selector import Selector
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.jwt import sign_jwt_svid
from spiffed.svid.x509 import X509Svid
from spiffed.svid.x509_issue import create_root_ca, create_x509_svid
from spiffed.workloadapi.security import client_metadata

TD = TrustDomain("example.org")
FED = TrustDomain("federated.org")
OTHER_FED = TrustDomain("elsewhere.org")
MY_UID = Selector("unix", f"uid:{os.getuid()}")
NOBODY_UID = Selector("unix", "uid:65534")
DEADLINE = 20.0


@dataclass
class Authority:
    """A trust domain's CA and JWT signing key."""

    trust_domain: TrustDomain
    ca_cert: x509.Certificate = field(init=False)
    ca_key: Any = field(init=False)
    jwt_key: ec.EllipticCurvePrivateKey = field(init=False)
    jwt_kid: str = field(init=False)

    def __post_init__(self) -> None:
        self.ca_key = KeyType.EC_P256.generate()
        self.ca_cert = create_root_ca(self.trust_domain, self.ca_key, ttl=dt.timedelta(hours=2))
        self.jwt_key = ec.generate_private_key(ec.SECP256R1())
        self.jwt_kid = f"{self.trust_domain.name}-jwt-1"

    def bundle(self) -> SpiffeBundle:
        """The trust domain's SPIFFE bundle (X.509 CA and JWT key)."""
        return SpiffeBundle(
            self.trust_domain, (self.ca_cert,), {self.jwt_kid: self.jwt_key.public_key()}
        )

    def svid(self, spiffe_id: SpiffeId) -> X509Svid:
        """A fresh X509-SVID (new key, new serial) for ``spiffe_id``."""
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = create_x509_svid(
            spiffe_id, key.public_key(), signer_cert=self.ca_cert, signer_key=self.ca_key
        )
        return X509Svid.from_certificates([leaf], key)

    def jwt(
        self,
        spiffe_id: SpiffeId,
        audience: Sequence[str],
        ttl: dt.timedelta = dt.timedelta(minutes=5),
        **extra: Any,
    ) -> str:
        """A JWT-SVID signed with this trust domain's key."""
        now = dt.datetime.now(dt.UTC)
        return sign_jwt_svid(
            spiffe_id, audience, self.jwt_key, self.jwt_kid, ttl, issued_at=now, **extra
        )


def entry(
    entry_id: str,
    path: str,
    *selectors: Selector,
    federates_with: Sequence[TrustDomain] = (),
    hint: str = "",
    created_at: int = 0,
) -> WorkloadEntry:
    """A workload entry of TD."""
    return WorkloadEntry(
        entry_id,
        SpiffeId.from_path(TD, path),
        frozenset(selectors),
        federates_with=frozenset(federates_with),
        hint=hint,
        created_at=created_at,
    )


@dataclass
class Minter:
    """A JwtMinter signing with the trust domain's key; counts its calls."""

    authority: Authority
    calls: list[tuple[SpiffeId, tuple[str, ...]]] = field(default_factory=list)
    ttl: dt.timedelta = dt.timedelta(minutes=5)

    async def __call__(self, e: WorkloadEntry, audience: tuple[str, ...]) -> str:
        self.calls.append((e.spiffe_id, audience))
        return self.authority.jwt(e.spiffe_id, audience, self.ttl)


@dataclass
class Agent:
    """A Workload API served on ``socket_path`` over ``cache``."""

    cache: IdentityCache
    ca: Authority
    fed: Authority
    minter: Minter
    service: WorkloadApiService
    server: Server
    socket_path: Path

    def add(self, *entries: WorkloadEntry, sign: bool = True) -> dict[str, X509Svid]:
        """Add entries (keeping the existing ones) and sign their SVIDs."""
        self.cache.set_entries([*self.cache.entries(), *entries])
        svids = {}
        if sign:
            for e in entries:
                svids[e.id] = self.rotate(e)
        return svids

    def rotate(self, e: WorkloadEntry) -> X509Svid:
        """Give ``e`` a new SVID, as the agent's rotation would."""
        svid = self.ca.svid(e.spiffe_id)
        self.cache.set_svid(e.id, svid)
        return svid

    def remove(self, *entry_ids: str) -> None:
        """Delete entries."""
        self.cache.set_entries([e for e in self.cache.entries() if e.id not in entry_ids])

    def set_federation(self, *bundles: SpiffeBundle) -> None:
        """Replace the federated bundles."""
        self.cache.set_bundles(self.ca.bundle(), {b.trust_domain: b for b in bundles})

    @contextmanager
    def channel(self) -> Iterator[Channel]:
        """A grpclib channel to the socket, closed on exit."""
        ch = Channel(path=str(self.socket_path))
        try:
            yield ch
        finally:
            ch.close()


@asynccontextmanager
async def running_agent(
    socket_path: Path,
    *,
    ready: bool = True,
    attestors: Sequence[WorkloadAttestor] | None = None,
    rate_limiter: KeyedRateLimiter | None = None,
    jwt_cache_size: int = 1000,
    clock: Callable[[], float] | None = None,
    socket_mode: int = 0o777,
    **limits: Any,
) -> AsyncIterator[Agent]:
    """Start a Workload API on ``socket_path`` with the unix attestor (unless replaced)."""
    ca, fed = Authority(TD), Authority(FED)
    cache = IdentityCache(TD)
    if ready:
        cache.set_bundles(ca.bundle(), {})
    minter = Minter(ca)
    kwargs: dict[str, Any] = {
        "rate_limiter": rate_limiter,
        "jwt_cache_size": jwt_cache_size,
        **limits,
    }
    if clock is not None:
        kwargs["clock"] = clock
    service = WorkloadApiService(
        cache, attestors if attestors is not None else [UnixAttestor()], minter, **kwargs
    )
    server = await start_workload_api(service, socket_path, socket_mode=socket_mode)
    try:
        yield Agent(cache, ca, fed, minter, service, server, socket_path)
    finally:
        await stop_workload_api(server)


class X509Stream:
    """An open FetchX509SVID (or bundles) stream with a deadline on every read."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def next(self) -> Any:
        """The next message (fails after DEADLINE seconds); the status's GRPCError when the
        stream ends."""
        async with asyncio.timeout(DEADLINE):
            msg = await self._stream.recv_message()
            if msg is None:
                await self._stream.recv_trailing_metadata()  # raises for a non-OK status
                raise AssertionError("stream ended with OK")
            return msg

    async def next_matching(self, predicate: Callable[[Any], bool]) -> Any:
        """Read messages until one satisfies ``predicate`` (the deadline bounds the wait)."""
        async with asyncio.timeout(DEADLINE):
            while True:
                msg = await self._stream.recv_message()
                assert msg is not None, "stream ended"
                if predicate(msg):
                    return msg


@asynccontextmanager
async def open_stream(
    channel: Channel, method: str, request: Any, metadata: Any = None
) -> AsyncIterator[X509Stream]:
    """Open a server stream of the Workload API, sending the security header by default."""
    stub = workload_grpc.SpiffeWorkloadAPIStub(channel)
    md = client_metadata() if metadata is None else metadata
    async with getattr(stub, method).open(metadata=md, timeout=DEADLINE * 3) as stream:
        await stream.send_message(request, end=True)
        try:
            yield X509Stream(stream)
        finally:
            with suppress(StreamClosedError):  # already ended with a status
                await stream.cancel()  # a server stream never ends by itself


def stub(channel: Channel) -> workload_grpc.SpiffeWorkloadAPIStub:
    """A stub for unary calls."""
    return workload_grpc.SpiffeWorkloadAPIStub(channel)


MD = client_metadata()
REQ_X509 = workload_pb2.X509SVIDRequest()
REQ_X509_BUNDLES = workload_pb2.X509BundlesRequest()
REQ_JWT_BUNDLES = workload_pb2.JWTBundlesRequest()
