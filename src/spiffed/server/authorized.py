"""The in-memory index of which registration entries each agent is authorized for.

An agent may serve the entries parented to its own ID, the entries parented to any node
alias it matches (an alias is an entry parented to the server, ``spiffe://<td>/spire/server``,
whose selectors are a subset of the agent's node selectors), and, recursively, the entries
parented to any of those entries' SPIFFE IDs. Only entries whose SPIFFE ID and parent ID are
in the server's own trust domain take part, as in SPIRE.

The index is fed by datastore change events, so answering an agent's sync never touches the
datastore. Lookups cost time in proportion to the answer, not to the number of entries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from spiffed.selector import Selector
from spiffed.selectorindex import SubsetIndex
from spiffed.spiffeid import SpiffeId, TrustDomain

__all__ = ["AuthorizedEntryIndex", "IndexableEntry"]


class IndexableEntry(Protocol):
    """What the index needs to know of a registration entry."""

    @property
    def id(self) -> str: ...

    @property
    def spiffe_id(self) -> SpiffeId: ...

    @property
    def parent_id(self) -> SpiffeId: ...

    @property
    def selectors(self) -> Iterable[Selector]: ...


E = TypeVar("E", bound=IndexableEntry)


@dataclass(slots=True)
class AuthorizedEntryIndex(Generic[E]):
    """Entries by parent, node aliases by selector, and agents' node selectors."""

    trust_domain: TrustDomain
    _entries: dict[str, E] = field(default_factory=dict)
    _children: defaultdict[str, dict[str, E]] = field(default_factory=lambda: defaultdict(dict))
    _aliases: SubsetIndex[str] = field(default_factory=SubsetIndex)
    _agents: dict[str, frozenset[Selector]] = field(default_factory=dict)

    @property
    def server_path(self) -> str:
        """The path of the server's own ID; entries parented to it are node aliases."""
        return "/spire/server"

    def __len__(self) -> int:
        return len(self._entries)

    def upsert_entry(self, entry: E) -> None:
        """Add an entry, or replace the entry with the same ID."""
        self.remove_entry(entry.id)
        if not (
            entry.spiffe_id.member_of(self.trust_domain)
            and entry.parent_id.member_of(self.trust_domain)
        ):
            return
        self._entries[entry.id] = entry
        parent = entry.parent_id.path
        self._children[parent][entry.id] = entry
        if parent == self.server_path:
            self._aliases.put(entry.id, entry.selectors)

    def remove_entry(self, entry_id: str) -> None:
        """Forget an entry (no error if it is unknown)."""
        old = self._entries.pop(entry_id, None)
        if old is None:
            return
        siblings = self._children.get(old.parent_id.path)
        if siblings is not None:
            siblings.pop(entry_id, None)
            if not siblings:
                del self._children[old.parent_id.path]
        self._aliases.remove(entry_id)

    def set_agent(self, agent_id: SpiffeId, selectors: Iterable[Selector]) -> None:
        """Record (or replace) an attested agent's node selectors."""
        self._agents[str(agent_id)] = frozenset(selectors)

    def remove_agent(self, agent_id: SpiffeId) -> None:
        """Forget an agent's node selectors (evicted or expired)."""
        self._agents.pop(str(agent_id), None)

    def agent_alias_entries(self, agent_id: SpiffeId) -> list[E]:
        """The node-alias entries whose selectors are all among the agent's selectors."""
        matched = self._aliases.match(self._agents.get(str(agent_id), frozenset()))
        return [self._entries[eid] for eid in sorted(matched)]

    def agent_aliases(
        self, agent_id: SpiffeId, keep: Callable[[E], bool] | None = None
    ) -> list[str]:
        """Paths of the node aliases whose selectors are all among the agent's selectors
        (only aliases ``keep`` accepts, e.g. unexpired ones, when given)."""
        entries = self.agent_alias_entries(agent_id)
        return sorted({e.spiffe_id.path for e in entries if keep is None or keep(e)})

    def authorized_entries(
        self, agent_id: SpiffeId, keep: Callable[[E], bool] | None = None
    ) -> list[E]:
        """Every entry the agent may serve, each once. With ``keep``, an entry it refuses
        (e.g. an expired one) is left out, and so is what is reached only through it; this
        applies to node aliases too."""
        if not agent_id.member_of(self.trust_domain):
            return []
        found: dict[str, E] = {}
        seen: set[str] = set()
        stack = [agent_id.path, *self.agent_aliases(agent_id, keep)]
        while stack:
            parent = stack.pop()
            if parent in seen:
                continue
            seen.add(parent)
            for entry_id, entry in self._children.get(parent, {}).items():
                if keep is not None and not keep(entry):
                    continue
                found[entry_id] = entry
                stack.append(entry.spiffe_id.path)
        return list(found.values())
