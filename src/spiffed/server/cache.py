"""The server's in-memory view of entries and attested nodes, fed by datastore change events.

An agent's sync (GetAuthorizedEntries, SyncAuthorizedEntries), the agent check on every TLS
request and the authorization of a CSR all read this cache, never the datastore. The cache
follows the datastore's ``events`` table: a write made through this process wakes it at once
(the datastore's commit listener); writes made by another server sharing the database are
seen at the next poll.

Start-up reads the last event ID *before* loading every entry and node, then applies the
events after it: a change that raced with the load is re-read, so nothing is missed. Applying
an event re-reads the one record it names (or forgets it when it is gone), so applying an
event twice, or out of date, is harmless. Event IDs become visible in increasing order (the
datastore guarantees it), so asking for "events after the last one applied" never skips one.

Agents that watch (:meth:`ServerCache.watch`) are told when what they may serve, or the
bundle, may have changed, so they sync without waiting for their next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import structlog

from spiffed.selector import Selector as IndexSelector
from spiffed.server.authorized import AuthorizedEntryIndex
from spiffed.server.datastore.errors import NotFoundError
from spiffed.server.datastore.records import AttestedNode, EventKind, RegistrationEntry
from spiffed.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

__all__ = ["ServerCache"]

log = structlog.get_logger(__name__)

_EVENT_BATCH = 1000
FULL_RELOAD_INTERVAL = 3600.0
"""How often the follower reads everything again (SPIRE: 24 h; a reload of 10,000 entries
takes about a second, so hourly costs little and bounds how long a lost event can last)."""
PRUNE_EVENTS_OLDER_THAN = 12 * 3600.0
"""Events older than this are deleted at each full reload (SPIRE's default, 12 h)."""
COALESCE_SECONDS = 0.05
"""Changes this close together reach a watcher as one notification."""


@dataclass(frozen=True, slots=True)
class _Indexed:
    """A stored entry as the authorized-entry index wants it (parsed IDs)."""

    id: str
    spiffe_id: SpiffeId
    parent_id: SpiffeId
    selectors: tuple[IndexSelector, ...]
    record: RegistrationEntry


def _indexed(entry: RegistrationEntry) -> _Indexed | None:
    try:
        spiffe_id = SpiffeId.parse(entry.spiffe_id)
        parent_id = SpiffeId.parse(entry.parent_id)
    except SpiffeIdError:
        return None
    # The index only hashes and compares selectors; the datastore's Selector type is used on
    # both sides (entries and agents), so no conversion (which could reject odd values).
    sels = cast(tuple[IndexSelector, ...], entry.selectors)
    return _Indexed(entry.id, spiffe_id, parent_id, sels, entry)


class _Watcher:
    __slots__ = ("agent", "agent_id", "wake")

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.agent: SpiffeId | None
        try:
            self.agent = SpiffeId.parse(agent_id)
        except SpiffeIdError:
            self.agent = None
        self.wake = asyncio.Event()


class ServerCache:
    """Entries (as an authorized-entry index) and attested nodes, kept current from events."""

    def __init__(
        self,
        datastore: Any,
        trust_domain: TrustDomain,
        *,
        poll_interval: float = 1.0,
        full_reload_interval: float = FULL_RELOAD_INTERVAL,
        prune_events_older_than: float = PRUNE_EVENTS_OLDER_THAN,
        clock: Callable[[], float] = time.time,
        coalesce: float = COALESCE_SECONDS,
    ):
        self.datastore = datastore
        self.trust_domain = trust_domain
        self.poll_interval = poll_interval
        self.full_reload_interval = full_reload_interval
        self.prune_events_older_than = prune_events_older_than
        self._clock = clock
        self._coalesce = coalesce
        self._index: AuthorizedEntryIndex[_Indexed] = AuthorizedEntryIndex(trust_domain)
        self._by_spiffe: defaultdict[str, dict[str, _Indexed]] = defaultdict(dict)
        self._entries: dict[str, RegistrationEntry] = {}
        self._nodes: dict[str, AttestedNode] = {}
        self._node_generation = 0
        self._index_generation = 0
        """Bumped on every change to the index; the per-agent answers below depend on it."""
        self._answers: dict[str, tuple[float, list[RegistrationEntry]]] = {}
        self._answers_generation = -1
        self._revision = 0
        self._apply_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._stopped = False
        self._watchers: set[_Watcher] = set()

    # ----- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every entry and node, then follow the events in a background task."""
        if self._started:
            return
        self._started = True
        self._stopped = False
        self.datastore.add_commit_listener(self._on_commit)
        try:
            await self.reload()
        except BaseException:
            self.datastore.remove_commit_listener(self._on_commit)
            self._started = False
            raise
        self._task = asyncio.create_task(self._follow(), name="server-cache-follow")
        log.debug(
            "server cache loaded",
            entries=len(self._entries),
            nodes=len(self._nodes),
            revision=self._revision,
        )

    async def stop(self) -> None:
        """Stop following events and end every watch."""
        self._stopped = True
        with contextlib.suppress(Exception):
            self.datastore.remove_commit_listener(self._on_commit)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for watcher in list(self._watchers):
            watcher.wake.set()
        self._started = False

    def _on_commit(self) -> None:
        self._wake.set()

    async def _follow(self) -> None:
        last_full = time.monotonic()
        while not self._stopped:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()
            try:
                if time.monotonic() - last_full >= self.full_reload_interval:
                    await self.reload()
                    await self.prune_events()
                    last_full = time.monotonic()
                else:
                    await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep following; retry at the next poll
                log.warning("server cache: cannot read datastore events", error=str(exc))

    async def refresh(self) -> None:
        """Apply every event written so far (returns once they are applied)."""
        async with self._apply_lock:
            await self._apply_new()

    async def prune_events(self) -> int:
        """Delete events older than ``prune_events_older_than`` seconds (SPIRE's 12 h); any
        server may do it, each server's hourly full reload covers one that fell behind."""
        if self.prune_events_older_than <= 0:
            return 0
        # Apply what is there first, so this server never loses an event it had not seen
        # (events written from now on are new, not older than the cutoff).
        await self.refresh()
        cutoff = int(self._clock() - self.prune_events_older_than)
        pruned = int(await self.datastore.prune_events(max(cutoff, 0)))
        if pruned:
            log.debug("server cache: pruned old events", pruned=pruned)
        return pruned

    async def reload(self) -> None:
        """Read every entry and node again and replace what is cached, then apply the events
        written since. Start-up does this, and the follower every ``full_reload_interval``
        (as SPIRE's full cache reload), which repairs anything events could not tell (say,
        events pruned while this server was stalled)."""
        async with self._apply_lock:
            revision = await self.datastore.last_event_id()
            entries = (await self.datastore.list_entries()).items
            nodes = (await self.datastore.list_nodes()).items
            index: AuthorizedEntryIndex[_Indexed] = AuthorizedEntryIndex(self.trust_domain)
            by_spiffe: defaultdict[str, dict[str, _Indexed]] = defaultdict(dict)
            new_entries: dict[str, RegistrationEntry] = {}
            read: RegistrationEntry
            for read in entries:
                old = self._entries.get(read.id)
                # An unchanged entry stays the same object, so derived data (API messages
                # built from it) stays valid.
                entry: RegistrationEntry = old if old is not None and old == read else read
                new_entries[entry.id] = entry
                indexed = _indexed(entry)
                if indexed is not None:
                    index.upsert_entry(indexed)
                    if indexed.id in index._entries:
                        by_spiffe[indexed.spiffe_id.path][indexed.id] = indexed
            new_nodes: dict[str, AttestedNode] = {}
            for node in nodes:
                new_nodes[node.spiffe_id] = node
                agent = self._parse_agent(node.spiffe_id)
                if agent is not None:
                    index.set_agent(agent, cast(Iterable[IndexSelector], node.selectors))
            entries_changed = new_entries != self._entries
            nodes_changed = {
                agent_id
                for agent_id in new_nodes.keys() | self._nodes.keys()
                if new_nodes.get(agent_id) != self._nodes.get(agent_id)
            }
            self._entries, self._nodes, self._index = new_entries, new_nodes, index
            self._by_spiffe = by_spiffe
            self._node_generation += 1
            self._index_generation += 1
            self._revision = revision
            self._notify(entries_changed, nodes_changed)
            await self._apply_new()

    @property
    def revision(self) -> int:
        """The ID of the last datastore event applied."""
        return self._revision

    # ----- applying events --------------------------------------------------------------------

    async def _apply_new(self) -> None:
        while True:
            events = await self.datastore.list_events(self._revision, limit=_EVENT_BATCH)
            if not events:
                return
            entry_ids: dict[str, None] = {}
            node_ids: dict[str, None] = {}
            for event in events:
                if event.kind is EventKind.ENTRY:
                    entry_ids[event.record_id] = None
                elif event.kind is EventKind.NODE:
                    node_ids[event.record_id] = None
            changed: list[RegistrationEntry] = []
            for entry_id in entry_ids:
                old = self._entries.get(entry_id)
                await self._reload_entry(entry_id)
                new = self._entries.get(entry_id)
                if new is not old:
                    changed.extend(e for e in (old, new) if e is not None)
            for agent_id in node_ids:
                await self._reload_node(agent_id)
            self._revision = events[-1].id
            self._notify_entries(changed)
            self._notify(False, node_ids)
            if len(events) < _EVENT_BATCH:
                return

    async def _reload_entry(self, entry_id: str) -> None:
        try:
            entry = await self.datastore.get_entry(entry_id)
        except NotFoundError:
            self._drop_entry(entry_id)
            return
        self._put_entry(entry)

    async def _reload_node(self, agent_id: str) -> None:
        self._node_generation += 1
        try:
            node = await self.datastore.get_node(agent_id)
        except NotFoundError:
            # Gone (or only selectors written before attestation): nobody can act as it.
            self._drop_node(agent_id)
            return
        self._put_node(node)

    def _put_entry(self, entry: RegistrationEntry) -> None:
        if self._entries.get(entry.id) == entry:
            return  # unchanged: keep the object (see reload)
        self._index_generation += 1
        self._unlink(entry.id)
        self._entries[entry.id] = entry
        indexed = _indexed(entry)
        if indexed is None:
            self._index.remove_entry(entry.id)
        else:
            self._index.upsert_entry(indexed)
            if indexed.id in self._index._entries:  # in this trust domain
                self._link(indexed)

    def _drop_entry(self, entry_id: str) -> None:
        self._index_generation += 1
        self._unlink(entry_id)
        self._entries.pop(entry_id, None)
        self._index.remove_entry(entry_id)

    def _link(self, item: _Indexed) -> None:
        self._by_spiffe[item.spiffe_id.path][item.id] = item

    def _unlink(self, entry_id: str) -> None:
        old = self._entries.get(entry_id)
        indexed = _indexed(old) if old is not None else None
        if indexed is None:
            return
        same = self._by_spiffe.get(indexed.spiffe_id.path)
        if same is not None:
            same.pop(entry_id, None)
            if not same:
                del self._by_spiffe[indexed.spiffe_id.path]

    def _put_node(self, node: AttestedNode) -> None:
        self._index_generation += 1
        self._nodes[node.spiffe_id] = node
        agent = self._parse_agent(node.spiffe_id)
        if agent is not None:
            self._index.set_agent(agent, cast(Iterable[IndexSelector], node.selectors))

    def _drop_node(self, agent_id: str) -> None:
        self._index_generation += 1
        self._nodes.pop(agent_id, None)
        agent = self._parse_agent(agent_id)
        if agent is not None:
            self._index.remove_agent(agent)

    @staticmethod
    def _parse_agent(agent_id: str) -> SpiffeId | None:
        try:
            return SpiffeId.parse(agent_id)
        except SpiffeIdError:
            return None

    # ----- reads ------------------------------------------------------------------------------

    def _live(self, entry: RegistrationEntry) -> bool:
        return entry.expires_at == 0 or entry.expires_at > self._clock()

    def authorized_entries(self, agent_id: SpiffeId) -> list[RegistrationEntry]:
        """Every entry the agent may serve (own children, node aliases, descendants).

        Entries that expired are left out (as SPIRE), and so are their descendants reached
        only through them. The answer is remembered per agent until the index changes or
        one of its entries expires, so an unchanged sync round costs a list copy.
        """
        if not agent_id.member_of(self.trust_domain):
            return []
        now = self._clock()
        if self._answers_generation != self._index_generation:
            self._answers.clear()
            self._answers_generation = self._index_generation
        key = str(agent_id)
        remembered = self._answers.get(key)
        if remembered is not None and now < remembered[0]:
            return list(remembered[1])
        found, aliases = self._walk(agent_id, now)
        # The answer holds until the first of its entries, or of the node aliases it went
        # through, expires.
        expiries = [e.expires_at for e in (*found, *aliases) if e.expires_at]
        self._answers[key] = (min(expiries, default=math.inf), found)
        return list(found)

    def _walk(
        self, agent_id: SpiffeId, now: float
    ) -> tuple[list[RegistrationEntry], list[RegistrationEntry]]:
        """The agent's authorized entries, and the live node aliases that granted some."""

        def live(item: _Indexed) -> bool:
            # An expired entry grants nothing, nor does an expired node alias.
            return not (item.record.expires_at and item.record.expires_at <= now)

        found = self._index.authorized_entries(agent_id, keep=live)
        aliases = [item.record for item in self._index.agent_alias_entries(agent_id) if live(item)]
        return [item.record for item in found], aliases

    def entry(self, entry_id: str) -> RegistrationEntry | None:
        """The entry with this ID, if it exists and has not expired."""
        entry = self._entries.get(entry_id)
        if entry is None or not self._live(entry):
            return None
        return entry

    def entries(self) -> list[RegistrationEntry]:
        """Every cached entry (expired ones included), in no particular order."""
        return list(self._entries.values())

    async def node(self, agent_id: SpiffeId) -> AttestedNode | None:
        """The attested node, from memory; read from the datastore only when not cached.

        A node attested a moment ago (its event not applied yet) is read once and
        remembered. A node the datastore does not have is read each time (as SPIRE): it was
        maybe attested by another server a moment ago, and only a holder of an SVID signed
        by this trust domain gets this far.
        """
        key = str(agent_id)
        node = self._nodes.get(key)
        if node is not None:
            return node
        generation = self._node_generation
        try:
            found: AttestedNode = await self.datastore.get_node(key)
        except NotFoundError:
            return None
        if generation == self._node_generation:
            # No node event was applied meanwhile, so what was read is not older than memory.
            self._put_node(found)
            return found
        # Node events were being applied while we read (perhaps this node's own): let them
        # finish, then memory is at least as new as what was read.
        await self.refresh()
        return self._nodes.get(key)

    def cached_node(self, agent_id: SpiffeId) -> AttestedNode | None:
        """The attested node if it is in memory (no datastore read)."""
        return self._nodes.get(str(agent_id))

    # ----- watches ----------------------------------------------------------------------------

    def _notify_entries(self, changed: list[RegistrationEntry]) -> None:
        """Wake the watchers of agents that served, or now serve, a changed entry.

        An entry is served by whoever serves its parent: walking up from each changed
        version's parent through the entries whose SPIFFE ID is that parent reaches the
        agents' own IDs and the node aliases (entries parented to the server) on the way.
        The walk uses the state after the change; an ancestor that changed in the same
        batch contributes its old parent itself. Waking too many is harmless, too few is not.
        """
        if not self._watchers or not changed:
            return
        server_path = self._index.server_path
        stack: list[str] = []
        aliases: list[frozenset[object]] = []
        for entry in changed:
            try:
                parent = SpiffeId.parse(entry.parent_id)
            except SpiffeIdError:
                continue
            if not parent.member_of(self.trust_domain):
                continue  # never served by anyone (SPIRE leaves such entries out)
            if parent.path == server_path:
                aliases.append(frozenset(entry.selectors))
            else:
                stack.append(parent.path)
        paths: set[str] = set()
        while stack:
            path = stack.pop()
            if path in paths:
                continue
            paths.add(path)
            for item in self._by_spiffe.get(path, {}).values():
                if item.parent_id.path == server_path:
                    aliases.append(frozenset(item.selectors))
                else:
                    stack.append(item.parent_id.path)
        for watcher in self._watchers:
            agent = watcher.agent
            if agent is None or not agent.member_of(self.trust_domain):
                continue
            if agent.path in paths:
                watcher.wake.set()
                continue
            node = self._nodes.get(watcher.agent_id)
            if node is not None and aliases:
                have = frozenset(node.selectors)
                if any(alias and alias <= have for alias in aliases):
                    watcher.wake.set()

    def _notify(self, entries_changed: bool, node_ids: Iterable[str]) -> None:
        if not self._watchers:
            return
        if entries_changed:
            for watcher in self._watchers:
                watcher.wake.set()
            return
        changed = set(node_ids)
        for watcher in self._watchers:
            if watcher.agent_id in changed:
                watcher.wake.set()

    def watch(self, agent_id: SpiffeId) -> AsyncIterator[int]:
        """Yield a revision now, then again whenever the agent's authorized entries or the
        bundle may have changed (changes close together are coalesced). Ends when the cache
        stops."""
        return self._watch(str(agent_id))

    async def _watch(self, agent_id: str) -> AsyncIterator[int]:
        watcher = _Watcher(agent_id)
        self._watchers.add(watcher)
        try:
            yield self._revision
            while not self._stopped:
                await watcher.wake.wait()
                if self._stopped:
                    return
                if self._coalesce > 0:
                    await asyncio.sleep(self._coalesce)
                watcher.wake.clear()
                if self._stopped:
                    return
                yield self._revision
        finally:
            self._watchers.discard(watcher)

    @property
    def watchers(self) -> int:
        """How many watches are open."""
        return len(self._watchers)

    def bundle_changed(self) -> None:
        """Tell watchers that the trust domain's bundle changed (called on CA rotation)."""
        for watcher in self._watchers:
            watcher.wake.set()
