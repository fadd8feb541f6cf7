"""Sources that keep SVIDs and bundles from the Workload API current in the background.

A source opens the Workload API streams it needs when :meth:`start` is awaited (or on
``async with``), waits for the first answer of each (bounded by ``timeout``), and then follows
every update in a background task until :meth:`close`. When a stream breaks (agent restart,
socket gone, a malformed answer) it reconnects after a jittered exponential back-off and
carries on; the last good state stays in use meanwhile. A stream that had delivered updates
and then ended is redialled at once (WA-05), the back-off only applies from the next failure.
INVALID_ARGUMENT (a request the agent will never accept, such as a missing security header)
and UNIMPLEMENTED stop a source for good (WE-07, WE-15). PERMISSION_DENIED is retried,
because the workload may be registered later, but it redacts what the stream gave: the
source drops its SVIDs or bundles and its readers raise that error until the agent answers
again (WA-29, WA-32, WA-46).

* :class:`X509Source` follows ``FetchX509SVID``: the workload's X509-SVIDs and the bundles
  (own trust domain and federated) to verify peers with.
* :class:`JwtSource` follows ``FetchJWTBundles`` and fetches JWT-SVIDs on demand.
* :class:`BundleSource` follows ``FetchX509Bundles`` and ``FetchJWTBundles``.

Callbacks given to ``subscribe`` run on the event loop after each update, with the source.
Readers (``get_*``) return immutable values and never block, so they may be called from any
thread (see :mod:`spiffed.workloadapi.sync`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from types import MappingProxyType, TracebackType
from typing import Any, Generic, Self, TypeVar

import structlog
from grpclib.const import Status

from spiffed.backoff import Backoff
from spiffed.bundle import JwtBundle, SpiffeBundle, X509Bundle
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.jwt import JwtSvid
from spiffed.svid.x509 import X509Svid
from spiffed.workloadapi.address import Address
from spiffed.workloadapi.client import (
    HintedJwtSvid,
    JwtBundles,
    WorkloadApiClient,
    WorkloadApiError,
    X509Bundles,
    X509Context,
)

__all__ = [
    "BundleSource",
    "JwtSource",
    "SourceClosedError",
    "SvidPicker",
    "X509Source",
]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

SvidPicker = Callable[[Sequence[X509Svid]], X509Svid]
"""Chooses the SVID a source hands out from all of the workload's SVIDs (default first)."""

DEFAULT_START_TIMEOUT = 30.0

# Statuses that stop a source for good: the agent will never accept the request (WE-07,
# WE-15: report, don't retry).
_FATAL = frozenset({Status.INVALID_ARGUMENT, Status.UNIMPLEMENTED})


class SourceClosedError(WorkloadApiError):
    """The source was closed (or stopped for good); it hands out nothing any more."""

    def __init__(self, what: str) -> None:
        super().__init__(Status.CANCELLED, f"{what} is closed")


def default_backoff() -> Backoff:
    """The reconnect back-off of a source: 0.1 s doubling up to 30 s, jittered."""
    return Backoff(initial=0.1, maximum=30.0)


class _Watch(Generic[_T]):
    """One Workload API stream followed with reconnects; ``apply`` receives every message."""

    def __init__(
        self,
        name: str,
        open_stream: Callable[[], AsyncIterator[_T]],
        apply: Callable[[_T], None],
        backoff: Backoff,
        denied: Callable[[WorkloadApiError], None] = lambda _exc: None,
    ) -> None:
        self.name = name
        self._open = open_stream
        self._apply = apply
        self._backoff = backoff
        self._denied = denied
        self.first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.failures = 0
        self.last_failure = ""
        self.error: WorkloadApiError | None = None

    def _settle(self, exc: BaseException | None) -> None:
        if not self.first.done():
            if exc is None:
                self.first.set_result(None)
            else:
                self.first.set_exception(exc)

    async def run(self) -> None:
        while True:
            delivered = False
            try:
                async for value in self._open():
                    self._apply(value)
                    delivered = True
                    self._backoff.reset()
                    self._settle(None)
            except asyncio.CancelledError:
                raise
            except WorkloadApiError as exc:
                self.failures += 1
                self.last_failure = str(exc)
                if exc.status in _FATAL:
                    log.warning("workload API stream refused", stream=self.name, error=str(exc))
                    self.error = exc
                    self._settle(exc)
                    return
                if exc.status == Status.PERMISSION_DENIED:
                    self._denied(exc)  # WA-29: stop using what this stream gave
                    delivered = False  # a refusal is retried with back-off, not at once
                log.info("workload API stream broken, retrying", stream=self.name, error=str(exc))
            except Exception as exc:  # a bug in a picker or parser must not end the source
                self.failures += 1
                self.last_failure = repr(exc)
                delivered = False
                log.exception("workload API stream failed, retrying", stream=self.name)
            if not delivered:  # WA-05: a stream that was working is redialled at once
                await asyncio.sleep(self._backoff.next_delay())


class _Source:
    """What every source shares: the client, the watch tasks, start/close, subscribers."""

    _what = "source"

    def __init__(
        self,
        client: WorkloadApiClient | None = None,
        *,
        address: str | Address | None = None,
        timeout: float | None = DEFAULT_START_TIMEOUT,
        backoff: Callable[[], Backoff] = default_backoff,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if client is not None and address is not None:
            raise ValueError("give either a client or an address, not both")
        self._owns_client = client is None
        self._client = client or WorkloadApiClient(address, timeout=None, environ=environ)
        self._timeout = timeout
        self._backoff = backoff
        self._watches: list[_Watch[Any]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribers: list[Callable[[Any], object]] = []
        self._started = False
        self._closed = False
        self._error: WorkloadApiError | None = None
        self._denied: WorkloadApiError | None = None
        self._version = 0

    # --- lifecycle ---------------------------------------------------------------------

    def _streams(self) -> list[tuple[str, Callable[[], AsyncIterator[Any]], Callable[[Any], None]]]:
        raise NotImplementedError

    @property
    def client(self) -> WorkloadApiClient:
        """The Workload API client the source uses (for calls such as ``validate_jwt_svid``)."""
        return self._client

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or a stream was refused for good."""
        return self._closed

    @property
    def version(self) -> int:
        """How many updates the source has applied (0 before the first); a redaction after
        PERMISSION_DENIED counts as one."""
        return self._version

    async def start(self) -> Self:
        """Open the streams and wait for their first answers (at most ``timeout`` seconds).

        Raises :class:`WorkloadApiError`: DEADLINE_EXCEEDED when no first answer came in
        time (the last failure is in the message), or the status that stopped a stream for
        good (INVALID_ARGUMENT, UNIMPLEMENTED). The source is closed when ``start`` fails.
        """
        if self._closed:
            raise SourceClosedError(self._what)
        if self._started:
            return self
        self._started = True
        for name, open_stream, apply in self._streams():
            watch = _Watch(
                name, open_stream, apply, self._backoff(), functools.partial(self._on_denied, name)
            )
            self._watches.append(watch)
            task = asyncio.create_task(watch.run(), name=f"spiffed {self._what} {name}")
            task.add_done_callback(self._on_task_done)
            self._tasks.append(task)
        try:
            async with asyncio.timeout(self._timeout):
                await asyncio.gather(*(asyncio.shield(w.first) for w in self._watches))
        except TimeoutError:
            failures = "; ".join(
                f"{w.name}: {w.last_failure}" for w in self._watches if w.last_failure
            )
            await self.close()
            raise WorkloadApiError(
                Status.DEADLINE_EXCEEDED,
                f"{self._what}: no first update from {self._client.address} within "
                f"{self._timeout}s" + (f" (last error: {failures})" if failures else ""),
            ) from None
        except BaseException:
            await self.close()
            raise
        return self

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closed:
            return
        if task.exception() is None:  # a stream was refused for good (_FATAL)
            for watch in self._watches:
                if watch.error is not None:
                    self._error = watch.error
            self._closed = True
            for other in self._tasks:
                other.cancel()
            if self._owns_client:  # nothing will use the connection again
                self._client.close()

    async def close(self) -> None:
        """Stop the background tasks and close the client if the source created it."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task
        for watch in self._watches:
            if not watch.first.done():
                watch.first.cancel()
            elif not watch.first.cancelled():
                watch.first.exception()  # mark retrieved
        if self._owns_client:
            self._client.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _check_open(self, *, redacted_ok: bool = False) -> None:
        if self._closed:
            if self._error is not None:
                raise self._error
            raise SourceClosedError(self._what)
        if self._version == 0:
            raise WorkloadApiError(Status.UNAVAILABLE, f"{self._what} has not been started")
        if self._denied is not None and not redacted_ok:
            raise self._denied

    def _drop(self, stream: str) -> None:
        """Forget what ``stream`` delivered (the agent no longer grants it)."""
        raise NotImplementedError

    def _on_denied(self, stream: str, exc: WorkloadApiError) -> None:
        """A stream ended with PERMISSION_DENIED: stop using what it gave (WA-29) until the
        agent answers again; subscribers are told, and readers raise ``exc`` meanwhile."""
        if self._version == 0 or self._closed:
            return  # nothing handed out yet: start() goes on waiting
        self._drop(stream)
        first = self._denied is None
        self._denied = exc
        if first:
            self._notify()

    # --- updates -----------------------------------------------------------------------

    def subscribe(self, callback: Callable[[Self], object]) -> Callable[[], None]:
        """Call ``callback(source)`` after every update; returns a function that unsubscribes.

        Callbacks run on the source's event loop; an exception in one is logged and does not
        stop the source or the other callbacks.
        """
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def _updated(self) -> None:
        self._denied = None
        self._notify()

    def _notify(self) -> None:
        self._version += 1
        for callback in list(self._subscribers):
            try:
                callback(self)
            except Exception:
                log.exception("source update callback failed", source=self._what)


class X509Source(_Source):
    """The workload's X509-SVIDs and X.509 bundles, kept current from ``FetchX509SVID``.

    ``picker`` chooses which SVID :meth:`get_x509_svid` returns (default: the first, the
    workload's default identity). An :class:`~spiffed.bundle.X509BundleSource`, so it can be
    given to :func:`~spiffed.svid.x509.verify_chain`, and the source of
    :class:`spiffed.tls.SpiffeTls`.
    """

    _what = "X509Source"

    def __init__(
        self,
        client: WorkloadApiClient | None = None,
        *,
        address: str | Address | None = None,
        timeout: float | None = DEFAULT_START_TIMEOUT,
        picker: SvidPicker | None = None,
        backoff: Callable[[], Backoff] = default_backoff,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(client, address=address, timeout=timeout, backoff=backoff, environ=environ)
        self._picker = picker
        self._context: X509Context | None = None

    def _streams(self) -> list[tuple[str, Callable[[], AsyncIterator[Any]], Callable[[Any], None]]]:
        return [("FetchX509SVID", self._client.watch_x509_context, self._apply)]

    def _drop(self, stream: str) -> None:
        self._context = None

    def _apply(self, context: X509Context) -> None:
        if self._picker is not None:
            self._picker(context.svids)  # a picker that fails rejects the update
        self._context = context
        self._updated()

    @property
    def x509_context(self) -> X509Context:
        """The latest ``X509SVIDResponse``: all SVIDs with hints, and the bundles."""
        self._check_open()
        assert self._context is not None
        return self._context

    def get_x509_svid(self) -> X509Svid:
        """The SVID to present: the default one, or the picker's choice."""
        context = self.x509_context
        if self._picker is not None:
            return self._picker(context.svids)
        return context.default_svid

    def get_x509_svids(self) -> tuple[X509Svid, ...]:
        """All of the workload's X509-SVIDs, default first."""
        return self.x509_context.svids

    def get_x509_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> X509Bundle | None:
        """The X.509 bundle of ``trust_domain`` (own or federated), or None."""
        return self.x509_context.bundles.get(trust_domain)

    def get_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> X509Bundle | None:
        """Same as :meth:`get_x509_bundle_for_trust_domain` (py-spiffe's name)."""
        return self.get_x509_bundle_for_trust_domain(trust_domain)

    def get_x509_bundles(self) -> Mapping[TrustDomain, X509Bundle]:
        """Every X.509 bundle the workload trusts, by trust domain."""
        return self.x509_context.bundles


class JwtSource(_Source):
    """JWT bundles kept current from ``FetchJWTBundles``; JWT-SVIDs fetched on demand.

    A :class:`~spiffed.bundle.JwtBundleSource` for
    :meth:`~spiffed.svid.jwt.JwtSvid.parse_and_validate`.
    """

    _what = "JwtSource"

    def __init__(
        self,
        client: WorkloadApiClient | None = None,
        *,
        address: str | Address | None = None,
        timeout: float | None = DEFAULT_START_TIMEOUT,
        backoff: Callable[[], Backoff] = default_backoff,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(client, address=address, timeout=timeout, backoff=backoff, environ=environ)
        self._bundles: JwtBundles | None = None

    def _streams(self) -> list[tuple[str, Callable[[], AsyncIterator[Any]], Callable[[Any], None]]]:
        return [("FetchJWTBundles", self._client.watch_jwt_bundles, self._apply)]

    def _drop(self, stream: str) -> None:
        self._bundles = None

    def _apply(self, bundles: JwtBundles) -> None:
        self._bundles = bundles
        self._updated()

    def get_jwt_bundles(self) -> Mapping[TrustDomain, JwtBundle]:
        """Every JWT bundle the workload trusts, by trust domain."""
        self._check_open()
        assert self._bundles is not None
        return self._bundles.bundles

    def get_jwt_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> JwtBundle | None:
        """The JWT bundle of ``trust_domain``, or None."""
        return self.get_jwt_bundles().get(trust_domain)

    def get_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> JwtBundle | None:
        """Same as :meth:`get_jwt_bundle_for_trust_domain` (py-spiffe's name)."""
        return self.get_jwt_bundle_for_trust_domain(trust_domain)

    async def fetch_jwt_svid(
        self, audience: str, *extra_audience: str, spiffe_id: SpiffeId | str | None = None
    ) -> JwtSvid:
        """A JWT-SVID for the audience from the agent (the default identity, or
        ``spiffe_id``'s); each call asks the agent, which caches tokens."""
        self._check_open(redacted_ok=True)  # the agent decides, not the bundle stream's state
        return await self._bounded(
            self._client.fetch_jwt_svid(audience, *extra_audience, spiffe_id=spiffe_id)
        )

    async def fetch_jwt_svids(
        self, audience: str, *extra_audience: str, spiffe_id: SpiffeId | str | None = None
    ) -> tuple[HintedJwtSvid, ...]:
        """All JWT-SVIDs of the workload for the audience, default first."""
        self._check_open(redacted_ok=True)
        return await self._bounded(
            self._client.fetch_jwt_svids(audience, *extra_audience, spiffe_id=spiffe_id)
        )

    def validate_jwt_svid(self, token: str, audience: str | Sequence[str]) -> JwtSvid:
        """Validate ``token`` locally against the current JWT bundles (no agent call);
        raises :class:`~spiffed.svid.jwt.JwtSvidError` naming what was wrong."""
        self._check_open()
        return JwtSvid.parse_and_validate(token, self, audience)

    async def _bounded(self, call: Awaitable[_T]) -> _T:
        try:
            async with asyncio.timeout(self._timeout):
                return await call
        except TimeoutError:
            raise WorkloadApiError(
                Status.DEADLINE_EXCEEDED, f"no answer within {self._timeout}s"
            ) from None


class BundleSource(_Source):
    """X.509 and JWT bundles kept current from ``FetchX509Bundles`` and ``FetchJWTBundles``,
    for workloads that verify peers but have no identity of their own."""

    _what = "BundleSource"

    def __init__(
        self,
        client: WorkloadApiClient | None = None,
        *,
        address: str | Address | None = None,
        timeout: float | None = DEFAULT_START_TIMEOUT,
        backoff: Callable[[], Backoff] = default_backoff,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(client, address=address, timeout=timeout, backoff=backoff, environ=environ)
        self._x509: Mapping[TrustDomain, X509Bundle] | None = None
        self._jwt: Mapping[TrustDomain, JwtBundle] | None = None

    def _streams(self) -> list[tuple[str, Callable[[], AsyncIterator[Any]], Callable[[Any], None]]]:
        return [
            ("FetchX509Bundles", self._client.watch_x509_bundles, self._apply_x509),
            ("FetchJWTBundles", self._client.watch_jwt_bundles, self._apply_jwt),
        ]

    def _drop(self, stream: str) -> None:
        if stream == "FetchX509Bundles":
            self._x509 = None
        else:
            self._jwt = None

    def _apply_x509(self, bundles: X509Bundles) -> None:
        self._x509 = bundles.bundles
        if self._jwt is not None:
            self._updated()

    def _apply_jwt(self, bundles: JwtBundles) -> None:
        self._jwt = bundles.bundles
        if self._x509 is not None:
            self._updated()

    def _check_both(
        self,
    ) -> tuple[Mapping[TrustDomain, X509Bundle], Mapping[TrustDomain, JwtBundle]]:
        self._check_open()
        assert self._x509 is not None and self._jwt is not None
        return self._x509, self._jwt

    def get_x509_bundles(self) -> Mapping[TrustDomain, X509Bundle]:
        """Every X.509 bundle, by trust domain."""
        return self._check_both()[0]

    def get_jwt_bundles(self) -> Mapping[TrustDomain, JwtBundle]:
        """Every JWT bundle, by trust domain."""
        return self._check_both()[1]

    def get_x509_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> X509Bundle | None:
        """The X.509 bundle of ``trust_domain``, or None."""
        return self.get_x509_bundles().get(trust_domain)

    def get_jwt_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> JwtBundle | None:
        """The JWT bundle of ``trust_domain``, or None."""
        return self.get_jwt_bundles().get(trust_domain)

    def get_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> SpiffeBundle | None:
        """The SPIFFE bundle of ``trust_domain`` (X.509 and JWT authorities), or None when
        the agent has neither kind for it."""
        x509s, jwts = self._check_both()
        xb, jb = x509s.get(trust_domain), jwts.get(trust_domain)
        if xb is None and jb is None:
            return None
        return SpiffeBundle(
            trust_domain,
            xb.authorities if xb is not None else (),
            MappingProxyType(dict(jb.authorities)) if jb is not None else {},
        )
