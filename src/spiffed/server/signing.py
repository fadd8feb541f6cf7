"""A global limit on concurrent signing, so a reconnect storm cannot exhaust the server.

Every RPC that signs (AttestAgent, RenewAgent, BatchNewX509SVID, NewJWTSVID, the mint RPCs)
holds a slot while it signs. At most ``max_concurrent`` requests sign at once; the others wait
in arrival order, and a request that waits longer than ``max_wait`` seconds is refused with
:class:`SigningBusyError` (the API answers RESOURCE_EXHAUSTED, and agents back off and retry).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["SigningBusyError", "SigningLimiter"]


class SigningBusyError(Exception):
    """No signing slot became free in time (the API answers RESOURCE_EXHAUSTED)."""


class SigningLimiter:
    """At most ``max_concurrent`` signing requests at once; others wait up to ``max_wait`` s."""

    def __init__(self, max_concurrent: int = 8, max_wait: float = 10.0) -> None:
        if max_concurrent < 1 or max_wait <= 0:
            raise ValueError("a signing limit needs max_concurrent >= 1 and max_wait > 0")
        self.max_concurrent = max_concurrent
        self.max_wait = max_wait
        self._semaphore = asyncio.Semaphore(max_concurrent)
        self._held = 0
        self.waiting = 0
        """Requests waiting for a slot now."""
        self.refused = 0
        """Requests refused so far because no slot became free in time."""

    @property
    def busy(self) -> int:
        """Slots held now."""
        return self._held

    @contextlib.asynccontextmanager
    async def slot(self, count: int = 1) -> AsyncIterator[None]:
        """Hold a slot while signing ``count`` certificates (one slot whatever the count)."""
        del count  # one request, one slot: a batch is signed by one coroutine in turn
        self.waiting += 1
        try:
            await asyncio.wait_for(self._semaphore.acquire(), timeout=self.max_wait)
        except TimeoutError:
            self.refused += 1
            raise SigningBusyError(
                f"server is busy signing: no signing slot free within {self.max_wait:g}s"
            ) from None
        finally:
            self.waiting -= 1
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            self._semaphore.release()
