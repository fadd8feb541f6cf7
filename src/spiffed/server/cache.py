"""The server's in-memory view of entries and attested nodes, fed by datastore change events.

An agent's sync (GetAuthorizedEntries, SyncAuthorizedEntries), the agent check on every TLS
request and the authorization of a CSR all read this cache, never the datastore. The cache
follows the datastore's ``events`` table: a write made through this process wakes it at once;
writes made by another server sharing the database are seen at the next poll.

Agents that watch (:meth:`ServerCache.watch`) are told when what they may serve, or the
bundle, may have changed, so they sync without waiting for their next poll.

This module states the interface; the implementation is being written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from spiffed.server.datastore.records import AttestedNode, RegistrationEntry
from spiffed.spiffeid import SpiffeId, TrustDomain

__all__ = ["ServerCache"]


class ServerCache:
    """Entries (as an authorized-entry index) and attested nodes, kept current from events."""

    def __init__(self, datastore: Any, trust_domain: TrustDomain, *, poll_interval: float = 1.0):
        self.datastore = datastore
        self.trust_domain = trust_domain
        self.poll_interval = poll_interval

    async def start(self) -> None:
        """Load every entry and node, then follow the events in a background task."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop following events and end every watch."""
        raise NotImplementedError

    async def refresh(self) -> None:
        """Apply every event written so far (returns once they are applied)."""
        raise NotImplementedError

    @property
    def revision(self) -> int:
        """The ID of the last datastore event applied."""
        raise NotImplementedError

    def authorized_entries(self, agent_id: SpiffeId) -> list[RegistrationEntry]:
        """Every entry the agent may serve (own children, node aliases, descendants)."""
        raise NotImplementedError

    def entry(self, entry_id: str) -> RegistrationEntry | None:
        """The entry with this ID, if it exists."""
        raise NotImplementedError

    async def node(self, agent_id: SpiffeId) -> AttestedNode | None:
        """The attested node, from memory; read from the datastore only when not cached."""
        raise NotImplementedError

    def watch(self, agent_id: SpiffeId) -> AsyncIterator[int]:
        """Yield a revision now, then again whenever the agent's authorized entries or the
        bundle may have changed (changes close together are coalesced)."""
        raise NotImplementedError

    def bundle_changed(self) -> None:
        """Tell watchers that the trust domain's bundle changed (called on CA rotation)."""
        raise NotImplementedError
