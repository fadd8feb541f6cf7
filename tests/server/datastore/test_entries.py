"""Registration entries on both engines."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace

import pytest
import sqlalchemy as sa

from spiffed.server.datastore import (
    AlreadyExistsError,
    Bundle,
    DataStore,
    EntryFilter,
    InvalidArgumentError,
    MatchBehavior,
    NotFoundError,
    RegistrationEntry,
    Selector,
    SelectorFilter,
    TrustDomainFilter,
    schema,
)
from tests.server.datastore.conftest import Backend

TD = "spiffe://example.org"


def sel(text: str) -> Selector:
    typ, _, value = text.partition(":")
    return Selector(typ, value)


def entry(path: str, *sels: str, parent: str = "/agent", **kw: object) -> RegistrationEntry:
    return RegistrationEntry(
        spiffe_id=TD + path,
        parent_id=TD + parent,
        selectors=tuple(sel(s) for s in sels),
        **kw,  # type: ignore[arg-type]
    )


async def row_counts(ds: DataStore) -> dict[str, int]:
    out = {}
    async with ds.engine.connect() as conn:
        for table in schema.METADATA.sorted_tables:
            out[table.name] = (
                await conn.execute(sa.select(sa.func.count()).select_from(table))
            ).scalar_one()
    return out


async def test_create_get_roundtrip(ds: DataStore) -> None:
    await ds.create_bundle(Bundle("fed.org", b"bundle"))
    made = await ds.create_entry(
        entry(
            "/w",
            "unix:uid:1",
            "k8s:ns:a",
            "unix:uid:1",
            x509_svid_ttl=60,
            jwt_svid_ttl=30,
            federates_with=("spiffe://fed.org",),
            dns_names=("a.example", "b.example", "a.example"),
            admin=True,
            downstream=True,
            expires_at=2_000_000_000,
            hint="web",
            store_svid=True,
        )
    )
    assert len(made.id) == 36
    assert made.selectors == (sel("k8s:ns:a"), sel("unix:uid:1"))
    assert made.dns_names == ("a.example", "b.example")
    assert made.federates_with == ("fed.org",)
    assert made.revision_number == 0
    assert made.created_at > 0
    assert await ds.get_entry(made.id) == made


async def test_caller_given_id_and_duplicate_id(ds: DataStore) -> None:
    made = await ds.create_entry(entry("/a", "t:1", id="my-entry"))
    assert made.id == "my-entry"
    with pytest.raises(AlreadyExistsError, match="my-entry"):
        await ds.create_entry(entry("/b", "t:1", id="my-entry"))
    assert await ds.count_entries() == 1


async def test_similar_entry_already_exists_returns_existing(ds: DataStore) -> None:
    first = await ds.create_entry(entry("/a", "t:1", "t:2"))
    with pytest.raises(AlreadyExistsError) as info:
        await ds.create_entry(entry("/a", "t:2", "t:1", hint="other"))
    assert info.value.existing == first
    # a different selector set, parent or ID is a different entry
    await ds.create_entry(entry("/a", "t:1"))
    await ds.create_entry(entry("/a", "t:1", "t:2", parent="/other"))
    assert await ds.count_entries() == 3


async def test_update_with_mask_bumps_revision(ds: DataStore) -> None:
    made = await ds.create_entry(entry("/a", "t:1", hint="h1", x509_svid_ttl=10))
    change = replace(made, hint="h2", x509_svid_ttl=99, selectors=(sel("x:y"),))
    updated = await ds.update_entry(change, {"hint"})
    assert updated.hint == "h2"
    assert updated.x509_svid_ttl == 10
    assert updated.selectors == made.selectors
    assert updated.revision_number == 1
    again = await ds.update_entry(change)
    assert again.revision_number == 2
    assert again.selectors == (sel("x:y"),)
    assert await ds.get_entry(made.id) == again


async def test_update_errors_leave_data_unchanged(ds: DataStore) -> None:
    a = await ds.create_entry(entry("/a", "t:1"))
    b = await ds.create_entry(entry("/b", "t:1"))
    with pytest.raises(AlreadyExistsError):
        await ds.update_entry(replace(b, spiffe_id=a.spiffe_id), {"spiffe_id"})
    with pytest.raises(InvalidArgumentError, match="selectors type"):
        await ds.update_entry(replace(b, selectors=(Selector("", "x"),)), {"selectors"})
    with pytest.raises(InvalidArgumentError, match="federates_with"):
        await ds.update_entry(replace(b, federates_with=("nobundle.org",)), {"federates_with"})
    with pytest.raises(InvalidArgumentError, match="unknown fields"):
        await ds.update_entry(b, {"colour"})
    with pytest.raises(NotFoundError, match="nope"):
        await ds.update_entry(replace(b, id="nope"))
    assert await ds.get_entry(b.id) == b


async def test_delete(ds: DataStore) -> None:
    made = await ds.create_entry(entry("/a", "t:1", dns_names=("x",)))
    assert await ds.delete_entry(made.id) == made
    with pytest.raises(NotFoundError, match=made.id):
        await ds.get_entry(made.id)
    with pytest.raises(NotFoundError):
        await ds.delete_entry(made.id)
    counts = await row_counts(ds)
    assert counts["selectors"] == counts["dns_names"] == counts["registered_entries"] == 0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"id": "x" * 256}, "id is too long"),
        ({"id": "has space"}, "printable ASCII"),
        ({"spiffe_id": ""}, "spiffe_id must not be empty"),
        ({"spiffe_id": "http://x"}, "not a spiffe://"),
        ({"parent_id": "spiffe://" + "a" * 2100}, "parent_id is too long"),
        ({"selectors": ()}, "selectors must not be empty"),
        ({"selectors": (Selector("", "v"),)}, "selectors type must not be empty"),
        ({"selectors": (Selector("t", ""),)}, "value of type 't' must not be empty"),
        ({"selectors": (Selector("a:b", "v"),)}, "must not contain ':'"),
        ({"x509_svid_ttl": -1}, "x509_svid_ttl"),
        ({"jwt_svid_ttl": 2**40}, "jwt_svid_ttl"),
        ({"hint": "h" * 1025}, "hint is too long"),
        ({"federates_with": ("Bad TD",)}, "not a valid trust domain"),
        ({"federates_with": ("missing.org",)}, "no bundle"),
        ({"dns_names": ("",)}, "dns_names entry must not be empty"),
        ({"admin": "yes"}, "admin must be a boolean"),
        ({"expires_at": -5}, "expires_at"),
        ({"spiffe_id": "spiffe://td/\x00"}, "NUL"),
    ],
)
async def test_invalid_entries_rejected_and_nothing_written(
    ds: DataStore, bad: dict[str, object], message: str
) -> None:
    before = await row_counts(ds)
    with pytest.raises(InvalidArgumentError, match=message):
        await ds.create_entry(replace(entry("/a", "t:1"), **bad))  # type: ignore[arg-type]
    assert await row_counts(ds) == before


async def test_batch_create_each_item_alone(ds: DataStore) -> None:
    await ds.create_bundle(Bundle("fed.org", b"b"))
    items = [
        entry("/ok1", "t:1", federates_with=("fed.org",)),
        entry("/bad", "t:1", "t:2", dns_names=("d",), federates_with=("missing.org",)),
        entry("/ok1", "t:1"),  # similar to the first
        entry("/ok2", "t:1", dns_names=("d",)),
    ]
    results = await ds.batch_create_entries(items)
    assert [type(r.error).__name__ if r.error else "ok" for r in results] == [
        "ok",
        "InvalidArgumentError",
        "AlreadyExistsError",
        "ok",
    ]
    counts = await row_counts(ds)
    assert counts["registered_entries"] == 2
    assert counts["selectors"] == 2  # nothing of the failed items
    assert counts["dns_names"] == 1
    assert counts["federated_registration_entries"] == 1
    ids = [r.entry.id for r in results if r.entry]
    upd = await ds.batch_update_entries(
        [replace(results[0].entry, hint="x"), replace(results[0].entry, id="nope")],  # type: ignore[type-var]
        {"hint"},
    )
    assert upd[0].entry is not None and upd[0].entry.hint == "x"
    assert isinstance(upd[1].error, NotFoundError)
    dels = await ds.batch_delete_entries([*ids, "nope"])
    assert [bool(r.entry) for r in dels] == [True, True, False]
    assert await ds.count_entries() == 0


async def _selector_world(ds: DataStore) -> list[RegistrationEntry]:
    sets = [("a:1",), ("a:1", "b:2"), ("b:2",), ("a:1", "b:2", "c:3"), ("c:3",), ("d:4",)]
    return [await ds.create_entry(entry(f"/e{i}", *s)) for i, s in enumerate(sets)]


def _matches(have: set[str], given: set[str], match: MatchBehavior) -> bool:
    if match is MatchBehavior.EXACT:
        return have == given
    if match is MatchBehavior.SUBSET:
        return have <= given
    if match is MatchBehavior.SUPERSET:
        return have >= given
    return bool(have & given)


@pytest.mark.parametrize("match", list(MatchBehavior))
async def test_list_by_selectors_every_mode(ds: DataStore, match: MatchBehavior) -> None:
    world = await _selector_world(ds)
    pool = ["a:1", "b:2", "c:3", "z:9"]
    for size in (1, 2, 3):
        for given in itertools.combinations(pool, size):
            flt = EntryFilter(by_selectors=SelectorFilter(tuple(sel(s) for s in given), match))
            got = {e.id for e in (await ds.list_entries(flt)).items}
            want = {
                e.id for e in world if _matches({str(s) for s in e.selectors}, set(given), match)
            }
            assert got == want, (given, match)
            assert await ds.count_entries(flt) == len(want)


@pytest.mark.parametrize("match", list(MatchBehavior))
async def test_list_by_federates_with_every_mode(ds: DataStore, match: MatchBehavior) -> None:
    for td in ("a.org", "b.org", "c.org"):
        await ds.create_bundle(Bundle(td, b"x"))
    sets = [(), ("a.org",), ("a.org", "b.org"), ("b.org", "c.org"), ("c.org",)]
    world = [
        await ds.create_entry(entry(f"/e{i}", "t:1", federates_with=s)) for i, s in enumerate(sets)
    ]
    for given in [("a.org",), ("a.org", "b.org"), ("spiffe://c.org", "b.org"), ("zz.org",)]:
        names = {g.removeprefix("spiffe://") for g in given}
        flt = EntryFilter(by_federates_with=TrustDomainFilter(given, match))
        got = {e.id for e in (await ds.list_entries(flt)).items}
        want = {
            e.id
            for e in world
            if e.federates_with and _matches(set(e.federates_with), names, match)
        }
        assert got == want, (given, match)


async def test_list_simple_filters(ds: DataStore) -> None:
    a = await ds.create_entry(entry("/a", "t:1", hint="web", downstream=True))
    b = await ds.create_entry(entry("/b", "t:1", parent="/p2", hint="web"))
    c = await ds.create_entry(entry("/a", "t:2", parent="/p2"))

    async def ids(**kw: object) -> set[str]:
        return {e.id for e in (await ds.list_entries(EntryFilter(**kw))).items}  # type: ignore[arg-type]

    assert await ids(by_spiffe_id=TD + "/a") == {a.id, c.id}
    assert await ids(by_parent_id=TD + "/p2") == {b.id, c.id}
    assert await ids(by_hint="web") == {a.id, b.id}
    assert await ids(by_downstream=True) == {a.id}
    assert await ids(by_downstream=False) == {b.id, c.id}
    assert await ids(by_spiffe_id=TD + "/a", by_parent_id=TD + "/p2") == {c.id}
    with pytest.raises(InvalidArgumentError, match="by_selectors must not be empty"):
        await ds.list_entries(EntryFilter(by_selectors=SelectorFilter(())))


async def test_pagination(ds: DataStore) -> None:
    made = [await ds.create_entry(entry(f"/e{i}", "t:1")) for i in range(7)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await ds.list_entries(page_size=3, page_token=token)
        seen += [e.id for e in page.items]
        pages += 1
        if not page.next_token:
            break
        token = page.next_token
    assert seen == [e.id for e in made]
    assert pages == 3
    everything = await ds.list_entries()
    assert [e.id for e in everything.items] == seen and everything.next_token == ""
    for bad in ("garbage!", "cDEyYQ", "%%%", "eA"):
        with pytest.raises(InvalidArgumentError, match="malformed page token"):
            await ds.list_entries(page_size=3, page_token=bad)
    with pytest.raises(InvalidArgumentError, match="page_size"):
        await ds.list_entries(page_size=-1)


async def test_prune_expired_entries(ds: DataStore) -> None:
    keep = await ds.create_entry(entry("/keep", "t:1"))
    later = await ds.create_entry(entry("/later", "t:1", expires_at=2000))
    await ds.create_entry(entry("/old", "t:1", expires_at=1000))
    assert await ds.prune_entries(1500) == 1
    assert {e.id for e in (await ds.list_entries()).items} == {keep.id, later.id}


async def test_concurrent_similar_creates_one_wins(backend: Backend) -> None:
    stores = [await backend.open() for _ in range(3)]
    try:
        results = await asyncio.gather(
            *(s.create_entry(entry("/same", "t:1", "t:2")) for s in stores for _ in range(3)),
            return_exceptions=True,
        )
        made = [r for r in results if isinstance(r, RegistrationEntry)]
        assert len(made) == 1
        others = [r for r in results if not isinstance(r, RegistrationEntry)]
        assert all(isinstance(r, AlreadyExistsError) and r.existing == made[0] for r in others)
        assert await stores[0].count_entries() == 1
    finally:
        for s in stores:
            await s.close()
