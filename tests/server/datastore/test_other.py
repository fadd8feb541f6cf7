"""Join tokens, bundles, federation relationships, CA journals and events on both engines."""

from __future__ import annotations

import asyncio

import pytest

from spiffed.server.datastore import (
    AlreadyExistsError,
    Bundle,
    BundleDeleteMode,
    CAJournal,
    DataStore,
    EntryFilter,
    EventKind,
    FailedPreconditionError,
    FederationRelationship,
    InvalidArgumentError,
    JoinToken,
    NotFoundError,
    RegistrationEntry,
    Selector,
    open_datastore,
)
from tests.server.datastore.conftest import Backend, PostgresServer


def entry(path: str, *feds: str) -> RegistrationEntry:
    return RegistrationEntry(
        spiffe_id="spiffe://td" + path,
        parent_id="spiffe://td/agent",
        selectors=(Selector("t", path),),
        federates_with=feds,
    )


async def test_join_token_single_use(ds: DataStore) -> None:
    await ds.create_join_token(JoinToken("tok", 100))
    with pytest.raises(AlreadyExistsError, match="tok"):
        await ds.create_join_token(JoinToken("tok", 200))
    assert await ds.consume_join_token("tok") == JoinToken("tok", 100)
    with pytest.raises(NotFoundError, match="tok"):
        await ds.consume_join_token("tok")
    with pytest.raises(InvalidArgumentError):
        await ds.create_join_token(JoinToken("", 1))


async def test_join_token_concurrent_consumers_one_wins(backend: Backend) -> None:
    stores = [await backend.open() for _ in range(3)]
    try:
        for i in range(5):
            await stores[0].create_join_token(JoinToken(f"t{i}", 100))
            results = await asyncio.gather(
                *(s.consume_join_token(f"t{i}") for s in stores for _ in range(4)),
                return_exceptions=True,
            )
            winners = [r for r in results if isinstance(r, JoinToken)]
            assert len(winners) == 1
            assert all(isinstance(r, NotFoundError) for r in results if r not in winners)
    finally:
        for s in stores:
            await s.close()


async def test_prune_join_tokens(ds: DataStore) -> None:
    for i, exp in enumerate((10, 20, 30)):
        await ds.create_join_token(JoinToken(f"t{i}", exp))
    assert await ds.prune_join_tokens(25) == 2
    assert await ds.consume_join_token("t2") == JoinToken("t2", 30)


async def test_bundle_crud_and_pagination(ds: DataStore) -> None:
    assert await ds.create_bundle(Bundle("spiffe://a.org", b"\x00\x01")) == Bundle(
        "a.org", b"\x00\x01"
    )
    with pytest.raises(AlreadyExistsError, match=r"a\.org"):
        await ds.create_bundle(Bundle("a.org", b"x"))
    await ds.update_bundle(Bundle("a.org", b"new"))
    assert (await ds.get_bundle("a.org")).data == b"new"
    with pytest.raises(NotFoundError, match=r"b\.org"):
        await ds.update_bundle(Bundle("b.org", b"x"))
    await ds.set_bundle(Bundle("b.org", b"b1"))
    await ds.set_bundle(Bundle("b.org", b"b2"))
    await ds.set_bundle(Bundle("c.org", b"c"))
    assert await ds.count_bundles() == 3
    p1 = await ds.list_bundles(page_size=2)
    p2 = await ds.list_bundles(page_size=2, page_token=p1.next_token)
    assert [b.trust_domain for b in p1.items + p2.items] == ["a.org", "b.org", "c.org"]
    assert p2.items[0] == Bundle("c.org", b"c") and p2.next_token == ""
    with pytest.raises(InvalidArgumentError, match="data"):
        await ds.set_bundle(Bundle("d.org", b""))
    with pytest.raises(NotFoundError):
        await ds.get_bundle("zz.org")


async def test_bundle_delete_modes(ds: DataStore) -> None:
    for td in ("fed.org", "other.org"):
        await ds.create_bundle(Bundle(td, b"x"))
    a = await ds.create_entry(entry("/a", "fed.org", "other.org"))
    b = await ds.create_entry(entry("/b", "fed.org"))
    with pytest.raises(FailedPreconditionError, match=r"fed\.org"):
        await ds.delete_bundle("fed.org")
    assert await ds.get_bundle("fed.org")
    await ds.delete_bundle("fed.org", BundleDeleteMode.DISSOCIATE)
    got = await ds.get_entry(a.id)
    assert got.federates_with == ("other.org",) and got.revision_number == 1
    assert (await ds.get_entry(b.id)).federates_with == ()
    await ds.delete_bundle("other.org", BundleDeleteMode.DELETE)
    assert [e.id for e in (await ds.list_entries()).items] == [b.id]
    with pytest.raises(NotFoundError):
        await ds.delete_bundle("other.org")
    assert await ds.count_entries(EntryFilter()) == 1


async def test_federation_relationships(ds: DataStore) -> None:
    web = FederationRelationship("web.org", "https://web.org/bundle", "https_web")
    spf = FederationRelationship(
        "spf.org", "https://spf.org/b", "https_spiffe", "spiffe://spf.org/server", b"bundle"
    )
    assert await ds.create_federation_relationship(web) == web
    assert await ds.create_federation_relationship(spf) == spf
    assert (await ds.get_bundle("spf.org")).data == b"bundle"
    with pytest.raises(AlreadyExistsError):
        await ds.create_federation_relationship(web)
    for bad, msg in (
        (FederationRelationship("x.org", "http://x", "https_web"), "https URL"),
        (FederationRelationship("x.org", "https://x", "nope"), "profile"),
        (FederationRelationship("x.org", "https://x", "https_spiffe"), "endpoint_spiffe_id"),
        (FederationRelationship("X X", "https://x", "https_web"), "trust domain"),
    ):
        with pytest.raises(InvalidArgumentError, match=msg):
            await ds.create_federation_relationship(bad)
    changed = await ds.update_federation_relationship(
        FederationRelationship("web.org", "https://web.org/v2", "ignored"), {"bundle_endpoint_url"}
    )
    assert changed.bundle_endpoint_url == "https://web.org/v2" and changed.profile == "https_web"
    page = await ds.list_federation_relationships(page_size=1)
    rest = await ds.list_federation_relationships(page_size=1, page_token=page.next_token)
    assert [r.trust_domain for r in page.items + rest.items] == ["web.org", "spf.org"]
    await ds.delete_federation_relationship("web.org")
    with pytest.raises(NotFoundError, match=r"web\.org"):
        await ds.get_federation_relationship("web.org")
    assert (await ds.get_bundle("spf.org")).data == b"bundle"


async def test_ca_journal(ds: DataStore) -> None:
    assert await ds.latest_ca_journal() is None
    j1 = await ds.set_ca_journal(CAJournal("auth-1", b"j1", expires_at=100))
    assert j1.id > 0
    j2 = await ds.set_ca_journal(CAJournal("auth-2", b"j2", expires_at=300))
    assert await ds.fetch_ca_journal("auth-1") == j1
    latest = await ds.latest_ca_journal()
    assert latest is not None and latest.id == j2.id
    moved = await ds.set_ca_journal(CAJournal("auth-3", b"j2b", 400, id=j2.id))
    assert await ds.fetch_ca_journal("auth-3") == moved
    with pytest.raises(NotFoundError, match="auth-2"):
        await ds.fetch_ca_journal("auth-2")
    with pytest.raises(NotFoundError):
        await ds.set_ca_journal(CAJournal("x", b"x", id=9999))
    assert await ds.prune_ca_journals(200) == 1
    with pytest.raises(NotFoundError):
        await ds.fetch_ca_journal("auth-1")


async def test_events_follow_every_entry_and_node_write(ds: DataStore) -> None:
    from spiffed.server.datastore import AttestedNode

    start = await ds.last_event_id()
    e = await ds.create_entry(entry("/a"))
    await ds.update_entry(e)
    with pytest.raises(AlreadyExistsError):
        await ds.create_entry(entry("/a"))  # failed writes append nothing
    await ds.delete_entry(e.id)
    n = await ds.create_node(AttestedNode("spiffe://td/agent/1"))
    await ds.ban_node(n.spiffe_id)
    await ds.set_node_selectors(n.spiffe_id, [Selector("a", "b")])
    await ds.delete_node(n.spiffe_id)
    events = await ds.list_events(start)
    assert [(ev.kind, ev.record_id) for ev in events] == [(EventKind.ENTRY, e.id)] * 3 + [
        (EventKind.NODE, n.spiffe_id)
    ] * 4
    ids = [ev.id for ev in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert await ds.list_events(ids[2], limit=2) == events[3:5]
    # Every event is older than one second after the last one, whatever the clock did.
    assert await ds.prune_events(events[-1].created_at + 1) == len(events)
    assert await ds.list_events() == ()
    # IDs are never reused after a prune
    e2 = await ds.create_entry(entry("/b"))
    (after,) = await ds.list_events()
    assert after.id > ids[-1] and after.record_id == e2.id


async def test_events_seen_by_another_server(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    try:
        seen = await two.last_event_id()
        made = [await one.create_entry(entry(f"/e{i}")) for i in range(3)]
        events = await two.list_events(seen)
        assert [ev.record_id for ev in events] == [e.id for e in made]
    finally:
        await one.close()
        await two.close()


async def test_concurrent_writers_events_in_order(backend: Backend) -> None:
    stores = [await backend.open() for _ in range(3)]
    try:
        await asyncio.gather(
            *(s.create_entry(entry(f"/s{i}-{k}")) for i, s in enumerate(stores) for k in range(10))
        )
        events = await stores[0].list_events()
        assert len(events) == 30
        assert [ev.id for ev in events] == sorted(ev.id for ev in events)
        assert await stores[1].count_entries() == 30
    finally:
        for s in stores:
            await s.close()


async def test_write_transaction_rolls_back_on_error(ds: DataStore) -> None:
    import sqlalchemy as sa

    from spiffed.server.datastore import schema

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with ds._write() as conn:
            await conn.execute(sa.insert(schema.join_tokens).values(token="half", expiry=1))
            raise Boom
    with pytest.raises(NotFoundError):
        await ds.consume_join_token("half")


async def test_event_reader_never_skips_with_concurrent_writers(backend: Backend) -> None:
    writers = [await backend.open() for _ in range(3)]
    reader = await backend.open()
    seen: list[int] = []
    done = asyncio.Event()

    async def follow() -> None:
        while True:
            finished = done.is_set()
            for ev in await reader.list_events(seen[-1] if seen else 0):
                seen.append(ev.id)
            if finished:
                return
            await asyncio.sleep(0)

    async def write(i: int, store: DataStore) -> None:
        for k in range(15):
            await store.create_entry(entry(f"/w{i}-{k}"))

    try:
        follower = asyncio.create_task(follow())
        await asyncio.gather(*(write(i, s) for i, s in enumerate(writers)))
        done.set()
        await follower
        every = [ev.id for ev in await reader.list_events()]
        assert len(every) == 45
        assert seen == every
    finally:
        for s in [*writers, reader]:
            await s.close()


async def test_postgres_event_ids_commit_in_order(postgres_server: PostgresServer) -> None:
    """An event drawn later cannot commit before an earlier one (the advisory lock)."""
    import time

    import sqlalchemy as sa

    name = "events_order"
    await postgres_server.create_database(name)
    conn_str = postgres_server.connection_string(name)
    one, two = (
        await open_datastore("postgres", conn_str),
        await open_datastore("postgres", conn_str),
    )
    try:
        async with one._write() as c1:
            await one._append_events(c1, EventKind.ENTRY, ["first"])

            async def second() -> None:
                async with two._write() as c2:
                    await two._append_events(c2, EventKind.ENTRY, ["second"])

            task = asyncio.create_task(second())
            deadline = time.monotonic() + 30
            while True:  # until the second writer waits on the lock (or wrongly finished)
                async with one.engine.connect() as probe:
                    waiting = (
                        await probe.execute(
                            sa.text(
                                "SELECT count(*) FROM pg_locks "
                                "WHERE locktype = 'advisory' AND NOT granted"
                            )
                        )
                    ).scalar_one()
                if waiting or task.done():
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            assert not task.done(), "second event committed while the first was pending"
        await task
        events = await one.list_events()
        assert [ev.record_id for ev in events] == ["first", "second"]
    finally:
        await one.close()
        await two.close()
