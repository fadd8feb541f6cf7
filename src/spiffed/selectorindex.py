"""Find the items whose selectors are all among a given set (subset matching).

Registration entries match a workload when every selector of the entry is among the
workload's selectors; node aliases match an agent the same way. With thousands of entries
a scan per lookup is too slow, so items are indexed by each of their selectors: a lookup
counts, for every item sharing a selector with the query, how many of its selectors were
seen, and keeps those that reached their total. The cost is proportional to the matches,
not to the number of items. An item with no selectors never matches.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

from spiffed.selector import Selector

__all__ = ["SubsetIndex"]

K = TypeVar("K", bound=Hashable)


class SubsetIndex(Generic[K]):
    """Items (by key) with selector sets; :meth:`match` finds those a selector set covers."""

    __slots__ = ("_by_selector", "_selectors")

    def __init__(self) -> None:
        self._selectors: dict[K, frozenset[Selector]] = {}
        self._by_selector: defaultdict[Selector, set[K]] = defaultdict(set)

    def __len__(self) -> int:
        return len(self._selectors)

    def __contains__(self, key: object) -> bool:
        return key in self._selectors

    def put(self, key: K, selectors: Iterable[Selector]) -> None:
        """Add ``key`` with ``selectors``, replacing what it had."""
        self.remove(key)
        sels = frozenset(selectors)
        self._selectors[key] = sels
        for sel in sels:
            self._by_selector[sel].add(key)

    def remove(self, key: K) -> None:
        """Forget ``key`` (no error if unknown)."""
        sels = self._selectors.pop(key, None)
        if sels is None:
            return
        for sel in sels:
            keys = self._by_selector[sel]
            keys.discard(key)
            if not keys:
                del self._by_selector[sel]

    def selectors_of(self, key: K) -> frozenset[Selector]:
        """The selectors ``key`` was put with."""
        return self._selectors[key]

    def match(self, selectors: Iterable[Selector]) -> set[K]:
        """Keys whose (non-empty) selector sets are subsets of ``selectors``."""
        hits: dict[K, int] = defaultdict(int)
        for sel in set(selectors):
            for key in self._by_selector.get(sel, ()):
                hits[key] += 1
        return {key for key, n in hits.items() if n == len(self._selectors[key])}
