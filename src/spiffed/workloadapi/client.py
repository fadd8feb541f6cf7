"""An asyncio client of the SPIFFE Workload API (``SpiffeWorkloadAPI`` over grpclib).

The client sends the security header on every call (WE-05), parses every response into the
library's types (:class:`~spiffed.svid.x509.X509Svid` with its key, :class:`X509Bundle`,
:class:`JwtBundle`, :class:`JwtSvid`) and reports every failure as a
:class:`WorkloadApiError` carrying a gRPC status: the server's own status, UNAVAILABLE when
the endpoint cannot be reached, DEADLINE_EXCEEDED when ``timeout`` passes, INTERNAL when
the server's answer is malformed (:class:`InvalidResponseError`).

``fetch_*`` take the first message of a stream; ``watch_*`` are async iterators over every
message of a stream until the server ends it (with an error) or the caller stops iterating.
The client does not retry; the X509Source/JwtSource built on it decide about retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Self, TypeVar

from google.protobuf import json_format
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from h2.exceptions import StreamClosedError

from spiffed._proto.workload import workload_pb2 as pb
from spiffed._proto.workload.workload_grpc import SpiffeWorkloadAPIStub
from spiffed.bundle import BundleError, JwtBundle, X509Bundle
from spiffed.spiffeid import SpiffeId, SpiffeIdError, TrustDomain
from spiffed.svid.jwt import JwtSvid, JwtSvidError
from spiffed.svid.x509 import X509Svid, X509SvidError
from spiffed.workloadapi.address import Address, AddressError, UnixAddress, resolve
from spiffed.workloadapi.security import client_metadata

__all__ = [
    "HintedJwtSvid",
    "InvalidResponseError",
    "JwtBundles",
    "ValidatedJwtSvid",
    "WorkloadApiClient",
    "WorkloadApiError",
    "X509Bundles",
    "X509Context",
]

_T = TypeVar("_T")
_Msg = TypeVar("_Msg")


class WorkloadApiError(Exception):
    """A Workload API call failed; ``status`` is the gRPC status (the server's, or the one a
    gRPC client reports for a connection failure or a deadline)."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(f"{status.name}: {message}")
        self.status = status
        self.message = message


class InvalidResponseError(WorkloadApiError):
    """The server answered with something that is not a valid response (status INTERNAL)."""

    def __init__(self, message: str) -> None:
        super().__init__(Status.INTERNAL, message)


@dataclass(frozen=True, slots=True)
class X509Bundles:
    """X.509 bundles by trust domain (the own trust domain's and federated ones)."""

    bundles: Mapping[TrustDomain, X509Bundle]

    def get_x509_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> X509Bundle | None:
        """The bundle of ``trust_domain``, or None (an :class:`X509BundleSource`)."""
        return self.bundles.get(trust_domain)


@dataclass(frozen=True, slots=True)
class JwtBundles:
    """JWT bundles by trust domain (the own trust domain's and federated ones)."""

    bundles: Mapping[TrustDomain, JwtBundle]

    def get_jwt_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> JwtBundle | None:
        """The bundle of ``trust_domain``, or None (a :class:`JwtBundleSource`)."""
        return self.bundles.get(trust_domain)


@dataclass(frozen=True, slots=True)
class X509Context:
    """One ``X509SVIDResponse``: the SVIDs (default first) with their hints, and the bundles.

    ``bundles`` holds the bundle of each SVID's trust domain (the ``bundle`` field) and the
    federated bundles (``federated_bundles`` of the response).
    """

    svids: tuple[X509Svid, ...]
    hints: tuple[str, ...]
    bundles: Mapping[TrustDomain, X509Bundle]
    federated: frozenset[TrustDomain] = frozenset()

    @property
    def default_svid(self) -> X509Svid:
        """The first SVID, the default identity (WA-70)."""
        return self.svids[0]

    def bundle_for(self, svid: X509Svid) -> X509Bundle:
        """The bundle of the trust domain of ``svid``."""
        return self.bundles[svid.spiffe_id.trust_domain]

    def federated_bundles(self) -> dict[TrustDomain, X509Bundle]:
        """The federated bundles (from the response's ``federated_bundles``), by trust domain."""
        return {td: b for td, b in self.bundles.items() if td in self.federated}

    def get_x509_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> X509Bundle | None:
        """The bundle of ``trust_domain``, or None (an :class:`X509BundleSource`)."""
        return self.bundles.get(trust_domain)


@dataclass(frozen=True, slots=True)
class HintedJwtSvid:
    """A JWT-SVID as the Workload API returned it, with the entry's hint ("" for none)."""

    svid: JwtSvid
    hint: str = ""


@dataclass(frozen=True, slots=True)
class ValidatedJwtSvid:
    """What ``ValidateJWTSVID`` says about a token the server found valid; whole numbers in
    ``claims`` are ints (the wire's Struct holds only doubles)."""

    spiffe_id: SpiffeId
    claims: Mapping[str, Any] = field(default_factory=dict)


def _trust_domain_key(key: str, what: str) -> TrustDomain:
    try:
        return TrustDomain.parse(key)
    except SpiffeIdError as exc:
        raise InvalidResponseError(f"{what}: invalid trust domain key {key!r}: {exc}") from None


def _parse_x509_bundle(td: TrustDomain, data: bytes, what: str) -> X509Bundle:
    try:
        bundle = X509Bundle.parse_der(td, data)
    except (BundleError, ValueError) as exc:
        raise InvalidResponseError(f"{what} of {td}: {exc}") from None
    if not bundle.authorities:
        raise InvalidResponseError(f"{what} of {td} has no certificates")
    return bundle


def parse_x509_context(resp: pb.X509SVIDResponse) -> X509Context:
    """Parse an ``X509SVIDResponse``; :class:`InvalidResponseError` names what is wrong.

    Any empty mandatory field, a chain or key that does not parse or match, a ``spiffe_id``
    other than the leaf's URI SAN, or an empty bundle rejects the whole message (WA-11);
    of SVIDs sharing a hint only the first is kept (WA-27)."""
    if not resp.svids:
        raise InvalidResponseError("X509SVIDResponse contains no SVIDs")
    svids: list[X509Svid] = []
    hints: list[str] = []
    bundles: dict[TrustDomain, X509Bundle] = {}
    seen_hints: set[str] = set()
    for i, msg in enumerate(resp.svids):
        if msg.hint and msg.hint in seen_hints:
            continue  # WA-27: a repeated hint keeps the first SVID that has it
        seen_hints.add(msg.hint)
        try:
            svid = X509Svid.parse_der(msg.x509_svid, msg.x509_svid_key)
        except (X509SvidError, ValueError) as exc:
            raise InvalidResponseError(f"SVID #{i} ({msg.spiffe_id!r}): {exc}") from None
        if str(svid.spiffe_id) != msg.spiffe_id:
            raise InvalidResponseError(
                f"SVID #{i}: spiffe_id {msg.spiffe_id!r} does not match the certificate's "
                f"{svid.spiffe_id}"
            )
        td = svid.spiffe_id.trust_domain
        bundles.setdefault(td, _parse_x509_bundle(td, msg.bundle, f"bundle of SVID #{i}"))
        svids.append(svid)
        hints.append(msg.hint)
    federated: set[TrustDomain] = set()
    for key, data in resp.federated_bundles.items():
        td = _trust_domain_key(key, "federated_bundles")
        bundles[td] = _parse_x509_bundle(td, data, "federated bundle")
        federated.add(td)
    return X509Context(tuple(svids), tuple(hints), MappingProxyType(bundles), frozenset(federated))


def parse_x509_bundles(resp: pb.X509BundlesResponse) -> X509Bundles:
    """Parse an ``X509BundlesResponse``; an empty one is invalid (WA-11, WA-31)."""
    if not resp.bundles:
        raise InvalidResponseError("X509BundlesResponse contains no bundles")
    bundles = {}
    for key, data in resp.bundles.items():
        td = _trust_domain_key(key, "X509BundlesResponse")
        bundles[td] = _parse_x509_bundle(td, data, "X.509 bundle")
    return X509Bundles(MappingProxyType(bundles))


def parse_jwt_bundles(resp: pb.JWTBundlesResponse) -> JwtBundles:
    """Parse a ``JWTBundlesResponse`` (one JWKS per trust domain); an empty one is invalid
    (WA-11, WA-45)."""
    if not resp.bundles:
        raise InvalidResponseError("JWTBundlesResponse contains no bundles")
    bundles = {}
    for key, data in resp.bundles.items():
        td = _trust_domain_key(key, "JWTBundlesResponse")
        try:
            bundles[td] = JwtBundle.parse_jwks(td, data)
        except (BundleError, ValueError) as exc:
            raise InvalidResponseError(f"JWT bundle of {td}: {exc}") from None
    return JwtBundles(MappingProxyType(bundles))


def _channel_for(address: Address) -> Channel:
    if isinstance(address, UnixAddress):
        return Channel(path=address.path)
    return Channel(host=str(address.host), port=address.port)


def _translate(exc: BaseException, address: Address) -> WorkloadApiError | None:
    """The :class:`WorkloadApiError` for a failure of a call, None for other exceptions."""
    if isinstance(exc, WorkloadApiError):
        return exc
    if isinstance(exc, GRPCError):
        return WorkloadApiError(exc.status, exc.message or "")
    if isinstance(exc, TimeoutError):
        return WorkloadApiError(Status.DEADLINE_EXCEEDED, "deadline exceeded")
    if isinstance(exc, StreamTerminatedError | StreamClosedError):
        return WorkloadApiError(Status.UNAVAILABLE, f"stream to {address} terminated: {exc}")
    if isinstance(exc, OSError | ConnectionError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return WorkloadApiError(Status.UNAVAILABLE, f"cannot connect to {address}: {reason}")
    return None


class WorkloadApiClient:
    """A client of the Workload API at ``address`` (a URI or an :class:`Address`; without
    one, ``SPIFFE_ENDPOINT_SOCKET``). Use it as ``async with WorkloadApiClient() as c:``
    or call :meth:`close`.

    ``timeout`` (seconds, None for none) bounds each unary call and the wait for the first
    message of a ``fetch_*`` call; ``watch_*`` streams run until stopped.
    """

    def __init__(
        self,
        address: str | Address | None = None,
        *,
        timeout: float | None = 30.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        try:
            self._address = resolve(address, environ=environ)
        except AddressError as exc:
            raise WorkloadApiError(Status.INVALID_ARGUMENT, str(exc)) from None
        self._timeout = timeout
        self._channel: Channel | None = None

    @property
    def address(self) -> Address:
        """The endpoint this client talks to."""
        return self._address

    def _stub(self) -> SpiffeWorkloadAPIStub:
        if self._channel is None:
            self._channel = _channel_for(self._address)
        return SpiffeWorkloadAPIStub(self._channel)

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- plumbing ----------------------------------------------------------------------

    async def _guard(self, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except Exception as exc:
            err = _translate(exc, self._address)
            if err is None:
                raise
            raise err from exc

    async def _unary(self, method: str, request: Any) -> Any:
        fn = getattr(self._stub(), method)
        return await self._guard(fn(request, metadata=client_metadata(), timeout=self._timeout))

    async def _stream(self, method: str, request: Any) -> AsyncGenerator[Any, None]:
        """Every message of a server stream; the stream's status as a WorkloadApiError."""
        fn = getattr(self._stub(), method)
        try:
            async with fn.open(metadata=client_metadata()) as stream:
                try:
                    await stream.send_message(request, end=True)
                    while True:
                        msg = await stream.recv_message()
                        if msg is None:
                            await stream.recv_trailing_metadata()  # raises for non-OK
                            raise WorkloadApiError(Status.UNAVAILABLE, "stream ended by server")
                        yield msg
                finally:
                    with suppress(
                        StreamClosedError, StreamTerminatedError, GRPCError, ProtocolError, OSError
                    ):
                        await stream.cancel()
        except Exception as exc:
            err = _translate(exc, self._address)
            if err is None:
                raise
            raise err from exc

    async def _first(self, method: str, request: Any, parse: Callable[[Any], _T]) -> _T:
        messages = self._stream(method, request)
        try:
            async with asyncio.timeout(self._timeout):
                msg = await anext(messages)
        except TimeoutError:
            raise WorkloadApiError(
                Status.DEADLINE_EXCEEDED, f"no {method} response within {self._timeout}s"
            ) from None
        finally:
            await messages.aclose()
        return parse(msg)

    async def _watch(
        self, method: str, request: Any, parse: Callable[[Any], _T]
    ) -> AsyncGenerator[_T, None]:
        messages = self._stream(method, request)
        try:
            async for msg in messages:
                yield parse(msg)
        finally:
            await messages.aclose()

    # --- X.509 -------------------------------------------------------------------------

    async def fetch_x509_context(self) -> X509Context:
        """The caller's X509-SVIDs and bundles (the first message of ``FetchX509SVID``)."""
        return await self._first("FetchX509SVID", pb.X509SVIDRequest(), parse_x509_context)

    def watch_x509_context(self) -> AsyncGenerator[X509Context, None]:
        """Every update of ``FetchX509SVID``, the full state each time (WA-06)."""
        return self._watch("FetchX509SVID", pb.X509SVIDRequest(), parse_x509_context)

    async def fetch_x509_bundles(self) -> X509Bundles:
        """The X.509 bundles the caller trusts (the first message of ``FetchX509Bundles``)."""
        return await self._first("FetchX509Bundles", pb.X509BundlesRequest(), parse_x509_bundles)

    def watch_x509_bundles(self) -> AsyncGenerator[X509Bundles, None]:
        """Every update of ``FetchX509Bundles``."""
        return self._watch("FetchX509Bundles", pb.X509BundlesRequest(), parse_x509_bundles)

    # --- JWT ---------------------------------------------------------------------------

    async def fetch_jwt_svids(
        self, audience: str, *extra_audience: str, spiffe_id: SpiffeId | str | None = None
    ) -> tuple[HintedJwtSvid, ...]:
        """All JWT-SVIDs for the audience (or only ``spiffe_id``'s), default first."""
        request = pb.JWTSVIDRequest(
            audience=[audience, *extra_audience],
            spiffe_id=str(spiffe_id) if spiffe_id is not None else "",
        )
        resp = await self._unary("FetchJWTSVID", request)
        if not resp.svids:
            raise InvalidResponseError("JWTSVIDResponse contains no SVIDs")
        out = []
        seen_hints: set[str] = set()
        for i, msg in enumerate(resp.svids):
            if msg.hint and msg.hint in seen_hints:
                continue  # WA-27: a repeated hint keeps the first SVID that has it
            seen_hints.add(msg.hint)
            try:
                svid = JwtSvid.parse_insecure(msg.svid)
            except (JwtSvidError, ValueError) as exc:
                raise InvalidResponseError(f"JWT-SVID #{i} ({msg.spiffe_id!r}): {exc}") from None
            if str(svid.spiffe_id) != msg.spiffe_id:
                raise InvalidResponseError(
                    f"JWT-SVID #{i}: spiffe_id {msg.spiffe_id!r} does not match its sub "
                    f"{svid.spiffe_id}"
                )
            out.append(HintedJwtSvid(svid, msg.hint))
        return tuple(out)

    async def fetch_jwt_svid(
        self, audience: str, *extra_audience: str, spiffe_id: SpiffeId | str | None = None
    ) -> JwtSvid:
        """The default (first) JWT-SVID for the audience, or ``spiffe_id``'s."""
        svids = await self.fetch_jwt_svids(audience, *extra_audience, spiffe_id=spiffe_id)
        return svids[0].svid

    async def fetch_jwt_bundles(self) -> JwtBundles:
        """The JWT bundles the caller trusts (the first message of ``FetchJWTBundles``)."""
        return await self._first("FetchJWTBundles", pb.JWTBundlesRequest(), parse_jwt_bundles)

    def watch_jwt_bundles(self) -> AsyncGenerator[JwtBundles, None]:
        """Every update of ``FetchJWTBundles``."""
        return self._watch("FetchJWTBundles", pb.JWTBundlesRequest(), parse_jwt_bundles)

    async def validate_jwt_svid(self, token: str, audience: str) -> ValidatedJwtSvid:
        """Ask the agent to validate ``token`` for ``audience``; an invalid token raises
        :class:`WorkloadApiError` with INVALID_ARGUMENT."""
        resp = await self._unary(
            "ValidateJWTSVID", pb.ValidateJWTSVIDRequest(audience=audience, svid=token)
        )
        try:
            sid = SpiffeId.parse(resp.spiffe_id)
        except SpiffeIdError as exc:
            raise InvalidResponseError(f"ValidateJWTSVIDResponse: {exc}") from None
        claims = _integral(json_format.MessageToDict(resp.claims))
        # WA-48/WA-50: claims is mandatory, holds the SPIFFE claims, and sub is spiffe_id.
        missing = [c for c in ("sub", "aud", "exp") if c not in claims]
        if missing:
            raise InvalidResponseError(f"ValidateJWTSVIDResponse: claims lack {', '.join(missing)}")
        if claims["sub"] != resp.spiffe_id:
            raise InvalidResponseError(
                f"ValidateJWTSVIDResponse: spiffe_id {resp.spiffe_id!r} is not the token's "
                f"sub {claims['sub']!r}"
            )
        return ValidatedJwtSvid(sid, MappingProxyType(claims))


def _integral(value: Any) -> Any:
    """Struct numbers are doubles: give whole ones (``exp``, ``iat``...) back as ints."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value
