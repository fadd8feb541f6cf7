"""What every server API handler may use: the trust domain, datastore, CA and settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from spiffed.server.api.limits import RateLimits
from spiffed.server.ca.manager import CaManager
from spiffed.server.cache import ServerCache
from spiffed.server.signing import SigningLimiter
from spiffed.server.svid import ServerSvid
from spiffed.spiffeid import SpiffeId, TrustDomain

__all__ = ["ServerContext"]


@dataclass(slots=True)
class ServerContext:
    """Shared state of one running server, handed to each API service at construction.

    ``datastore`` is the server's :mod:`spiffed.server.datastore` instance; ``config`` is
    the loaded :class:`spiffed.server.config.ServerConfig` (None in unit tests that build a
    context by hand).
    """

    trust_domain: TrustDomain
    datastore: Any
    ca: CaManager
    server_svid: ServerSvid
    admin_ids: frozenset[SpiffeId] = frozenset()
    config: Any = None
    cache: ServerCache | None = None
    """Entries and nodes in memory (None only in unit tests that do not need it)."""
    signing: SigningLimiter = field(default_factory=SigningLimiter)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    rate_limits: RateLimits = field(default=None)  # type: ignore[assignment]
    """The per-IP limiters shared by the RPCs (built from ``config.ratelimit`` when None)."""

    def __post_init__(self) -> None:
        if self.rate_limits is None:
            self.rate_limits = RateLimits.from_config(self.config)
