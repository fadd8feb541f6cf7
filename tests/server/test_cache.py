"""The server cache: loads entries and nodes, follows datastore events, serves from memory."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from spiffed.server.cache import ServerCache
from spiffed.server.datastore import (
    AlreadyExistsError,
    AttestedNode,
    DataStore,
    JoinToken,
    RegistrationEntry,
    Selector,
    open_datastore,
)
from spiffed.spiffeid import SpiffeId, TrustDomain
from tests.server.datastore.conftest import Backend, backend, postgres_server  # noqa: F401

TD = TrustDomain("example.org")
SERVER = "spiffe://example.org/spire/server"
AGENT = "spiffe://example.org/spire/agent/join_token/a1"
OTHER_AGENT = "spiffe://example.org/spire/agent/join_token/a2"
NODE_SEL = Selector("x509pop", "subject:cn:node1")


def sid(text: str) -> SpiffeId:
    return SpiffeId.parse(text)


def entry(spiffe_id: str, parent_id: str, *sels: Selector, **kw: object) -> RegistrationEntry:
    return RegistrationEntry(
        spiffe_id=spiffe_id,
        parent_id=parent_id,
        selectors=sels or (Selector("unix", "uid:1"),),
        **kw,  # type: ignore[arg-type]
    )


def node(spiffe_id: str = AGENT, *sels: Selector, serial: str = "1") -> AttestedNode:
    return AttestedNode(
        spiffe_id, "join_token", serial, int(time.time()) + 3600, selectors=tuple(sels)
    )


async def wait_until(cond: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail("condition not met before the deadline")
        await asyncio.sleep(0.01)


def ids(entries: list[RegistrationEntry]) -> set[str]:
    return {e.spiffe_id for e in entries}


@pytest.fixture
async def ds(tmp_path: Path) -> AsyncIterator[DataStore]:
    store = await open_datastore("sqlite3", str(tmp_path / "ds.sqlite3"))
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def cache(ds: DataStore) -> AsyncIterator[ServerCache]:
    # A long poll interval: anything seen quickly came through the commit listener.
    c = ServerCache(ds, TD, poll_interval=60, coalesce=0)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def test_start_loads_existing_entries_and_nodes(ds: DataStore) -> None:
    await ds.create_node(node())
    e = await ds.create_entry(entry("spiffe://example.org/w1", AGENT))
    c = ServerCache(ds, TD, poll_interval=60)
    await c.start()
    try:
        assert c.revision == await ds.last_event_id() > 0
        assert c.entry(e.id) == e
        assert ids(c.authorized_entries(sid(AGENT))) == {"spiffe://example.org/w1"}
        cached = c.cached_node(sid(AGENT))
        assert cached is not None and cached.cert_serial_number == "1"
    finally:
        await c.stop()


async def test_own_writes_are_applied_at_once(ds: DataStore, cache: ServerCache) -> None:
    e = await ds.create_entry(entry("spiffe://example.org/w1", AGENT))
    # No refresh: the datastore's commit listener wakes the follower.
    await wait_until(lambda: cache.entry(e.id) is not None)
    assert cache.revision == await ds.last_event_id()

    updated = await ds.update_entry(
        RegistrationEntry("spiffe://example.org/w2", AGENT, e.selectors, id=e.id),
        ["spiffe_id"],
    )
    await cache.refresh()
    got = cache.entry(e.id)
    assert got is not None and got.spiffe_id == "spiffe://example.org/w2"
    assert got.revision_number == updated.revision_number

    await ds.delete_entry(e.id)
    await cache.refresh()
    assert cache.entry(e.id) is None
    assert cache.authorized_entries(sid(AGENT)) == []


async def test_node_create_update_ban_delete(ds: DataStore, cache: ServerCache) -> None:
    await ds.create_node(node())
    await cache.refresh()
    assert cache.cached_node(sid(AGENT)) is not None
    await ds.ban_node(AGENT)
    await cache.refresh()
    banned = await cache.node(sid(AGENT))
    assert banned is not None and banned.banned
    await ds.delete_node(AGENT)
    await cache.refresh()
    assert cache.cached_node(sid(AGENT)) is None
    assert await cache.node(sid(AGENT)) is None


async def test_node_alias_follows_node_selectors(ds: DataStore, cache: ServerCache) -> None:
    await ds.create_node(node())
    await ds.create_entry(entry("spiffe://example.org/cluster", SERVER, NODE_SEL))
    await ds.create_entry(entry("spiffe://example.org/w1", "spiffe://example.org/cluster"))
    await cache.refresh()
    assert cache.authorized_entries(sid(AGENT)) == []

    await ds.set_node_selectors(AGENT, [NODE_SEL])
    await cache.refresh()
    assert ids(cache.authorized_entries(sid(AGENT))) == {"spiffe://example.org/w1"}

    await ds.set_node_selectors(AGENT, [])
    await cache.refresh()
    assert cache.authorized_entries(sid(AGENT)) == []


async def test_nested_entries_and_foreign_trust_domain(ds: DataStore, cache: ServerCache) -> None:
    await ds.create_node(node())
    await ds.create_node(node(OTHER_AGENT))
    await ds.create_entry(entry("spiffe://example.org/parent", AGENT))
    await ds.create_entry(entry("spiffe://example.org/child", "spiffe://example.org/parent"))
    await ds.create_entry(entry("spiffe://example.org/grand", "spiffe://example.org/child"))
    await ds.create_entry(entry("spiffe://other.org/foreign", AGENT))
    await ds.create_entry(entry("spiffe://example.org/other", OTHER_AGENT))
    await cache.refresh()
    assert ids(cache.authorized_entries(sid(AGENT))) == {
        "spiffe://example.org/parent",
        "spiffe://example.org/child",
        "spiffe://example.org/grand",
    }
    assert ids(cache.authorized_entries(sid(OTHER_AGENT))) == {"spiffe://example.org/other"}
    assert cache.authorized_entries(sid("spiffe://other.org/spire/agent/x")) == []


async def test_expired_entries_are_not_served(ds: DataStore) -> None:
    now = [1_000_000.0]
    c = ServerCache(ds, TD, poll_interval=60, clock=lambda: now[0])
    await c.start()
    try:
        e = await ds.create_entry(
            entry("spiffe://example.org/w1", AGENT, expires_at=int(now[0]) + 10)
        )
        await ds.create_entry(entry("spiffe://example.org/w2", "spiffe://example.org/w1"))
        await c.refresh()
        assert ids(c.authorized_entries(sid(AGENT))) == {
            "spiffe://example.org/w1",
            "spiffe://example.org/w2",
        }
        now[0] += 10
        assert c.authorized_entries(sid(AGENT)) == []
        assert c.entry(e.id) is None
    finally:
        await c.stop()


async def test_expired_node_alias_grants_nothing(ds: DataStore) -> None:
    """An attacker's agent matches a node alias that has expired: the alias's children are
    no longer served to it, even from an answer remembered before the alias expired."""
    now = [1_000_000.0]
    c = ServerCache(ds, TD, poll_interval=60, clock=lambda: now[0])
    await c.start()
    try:
        await ds.create_node(node(AGENT, NODE_SEL))
        alias = entry("spiffe://example.org/cluster", SERVER, NODE_SEL, expires_at=int(now[0]) + 10)
        await ds.create_entry(alias)
        await ds.create_entry(entry("spiffe://example.org/w1", "spiffe://example.org/cluster"))
        await c.refresh()
        assert ids(c.authorized_entries(sid(AGENT))) == {"spiffe://example.org/w1"}
        now[0] += 10  # the alias expires; the child itself never does
        assert c.authorized_entries(sid(AGENT)) == []
    finally:
        await c.stop()


def test_index_leaves_out_aliases_and_entries_refused_by_keep() -> None:
    from spiffed.server.authorized import AuthorizedEntryIndex
    from spiffed.server.cache import _indexed

    index: AuthorizedEntryIndex[Any] = AuthorizedEntryIndex(TD)
    expired = entry("spiffe://example.org/cluster", SERVER, NODE_SEL, id="alias")
    child = entry("spiffe://example.org/w1", "spiffe://example.org/cluster", id="child")
    for e in (expired, child):
        index.upsert_entry(_indexed(e))
    index.set_agent(sid(AGENT), [NODE_SEL])  # type: ignore[list-item]
    assert [e.id for e in index.authorized_entries(sid(AGENT))] == ["child"]
    assert index.authorized_entries(sid(AGENT), keep=lambda e: e.id != "alias") == []
    assert index.agent_aliases(sid(AGENT), keep=lambda e: e.id != "alias") == []


async def test_node_miss_reads_datastore_once(ds: DataStore, cache: ServerCache) -> None:
    reads: list[str] = []
    real_get_node = ds.get_node

    async def counting_get_node(spiffe_id: str) -> AttestedNode:
        reads.append(spiffe_id)
        return await real_get_node(spiffe_id)

    cache.datastore.remove_commit_listener(cache._on_commit)  # the event stays unapplied
    await ds.create_node(node())
    ds.get_node = counting_get_node  # type: ignore[method-assign]
    try:
        assert (await cache.node(sid(AGENT))) is not None
        assert (await cache.node(sid(AGENT))) is not None
        assert reads == [AGENT]
        # An unknown node is not remembered: attested a moment later, it is found.
        assert await cache.node(sid(OTHER_AGENT)) is None
        await ds.create_node(node(OTHER_AGENT))
        assert await cache.node(sid(OTHER_AGENT)) is not None
        assert reads == [AGENT, OTHER_AGENT, OTHER_AGENT]
    finally:
        ds.get_node = real_get_node  # type: ignore[method-assign]


async def test_commit_listener_only_after_committed_events(ds: DataStore) -> None:
    calls: list[int] = []
    ds.add_commit_listener(lambda: calls.append(1))
    e = await ds.create_entry(entry("spiffe://example.org/w1", AGENT))
    assert calls == [1]
    await ds.create_join_token(JoinToken("t", 1))
    assert calls == [1]  # no event appended
    with pytest.raises(AlreadyExistsError):
        await ds.create_entry(entry("spiffe://example.org/w1", AGENT, id=e.id))
    assert calls == [1]


async def test_other_server_writes_are_seen_by_polling(backend: Backend) -> None:  # noqa: F811
    ours, theirs = await backend.open(), await backend.open()
    c = ServerCache(ours, TD, poll_interval=0.05, coalesce=0)
    await c.start()
    try:
        await theirs.create_node(node(AGENT, NODE_SEL))
        e = await theirs.create_entry(entry("spiffe://example.org/w1", AGENT))
        await wait_until(lambda: c.entry(e.id) is not None)
        await wait_until(lambda: c.cached_node(sid(AGENT)) is not None)
        await theirs.delete_entry(e.id)
        await wait_until(lambda: c.entry(e.id) is None)
        await theirs.delete_node(AGENT)
        await wait_until(lambda: c.cached_node(sid(AGENT)) is None)
        assert c.revision == await theirs.last_event_id()
    finally:
        await c.stop()
        await ours.close()
        await theirs.close()


async def test_watch_yields_now_then_on_change(ds: DataStore, cache: ServerCache) -> None:
    await ds.create_node(node())
    await cache.refresh()
    stream = cache.watch(sid(AGENT))
    first = await anext(stream)
    assert first == cache.revision
    pending = asyncio.ensure_future(anext(stream))
    await ds.create_entry(entry("spiffe://example.org/w1", AGENT))
    second = await asyncio.wait_for(pending, 5)
    assert second > first
    assert cache.watchers == 1

    # A node event of another agent does not wake this watcher; the bundle does.
    pending = asyncio.ensure_future(anext(stream))
    await ds.create_node(node(OTHER_AGENT))
    await cache.refresh()
    await asyncio.sleep(0)
    assert not pending.done()
    cache.bundle_changed()
    assert await asyncio.wait_for(pending, 5) == cache.revision

    # Stopping the cache ends the watch.
    pending = asyncio.ensure_future(anext(stream))
    await cache.stop()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 5)
    assert cache.watchers == 0


async def test_full_reload_repairs_what_events_missed(ds: DataStore, cache: ServerCache) -> None:
    await ds.create_node(node(AGENT, NODE_SEL))
    kept = await ds.create_entry(entry("spiffe://example.org/kept", AGENT))
    lost = await ds.create_entry(entry("spiffe://example.org/lost", AGENT))
    await cache.refresh()
    kept_object = cache.entry(kept.id)
    # Damage the memory as a lost event would.
    cache._drop_entry(lost.id)
    cache._put_entry(entry("spiffe://example.org/phantom", AGENT, id="phantom"))
    cache._drop_node(AGENT)
    stream = cache.watch(sid(AGENT))
    assert await anext(stream) == cache.revision
    pending = asyncio.ensure_future(anext(stream))
    await cache.reload()
    assert ids(cache.authorized_entries(sid(AGENT))) == {
        "spiffe://example.org/kept",
        "spiffe://example.org/lost",
    }
    assert cache.entry("phantom") is None
    assert cache.cached_node(sid(AGENT)) is not None
    assert cache.entry(kept.id) is kept_object  # unchanged entries keep their object
    assert await asyncio.wait_for(pending, 5) == cache.revision  # watchers were told
    await stream.aclose()  # type: ignore[attr-defined]


async def test_follower_reloads_every_full_reload_interval(ds: DataStore) -> None:
    c = ServerCache(ds, TD, poll_interval=0.01, full_reload_interval=0)
    await c.start()
    try:
        e = await ds.create_entry(entry("spiffe://example.org/w1", AGENT))
        await c.refresh()
        c._drop_entry(e.id)  # no event will bring it back; only a full reload
        await wait_until(lambda: c.entry(e.id) is not None)
    finally:
        await c.stop()


async def test_start_failure_leaves_cache_stopped(
    ds: DataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("database is down")

    monkeypatch.setattr(ds, "list_entries", broken)
    c = ServerCache(ds, TD)
    with pytest.raises(RuntimeError, match="database is down"):
        await c.start()
    assert c._task is None and not c._started
    monkeypatch.undo()
    calls: list[int] = []
    ds.add_commit_listener(lambda: calls.append(1))
    await ds.create_entry(entry("spiffe://example.org/w1", AGENT))
    assert calls == [1]  # only ours: the failed cache's listener was removed
    await c.start()  # and it can start once the database is back
    try:
        assert len(c.entries()) == 1
    finally:
        await c.stop()


async def test_old_events_are_pruned(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = await open_datastore("sqlite3", str(tmp_path / "p.sqlite3"), clock=lambda: now[0])
    c = ServerCache(store, TD, poll_interval=60, clock=lambda: now[0])
    await c.start()
    c.datastore.remove_commit_listener(c._on_commit)  # the follower lags: nothing applied
    try:
        await store.create_entry(entry("spiffe://example.org/w1", AGENT))
        now[0] += 12 * 3600 + 1
        e2 = await store.create_entry(entry("spiffe://example.org/w2", AGENT))
        assert await c.prune_events() == 1
        events = await store.list_events()
        assert [ev.record_id for ev in events] == [e2.id]
        assert len(c.entries()) == 2  # the pruned event was applied before it went
    finally:
        await c.stop()
        await store.close()


async def test_own_writes_wake_the_follower_on_each_engine(backend: Backend) -> None:  # noqa: F811
    store = await backend.open()
    c = ServerCache(store, TD, poll_interval=60, coalesce=0)  # no poll within the test
    await c.start()
    try:
        await store.create_node(node(AGENT, NODE_SEL))
        e = await store.create_entry(entry("spiffe://example.org/w1", AGENT))
        await wait_until(lambda: c.entry(e.id) is not None)
        await store.ban_node(AGENT)
        await wait_until(lambda: (c.cached_node(sid(AGENT)) or node()).banned)
    finally:
        await c.stop()
        await store.close()


async def test_watchers_woken_only_for_changes_they_may_serve(
    ds: DataStore, cache: ServerCache
) -> None:
    third = "spiffe://example.org/spire/agent/join_token/a3"
    await ds.create_node(node(AGENT, NODE_SEL))
    await ds.create_node(node(OTHER_AGENT))
    await ds.create_node(node(third))
    alias = await ds.create_entry(entry("spiffe://example.org/cluster", SERVER, NODE_SEL))
    mid = await ds.create_entry(entry("spiffe://example.org/mid", OTHER_AGENT))
    await cache.refresh()
    streams = {a: cache.watch(sid(a)) for a in (AGENT, OTHER_AGENT, third)}
    for stream in streams.values():
        await anext(stream)
    woken = {a: asyncio.ensure_future(anext(s)) for a, s in streams.items()}

    async def expect(*agents: str) -> None:
        await cache.refresh()
        await asyncio.sleep(0)  # let woken watchers run (coalesce is 0)
        for a in agents:
            await asyncio.wait_for(woken[a], 5)
            woken[a] = asyncio.ensure_future(anext(streams[a]))
        for a, fut in woken.items():
            if a not in agents:
                assert not fut.done(), f"{a} was woken"

    # Under the alias: only the agent whose node selectors match it.
    await ds.create_entry(entry("spiffe://example.org/w1", "spiffe://example.org/cluster"))
    await expect(AGENT)
    # Nested under another agent's entry: that agent.
    child = await ds.create_entry(entry("spiffe://example.org/leaf", "spiffe://example.org/mid"))
    await expect(OTHER_AGENT)
    # Moved from one agent's tree to another's: both.
    await ds.update_entry(RegistrationEntry("", third, child.selectors, id=child.id), ["parent_id"])
    await expect(OTHER_AGENT, third)
    # The alias itself changes: the agents it matched (and matches).
    await ds.delete_entry(alias.id)
    await expect(AGENT)
    # Deleting the middle of a tree: the agent that served it.
    await ds.delete_entry(mid.id)
    await expect(OTHER_AGENT)
    for fut in woken.values():
        fut.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fut
    for stream in streams.values():
        await stream.aclose()  # type: ignore[attr-defined]
    assert cache.watchers == 0


def test_targeted_wakeups_never_miss_an_affected_agent() -> None:
    """Random entry graphs and changes: every agent whose authorized entries changed is
    woken (checked against the index before and after, the slow obvious way)."""
    import random

    from spiffed.server.cache import _Watcher

    rng = random.Random(20261121)
    c = ServerCache(None, TD)
    agents = [f"spiffe://example.org/spire/agent/x/a{i}" for i in range(4)]
    sels = [Selector("t", f"v{i}") for i in range(3)]
    for i, a in enumerate(agents):
        c._put_node(node(a, *sels[: i % 4]))
    watchers = {a: _Watcher(a) for a in agents}
    c._watchers.update(watchers.values())
    paths = [f"spiffe://example.org/p{i}" for i in range(6)]
    parents = [*agents, *paths, SERVER, "spiffe://other.org/x"]

    def random_entry(entry_id: str) -> RegistrationEntry:
        picked = tuple(sorted(rng.sample(sels, rng.randint(1, 2))))
        return entry(rng.choice(paths), rng.choice(parents), *picked, id=entry_id)

    def served() -> dict[str, dict[str, RegistrationEntry]]:
        return {a: {e.id: e for e in c.authorized_entries(sid(a))} for a in agents}

    for i in range(15):
        c._put_entry(random_entry(f"e{i}"))
    for _ in range(400):
        before = served()
        entry_id = f"e{rng.randrange(20)}"
        old = c._entries.get(entry_id)
        if old is not None and rng.random() < 0.3:
            c._drop_entry(entry_id)
        else:
            c._put_entry(random_entry(entry_id))
        new = c._entries.get(entry_id)
        c._notify_entries([e for e in (old, new) if e is not None])
        after = served()
        for a in agents:
            if before[a] != after[a]:
                assert watchers[a].wake.is_set(), f"{a} not woken for {old} -> {new}"
        for w in watchers.values():
            w.wake.clear()


async def test_remembered_answers_follow_every_change(ds: DataStore, cache: ServerCache) -> None:
    """Answers are remembered per agent; entry changes, node changes and a node first read
    on a miss each make the next answer fresh, and a caller changing its copy changes
    nothing."""
    await ds.create_node(node())
    await ds.create_entry(entry("spiffe://example.org/cluster", SERVER, NODE_SEL))
    await ds.create_entry(entry("spiffe://example.org/w1", "spiffe://example.org/cluster"))
    await ds.create_entry(entry("spiffe://example.org/own", AGENT))
    await cache.refresh()
    first = cache.authorized_entries(sid(AGENT))
    assert ids(first) == {"spiffe://example.org/own"}
    first.clear()
    assert ids(cache.authorized_entries(sid(AGENT))) == {"spiffe://example.org/own"}

    await ds.create_entry(entry("spiffe://example.org/own2", AGENT))
    await cache.refresh()
    assert ids(cache.authorized_entries(sid(AGENT))) == {
        "spiffe://example.org/own",
        "spiffe://example.org/own2",
    }
    await ds.set_node_selectors(AGENT, [NODE_SEL])
    await cache.refresh()
    assert "spiffe://example.org/w1" in ids(cache.authorized_entries(sid(AGENT)))

    # A node the cache has not seen yet (event not applied): read on a miss, then served.
    late = "spiffe://example.org/spire/agent/join_token/late"
    assert cache.authorized_entries(sid(late)) == []
    await ds.create_node(node(late, NODE_SEL))
    assert await cache.node(sid(late)) is not None
    assert ids(cache.authorized_entries(sid(late))) == {"spiffe://example.org/w1"}
