"""The Workload API client and sources for code without an event loop.

Each object runs its asyncio counterpart on its own background event-loop thread (a daemon
thread named ``spiffed-workloadapi``) and waits for the answers; :meth:`close` stops the
thread. Readers (``get_*``) do not go through the thread: they return the latest immutable
values, so they cost no more than an attribute read. ``subscribe`` callbacks run on the
background thread and must not block for long.

    with X509Source() as source:             # reads SPIFFE_ENDPOINT_SOCKET
        svid = source.get_x509_svid()
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import suppress
from types import TracebackType
from typing import Any, Self, TypeVar

from grpclib.const import Status

from spiffed.backoff import Backoff
from spiffed.bundle import JwtBundle, SpiffeBundle, X509Bundle
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.jwt import JwtSvid
from spiffed.svid.x509 import X509Svid
from spiffed.workloadapi import client as aclient
from spiffed.workloadapi import sources as asources
from spiffed.workloadapi.address import Address
from spiffed.workloadapi.client import (
    HintedJwtSvid,
    JwtBundles,
    ValidatedJwtSvid,
    WorkloadApiError,
    X509Bundles,
    X509Context,
)
from spiffed.workloadapi.sources import DEFAULT_START_TIMEOUT, SvidPicker, default_backoff

__all__ = ["BundleSource", "JwtSource", "WorkloadApiClient", "X509Source"]

_T = TypeVar("_T")


class _LoopThread:
    """An event loop running on a daemon thread until :meth:`stop`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._stopping = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="spiffed-workloadapi", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    @property
    def thread(self) -> threading.Thread:
        """The background thread."""
        return self._thread

    @property
    def stopping(self) -> bool:
        """True once :meth:`close` or :meth:`stop` was called."""
        return self._stopping

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coro`` on the loop and wait for its result (at most ``timeout`` seconds).

        Refused (RuntimeError) from a thread running an event loop: waiting there would
        block that loop, and with the loop serving the agent, wait forever.
        """
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a synchronous Workload API call cannot run on its own loop")
        if self._stopping or not self._thread.is_alive():
            coro.close()
            raise WorkloadApiError(Status.CANCELLED, "the Workload API object is closed")
        if _running_loop() is not None:
            coro.close()
            raise RuntimeError(
                "a synchronous Workload API call was made from a thread running an asyncio "
                "event loop, which it would block; use spiffed.workloadapi's asyncio "
                "classes there, or call it from another thread (asyncio.to_thread)"
            )
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except FutureTimeoutError:
            future.cancel()
            raise WorkloadApiError(
                Status.DEADLINE_EXCEEDED, f"no answer within {timeout}s"
            ) from None

    def stop(self) -> None:
        """Stop the loop and wait for the thread to end."""
        self._stopping = True
        if self._thread.is_alive():
            with suppress(RuntimeError):  # the loop closed meanwhile
                self.loop.call_soon_threadsafe(self.loop.stop)
            if threading.current_thread() is not self._thread:
                self._thread.join()

    def close(self, shutdown: Callable[[], Coroutine[Any, Any, None] | None]) -> None:
        """Run ``shutdown()`` on the loop, then stop the loop (idempotent).

        From another thread it waits until the thread ended. From the loop's own thread (a
        subscriber callback) it cannot wait: the shutdown is scheduled to run once the
        callback returns, and the thread ends right after.
        """
        with self._close_lock:
            first = not self._stopping
            self._stopping = True
        if threading.current_thread() is self._thread:
            if first:
                self.loop.create_task(self._shutdown_then_stop(shutdown))
            return
        if not first:  # another close is under way (maybe scheduled by a callback)
            self._thread.join()
            return
        if self._thread.is_alive():
            coro = shutdown()
            if coro is not None:
                future = asyncio.run_coroutine_threadsafe(coro, self.loop)
                with suppress(Exception):
                    future.result(30.0)
        self.stop()

    async def _shutdown_then_stop(
        self, shutdown: Callable[[], Coroutine[Any, Any, None] | None]
    ) -> None:
        try:
            coro = shutdown()
            if coro is not None:
                await coro
        finally:
            self.loop.stop()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Sync:
    """Context manager and close() for the synchronous wrappers."""

    _runner: _LoopThread

    def _shutdown(self) -> Coroutine[Any, Any, None] | None:
        return None

    def close(self) -> None:
        """Stop the background work and its thread (idempotent). Called from a subscriber
        callback (on the background thread) it returns at once and the work stops as soon
        as the callback returns."""
        self._runner.close(self._shutdown)

    @property
    def thread(self) -> threading.Thread:
        """The background event-loop thread (ended after :meth:`close`)."""
        return self._runner.thread

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class WorkloadApiClient(_Sync):
    """A blocking :class:`spiffed.workloadapi.WorkloadApiClient` (same arguments, same
    errors); each call waits at most ``timeout`` seconds."""

    def __init__(
        self,
        address: str | Address | None = None,
        *,
        timeout: float | None = 30.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._runner = _LoopThread()
        self._timeout = timeout
        try:
            self._client = self._runner.run(self._make(address, timeout, environ))
        except BaseException:
            self._runner.stop()
            raise

    @staticmethod
    async def _make(
        address: str | Address | None, timeout: float | None, environ: Mapping[str, str] | None
    ) -> aclient.WorkloadApiClient:
        return aclient.WorkloadApiClient(address, timeout=timeout, environ=environ)

    async def _close_client(self) -> None:
        self._client.close()

    def _shutdown(self) -> Coroutine[Any, Any, None]:
        return self._close_client()

    @property
    def address(self) -> Address:
        """The endpoint this client talks to."""
        return self._client.address

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        # the async client bounds each call itself; this is a safety margin
        margin = None if self._timeout is None else self._timeout + 5.0
        return self._runner.run(coro, margin)

    def fetch_x509_context(self) -> X509Context:
        """The caller's X509-SVIDs and bundles."""
        return self._call(self._client.fetch_x509_context())

    def fetch_x509_svid(self) -> X509Svid:
        """The caller's default X509-SVID."""
        return self.fetch_x509_context().default_svid

    def fetch_x509_bundles(self) -> X509Bundles:
        """The X.509 bundles the caller trusts."""
        return self._call(self._client.fetch_x509_bundles())

    def fetch_jwt_svids(
        self, audience: str, *extra_audience: str, spiffe_id: SpiffeId | str | None = None
    ) -> tuple[HintedJwtSvid, ...]:
        """All JWT-SVIDs for the audience (or only ``spiffe_id``'s), default first."""
        return self._call(
            self._client.fetch_jwt_svids(audience, *extra_audience, spiffe_id=spiffe_id)
        )

    def fetch_jwt_svid(
        self, audience: str, *extra_audience: str, spiffe_id: SpiffeId | str | None = None
    ) -> JwtSvid:
        """The default JWT-SVID for the audience, or ``spiffe_id``'s."""
        return self._call(
            self._client.fetch_jwt_svid(audience, *extra_audience, spiffe_id=spiffe_id)
        )

    def fetch_jwt_bundles(self) -> JwtBundles:
        """The JWT bundles the caller trusts."""
        return self._call(self._client.fetch_jwt_bundles())

    def validate_jwt_svid(self, token: str, audience: str) -> ValidatedJwtSvid:
        """Ask the agent to validate ``token`` for ``audience``."""
        return self._call(self._client.validate_jwt_svid(token, audience))


class _SyncSource(_Sync):
    _source: asources.X509Source | asources.JwtSource | asources.BundleSource

    def _start(self, make: Callable[[], Any], timeout: float | None) -> None:
        self._runner = _LoopThread()

        async def start() -> Any:
            return await make().start()

        try:
            # the source bounds its own start; the margin only guards against a stuck loop
            self._source = self._runner.run(start(), None if timeout is None else timeout + 5)
        except BaseException:
            self._runner.stop()
            raise

    def _shutdown(self) -> Coroutine[Any, Any, None]:
        return self._source.close()

    @property
    def closed(self) -> bool:
        """True once closed (or stopped for good by the agent's INVALID_ARGUMENT)."""
        return self._runner.stopping or self._source.closed

    @property
    def version(self) -> int:
        """How many updates the source has applied."""
        return self._source.version

    def subscribe(self, callback: Callable[[Self], object]) -> Callable[[], None]:
        """Call ``callback(self)`` after every update (on the background thread); returns a
        function that unsubscribes."""
        return self._source.subscribe(lambda _source: callback(self))


class X509Source(_SyncSource):
    """A blocking :class:`spiffed.workloadapi.X509Source`: the constructor returns once the
    first X509-SVIDs arrived (or raises after ``timeout``); usable as the source of
    :class:`spiffed.tls.SpiffeTls`."""

    _source: asources.X509Source

    def __init__(
        self,
        address: str | Address | None = None,
        *,
        timeout: float | None = DEFAULT_START_TIMEOUT,
        picker: SvidPicker | None = None,
        backoff: Callable[[], Backoff] = default_backoff,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._start(
            lambda: asources.X509Source(
                address=address, timeout=timeout, picker=picker, backoff=backoff, environ=environ
            ),
            timeout,
        )

    @property
    def x509_context(self) -> X509Context:
        """The latest X509SVIDResponse."""
        return self._source.x509_context

    def get_x509_svid(self) -> X509Svid:
        """The SVID to present (default or picked)."""
        return self._source.get_x509_svid()

    def get_x509_svids(self) -> tuple[X509Svid, ...]:
        """All X509-SVIDs, default first."""
        return self._source.get_x509_svids()

    def get_x509_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> X509Bundle | None:
        """The X.509 bundle of ``trust_domain``, or None."""
        return self._source.get_x509_bundle_for_trust_domain(trust_domain)

    def get_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> X509Bundle | None:
        """Same as :meth:`get_x509_bundle_for_trust_domain`."""
        return self._source.get_x509_bundle_for_trust_domain(trust_domain)

    def get_x509_bundles(self) -> Mapping[TrustDomain, X509Bundle]:
        """Every X.509 bundle, by trust domain."""
        return self._source.get_x509_bundles()


class JwtSource(_SyncSource):
    """A blocking :class:`spiffed.workloadapi.JwtSource`."""

    _source: asources.JwtSource

    def __init__(
        self,
        address: str | Address | None = None,
        *,
        timeout: float | None = DEFAULT_START_TIMEOUT,
        backoff: Callable[[], Backoff] = default_backoff,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._start(
            lambda: asources.JwtSource(
                address=address, timeout=timeout, backoff=backoff, environ=environ
            ),
            timeout,
        )

    def get_jwt_bundles(self) -> Mapping[TrustDomain, JwtBundle]:
        """Every JWT bundle, by trust domain."""
        return self._source.get_jwt_bundles()

    def get_jwt_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> JwtBundle | None:
        """The JWT bundle of ``trust_domain``, or None."""
        return self._source.get_jwt_bundle_for_trust_domain(trust_domain)

    def get_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> JwtBundle | None:
        """Same as :meth:`get_jwt_bundle_for_trust_domain`."""
        return self._source.get_jwt_bundle_for_trust_domain(trust_domain)

    def fetch_jwt_svid(
        self, audience: str, *extra_audience: str, spiffe_id: SpiffeId | str | None = None
    ) -> JwtSvid:
        """A JWT-SVID for the audience from the agent."""
        return self._runner.run(
            self._source.fetch_jwt_svid(audience, *extra_audience, spiffe_id=spiffe_id)
        )

    def fetch_jwt_svids(
        self, audience: str, *extra_audience: str, spiffe_id: SpiffeId | str | None = None
    ) -> tuple[HintedJwtSvid, ...]:
        """All JWT-SVIDs for the audience, default first."""
        return self._runner.run(
            self._source.fetch_jwt_svids(audience, *extra_audience, spiffe_id=spiffe_id)
        )

    def validate_jwt_svid(self, token: str, audience: str | Sequence[str]) -> JwtSvid:
        """Validate ``token`` locally against the current JWT bundles."""
        return self._source.validate_jwt_svid(token, audience)


class BundleSource(_SyncSource):
    """A blocking :class:`spiffed.workloadapi.BundleSource`."""

    _source: asources.BundleSource

    def __init__(
        self,
        address: str | Address | None = None,
        *,
        timeout: float | None = DEFAULT_START_TIMEOUT,
        backoff: Callable[[], Backoff] = default_backoff,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._start(
            lambda: asources.BundleSource(
                address=address, timeout=timeout, backoff=backoff, environ=environ
            ),
            timeout,
        )

    def get_x509_bundles(self) -> Mapping[TrustDomain, X509Bundle]:
        """Every X.509 bundle, by trust domain."""
        return self._source.get_x509_bundles()

    def get_jwt_bundles(self) -> Mapping[TrustDomain, JwtBundle]:
        """Every JWT bundle, by trust domain."""
        return self._source.get_jwt_bundles()

    def get_x509_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> X509Bundle | None:
        """The X.509 bundle of ``trust_domain``, or None."""
        return self._source.get_x509_bundle_for_trust_domain(trust_domain)

    def get_jwt_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> JwtBundle | None:
        """The JWT bundle of ``trust_domain``, or None."""
        return self._source.get_jwt_bundle_for_trust_domain(trust_domain)

    def get_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> SpiffeBundle | None:
        """The SPIFFE bundle (X.509 and JWT authorities) of ``trust_domain``, or None."""
        return self._source.get_bundle_for_trust_domain(trust_domain)
