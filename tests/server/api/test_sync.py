"""GetAuthorizedEntries and SyncAuthorizedEntries (SPIRE v1.15.3 semantics), from the cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.testing import ChannelFor

from spiffed._proto.spire.api.server.entry.v1 import entry_grpc
from spiffed._proto.spire.api.server.entry.v1 import entry_pb2 as E
from spiffed._proto.spire.api.types import entry_pb2 as T
from spiffed.server.api import Caller, Role, allowed, caller_context
from spiffed.server.api.entry import ENTRY_PAGE_SIZE, EntryService
from spiffed.server.datastore import AttestedNode, RegistrationEntry, Selector
from spiffed.spiffeid import SpiffeId

from .conftest import Api

AGENT = "spiffe://example.org/spire/agent/join_token/a1"
OTHER = "spiffe://example.org/spire/agent/join_token/a2"
PAGE = 4
"""A small page size keeps the datastore writes few; SPIRE's 500 is tested on its own."""


class AsCaller:
    """A service whose handlers run as ``holder[0]``, after the listener's policy check."""

    def __init__(self, service: Any, holder: list[Caller]) -> None:
        self._service = service
        self._holder = holder

    def __mapping__(self) -> dict[str, Any]:
        return {
            name: handler._replace(func=self._wrap(name, handler.func))
            for name, handler in self._service.__mapping__().items()
        }

    def _wrap(self, method: str, func: Callable[[Any], Any]) -> Callable[[Any], Any]:
        async def run(stream: Any) -> None:
            caller = self._holder[0]
            if not allowed(method, caller):
                raise GRPCError(Status.PERMISSION_DENIED, f"{method} not allowed")
            token = caller_context.set(caller)
            try:
                await func(stream)
            finally:
                caller_context.reset(token)

        return run


def agent_caller(agent_id: str = AGENT) -> Caller:
    return Caller(spiffe_id=SpiffeId.parse(agent_id), roles=frozenset({Role.ANY, Role.AGENT}))


@dataclass
class Env:
    api: Api
    stub: entry_grpc.EntryStub
    holder: list[Caller]


@pytest.fixture
async def env(api: Api) -> AsyncIterator[Env]:
    holder = [agent_caller()]
    for agent in (AGENT, OTHER):
        await api.ds.create_node(AttestedNode(agent, "join_token", "1", int(time.time()) + 3600))
    service = EntryService(api.ctx, entry_page_size=PAGE)
    async with ChannelFor([AsCaller(service, holder)]) as channel:
        yield Env(api, entry_grpc.EntryStub(channel), holder)


async def make_entries(api: Api, n: int, parent: str = AGENT) -> list[RegistrationEntry]:
    out = []
    for i in range(n):
        out.append(
            await api.ds.create_entry(
                RegistrationEntry(
                    f"spiffe://example.org/w{i}",
                    parent,
                    (Selector("unix", f"uid:{i}"),),
                    dns_names=(f"w{i}.example.org",),
                )
            )
        )
    await api.ctx.cache.refresh()  # type: ignore[union-attr]
    return out


async def sync(env: Env, *requests: E.SyncAuthorizedEntriesRequest) -> list[Any]:
    """Send the requests on one stream, close it, and collect every response."""
    async with env.stub.SyncAuthorizedEntries.open() as stream:
        if not requests:
            await stream.send_request(end=True)
        for req in requests:
            await stream.send_message(req)
        if requests:
            await stream.end()
        return [resp async for resp in stream]


async def test_get_authorized_entries_only_the_callers(env: Env) -> None:
    mine = await make_entries(env.api, 3)
    await env.api.ds.create_entry(
        RegistrationEntry("spiffe://example.org/theirs", OTHER, (Selector("unix", "uid:9"),))
    )
    await env.api.ctx.cache.refresh()  # type: ignore[union-attr]
    resp = await env.stub.GetAuthorizedEntries(E.GetAuthorizedEntriesRequest())
    assert {e.id for e in resp.entries} == {e.id for e in mine}
    got = next(e for e in resp.entries if e.id == mine[0].id)
    assert got.spiffe_id.path == "/w0" and got.parent_id.path == "/spire/agent/join_token/a1"
    assert list(got.dns_names) == ["w0.example.org"]


async def test_get_authorized_entries_output_mask(env: Env) -> None:
    await make_entries(env.api, 2)
    resp = await env.stub.GetAuthorizedEntries(
        E.GetAuthorizedEntriesRequest(output_mask=T.EntryMask(spiffe_id=True))
    )
    assert len(resp.entries) == 2
    for e in resp.entries:
        assert e.id and e.spiffe_id.path
        assert not e.HasField("parent_id") and not e.selectors and not e.dns_names
        assert e.revision_number == 0 and e.created_at == 0


async def test_sync_small_sends_everything_at_once(env: Env) -> None:
    mine = await make_entries(env.api, 3)
    [resp] = await sync(env, E.SyncAuthorizedEntriesRequest())
    assert not resp.entry_revisions and not resp.more
    assert {e.id for e in resp.entries} == {e.id for e in mine}
    assert all(e.selectors and e.spiffe_id.path for e in resp.entries)


async def test_sync_small_with_output_mask(env: Env) -> None:
    await make_entries(env.api, 2)
    mask = T.EntryMask(revision_number=True, selectors=True)
    [resp] = await sync(env, E.SyncAuthorizedEntriesRequest(output_mask=mask))
    assert len(resp.entries) == 2
    for e in resp.entries:
        assert e.selectors and not e.HasField("spiffe_id") and not e.dns_names


async def test_sync_nothing_authorized(env: Env) -> None:
    [resp] = await sync(env, E.SyncAuthorizedEntriesRequest())
    assert not resp.entries and not resp.entry_revisions and not resp.more


async def test_sync_exactly_one_page_is_not_sparse(env: Env) -> None:
    await make_entries(env.api, PAGE)
    [resp] = await sync(env, E.SyncAuthorizedEntriesRequest())
    assert len(resp.entries) == PAGE and not resp.entry_revisions


async def test_sync_over_one_page_is_sparse_then_by_id(env: Env) -> None:
    n = PAGE * 2 + 3
    mine = await make_entries(env.api, n)
    by_id = {e.id: e for e in mine}
    mask = T.EntryMask(revision_number=True, spiffe_id=True)
    wanted = sorted(by_id)[: PAGE + 1]
    responses = await sync(
        env,
        E.SyncAuthorizedEntriesRequest(output_mask=mask),
        E.SyncAuthorizedEntriesRequest(ids=[*reversed(wanted), "no-such-id"]),
        E.SyncAuthorizedEntriesRequest(ids=["no-such-id"]),
        E.SyncAuthorizedEntriesRequest(ids=[wanted[0]], output_mask=T.EntryMask()),
    )
    # Revisions: 3 pages, ``more`` on all but the last.
    revs = responses[:3]
    assert [len(r.entry_revisions) for r in revs] == [PAGE, PAGE, 3]
    assert [r.more for r in revs] == [True, True, False]
    assert all(not r.entries for r in revs)
    seen = {rv.id: rv for r in revs for rv in r.entry_revisions}
    assert set(seen) == set(by_id)
    for entry_id, rv in seen.items():
        assert rv.revision_number == by_id[entry_id].revision_number
        assert rv.created_at == by_id[entry_id].created_at > 0
    # The requested entries, a full page then the rest; unknown IDs are skipped.
    first, second = responses[3], responses[4]
    assert len(first.entries) == PAGE and first.more
    assert len(second.entries) == 1 and not second.more
    got = [e.id for e in (*first.entries, *second.entries)]
    assert got == wanted
    # The initial request's mask applies throughout (later masks are ignored).
    e0 = first.entries[0]
    assert e0.spiffe_id.path and not e0.selectors and not e0.HasField("parent_id")
    # A request naming nothing known gets an empty final page.
    assert not responses[5].entries and not responses[5].more
    assert [e.id for e in responses[6].entries] == [wanted[0]]
    assert responses[6].entries[0].spiffe_id.path
    assert len(responses) == 7


async def test_sync_sparse_refuses_other_agents_entries(env: Env) -> None:
    await make_entries(env.api, PAGE + 1)
    theirs = await env.api.ds.create_entry(
        RegistrationEntry("spiffe://example.org/theirs", OTHER, (Selector("unix", "uid:9"),))
    )
    await env.api.ctx.cache.refresh()  # type: ignore[union-attr]
    responses = await sync(
        env, E.SyncAuthorizedEntriesRequest(), E.SyncAuthorizedEntriesRequest(ids=[theirs.id])
    )
    assert not responses[-1].entries and not responses[-1].more


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (
            E.SyncAuthorizedEntriesRequest(ids=["x"]),
            "specifying IDs on initial request is not supported",
        ),
        (
            E.SyncAuthorizedEntriesRequest(output_mask=T.EntryMask(spiffe_id=True)),
            "revision number cannot be masked",
        ),
    ],
)
async def test_sync_malformed_first_request(
    env: Env, req: E.SyncAuthorizedEntriesRequest, message: str
) -> None:
    await make_entries(env.api, 1)
    with pytest.raises(GRPCError) as err:
        await sync(env, req)
    assert err.value.status is Status.INVALID_ARGUMENT
    assert err.value.message == message


async def test_sync_stream_closed_at_once_ends_quietly(env: Env) -> None:
    assert await sync(env) == []


async def test_non_agents_are_refused(env: Env) -> None:
    await make_entries(env.api, 1)
    env.holder[0] = Caller(
        spiffe_id=SpiffeId.parse("spiffe://example.org/admin"),
        roles=frozenset({Role.ANY, Role.ADMIN}),
    )
    with pytest.raises(GRPCError) as err:
        await env.stub.GetAuthorizedEntries(E.GetAuthorizedEntriesRequest())
    assert err.value.status is Status.PERMISSION_DENIED
    with pytest.raises(GRPCError) as err:
        await sync(env, E.SyncAuthorizedEntriesRequest())
    assert err.value.status is Status.PERMISSION_DENIED


async def test_unchanged_sync_round_reads_no_datastore(env: Env) -> None:
    import sqlalchemy as sa

    await make_entries(env.api, PAGE + 3)
    queries: list[str] = []
    engine = env.api.ds.engine.sync_engine

    def count(_conn: Any, _cursor: Any, statement: str, *_a: Any) -> None:
        # The cache's own event poll runs in its follower task; everything else counts.
        task = asyncio.current_task()
        if task is None or task.get_name() != "server-cache-follow":
            queries.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        await env.stub.GetAuthorizedEntries(E.GetAuthorizedEntriesRequest())
        responses = await sync(
            env,
            E.SyncAuthorizedEntriesRequest(),
            E.SyncAuthorizedEntriesRequest(ids=["whatever"]),
        )
        assert len(responses) == 3
        assert queries == []
        await env.api.ds.count_entries()  # the counter does see datastore reads
        assert queries
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)


async def test_spire_page_size_500_boundary(api: Api) -> None:
    """SPIRE's default page (500): 500 entries go at once, 501 go sparse. The entries are
    put straight into the cache (writing a thousand through SQLite is slow)."""
    cache = api.ctx.cache
    assert cache is not None and ENTRY_PAGE_SIZE == 500
    for i in range(501):
        cache._put_entry(
            RegistrationEntry(
                f"spiffe://example.org/w{i}",
                AGENT,
                (Selector("unix", f"uid:{i}"),),
                id=f"id-{i:04d}",
                revision_number=i,
                created_at=1_700_000_000 + i,
            )
        )
    holder = [agent_caller()]
    async with ChannelFor([AsCaller(EntryService(api.ctx), holder)]) as channel:
        env = Env(api, entry_grpc.EntryStub(channel), holder)
        responses = await sync(env, E.SyncAuthorizedEntriesRequest())
        assert [len(r.entry_revisions) for r in responses] == [500, 1]
        assert [r.more for r in responses] == [True, False]
        cache._drop_entry("id-0500")
        [resp] = await sync(env, E.SyncAuthorizedEntriesRequest())
        assert len(resp.entries) == 500 and not resp.entry_revisions


async def test_entry_messages_are_reused_until_the_entry_changes(env: Env) -> None:
    [e] = await make_entries(env.api, 1)
    before = await env.stub.GetAuthorizedEntries(E.GetAuthorizedEntriesRequest())
    assert [x.spiffe_id.path for x in before.entries] == ["/w0"]
    await env.api.ds.update_entry(
        RegistrationEntry("spiffe://example.org/changed", AGENT, e.selectors, id=e.id),
        ["spiffe_id"],
    )
    await env.api.ctx.cache.refresh()  # type: ignore[union-attr]
    after = await env.stub.GetAuthorizedEntries(E.GetAuthorizedEntriesRequest())
    assert [x.spiffe_id.path for x in after.entries] == ["/changed"]
    assert after.entries[0].revision_number == before.entries[0].revision_number + 1
    masked = await env.stub.GetAuthorizedEntries(
        E.GetAuthorizedEntriesRequest(output_mask=T.EntryMask(hint=True))
    )
    assert not masked.entries[0].HasField("spiffe_id")
