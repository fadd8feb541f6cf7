"""entry.v1.Entry over a real SQLite datastore: SPIRE's statuses, filters, masks, paging."""

from __future__ import annotations

import pytest
from google.protobuf import wrappers_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from spiffed._proto.spire.api.server.entry.v1 import entry_pb2 as E
from spiffed._proto.spire.api.types import entry_pb2, federateswith_pb2, selector_pb2
from spiffed.server import datastore as ds

from .conftest import Api
from .helpers import entry, sel, sid

OK, INVALID, EXISTS, NOT_FOUND = (
    Status.OK.value,
    Status.INVALID_ARGUMENT.value,
    Status.ALREADY_EXISTS.value,
    Status.NOT_FOUND.value,
)


async def create(api: Api, *entries: entry_pb2.Entry) -> list[E.BatchCreateEntryResponse.Result]:
    resp = await api.entry.BatchCreateEntry(E.BatchCreateEntryRequest(entries=list(entries)))
    return list(resp.results)


async def test_create_get_list_count(api: Api) -> None:
    [res] = await create(api, entry(dns_names=["a.example"], x509_svid_ttl=60))
    assert res.status.code == OK
    assert res.entry.id and res.entry.spiffe_id.path == "/workload"
    got = await api.entry.GetEntry(E.GetEntryRequest(id=res.entry.id))
    assert got == res.entry
    assert got.x509_svid_ttl == 60 and list(got.dns_names) == ["a.example"]
    listed = await api.entry.ListEntries(E.ListEntriesRequest())
    assert [e.id for e in listed.entries] == [res.entry.id]
    count = await api.entry.CountEntries(E.CountEntriesRequest())
    assert count.count == 1


async def test_output_mask_keeps_only_named_fields(api: Api) -> None:
    [res] = await create(api, entry(hint="h"))
    mask = entry_pb2.EntryMask(spiffe_id=True)
    got = await api.entry.GetEntry(E.GetEntryRequest(id=res.entry.id, output_mask=mask))
    assert got.id == res.entry.id and got.spiffe_id.path == "/workload"
    assert not got.HasField("parent_id") and not got.selectors and got.hint == ""


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (entry(td="other.org"), 'is not a member of trust domain "example.org"'),
        (entry(td="Bad Domain"), "invalid spiffe ID"),
        (entry(path="no-slash"), "invalid spiffe ID"),
        (entry(path=""), "invalid spiffe ID"),
        (entry(parent="/a//b"), "invalid parent ID"),
        (entry(selectors=()), "selector list is empty"),
        (entry(selectors=("nocolon:",)), "missing selector value"),
        (entry(x509_svid_ttl=-1), "X509SvidTtl is not allowed to be negative"),
        (entry(jwt_svid_ttl=-5), "JwtSvidTtl is not allowed to be negative"),
        (entry(path="/spire/agent/x"), "path is in the reserved namespace"),
        (entry(parent=""), "invalid parent ID"),
        (entry(parent="/p", td="example.org", hint="h" * 1025), "hint is too long"),
        (entry(dns_names=["bad_name.example"]), "invalid DNS name"),
        (entry(dns_names=["-x.example"]), "invalid DNS name"),
        (entry(expires_at=-1), "expiresAt is negative"),
        (entry(federates_with=["UPPER.org"]), "invalid federated trust domain"),
    ],
)
async def test_create_refuses_bad_entries_and_writes_nothing(
    api: Api, bad: entry_pb2.Entry, fragment: str
) -> None:
    [res] = await create(api, bad)
    assert res.status.code == INVALID
    assert res.status.message.startswith("failed to convert entry: ")
    assert fragment in res.status.message
    assert await api.ds.count_entries() == 0


async def test_create_similar_entry_is_already_exists_with_the_existing_one(api: Api) -> None:
    [first] = await create(api, entry())
    [dup, other] = await create(api, entry(), entry(path="/other"))
    assert dup.status.code == EXISTS and dup.status.message == "similar entry already exists"
    assert dup.entry.id == first.entry.id
    assert other.status.code == OK
    assert await api.ds.count_entries() == 2
    [taken] = await create(api, entry(path="/third", id=first.entry.id))
    assert taken.status.code == EXISTS and taken.status.message.startswith("failed to create entry")
    assert await api.ds.count_entries() == 2


async def test_filters(api: Api) -> None:
    await api.ds.set_bundle(ds.Bundle("fed.org", b"x"))
    [a, b, c] = await create(
        api,
        entry("/a", selectors=("k:1", "k:2"), hint="web", federates_with=["fed.org"]),
        entry("/b", parent="/spire/agent/y", selectors=("k:1",), downstream=True),
        entry("/c", selectors=("k:3",)),
    )
    ids = {r.entry.id: r.entry.spiffe_id.path for r in (a, b, c)}

    async def paths(flt: E.ListEntriesRequest.Filter) -> set[str]:
        resp = await api.entry.ListEntries(E.ListEntriesRequest(filter=flt))
        count = await api.entry.CountEntries(
            E.CountEntriesRequest(filter=E.CountEntriesRequest.Filter(**_fields(flt)))
        )
        assert count.count == len(resp.entries)
        return {ids[e.id] for e in resp.entries}

    F = E.ListEntriesRequest.Filter
    M = selector_pb2.SelectorMatch
    assert await paths(F(by_spiffe_id=sid("example.org", "/a"))) == {"/a"}
    assert await paths(F(by_parent_id=sid("example.org", "/spire/agent/y"))) == {"/b"}
    k1 = [sel("k:1")]
    assert await paths(F(by_selectors=M(selectors=k1, match=M.MATCH_EXACT))) == {"/b"}
    assert await paths(F(by_selectors=M(selectors=k1, match=M.MATCH_SUPERSET))) == {"/a", "/b"}
    both = [sel("k:1"), sel("k:3")]
    assert await paths(F(by_selectors=M(selectors=both, match=M.MATCH_SUBSET))) == {"/b", "/c"}
    assert await paths(F(by_selectors=M(selectors=both, match=M.MATCH_ANY))) == {"/a", "/b", "/c"}
    fw = federateswith_pb2.FederatesWithMatch(
        trust_domains=["fed.org"], match=federateswith_pb2.FederatesWithMatch.MATCH_ANY
    )
    assert await paths(F(by_federates_with=fw)) == {"/a"}
    assert await paths(F(by_hint=wrappers_pb2.StringValue(value="web"))) == {"/a"}
    assert await paths(F(by_downstream=wrappers_pb2.BoolValue(value=True))) == {"/b"}


def _fields(flt: E.ListEntriesRequest.Filter) -> dict[str, object]:
    return {fd.name: value for fd, value in flt.ListFields()}


@pytest.mark.parametrize(
    "flt",
    [
        E.ListEntriesRequest.Filter(by_spiffe_id=sid("example.org", "bad")),
        E.ListEntriesRequest.Filter(by_selectors=selector_pb2.SelectorMatch()),
        E.ListEntriesRequest.Filter(
            by_selectors=selector_pb2.SelectorMatch(selectors=[selector_pb2.Selector(type="x")])
        ),
        E.ListEntriesRequest.Filter(
            by_federates_with=federateswith_pb2.FederatesWithMatch(trust_domains=["a b"])
        ),
    ],
)
async def test_malformed_filters_are_invalid_argument(
    api: Api, flt: E.ListEntriesRequest.Filter
) -> None:
    with pytest.raises(GRPCError) as err:
        await api.entry.ListEntries(E.ListEntriesRequest(filter=flt))
    assert err.value.status is Status.INVALID_ARGUMENT


async def test_pagination_and_bad_tokens(api: Api) -> None:
    results = await create(api, *(entry(f"/w{i}") for i in range(5)))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        resp = await api.entry.ListEntries(E.ListEntriesRequest(page_size=2, page_token=token))
        seen += [e.id for e in resp.entries]
        pages += 1
        token = resp.next_page_token
        if not token:
            break
    assert seen == [r.entry.id for r in results]
    assert pages == 3
    for bad in ("!!!", "bm90LWEtdG9rZW4"):
        with pytest.raises(GRPCError) as err:
            await api.entry.ListEntries(E.ListEntriesRequest(page_size=2, page_token=bad))
        assert err.value.status is Status.INVALID_ARGUMENT
    with pytest.raises(GRPCError) as err:
        await api.entry.ListEntries(E.ListEntriesRequest(page_size=-1))
    assert err.value.status is Status.INVALID_ARGUMENT


async def test_get_entry_unknown_and_missing(api: Api) -> None:
    with pytest.raises(GRPCError) as err:
        await api.entry.GetEntry(E.GetEntryRequest(id="nope"))
    assert err.value.status is Status.NOT_FOUND and err.value.message == "entry not found"
    with pytest.raises(GRPCError) as err:
        await api.entry.GetEntry(E.GetEntryRequest())
    assert err.value.status is Status.INVALID_ARGUMENT


async def test_update_with_input_mask(api: Api) -> None:
    [res] = await create(api, entry(hint="old", x509_svid_ttl=60))
    change = entry_pb2.Entry(id=res.entry.id, hint="new", x509_svid_ttl=-1)
    resp = await api.entry.BatchUpdateEntry(
        E.BatchUpdateEntryRequest(entries=[change], input_mask=entry_pb2.EntryMask(hint=True))
    )
    [r] = resp.results
    assert r.status.code == OK and r.entry.hint == "new" and r.entry.x509_svid_ttl == 60
    assert r.entry.revision_number == res.entry.revision_number + 1


async def test_update_refusals_leave_the_entry_unchanged(api: Api) -> None:
    [res] = await create(api, entry())
    before = await api.ds.get_entry(res.entry.id)
    bad = entry(td="other.org", id=res.entry.id)
    unknown = entry(id="missing")
    resp = await api.entry.BatchUpdateEntry(E.BatchUpdateEntryRequest(entries=[bad, unknown]))
    assert [r.status.code for r in resp.results] == [INVALID, NOT_FOUND]
    assert resp.results[1].status.message == "failed to update entry"
    assert await api.ds.get_entry(res.entry.id) == before


async def test_delete(api: Api) -> None:
    [res] = await create(api, entry())
    resp = await api.entry.BatchDeleteEntry(E.BatchDeleteEntryRequest(ids=[res.entry.id, "nope"]))
    assert [(r.id, r.status.code) for r in resp.results] == [
        (res.entry.id, OK),
        ("nope", NOT_FOUND),
    ]
    assert await api.ds.count_entries() == 0


async def test_agent_facing_rpcs_need_a_caller_id(api: Api) -> None:
    # The policy admits only agents; a caller without an ID never reaches the handler over
    # the listeners. Served anyway, the handler refuses (tests/server/api/test_sync.py).
    with pytest.raises(GRPCError) as err:
        await api.entry.GetAuthorizedEntries(E.GetAuthorizedEntriesRequest())
    assert err.value.status is Status.INTERNAL
    assert err.value.message == "caller ID missing from request context"


async def test_unexpected_errors_are_internal_without_a_trace(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(*_a: object, **_k: object) -> int:
        raise RuntimeError("secret detail /etc/passwd")

    monkeypatch.setattr(api.ds, "count_entries", boom)
    with pytest.raises(GRPCError) as err:
        await api.entry.CountEntries(E.CountEntriesRequest())
    assert err.value.status is Status.INTERNAL
    assert "secret" not in (err.value.message or "") and "Traceback" not in (
        err.value.message or ""
    )


async def test_an_unexpected_error_in_one_batch_item_is_internal_for_that_item_only(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = api.ds.create_entry

    async def flaky(record: ds.RegistrationEntry) -> ds.RegistrationEntry:
        if record.spiffe_id.endswith("/boom"):
            raise RuntimeError("disk on fire at /var/lib/secret")
        return await real(record)

    monkeypatch.setattr(api.ds, "create_entry", flaky)
    boom, ok = await create(api, entry("/boom"), entry("/fine"))
    assert boom.status.code == Status.INTERNAL.value
    assert "secret" not in boom.status.message and not boom.HasField("entry")
    assert ok.status.code == OK
    assert [e.spiffe_id for e in (await api.ds.list_entries()).items] == [
        "spiffe://example.org/fine"
    ]


async def test_list_output_mask(api: Api) -> None:
    await create(api, entry("/a", hint="x", downstream=True))
    resp = await api.entry.ListEntries(
        E.ListEntriesRequest(output_mask=entry_pb2.EntryMask(downstream=True, hint=True))
    )
    [e] = resp.entries
    assert e.id and e.downstream and e.hint == "x"
    assert not e.HasField("spiffe_id") and not e.selectors and e.created_at == 0
