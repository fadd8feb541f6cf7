"""A :class:`~spiffed.server.ca.manager.CaStore` kept in the server's datastore.

The CA journal goes to the ``ca_journals`` table (one row per server, replaced on every
save, labelled with the active X.509 authority, or the prepared one while the CA is first
set up) and the trust domain's bundle to the ``bundles`` table as the serialized
``spire.api.types.Bundle`` message, so a restarted server finds both again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from spiffed._proto.spire.api.types import bundle_pb2
from spiffed.server.ca import bundleops
from spiffed.server.ca.journal import Journal, SlotStatus
from spiffed.server.datastore import Bundle as StoredBundle
from spiffed.server.datastore import CAJournal, NotFoundError

__all__ = ["DatastoreCaStore"]

Bundle = bundle_pb2.Bundle


class DatastoreCaStore:
    """CaStore on a :class:`spiffed.server.datastore.DataStore`.

    Bundle updates are serialized by a lock in this process; one server writes its own
    trust domain's bundle.
    """

    def __init__(self, datastore: Any, trust_domain: str) -> None:
        self._ds = datastore
        self._td = trust_domain
        self._journal_id = 0
        self._lock = asyncio.Lock()

    async def load_journal(self) -> bytes | None:
        """The journal this datastore last saved, or None on a new datastore."""
        stored = await self._ds.latest_ca_journal()
        if stored is None:
            return None
        self._journal_id = stored.id
        return bytes(stored.data)

    async def save_journal(self, data: bytes) -> None:
        """Replace the journal (the row this store created or loaded)."""
        journal = Journal.from_bytes(data)
        slots = sorted(journal.x509, key=lambda s: s.status is not SlotStatus.ACTIVE)
        label = slots[0].authority_id if slots else "none"
        expiries = [s.not_after for s in journal.x509] + [j.not_after for j in journal.jwt]
        expires_at = int(max(expiries).timestamp()) if expiries else 0
        try:
            saved = await self._ds.set_ca_journal(
                CAJournal(label, data, expires_at, self._journal_id)
            )
        except NotFoundError:
            saved = await self._ds.set_ca_journal(CAJournal(label, data, expires_at, 0))
        self._journal_id = saved.id

    async def get_bundle(self) -> Bundle:
        """The stored bundle of the trust domain (empty if none yet)."""
        try:
            stored = await self._ds.get_bundle(self._td)
        except NotFoundError:
            return bundleops.new_bundle(self._td)
        bundle = Bundle()
        bundle.ParseFromString(stored.data)
        return bundle

    async def update_bundle(self, change: Callable[[Bundle], bool]) -> Bundle:
        """Apply ``change`` to the stored bundle; store it only when ``change`` says so."""
        async with self._lock:
            bundle = await self.get_bundle()
            if change(bundle):
                await self._ds.set_bundle(StoredBundle(self._td, bundle.SerializeToString()))
            return bundle
