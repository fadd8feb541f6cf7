"""``spire.api.server.entry.v1.Entry``: registration entries, as SPIRE's entry service.

The agent-facing RPCs (GetAuthorizedEntries, SyncAuthorizedEntries) answer from the server
cache (:class:`spiffed.server.cache.ServerCache`), so an agent's sync reads no datastore.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grpclib.const import Status
from grpclib.server import Stream

from spiffed._proto.spire.api.server.entry.v1 import entry_grpc, entry_pb2
from spiffed._proto.spire.api.types import entry_pb2 as types_entry
from spiffed._proto.spire.api.types import federateswith_pb2, selector_pb2
from spiffed.server import datastore as ds
from spiffed.server.api import caller_spiffe_id
from spiffed.server.api.convert import (
    IdKind,
    entry_from_proto,
    entry_to_proto,
    error_status,
    id_in_trust_domain,
    ok_status,
    rpc,
    selector_from_proto,
    status_of,
    to_server_error,
)
from spiffed.server.context import ServerContext
from spiffed.server.errors import ServerError
from spiffed.spiffeid import SpiffeIdError, TrustDomain

__all__ = ["ENTRY_PAGE_SIZE", "MATCH_BEHAVIOR", "EntryService", "sync_authorized_entries"]

MATCH_BEHAVIOR = {
    selector_pb2.SelectorMatch.MATCH_EXACT: ds.MatchBehavior.EXACT,
    selector_pb2.SelectorMatch.MATCH_SUBSET: ds.MatchBehavior.SUBSET,
    selector_pb2.SelectorMatch.MATCH_SUPERSET: ds.MatchBehavior.SUPERSET,
    selector_pb2.SelectorMatch.MATCH_ANY: ds.MatchBehavior.ANY,
}
"""SPIRE's selector match modes as the datastore's (federates_with uses the same numbers)."""


def _filter(flt: Any, td: TrustDomain) -> ds.EntryFilter:
    """The datastore filter for a List/CountEntriesRequest.Filter (SPIRE's messages)."""
    out: dict[str, Any] = {}
    checks = (
        ("by_parent_id", IdKind.MEMBER, "malformed parent ID filter"),
        ("by_spiffe_id", IdKind.WORKLOAD, "malformed SPIFFE ID filter"),
    )
    for name, kind, what in checks:
        if flt.HasField(name):
            try:
                out[name] = str(id_in_trust_domain(getattr(flt, name), td, kind))
            except ValueError as exc:
                raise ServerError(Status.INVALID_ARGUMENT, f"{what}: {exc}") from None
    if flt.HasField("by_selectors"):
        m = flt.by_selectors
        if not m.selectors:
            raise ServerError(
                Status.INVALID_ARGUMENT, "malformed selectors filter: empty selector set"
            )
        try:
            sels = tuple(selector_from_proto(s) for s in m.selectors)
        except ServerError as exc:
            raise ServerError(
                Status.INVALID_ARGUMENT, f"malformed selectors filter: {exc.message}"
            ) from None
        if m.match not in MATCH_BEHAVIOR:
            raise ServerError(
                Status.INVALID_ARGUMENT, f"malformed selectors filter: unknown match {m.match}"
            )
        out["by_selectors"] = ds.SelectorFilter(sels, MATCH_BEHAVIOR[m.match])
    if flt.HasField("by_federates_with"):
        f = flt.by_federates_with
        if not f.trust_domains:
            raise ServerError(
                Status.INVALID_ARGUMENT, "malformed federates with filter: empty trust domain set"
            )
        tds = []
        for name in f.trust_domains:
            try:
                tds.append(TrustDomain.parse(name).name)
            except SpiffeIdError as exc:
                raise ServerError(
                    Status.INVALID_ARGUMENT, f"malformed federates with filter: {exc}"
                ) from None
        modes = {
            federateswith_pb2.FederatesWithMatch.MATCH_EXACT: ds.MatchBehavior.EXACT,
            federateswith_pb2.FederatesWithMatch.MATCH_SUBSET: ds.MatchBehavior.SUBSET,
            federateswith_pb2.FederatesWithMatch.MATCH_SUPERSET: ds.MatchBehavior.SUPERSET,
            federateswith_pb2.FederatesWithMatch.MATCH_ANY: ds.MatchBehavior.ANY,
        }
        if f.match not in modes:
            raise ServerError(
                Status.INVALID_ARGUMENT, f"malformed federates with filter: unknown match {f.match}"
            )
        out["by_federates_with"] = ds.TrustDomainFilter(tuple(tds), modes[f.match])
    if flt.HasField("by_hint") and flt.by_hint.value:
        out["by_hint"] = flt.by_hint.value
    if flt.HasField("by_downstream"):
        out["by_downstream"] = flt.by_downstream.value
    return ds.EntryFilter(**out)


def _mask(req: Any, name: str = "output_mask") -> types_entry.EntryMask | None:
    return getattr(req, name) if req.HasField(name) else None


class _ProtoMemo:
    """Entry messages already built, reused while the cached entry is the same object.

    Building a message costs tens of microseconds; an agent syncing thousands of entries
    every few seconds would spend most of its time there. The server cache replaces an
    entry's record on every change, so an identical object means an unchanged entry.
    Messages handed out are only copied into responses, never changed.
    """

    def __init__(self, limit: int = 200_000) -> None:
        self._limit = limit
        self._memo: dict[tuple[str, bytes | None], tuple[ds.RegistrationEntry, Any]] = {}

    def get(
        self, entry: ds.RegistrationEntry, mask: types_entry.EntryMask | None
    ) -> types_entry.Entry:
        key = (entry.id, None if mask is None else mask.SerializeToString(deterministic=True))
        hit = self._memo.get(key)
        if hit is not None and hit[0] is entry:
            msg: types_entry.Entry = hit[1]
            return msg
        msg = entry_to_proto(entry, mask)
        if len(self._memo) >= self._limit:
            self._memo.clear()  # deleted entries and old masks go; live ones come back
        self._memo[key] = (entry, msg)
        return msg


class EntryService(entry_grpc.EntryBase):
    """Registration entries over the datastore, with SPIRE's validation and messages."""

    def __init__(self, ctx: ServerContext, *, entry_page_size: int = 0) -> None:
        self._ctx = ctx
        self._entry_page_size = entry_page_size or ENTRY_PAGE_SIZE
        self._protos = _ProtoMemo()

    @property
    def _ds(self) -> Any:
        return self._ctx.datastore

    @rpc
    async def CountEntries(self, stream: Stream[Any, Any]) -> None:
        """How many entries match the filter."""
        req = await stream.recv_message()
        assert req is not None
        count = await self._ds.count_entries(_filter(req.filter, self._ctx.trust_domain))
        await stream.send_message(entry_pb2.CountEntriesResponse(count=count))

    @rpc
    async def ListEntries(self, stream: Stream[Any, Any]) -> None:
        """One page of the entries matching the filter (page_size 0 = all)."""
        req = await stream.recv_message()
        assert req is not None
        if req.page_size < 0:
            raise ServerError(Status.INVALID_ARGUMENT, "page size cannot be negative")
        flt = _filter(req.filter, self._ctx.trust_domain)
        try:
            page = await self._ds.list_entries(
                flt, page_size=req.page_size, page_token=req.page_token
            )
        except ds.InvalidArgumentError as exc:
            raise ServerError(Status.INVALID_ARGUMENT, f"failed to list entries: {exc}") from None
        mask = _mask(req)
        await stream.send_message(
            entry_pb2.ListEntriesResponse(
                entries=[entry_to_proto(e, mask) for e in page.items],
                next_page_token=page.next_token,
            )
        )

    @rpc
    async def GetEntry(self, stream: Stream[Any, Any]) -> None:
        """One entry by ID."""
        req = await stream.recv_message()
        assert req is not None
        if not req.id:
            raise ServerError(Status.INVALID_ARGUMENT, "missing ID")
        try:
            entry = await self._ds.get_entry(req.id)
        except ds.NotFoundError:
            raise ServerError(Status.NOT_FOUND, "entry not found") from None
        except ds.InvalidArgumentError:
            raise ServerError(Status.NOT_FOUND, "entry not found") from None
        await stream.send_message(entry_to_proto(entry, _mask(req)))

    @rpc
    async def BatchCreateEntry(self, stream: Stream[Any, Any]) -> None:
        """Create each entry; a similar existing entry is ALREADY_EXISTS with that entry."""
        req = await stream.recv_message()
        assert req is not None
        mask = _mask(req)
        results = []
        for msg in req.entries:
            R = entry_pb2.BatchCreateEntryResponse.Result
            try:
                record = entry_from_proto(msg, self._ctx.trust_domain)
            except ServerError as exc:
                results.append(
                    R(status=error_status(exc.status, f"failed to convert entry: {exc.message}"))
                )
                continue
            try:
                created = await self._ds.create_entry(record)
            except ds.AlreadyExistsError as exc:
                existing = exc.existing
                res = R(status=error_status(Status.ALREADY_EXISTS, "similar entry already exists"))
                if isinstance(existing, ds.RegistrationEntry):
                    res.entry.CopyFrom(entry_to_proto(existing, mask))
                else:
                    res.status.message = f"failed to create entry: {exc}"
                results.append(res)
                continue
            except ds.DataStoreError as exc:
                err = to_server_error(exc)
                status = error_status(err.status, f"failed to create entry: {err.message}")
                results.append(R(status=status))
                continue
            except Exception as exc:
                results.append(R(status=status_of(exc)))
                continue
            results.append(R(status=ok_status(), entry=entry_to_proto(created, mask)))
        await stream.send_message(entry_pb2.BatchCreateEntryResponse(results=results))

    @rpc
    async def BatchUpdateEntry(self, stream: Stream[Any, Any]) -> None:
        """Update the fields named by ``input_mask`` (all when absent) of each entry."""
        req = await stream.recv_message()
        assert req is not None
        fields: frozenset[str] | None = None
        if req.HasField("input_mask"):
            fields = frozenset(f for f in ds.ENTRY_FIELDS if getattr(req.input_mask, f))
        mask = _mask(req)
        results = []
        R = entry_pb2.BatchUpdateEntryResponse.Result
        for msg in req.entries:
            if not msg.id:
                results.append(R(status=error_status(Status.INVALID_ARGUMENT, "missing ID")))
                continue
            try:
                record = entry_from_proto(msg, self._ctx.trust_domain, fields=fields)
            except ServerError as exc:
                results.append(
                    R(status=error_status(exc.status, f"failed to convert entry: {exc.message}"))
                )
                continue
            try:
                updated = await self._ds.update_entry(record, fields)
            except ds.NotFoundError:
                status = error_status(Status.NOT_FOUND, "failed to update entry")
                results.append(R(status=status))
                continue
            except ds.DataStoreError as exc:
                err = to_server_error(exc)
                status = error_status(err.status, f"failed to update entry: {err.message}")
                results.append(R(status=status))
                continue
            except Exception as exc:
                results.append(R(status=status_of(exc)))
                continue
            results.append(R(status=ok_status(), entry=entry_to_proto(updated, mask)))
        await stream.send_message(entry_pb2.BatchUpdateEntryResponse(results=results))

    @rpc
    async def BatchDeleteEntry(self, stream: Stream[Any, Any]) -> None:
        """Delete each entry by ID; one result per ID."""
        req = await stream.recv_message()
        assert req is not None
        R = entry_pb2.BatchDeleteEntryResponse.Result
        results = []
        for entry_id in req.ids:
            if not entry_id:
                results.append(
                    R(id=entry_id, status=error_status(Status.INVALID_ARGUMENT, "missing entry ID"))
                )
                continue
            try:
                await self._ds.delete_entry(entry_id)
            except (ds.NotFoundError, ds.InvalidArgumentError):
                results.append(
                    R(id=entry_id, status=error_status(Status.NOT_FOUND, "entry not found"))
                )
                continue
            except Exception as exc:
                results.append(R(id=entry_id, status=status_of(exc)))
                continue
            results.append(R(id=entry_id, status=ok_status()))
        await stream.send_message(entry_pb2.BatchDeleteEntryResponse(results=results))

    def _authorized(self) -> list[ds.RegistrationEntry]:
        """The caller's authorized entries, from the server cache (no datastore read)."""
        agent_id = caller_spiffe_id()
        cache = self._ctx.cache
        if cache is None:
            raise ServerError(
                Status.INTERNAL, "failed to fetch entries: the server's entry cache is not running"
            )
        return cache.authorized_entries(agent_id)

    @rpc
    async def GetAuthorizedEntries(self, stream: Stream[Any, Any]) -> None:
        """Every entry the calling agent may serve, fields limited by ``output_mask``."""
        req = await stream.recv_message()
        assert req is not None
        mask = _mask(req)
        entries = self._authorized()
        await stream.send_message(
            entry_pb2.GetAuthorizedEntriesResponse(
                entries=[self._protos.get(e, mask) for e in entries]
            )
        )

    @rpc
    async def SyncAuthorizedEntries(self, stream: Stream[Any, Any]) -> None:
        """SPIRE's sync: all entries at once when they fit in one page; otherwise pages of
        (id, revision, created_at), then the full entries the agent asks for by ID."""
        entries = self._authorized()
        await sync_authorized_entries(stream, entries, self._entry_page_size, self._protos.get)


ENTRY_PAGE_SIZE = 500
"""SPIRE's default entry page size for SyncAuthorizedEntries."""


async def sync_authorized_entries(
    stream: Stream[Any, Any],
    entries: list[ds.RegistrationEntry],
    page_size: int,
    to_proto: Callable[
        [ds.RegistrationEntry, types_entry.EntryMask | None], types_entry.Entry
    ] = entry_to_proto,
) -> None:
    """Answer one SyncAuthorizedEntries stream over ``entries`` (SPIRE's protocol)."""
    R = entry_pb2.SyncAuthorizedEntriesResponse
    req = await stream.recv_message()
    if req is None:
        return  # the agent closed the stream without asking anything
    if req.ids:
        raise ServerError(
            Status.INVALID_ARGUMENT, "specifying IDs on initial request is not supported"
        )
    mask = _mask(req)
    if mask is not None and not mask.revision_number:
        raise ServerError(Status.INVALID_ARGUMENT, "revision number cannot be masked")
    # The mask of the first request applies to the whole stream; later ones are ignored.
    if len(entries) <= page_size:
        await stream.send_message(R(entries=[to_proto(e, mask) for e in entries]))
        return
    for start in range(0, len(entries), page_size):
        page = entries[start : start + page_size]
        await stream.send_message(
            R(
                entry_revisions=[
                    entry_pb2.EntryRevision(
                        id=e.id, revision_number=e.revision_number, created_at=e.created_at
                    )
                    for e in page
                ],
                more=start + page_size < len(entries),
            )
        )
    by_id = {e.id: e for e in entries}
    while True:
        req = await stream.recv_message()
        if req is None:
            return
        out: list[types_entry.Entry] = []
        for entry_id in sorted(req.ids):
            entry = by_id.get(entry_id)
            if entry is None:
                continue
            if len(out) == page_size:
                await stream.send_message(R(entries=out, more=True))
                out = []
            out.append(to_proto(entry, mask))
        await stream.send_message(R(entries=out, more=False))
