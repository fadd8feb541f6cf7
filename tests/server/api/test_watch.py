"""The Watch service, and the agent check of the TLS listener served from the server cache."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography import x509
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.testing import ChannelFor

from spiffed import tls
from spiffed._proto.spiffed.api.server.watch.v1 import watch_grpc, watch_pb2
from spiffed._proto.spire.api.server.entry.v1 import entry_grpc
from spiffed._proto.spire.api.server.entry.v1 import entry_pb2 as E
from spiffed.agent.client import denied_reason
from spiffed.grpcstatus import SpireStatusDetailsCodec
from spiffed.keys import KeyType, PrivateKey
from spiffed.server.api import Caller
from spiffed.server.api.services import build_services
from spiffed.server.api.watch import WatchService
from spiffed.server.datastore import AttestedNode, DataStoreError, RegistrationEntry, Selector
from spiffed.server.endpoints import Endpoints
from spiffed.server.run_store import DatastoreCaStore
from spiffed.spiffeid import SpiffeId

from .conftest import TD, Api
from .test_sync import AGENT, OTHER, AsCaller, agent_caller

REQ = watch_pb2.WatchAuthorizedEntriesRequest()


def workload(path: str, parent: str = AGENT) -> RegistrationEntry:
    return RegistrationEntry(f"spiffe://example.org{path}", parent, (Selector("unix", "uid:1"),))


def attested(agent: str, serial: str = "1", new_serial: str = "") -> AttestedNode:
    later = int(time.time()) + 3600
    return AttestedNode(agent, "join_token", serial, later, new_serial, later if new_serial else 0)


# ----- the Watch service in-process ---------------------------------------------------------


@pytest.fixture
async def watch(api: Api) -> AsyncIterator[watch_grpc.WatchStub]:
    await api.ds.create_node(attested(AGENT))
    await api.ctx.cache.refresh()  # type: ignore[union-attr]
    async with ChannelFor([AsCaller(WatchService(api.ctx), [agent_caller()])]) as channel:
        yield watch_grpc.WatchStub(channel)


async def test_watch_notifies_after_entry_create(api: Api, watch: watch_grpc.WatchStub) -> None:
    cache = api.ctx.cache
    assert cache is not None
    async with watch.WatchAuthorizedEntries.open() as stream:
        await stream.send_message(REQ, end=True)
        first = await asyncio.wait_for(stream.recv_message(), 5)
        assert first is not None and first.revision == cache.revision
        await api.ds.create_entry(workload("/w1"))
        second = await asyncio.wait_for(stream.recv_message(), 5)
        assert second is not None and second.revision > first.revision
        assert second.revision == await api.ds.last_event_id()
        await stream.cancel()
    # The client left: the watcher is gone (polled with a deadline).
    deadline = time.monotonic() + 5
    while cache.watchers and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert cache.watchers == 0


async def test_watch_notifies_on_bundle_change(api: Api, watch: watch_grpc.WatchStub) -> None:
    async with watch.WatchAuthorizedEntries.open() as stream:
        await stream.send_message(REQ, end=True)
        assert await asyncio.wait_for(stream.recv_message(), 5) is not None
        api.ctx.cache.bundle_changed()  # type: ignore[union-attr]
        assert await asyncio.wait_for(stream.recv_message(), 5) is not None
        await stream.cancel()


async def test_watch_ends_cleanly_when_cache_stops(api: Api, watch: watch_grpc.WatchStub) -> None:
    async with watch.WatchAuthorizedEntries.open() as stream:
        await stream.send_message(REQ, end=True)
        assert await asyncio.wait_for(stream.recv_message(), 5) is not None
        await api.ctx.cache.stop()  # type: ignore[union-attr]
        assert await asyncio.wait_for(stream.recv_message(), 5) is None
        await stream.recv_trailing_metadata()
        assert stream.trailing_metadata is not None


async def test_watch_ends_when_agent_is_banned(api: Api, watch: watch_grpc.WatchStub) -> None:
    async with watch.WatchAuthorizedEntries.open() as stream:
        await stream.send_message(REQ, end=True)
        assert await asyncio.wait_for(stream.recv_message(), 5) is not None
        await api.ds.ban_node(AGENT)
        assert await asyncio.wait_for(stream.recv_message(), 5) is None
        with pytest.raises(GRPCError) as err:
            await stream.recv_trailing_metadata()
        assert err.value.status is Status.PERMISSION_DENIED
        assert "banned" in (err.value.message or "")


class WallClock:
    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Watching:
    service: WatchService
    stub: watch_grpc.WatchStub
    holder: list[Caller]
    clock: WallClock


@pytest.fixture
async def watching(api: Api) -> AsyncIterator[Watching]:
    """The Watch service called with an agent SVID's serial ("1", the node's current one)
    and expiry (an hour after the fake wall clock)."""
    await api.ds.create_node(attested(AGENT))
    await api.ctx.cache.refresh()  # type: ignore[union-attr]
    clock = WallClock()
    service = WatchService(api.ctx, max_streams_per_agent=2, clock=clock)
    holder = [dataclasses.replace(agent_caller(), serial="1", not_after=clock.now + 3600)]
    async with ChannelFor([AsCaller(service, holder)]) as channel:
        yield Watching(service, watch_grpc.WatchStub(channel), holder, clock)


async def _ended_with(stream: Any) -> GRPCError:
    assert await asyncio.wait_for(stream.recv_message(), 5) is None
    with pytest.raises(GRPCError) as err:
        await stream.recv_trailing_metadata()
    return err.value


async def test_watch_ends_once_its_svid_is_superseded(api: Api, watching: Watching) -> None:
    """The agent re-attested (or switched to its renewed SVID): a stream opened with the old
    SVID (perhaps by whoever stole it) stops getting notifications."""
    async with watching.stub.WatchAuthorizedEntries.open() as stream:
        await stream.send_message(REQ, end=True)
        assert await asyncio.wait_for(stream.recv_message(), 5) is not None
        superseded = AttestedNode(AGENT, cert_serial_number="999")
        await api.ds.update_node(superseded, ["cert_serial_number"])
        err = await _ended_with(stream)
    assert err.status is Status.PERMISSION_DENIED
    assert err.message == (
        f'agent "{AGENT}" SVID is no longer active: serial number "999" is current; '
        'the stream has "1"'
    )
    assert watching.service.streams(SpiffeId.parse(AGENT)) == 0


async def test_watch_ends_when_its_svid_expires(watching: Watching) -> None:
    watching.holder[0] = dataclasses.replace(
        watching.holder[0], not_after=watching.clock.now + 0.05
    )
    async with watching.stub.WatchAuthorizedEntries.open() as stream:
        await stream.send_message(REQ, end=True)
        assert await asyncio.wait_for(stream.recv_message(), 5) is not None
        err = await _ended_with(stream)  # nothing changes: the SVID's expiry ends it
    assert err.status is Status.PERMISSION_DENIED
    assert err.message == f'agent "{AGENT}" SVID is expired'


async def test_watch_with_an_expired_svid_gets_nothing(watching: Watching) -> None:
    watching.holder[0] = dataclasses.replace(watching.holder[0], not_after=watching.clock.now)
    async with watching.stub.WatchAuthorizedEntries.open() as stream:
        await stream.send_message(REQ, end=True)
        with pytest.raises(GRPCError) as err:
            await asyncio.wait_for(stream.recv_message(), 5)
    assert err.value.status is Status.PERMISSION_DENIED
    assert watching.service.streams(SpiffeId.parse(AGENT)) == 0


async def test_watch_streams_per_agent_are_capped(watching: Watching) -> None:
    """An agent (or a thief of its SVID) opens stream after stream: past the cap, refused;
    a stream that ends frees its place."""
    agent = SpiffeId.parse(AGENT)
    async with contextlib.AsyncExitStack() as stack:
        streams = []
        for n in (1, 2):
            stream = await stack.enter_async_context(watching.stub.WatchAuthorizedEntries.open())
            streams.append(stream)
            await stream.send_message(REQ, end=True)
            assert await asyncio.wait_for(stream.recv_message(), 5) is not None
            assert watching.service.streams(agent) == n
        with pytest.raises(GRPCError) as err:
            async with watching.stub.WatchAuthorizedEntries.open() as third:
                await third.send_message(REQ, end=True)
                await asyncio.wait_for(third.recv_message(), 5)
        assert err.value.status is Status.RESOURCE_EXHAUSTED
        assert err.value.message == f'too many watch streams for agent "{AGENT}" (at most 2)'
        await streams.pop().cancel()
        await _wait_until(lambda: watching.service.streams(agent) == 1)
        async with watching.stub.WatchAuthorizedEntries.open() as again:
            await again.send_message(REQ, end=True)
            assert await asyncio.wait_for(again.recv_message(), 5) is not None
            await again.cancel()
        for stream in streams:
            await stream.cancel()


async def _wait_until(condition: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not condition():
        assert loop.time() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.005)


# ----- over the real TLS listener -------------------------------------------------------------


@dataclass
class Listener:
    api: Api
    endpoints: Endpoints
    roots: list[x509.Certificate]

    def svid(self, agent: str) -> tuple[list[x509.Certificate], PrivateKey]:
        key = KeyType.EC_P256.generate()
        chain = self.api.ctx.ca.sign_x509_svid(SpiffeId.parse(agent), key.public_key())
        return chain, key

    def channel(self, chain: list[x509.Certificate], key: PrivateKey) -> Channel:
        assert self.endpoints.tcp_address is not None
        ctx = tls.client_context(self.roots, chain, key)
        return Channel(
            "127.0.0.1",
            self.endpoints.tcp_address[1],
            ssl=ctx,
            status_details_codec=SpireStatusDetailsCodec(),
        )


@pytest.fixture
async def listener(api: Api, tmp_path: Path) -> AsyncIterator[Listener]:
    endpoints = Endpoints(
        api.ctx,
        build_services(api.ctx),
        socket_path=tmp_path / "private" / "api.sock",
        bind_address="127.0.0.1",
        bind_port=0,
    )
    bundle = await DatastoreCaStore(api.ds, TD.name).get_bundle()
    endpoints.set_bundle(bundle)
    roots = [x509.load_der_x509_certificate(a.asn1) for a in bundle.x509_authorities]
    await endpoints.start()
    try:
        yield Listener(api, endpoints, roots)
    finally:
        await endpoints.stop(grace=1)


async def sync_refusal(listener: Listener, chain: Any, key: Any) -> tuple[Status, str | None]:
    """The status of a sync call and SPIRE's PermissionDeniedDetails reason, if sent."""
    channel = listener.channel(chain, key)
    try:
        await entry_grpc.EntryStub(channel).GetAuthorizedEntries(E.GetAuthorizedEntriesRequest())
    except GRPCError as exc:
        return exc.status, denied_reason(exc.details)
    finally:
        channel.close()
    return Status.OK, None


async def sync_status(listener: Listener, chain: Any, key: Any) -> Status:
    return (await sync_refusal(listener, chain, key))[0]


async def test_tls_agent_admitted_then_refused_once_evicted(listener: Listener) -> None:
    ds, cache = listener.api.ds, listener.api.ctx.cache
    assert cache is not None
    chain, key = listener.svid(AGENT)
    not_attested = (Status.PERMISSION_DENIED, "AGENT_NOT_ATTESTED")
    assert await sync_refusal(listener, chain, key) == not_attested
    await ds.create_node(attested(AGENT, str(chain[0].serial_number)))
    # Attested a moment ago (event maybe not applied yet): the cache reads it once.
    assert await sync_status(listener, chain, key) is Status.OK
    await ds.delete_node(AGENT)
    await cache.refresh()
    assert await sync_refusal(listener, chain, key) == not_attested


async def test_tls_banned_agent_refused(listener: Listener) -> None:
    ds, cache = listener.api.ds, listener.api.ctx.cache
    assert cache is not None
    chain, key = listener.svid(AGENT)
    await ds.create_node(attested(AGENT, str(chain[0].serial_number)))
    await cache.refresh()
    assert await sync_status(listener, chain, key) is Status.OK
    await ds.ban_node(AGENT)
    await cache.refresh()
    assert await sync_refusal(listener, chain, key) == (Status.PERMISSION_DENIED, "AGENT_BANNED")


async def test_tls_old_or_other_serial_refused(listener: Listener) -> None:
    """An attacker holding an agent's superseded SVID (or another agent's) is refused."""
    ds, cache = listener.api.ds, listener.api.ctx.cache
    assert cache is not None
    old_chain, old_key = listener.svid(AGENT)
    chain, _ = listener.svid(AGENT)
    other_chain, other_key = listener.svid(OTHER)
    await ds.create_node(attested(AGENT, str(chain[0].serial_number)))
    await ds.create_node(attested(OTHER, "12345"))
    await cache.refresh()
    not_active = (Status.PERMISSION_DENIED, "AGENT_NOT_ACTIVE")
    assert await sync_refusal(listener, old_chain, old_key) == not_active
    assert await sync_refusal(listener, other_chain, other_key) == not_active


async def test_tls_renewed_svid_is_promoted_to_current(listener: Listener) -> None:
    ds, cache = listener.api.ds, listener.api.ctx.cache
    assert cache is not None
    old_chain, old_key = listener.svid(AGENT)
    new_chain, new_key = listener.svid(AGENT)
    new_serial = str(new_chain[0].serial_number)
    created = attested(AGENT, str(old_chain[0].serial_number), new_serial)
    await ds.create_node(dataclasses.replace(created, new_cert_not_after=2_000_000_000))
    await cache.refresh()
    assert await sync_status(listener, old_chain, old_key) is Status.OK
    assert (await ds.get_node(AGENT)).new_cert_serial_number == new_serial
    # The agent switches to its renewed SVID: the new serial becomes the current one.
    assert await sync_status(listener, new_chain, new_key) is Status.OK
    node = await ds.get_node(AGENT)
    assert node.cert_serial_number == new_serial
    assert node.new_cert_serial_number == "" and node.new_cert_not_after == 0
    assert node.cert_not_after == 2_000_000_000
    cached = cache.cached_node(SpiffeId.parse(AGENT))
    assert cached is not None and cached.cert_serial_number == new_serial
    # The old SVID no longer works.
    assert await sync_status(listener, old_chain, old_key) is Status.PERMISSION_DENIED


async def test_tls_renewal_recorded_elsewhere_is_seen(listener: Listener) -> None:
    """RenewAgent just stored a new serial (its event maybe unapplied): the agent using the
    new SVID at once is admitted, the cache catching up on the mismatch."""
    ds, cache = listener.api.ds, listener.api.ctx.cache
    assert cache is not None
    old_chain, _ = listener.svid(AGENT)
    new_chain, new_key = listener.svid(AGENT)
    await ds.create_node(attested(AGENT, str(old_chain[0].serial_number)))
    await cache.refresh()
    cache.datastore.remove_commit_listener(cache._on_commit)  # keep the next event unapplied
    await ds.update_node(
        AttestedNode(AGENT, new_cert_serial_number=str(new_chain[0].serial_number)),
        ["new_cert_serial_number"],
    )
    assert await sync_status(listener, new_chain, new_key) is Status.OK


async def test_tls_renewed_svid_with_a_stale_cache_does_not_undo_a_ban(
    listener: Listener,
) -> None:
    """The ban is committed but this server's cache has not applied it yet; the agent presents
    its renewed SVID (the cached node's new serial). It is refused as banned and stays so."""
    ds, cache = listener.api.ds, listener.api.ctx.cache
    assert cache is not None
    old_chain, _ = listener.svid(AGENT)
    new_chain, new_key = listener.svid(AGENT)
    new_serial = str(new_chain[0].serial_number)
    await ds.create_node(attested(AGENT, str(old_chain[0].serial_number), new_serial))
    await cache.refresh()
    cache.datastore.remove_commit_listener(cache._on_commit)  # keep the ban unapplied
    await ds.ban_node(AGENT)
    cached = cache.cached_node(SpiffeId.parse(AGENT))
    assert cached is not None and cached.new_cert_serial_number == new_serial, "cache is stale"
    refusal = await sync_refusal(listener, new_chain, new_key)
    assert refusal == (Status.PERMISSION_DENIED, "AGENT_BANNED")
    node = await ds.get_node(AGENT)
    assert node.banned, "the stale cache must not promote the renewed SVID over the ban"


async def test_tls_renewed_svid_superseded_in_the_datastore_is_not_active(
    listener: Listener,
) -> None:
    """The cache still names an SVID as the node's new one, but the agent renewed again since:
    presenting the superseded one is refused and writes nothing."""
    ds, cache = listener.api.ds, listener.api.ctx.cache
    assert cache is not None
    cur_chain, _ = listener.svid(AGENT)
    stale_chain, stale_key = listener.svid(AGENT)
    cur_serial = str(cur_chain[0].serial_number)
    await ds.create_node(attested(AGENT, cur_serial, str(stale_chain[0].serial_number)))
    await cache.refresh()
    cache.datastore.remove_commit_listener(cache._on_commit)
    await ds.update_node(
        AttestedNode(AGENT, new_cert_serial_number="42"), ["new_cert_serial_number"]
    )
    refusal = await sync_refusal(listener, stale_chain, stale_key)
    assert refusal == (Status.PERMISSION_DENIED, "AGENT_NOT_ACTIVE")
    node = await ds.get_node(AGENT)
    assert (node.cert_serial_number, node.new_cert_serial_number) == (cur_serial, "42")


async def test_tls_serial_is_compared_as_spire_stores_it_decimal(listener: Listener) -> None:
    """A node whose stored serial is the hex spelling of the presented serial is not a match."""
    ds, cache = listener.api.ds, listener.api.ctx.cache
    assert cache is not None
    chain, key = listener.svid(AGENT)
    await ds.create_node(attested(AGENT, format(chain[0].serial_number, "x")))
    await cache.refresh()
    refusal = await sync_refusal(listener, chain, key)
    assert refusal == (Status.PERMISSION_DENIED, "AGENT_NOT_ACTIVE")


async def test_tls_datastore_failure_is_internal_as_spire(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain, key = listener.svid(AGENT)

    async def broken(_sid: str) -> AttestedNode:
        raise DataStoreError("database is gone")

    monkeypatch.setattr(listener.api.ds, "get_node", broken)
    channel = listener.channel(chain, key)
    try:
        with pytest.raises(GRPCError) as err:
            await entry_grpc.EntryStub(channel).GetAuthorizedEntries(
                E.GetAuthorizedEntriesRequest()
            )
    finally:
        channel.close()
    assert err.value.status is Status.INTERNAL
    assert err.value.message == "unable to look up agent information: database is gone"


async def test_tls_watch_opened_with_the_old_svid_ends_once_the_new_one_is_used(
    listener: Listener,
) -> None:
    ds, cache = listener.api.ds, listener.api.ctx.cache
    assert cache is not None
    old_chain, old_key = listener.svid(AGENT)
    new_chain, new_key = listener.svid(AGENT)
    new_serial = str(new_chain[0].serial_number)
    await ds.create_node(attested(AGENT, str(old_chain[0].serial_number), new_serial))
    await cache.refresh()
    channel = listener.channel(old_chain, old_key)
    try:
        async with watch_grpc.WatchStub(channel).WatchAuthorizedEntries.open() as stream:
            await stream.send_message(REQ, end=True)
            assert await asyncio.wait_for(stream.recv_message(), 5) is not None
            # The agent switches to its renewed SVID: the old one is superseded.
            assert await sync_status(listener, new_chain, new_key) is Status.OK
            err = await _ended_with(stream)
    finally:
        channel.close()
    assert err.status is Status.PERMISSION_DENIED
    assert "no longer active" in (err.message or "")


async def test_tls_unchanged_sync_round_reads_no_datastore(listener: Listener) -> None:
    ds, cache = listener.api.ds, listener.api.ctx.cache
    assert cache is not None
    chain, key = listener.svid(AGENT)
    await ds.create_node(attested(AGENT, str(chain[0].serial_number)))
    await ds.create_entry(workload("/w1"))
    await cache.refresh()
    assert await sync_status(listener, chain, key) is Status.OK  # warm
    queries: list[str] = []
    engine = ds.engine.sync_engine

    def count(_conn: Any, _cursor: Any, statement: str, *_a: Any) -> None:
        task = asyncio.current_task()
        if task is None or task.get_name() != "server-cache-follow":
            queries.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        channel = listener.channel(chain, key)
        try:
            stub = entry_grpc.EntryStub(channel)
            async with stub.SyncAuthorizedEntries.open() as stream:
                await stream.send_message(E.SyncAuthorizedEntriesRequest(), end=True)
                replies = [r async for r in stream]
            assert [e.spiffe_id.path for e in replies[0].entries] == ["/w1"]
            watch = watch_grpc.WatchStub(channel)
            async with watch.WatchAuthorizedEntries.open() as wstream:
                await wstream.send_message(REQ, end=True)
                assert await asyncio.wait_for(wstream.recv_message(), 5) is not None
                await wstream.cancel()
        finally:
            channel.close()
        assert queries == []
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
