"""Jittered exponential back-off, and when to renew a credential.

Agents retry the server with back-off so a fleet that lost its server does not reconnect in
lockstep; SVIDs are renewed at half of their life, with jitter so that SVIDs issued
together are not renewed together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

__all__ = ["Backoff", "renewal_time"]


@dataclass(slots=True)
class Backoff:
    """Delays of ``initial * multiplier**n``, capped at ``maximum``, with full jitter.

    Each delay is drawn uniformly from ``[delay * (1 - jitter), delay]``; :meth:`reset`
    starts over after a success.
    """

    initial: float = 1.0
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum) or self.multiplier < 1:
            raise ValueError("back-off needs 0 < initial <= maximum and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("back-off jitter must be between 0 and 1")

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds."""
        delay = min(self.maximum, self.initial * self.multiplier**self._attempt)
        if delay < self.maximum:
            self._attempt += 1
        return delay * (1 - self.jitter * self.rng.random())

    def reset(self) -> None:
        """Start again from ``initial`` (after a success)."""
        self._attempt = 0


def renewal_time(
    not_before: datetime,
    not_after: datetime,
    *,
    fraction: float = 0.5,
    jitter: float = 0.1,
    rng: random.Random | None = None,
    received: datetime | None = None,
) -> datetime:
    """When to renew a credential valid from ``not_before`` to ``not_after``.

    At ``fraction`` of its life, moved earlier by up to ``jitter`` of its life (never later,
    so a credential is always renewed before ``fraction`` of its life has passed).

    ``received`` is when a newly issued credential arrived. Issuers backdate ``not_before``
    (SPIRE and spiffed by 10 s, against clock skew); counted from ``received`` instead, a
    short-lived credential is not due for renewal the moment it arrives (a 10 s SVID
    backdated 10 s would be at half-life on arrival and be renewed again and again).
    """
    start = not_before if received is None else max(not_before, min(received, not_after))
    life = not_after - start
    early = (rng or random).random() * jitter
    return start + timedelta(seconds=life.total_seconds() * max(0.0, fraction - early))
