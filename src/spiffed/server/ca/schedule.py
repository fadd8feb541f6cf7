"""When the CA prepares and activates its next key (SPIRE's rotation schedule).

A key is *prepared* (generated, its root or JWT key published in the bundle) once the
current key has passed half its life, and *activated* (used for signing) at five sixths of
its life. The third of the lifetime in between is the window in which every agent,
workload and federated peer learns the new key before anything is signed with it (FED-02).
"""

from __future__ import annotations

from datetime import datetime, timedelta

__all__ = ["activation_threshold", "preparation_threshold"]

_MAX_PREPARATION_LEAD = timedelta(days=30)
_MAX_ACTIVATION_LEAD = timedelta(days=7)


def preparation_threshold(issued_at: datetime, not_after: datetime) -> datetime:
    """The time after which the next key should be prepared: ``not_after - min(life/2, 30d)``."""
    lead = min((not_after - issued_at) / 2, _MAX_PREPARATION_LEAD)
    return not_after - lead


def activation_threshold(issued_at: datetime, not_after: datetime) -> datetime:
    """The time after which the prepared key is activated: ``not_after - min(life/6, 7d)``."""
    lead = min((not_after - issued_at) / 6, _MAX_ACTIVATION_LEAD)
    return not_after - lead
