"""The agent's identity cache: the entries it may serve, their SVIDs, and the bundles.

The agent's manager writes into it (entries from the server, SVIDs as they are signed and
rotated, own and federated bundles); the Workload API and SDS read from it. A reader
subscribes with a workload's selectors and is woken after every change, then reads the full
current state for those selectors again and sends it if it differs from what it sent last
(WA-06: every message carries the complete state).

Entries match a workload when all of their selectors are among the workload's (subset
matching, :class:`~spiffed.selectorindex.SubsetIndex`); identities come out ordered by
entry ID, as SPIRE orders them, so the default (first) SVID is stable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from spiffed.bundle import SpiffeBundle
from spiffed.selector import Selector
from spiffed.selectorindex import SubsetIndex
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.x509 import X509Svid

__all__ = ["Identity", "IdentityCache", "Subscription", "WorkloadEntry"]


@dataclass(frozen=True, slots=True)
class WorkloadEntry:
    """A registration entry as the agent serves it."""

    id: str
    spiffe_id: SpiffeId
    selectors: frozenset[Selector]
    federates_with: frozenset[TrustDomain] = frozenset()
    hint: str = ""
    revision: int = 0
    created_at: int = 0
    x509_svid_ttl: int = 0
    jwt_svid_ttl: int = 0
    dns_names: tuple[str, ...] = ()


def _compact(svid: X509Svid) -> X509Svid:
    """The same SVID with its certificates parsed afresh from their DER, for keeping.

    cryptography keeps on a certificate object what it has parsed on request (extensions,
    subject, public key); validating an SVID asks for all of them, which leaves about 6 KiB per
    certificate for as long as the SVID is held (60 MiB of an agent's 10,000 SVIDs). The copy
    has the same bytes, ID and key, so it is the same valid SVID; it is not validated again,
    which would parse (and keep) all of that once more.
    """
    chain = tuple(
        x509.load_der_x509_certificate(c.public_bytes(serialization.Encoding.DER))
        for c in svid.cert_chain
    )
    copy = object.__new__(X509Svid)
    object.__setattr__(copy, "spiffe_id", svid.spiffe_id)
    object.__setattr__(copy, "cert_chain", chain)
    object.__setattr__(copy, "private_key", svid.private_key)
    return copy


@dataclass(frozen=True, slots=True)
class Identity:
    """An entry together with its current X509-SVID."""

    entry: WorkloadEntry
    svid: X509Svid


@dataclass(eq=False)
class Subscription:
    """Wakes its reader after each change; iterate with ``async for``."""

    selectors: frozenset[Selector]
    _cache: IdentityCache
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> None:
        await self._event.wait()
        self._event.clear()

    def notify(self) -> None:
        """Wake the reader (several changes before it reads coalesce into one wake-up)."""
        self._event.set()

    def close(self) -> None:
        """Stop receiving wake-ups."""
        self._cache._subscriptions.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class IdentityCache:
    """Entries, SVIDs and bundles of one agent, with change subscriptions."""

    def __init__(self, trust_domain: TrustDomain) -> None:
        self.trust_domain = trust_domain
        self._entries: dict[str, WorkloadEntry] = {}
        self._index: SubsetIndex[str] = SubsetIndex()
        self._svids: dict[str, X509Svid] = {}
        self._bundle: SpiffeBundle | None = None
        self._federated: dict[TrustDomain, SpiffeBundle] = {}
        self._subscriptions: set[Subscription] = set()

    # --- written by the agent's manager ------------------------------------------------

    def set_entries(self, entries: Iterable[WorkloadEntry]) -> set[str]:
        """Replace the whole entry set; SVIDs of removed or changed entries are dropped.

        Returns the IDs of entries that are new or changed (they need a new SVID).
        """
        new = {e.id: e for e in entries}
        touched: set[str] = set()
        for entry_id, old in list(self._entries.items()):
            if new.get(entry_id) != old:
                touched.add(entry_id)
                self._index.remove(entry_id)
                self._svids.pop(entry_id, None)
                del self._entries[entry_id]
        for entry_id, entry in new.items():
            if entry_id not in self._entries:
                self._entries[entry_id] = entry
                self._index.put(entry_id, entry.selectors)
                touched.add(entry_id)
        if touched:
            self._notify()
        return {i for i in touched if i in self._entries}

    def set_svid(self, entry_id: str, svid: X509Svid) -> None:
        """Store the (new) SVID of an entry the cache holds (an equal, compact copy of it:
        :meth:`svid` returns an SVID ``==`` to ``svid``, not ``svid`` itself)."""
        entry = self._entries.get(entry_id)
        if entry is None:
            raise KeyError(f"no entry {entry_id!r} in the cache")
        if svid.spiffe_id != entry.spiffe_id:
            raise ValueError(f"SVID for {svid.spiffe_id} does not belong to entry {entry_id}")
        self._svids[entry_id] = _compact(svid)
        self._notify()

    def set_bundles(
        self, own: SpiffeBundle, federated: Mapping[TrustDomain, SpiffeBundle] | None = None
    ) -> None:
        """Replace the trust domain's bundle and the federated bundles."""
        if own.trust_domain != self.trust_domain:
            raise ValueError(f"own bundle is for {own.trust_domain}, not {self.trust_domain}")
        changed = own != self._bundle or dict(federated or {}) != self._federated
        self._bundle = own
        self._federated = dict(federated or {})
        if changed:
            self._notify()

    # --- read by the Workload API and SDS ------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the trust domain's bundle is known (before that: UNAVAILABLE)."""
        return self._bundle is not None

    @property
    def bundle(self) -> SpiffeBundle | None:
        """The trust domain's own bundle."""
        return self._bundle

    @property
    def federated_bundles(self) -> Mapping[TrustDomain, SpiffeBundle]:
        """Bundles of federated trust domains, by trust domain."""
        return dict(self._federated)

    def entries(self) -> list[WorkloadEntry]:
        """Every entry, by ID."""
        return [self._entries[i] for i in sorted(self._entries)]

    def entries_for(self, selectors: Iterable[Selector]) -> list[WorkloadEntry]:
        """Entries matching a workload's selectors, ordered by entry ID."""
        return [self._entries[i] for i in sorted(self._index.match(selectors))]

    def identities_for(self, selectors: Iterable[Selector]) -> list[Identity]:
        """Matching entries that have an SVID, ordered by entry ID (the first is the default)."""
        return [
            Identity(e, self._svids[e.id])
            for e in self.entries_for(selectors)
            if e.id in self._svids
        ]

    def svid(self, entry_id: str) -> X509Svid | None:
        """The SVID of one entry, if signed yet."""
        return self._svids.get(entry_id)

    def subscribe(self, selectors: Iterable[Selector]) -> Subscription:
        """A subscription woken after changes; read the state again on each wake-up."""
        sub = Subscription(frozenset(selectors), self)
        self._subscriptions.add(sub)
        return sub

    def _notify(self) -> None:
        for sub in list(self._subscriptions):
            sub.notify()
