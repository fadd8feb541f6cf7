"""A :class:`~spiffed.server.ca.manager.CaStore` over the server's datastore.

The trust domain's own bundle is stored as the serialized ``spire.api.types.Bundle`` under
the trust domain's name; the CA journal is the latest CA journal row, replaced in place
(keyed by its active X.509 authority ID, expiring with its last authority).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from spiffed._proto.spire.api.types import bundle_pb2
from spiffed.server import datastore as ds
from spiffed.server.ca import bundleops
from spiffed.server.ca.journal import Journal, SlotStatus

__all__ = ["DatastoreCaStore", "load_bundle"]


async def load_bundle(datastore: Any, trust_domain: str) -> bundle_pb2.Bundle | None:
    """The stored bundle of ``trust_domain`` as a message, or None when there is none."""
    try:
        stored = await datastore.get_bundle(trust_domain)
    except ds.NotFoundError:
        return None
    msg = bundle_pb2.Bundle()
    msg.ParseFromString(stored.data)
    return msg


class DatastoreCaStore:
    """The CA's journal and bundle in the datastore (one writer per server process)."""

    def __init__(self, datastore: Any, trust_domain: str) -> None:
        self._ds = datastore
        self._td = trust_domain
        self._journal_id = 0
        self._lock = asyncio.Lock()

    async def load_journal(self) -> bytes | None:
        """The latest CA journal's data, or None."""
        journal = await self._ds.latest_ca_journal()
        if journal is None:
            return None
        self._journal_id = journal.id
        return bytes(journal.data)

    async def save_journal(self, data: bytes) -> None:
        """Replace the journal this store last loaded or saved (or create one)."""
        journal = Journal.from_bytes(data)
        slots = sorted(journal.x509, key=lambda s: s.status is not SlotStatus.ACTIVE)
        active = slots[0].authority_id if slots else "none"
        expires = max((int(s.not_after.timestamp()) for s in journal.x509), default=0)
        saved = await self._ds.set_ca_journal(
            ds.CAJournal(active, data, expires_at=expires, id=self._journal_id)
        )
        self._journal_id = saved.id

    async def update_bundle(self, change: Callable[[bundle_pb2.Bundle], bool]) -> bundle_pb2.Bundle:
        """Apply ``change`` to the stored own bundle and store it when it changed."""
        async with self._lock:
            bundle = await load_bundle(self._ds, self._td) or bundleops.new_bundle(self._td)
            if change(bundle):
                await self._ds.set_bundle(ds.Bundle(self._td, bundle.SerializeToString()))
            return bundle
