"""A global limit on concurrent signing, so a reconnect storm cannot exhaust the server.

This module states the interface; the implementation is being written.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

__all__ = ["SigningLimiter", "SigningBusyError"]


class SigningBusyError(Exception):
    """No signing slot became free in time (the API answers RESOURCE_EXHAUSTED)."""


class SigningLimiter:
    """At most ``max_concurrent`` signing requests at once; others wait up to ``max_wait`` s."""

    def __init__(self, max_concurrent: int = 8, max_wait: float = 10.0) -> None:
        self.max_concurrent = max_concurrent
        self.max_wait = max_wait

    def slot(self, count: int = 1) -> AbstractAsyncContextManager[None]:
        """Hold a slot while signing ``count`` certificates."""
        raise NotImplementedError
