"""Registration entries: create, read, update with a mask, delete, list, count, batch."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from . import schema
from ._base import (
    MAX_ENTRY_ID_LEN,
    MAX_HINT_LEN,
    MAX_TTL,
    Base,
    check_bool,
    check_int,
    check_page_size,
    check_spiffe_id,
    check_text,
    chunks,
    decode_token,
    encode_token,
    normalize_selectors,
    selector_pairs_in,
    set_match,
    trust_domain_name,
)
from .errors import AlreadyExistsError, DataStoreError, InvalidArgumentError, NotFoundError
from .records import (
    EventKind,
    Page,
    RegistrationEntry,
    Selector,
    SelectorFilter,
    TrustDomainFilter,
)

__all__ = ["ENTRY_FIELDS", "EntryFilter", "EntryResult", "EntriesMixin"]

ENTRY_FIELDS = frozenset(
    {
        "spiffe_id",
        "parent_id",
        "selectors",
        "x509_svid_ttl",
        "jwt_svid_ttl",
        "federates_with",
        "dns_names",
        "admin",
        "downstream",
        "expires_at",
        "hint",
        "store_svid",
    }
)
"""Fields an update mask may name."""

E = schema.registered_entries


@dataclass(frozen=True, slots=True)
class EntryFilter:
    """Filters for listing and counting entries; ``None`` means "do not filter"."""

    by_spiffe_id: str | None = None
    by_parent_id: str | None = None
    by_selectors: SelectorFilter | None = None
    by_federates_with: TrustDomainFilter | None = None
    by_hint: str | None = None
    by_downstream: bool | None = None


@dataclass(frozen=True, slots=True)
class EntryResult:
    """The outcome of one batch item: ``entry`` on success, else ``error``."""

    entry: RegistrationEntry | None = None
    error: DataStoreError | None = None


def _check_entry_id(entry_id: str) -> str:
    check_text(entry_id, "registration entry id", max_len=MAX_ENTRY_ID_LEN)
    if not entry_id.isascii() or not entry_id.isprintable() or " " in entry_id:
        raise InvalidArgumentError(
            f"registration entry id {entry_id!r} must be printable ASCII without spaces"
        )
    return entry_id


def normalize_entry(entry: RegistrationEntry) -> RegistrationEntry:
    """Check every field of an entry and return it in stored form."""
    what = "registration entry"
    check_spiffe_id(entry.spiffe_id, f"{what} spiffe_id")
    check_spiffe_id(entry.parent_id, f"{what} parent_id")
    if entry.id:
        _check_entry_id(entry.id)
    sels = normalize_selectors(entry.selectors, f"{what} selectors")
    check_int(entry.x509_svid_ttl, f"{what} x509_svid_ttl", high=MAX_TTL)
    check_int(entry.jwt_svid_ttl, f"{what} jwt_svid_ttl", high=MAX_TTL)
    tds = tuple(
        sorted({trust_domain_name(td, f"{what} federates_with") for td in entry.federates_with})
    )
    dns: list[str] = []
    for name in entry.dns_names:
        check_text(name, f"{what} dns_names entry")
        if name not in dns:
            dns.append(name)
    check_bool(entry.admin, f"{what} admin")
    check_bool(entry.downstream, f"{what} downstream")
    check_bool(entry.store_svid, f"{what} store_svid")
    check_int(entry.expires_at, f"{what} expires_at")
    check_text(entry.hint, f"{what} hint", max_len=MAX_HINT_LEN, empty_ok=True)
    return replace(entry, selectors=sels, federates_with=tds, dns_names=tuple(dns))


def _similarity_key(entry: RegistrationEntry) -> str:
    doc = [entry.spiffe_id, entry.parent_id, [[s.type, s.value] for s in entry.selectors]]
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()


def _row_values(entry: RegistrationEntry) -> dict[str, object]:
    return {
        "spiffe_id": entry.spiffe_id,
        "parent_id": entry.parent_id,
        "similarity_key": _similarity_key(entry),
        "x509_svid_ttl": entry.x509_svid_ttl,
        "jwt_svid_ttl": entry.jwt_svid_ttl,
        "admin": entry.admin,
        "downstream": entry.downstream,
        "expires_at": entry.expires_at,
        "hint": entry.hint,
        "store_svid": entry.store_svid,
        "revision_number": entry.revision_number,
    }


class EntriesMixin(Base):
    """Registration-entry operations of :class:`~spiffed.server.datastore.DataStore`."""

    # ----- helpers -------------------------------------------------------------------------

    async def _bundle_ids(self, conn: AsyncConnection, tds: Sequence[str]) -> list[int]:
        if not tds:
            return []
        rows = (
            await conn.execute(
                sa.select(schema.bundles.c.trust_domain, schema.bundles.c.id).where(
                    schema.bundles.c.trust_domain.in_(tds)
                )
            )
        ).all()
        found = {str(td): int(pk) for td, pk in rows}
        for td in tds:
            if td not in found:
                raise InvalidArgumentError(
                    f"registration entry federates_with {td!r}: no bundle for that trust domain"
                )
        return [found[td] for td in tds]

    async def _write_children(
        self, conn: AsyncConnection, pk: int, entry: RegistrationEntry, bundle_ids: list[int]
    ) -> None:
        if entry.selectors:
            await conn.execute(
                sa.insert(schema.selectors),
                [
                    {"registered_entry_id": pk, "type": s.type, "value": s.value}
                    for s in entry.selectors
                ],
            )
        if entry.dns_names:
            await conn.execute(
                sa.insert(schema.dns_names),
                [{"registered_entry_id": pk, "value": d} for d in entry.dns_names],
            )
        if bundle_ids:
            await conn.execute(
                sa.insert(schema.federated_entries),
                [{"registered_entry_id": pk, "bundle_id": b} for b in bundle_ids],
            )

    async def _load_entries(
        self, conn: AsyncConnection, rows: Sequence[sa.Row[tuple[object, ...]]]
    ) -> list[RegistrationEntry]:
        pks = [int(r.id) for r in rows]
        sels: dict[int, list[Selector]] = {pk: [] for pk in pks}
        dns: dict[int, list[str]] = {pk: [] for pk in pks}
        feds: dict[int, list[str]] = {pk: [] for pk in pks}
        S, D, F, B = schema.selectors, schema.dns_names, schema.federated_entries, schema.bundles
        for part in chunks(pks):
            for owner, typ, value in await conn.execute(
                sa.select(S.c.registered_entry_id, S.c.type, S.c.value)
                .where(S.c.registered_entry_id.in_(part))
                .order_by(S.c.type, S.c.value)
            ):
                sels[owner].append(Selector(typ, value))
            for owner, value in await conn.execute(
                sa.select(D.c.registered_entry_id, D.c.value)
                .where(D.c.registered_entry_id.in_(part))
                .order_by(D.c.id)
            ):
                dns[owner].append(value)
            for owner, td in await conn.execute(
                sa.select(F.c.registered_entry_id, B.c.trust_domain)
                .join(B, B.c.id == F.c.bundle_id)
                .where(F.c.registered_entry_id.in_(part))
                .order_by(B.c.trust_domain)
            ):
                feds[owner].append(td)
        return [
            RegistrationEntry(
                id=r.entry_id,
                spiffe_id=r.spiffe_id,
                parent_id=r.parent_id,
                selectors=tuple(sels[r.id]),
                x509_svid_ttl=r.x509_svid_ttl,
                jwt_svid_ttl=r.jwt_svid_ttl,
                federates_with=tuple(feds[r.id]),
                dns_names=tuple(dns[r.id]),
                admin=bool(r.admin),
                downstream=bool(r.downstream),
                expires_at=r.expires_at,
                hint=r.hint,
                store_svid=bool(r.store_svid),
                revision_number=r.revision_number,
                created_at=r.created_at,
            )
            for r in rows
        ]

    async def _entry_row(
        self, conn: AsyncConnection, entry_id: str, *, for_update: bool = False
    ) -> sa.Row[tuple[object, ...]]:
        query = sa.select(E).where(E.c.entry_id == entry_id)
        if for_update:
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
        if row is None:
            raise NotFoundError(f"registration entry {entry_id!r} not found")
        return row

    async def _similar_entry(self, entry: RegistrationEntry) -> RegistrationEntry | None:
        async with self._read() as conn:
            row = (
                await conn.execute(sa.select(E).where(E.c.similarity_key == _similarity_key(entry)))
            ).first()
            return None if row is None else (await self._load_entries(conn, [row]))[0]

    # ----- operations ------------------------------------------------------------------------

    async def create_entry(self, entry: RegistrationEntry) -> RegistrationEntry:
        """Store a new entry (ID generated when empty) and return it as stored.

        Raises AlreadyExistsError with ``existing`` set when an entry with the same SPIFFE ID,
        parent ID and selectors exists (as SPIRE's BatchCreateEntry), or the ID is taken.
        """
        entry = normalize_entry(entry)
        entry = replace(
            entry, id=entry.id or str(uuid.uuid4()), revision_number=0, created_at=self._now()
        )
        try:
            async with self._write() as conn:
                similar = (
                    await conn.execute(
                        sa.select(E.c.entry_id).where(E.c.similarity_key == _similarity_key(entry))
                    )
                ).first()
                if similar is not None:
                    raise AlreadyExistsError("similar registration entry already exists")
                taken = (
                    await conn.execute(sa.select(E.c.id).where(E.c.entry_id == entry.id))
                ).first()
                if taken is not None:
                    raise AlreadyExistsError(f"registration entry id {entry.id!r} already exists")
                bundle_ids = await self._bundle_ids(conn, entry.federates_with)
                pk = (
                    await conn.execute(
                        sa.insert(E)
                        .values(
                            entry_id=entry.id, created_at=entry.created_at, **_row_values(entry)
                        )
                        .returning(E.c.id)
                    )
                ).scalar_one()
                await self._write_children(conn, pk, entry, bundle_ids)
                await self._append_events(conn, EventKind.ENTRY, [entry.id])
        except (AlreadyExistsError, IntegrityError) as exc:
            existing = await self._similar_entry(entry)
            if existing is not None:
                raise AlreadyExistsError(
                    "similar registration entry already exists", existing
                ) from None
            if isinstance(exc, AlreadyExistsError):
                raise
            raise AlreadyExistsError(f"registration entry id {entry.id!r} already exists") from None
        return entry

    async def get_entry(self, entry_id: str) -> RegistrationEntry:
        """The entry with this ID; NotFoundError when there is none."""
        _check_entry_id(entry_id)
        async with self._read() as conn:
            row = await self._entry_row(conn, entry_id)
            return (await self._load_entries(conn, [row]))[0]

    async def update_entry(
        self, entry: RegistrationEntry, mask: Iterable[str] | None = None
    ) -> RegistrationEntry:
        """Change the fields named in ``mask`` (all of :data:`ENTRY_FIELDS` when None) of the
        entry ``entry.id``; bumps its revision number and returns the stored entry."""
        fields = ENTRY_FIELDS if mask is None else frozenset(mask)
        unknown = fields - ENTRY_FIELDS
        if unknown:
            raise InvalidArgumentError(
                f"registration entry update mask names unknown fields: {sorted(unknown)}"
            )
        _check_entry_id(entry.id)
        try:
            async with self._write() as conn:
                row = await self._entry_row(conn, entry.id, for_update=True)
                old = (await self._load_entries(conn, [row]))[0]
                merged = replace(old, **{f: getattr(entry, f) for f in fields})
                merged = normalize_entry(merged)
                merged = replace(merged, revision_number=old.revision_number + 1)
                bundle_ids = await self._bundle_ids(conn, merged.federates_with)
                await conn.execute(sa.update(E).where(E.c.id == row.id).values(_row_values(merged)))
                for child in (schema.selectors, schema.dns_names, schema.federated_entries):
                    await conn.execute(
                        sa.delete(child).where(child.c.registered_entry_id == row.id)
                    )
                await self._write_children(conn, row.id, merged, bundle_ids)
                await self._append_events(conn, EventKind.ENTRY, [entry.id])
        except IntegrityError:
            raise AlreadyExistsError(
                f"registration entry {entry.id!r}: a similar entry (same spiffe_id, parent_id "
                "and selectors) already exists"
            ) from None
        return merged

    async def delete_entry(self, entry_id: str) -> RegistrationEntry:
        """Delete the entry and return it as it was; NotFoundError when there is none."""
        _check_entry_id(entry_id)
        async with self._write() as conn:
            row = await self._entry_row(conn, entry_id, for_update=True)
            old = (await self._load_entries(conn, [row]))[0]
            await conn.execute(sa.delete(E).where(E.c.id == row.id))
            await self._append_events(conn, EventKind.ENTRY, [entry_id])
        return old

    async def prune_entries(self, expires_before: int) -> int:
        """Delete entries whose ``expires_at`` is set and earlier; returns how many."""
        check_int(expires_before, "prune_entries expires_before")
        async with self._write() as conn:
            ids = (
                (
                    await conn.execute(
                        sa.delete(E)
                        .where(E.c.expires_at > 0, E.c.expires_at < expires_before)
                        .returning(E.c.entry_id)
                    )
                )
                .scalars()
                .all()
            )
            await self._append_events(conn, EventKind.ENTRY, ids)
        return len(ids)

    def _entry_where(self, flt: EntryFilter) -> list[sa.ColumnElement[bool]]:
        where: list[sa.ColumnElement[bool]] = []
        if flt.by_spiffe_id is not None:
            where.append(E.c.spiffe_id == flt.by_spiffe_id)
        if flt.by_parent_id is not None:
            where.append(E.c.parent_id == flt.by_parent_id)
        if flt.by_hint is not None:
            where.append(E.c.hint == flt.by_hint)
        if flt.by_downstream is not None:
            where.append(E.c.downstream == flt.by_downstream)
        if flt.by_selectors is not None:
            sels = normalize_selectors(flt.by_selectors.selectors, "entry filter by_selectors")
            S = schema.selectors
            where.append(
                set_match(
                    outer_key=E.c.id,
                    owner=S.c.registered_entry_id,
                    source=S,
                    is_given=selector_pairs_in(S.c.type, S.c.value, sels),
                    n_given=len(sels),
                    match=flt.by_selectors.match,
                )
            )
        if flt.by_federates_with is not None:
            tds = sorted(
                {
                    trust_domain_name(td, "entry filter by_federates_with")
                    for td in flt.by_federates_with.trust_domains
                }
            )
            if not tds:
                raise InvalidArgumentError("entry filter by_federates_with must not be empty")
            F, B = schema.federated_entries, schema.bundles
            where.append(
                set_match(
                    outer_key=E.c.id,
                    owner=F.c.registered_entry_id,
                    source=F.join(B, B.c.id == F.c.bundle_id),
                    is_given=B.c.trust_domain.in_(tds),
                    n_given=len(tds),
                    match=flt.by_federates_with.match,
                )
            )
        return where

    async def list_entries(
        self, flt: EntryFilter | None = None, *, page_size: int = 0, page_token: str = ""
    ) -> Page[RegistrationEntry]:
        """Entries matching ``flt`` in creation order, ``page_size`` at a time (0 = all)."""
        check_page_size(page_size, "list_entries")
        after = decode_token(page_token, "list_entries")
        query = sa.select(E).where(E.c.id > after, *self._entry_where(flt or EntryFilter()))
        query = query.order_by(E.c.id)
        if page_size:
            query = query.limit(page_size)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
            items = await self._load_entries(conn, rows)
        token = encode_token(rows[-1].id) if page_size and len(rows) == page_size else ""
        return Page(tuple(items), token)

    async def count_entries(self, flt: EntryFilter | None = None) -> int:
        """How many entries match ``flt``."""
        query = sa.select(sa.func.count()).select_from(E)
        query = query.where(*self._entry_where(flt or EntryFilter()))
        async with self._read() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def list_entry_ids(self) -> dict[str, int]:
        """Every entry ID with its revision number (for a cache's full reload check)."""
        async with self._read() as conn:
            rows = await conn.execute(sa.select(E.c.entry_id, E.c.revision_number))
            return {str(eid): int(rev) for eid, rev in rows}

    async def batch_create_entries(self, entries: Sequence[RegistrationEntry]) -> list[EntryResult]:
        """Create each entry in its own transaction; one result per item, in order."""
        out: list[EntryResult] = []
        for entry in entries:
            try:
                out.append(EntryResult(entry=await self.create_entry(entry)))
            except DataStoreError as exc:
                out.append(EntryResult(error=exc))
        return out

    async def batch_update_entries(
        self, entries: Sequence[RegistrationEntry], mask: Iterable[str] | None = None
    ) -> list[EntryResult]:
        """Update each entry in its own transaction; one result per item, in order."""
        fields = None if mask is None else frozenset(mask)
        out: list[EntryResult] = []
        for entry in entries:
            try:
                out.append(EntryResult(entry=await self.update_entry(entry, fields)))
            except DataStoreError as exc:
                out.append(EntryResult(error=exc))
        return out

    async def batch_delete_entries(self, entry_ids: Sequence[str]) -> list[EntryResult]:
        """Delete each entry in its own transaction; one result per item, in order."""
        out: list[EntryResult] = []
        for entry_id in entry_ids:
            try:
                out.append(EntryResult(entry=await self.delete_entry(entry_id)))
            except DataStoreError as exc:
                out.append(EntryResult(error=exc))
        return out
