"""Attested nodes and their selectors."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from . import schema
from ._base import (
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
)
from .errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from .records import AttestedNode, EventKind, Page, Selector, SelectorFilter

__all__ = ["NODE_FIELDS", "NodeFilter", "NodesMixin"]

NODE_FIELDS = frozenset(
    {
        "attestation_data_type",
        "cert_serial_number",
        "cert_not_after",
        "new_cert_serial_number",
        "new_cert_not_after",
        "can_reattest",
        "agent_version",
        "selectors",
    }
)
"""Fields an attested-node update mask may name."""

N = schema.attested_nodes
NS = schema.node_selectors


@dataclass(frozen=True, slots=True)
class NodeFilter:
    """Filters for listing and counting attested nodes; ``None`` means "do not filter"."""

    by_attestation_type: str | None = None
    by_banned: bool | None = None
    by_expires_before: int | None = None
    by_selectors: SelectorFilter | None = None
    by_can_reattest: bool | None = None


def normalize_node(node: AttestedNode) -> AttestedNode:
    """Check every field of a node and return it in stored form."""
    what = f"attested node {node.spiffe_id!r}"
    check_spiffe_id(node.spiffe_id, "attested node spiffe_id")
    check_text(node.attestation_data_type, f"{what} attestation_data_type", empty_ok=True)
    check_text(node.cert_serial_number, f"{what} cert_serial_number", empty_ok=True)
    check_int(node.cert_not_after, f"{what} cert_not_after")
    check_text(node.new_cert_serial_number, f"{what} new_cert_serial_number", empty_ok=True)
    check_int(node.new_cert_not_after, f"{what} new_cert_not_after")
    check_bool(node.can_reattest, f"{what} can_reattest")
    check_text(node.agent_version, f"{what} agent_version", empty_ok=True)
    sels = normalize_selectors(node.selectors, f"{what} selectors", empty_ok=True)
    return replace(node, selectors=sels)


def _values(node: AttestedNode) -> dict[str, object]:
    return {
        "data_type": node.attestation_data_type,
        "serial_number": node.cert_serial_number,
        "expires_at": node.cert_not_after,
        "new_serial_number": node.new_cert_serial_number,
        "new_expires_at": node.new_cert_not_after,
        "can_reattest": node.can_reattest,
        "agent_version": node.agent_version,
    }


class NodesMixin(Base):
    """Attested-node operations of :class:`~spiffed.server.datastore.DataStore`."""

    async def _load_nodes(
        self, conn: AsyncConnection, rows: Sequence[sa.Row[tuple[object, ...]]]
    ) -> list[AttestedNode]:
        ids = [str(r.spiffe_id) for r in rows]
        sels: dict[str, list[Selector]] = {i: [] for i in ids}
        for part in chunks(ids):
            for owner, typ, value in await conn.execute(
                sa.select(NS.c.spiffe_id, NS.c.type, NS.c.value)
                .where(NS.c.spiffe_id.in_(part))
                .order_by(NS.c.type, NS.c.value)
            ):
                sels[owner].append(Selector(typ, value))
        return [
            AttestedNode(
                spiffe_id=r.spiffe_id,
                attestation_data_type=r.data_type,
                cert_serial_number=r.serial_number,
                cert_not_after=r.expires_at,
                new_cert_serial_number=r.new_serial_number,
                new_cert_not_after=r.new_expires_at,
                can_reattest=bool(r.can_reattest),
                agent_version=r.agent_version,
                selectors=tuple(sels[r.spiffe_id]),
            )
            for r in rows
        ]

    async def _node_row(
        self, conn: AsyncConnection, spiffe_id: str, *, for_update: bool = False
    ) -> sa.Row[tuple[object, ...]]:
        query = sa.select(N).where(N.c.spiffe_id == spiffe_id)
        if for_update:
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
        if row is None:
            raise NotFoundError(f"attested node {spiffe_id!r} not found")
        return row

    async def _replace_selectors(
        self, conn: AsyncConnection, spiffe_id: str, sels: Sequence[Selector]
    ) -> None:
        await conn.execute(sa.delete(NS).where(NS.c.spiffe_id == spiffe_id))
        if sels:
            await conn.execute(
                sa.insert(NS),
                [{"spiffe_id": spiffe_id, "type": s.type, "value": s.value} for s in sels],
            )

    async def create_node(self, node: AttestedNode) -> AttestedNode:
        """Store a new attested node with its selectors; AlreadyExistsError if its ID is taken."""
        node = normalize_node(node)
        now = self._now()
        async with self._write() as conn:
            taken = await conn.execute(sa.select(N.c.id).where(N.c.spiffe_id == node.spiffe_id))
            if taken.first() is not None:
                raise AlreadyExistsError(f"attested node {node.spiffe_id!r} already exists")
            await conn.execute(
                sa.insert(N).values(
                    spiffe_id=node.spiffe_id, created_at=now, updated_at=now, **_values(node)
                )
            )
            await self._replace_selectors(conn, node.spiffe_id, node.selectors)
            await self._append_events(conn, EventKind.NODE, [node.spiffe_id])
        return node

    async def get_node(self, spiffe_id: str) -> AttestedNode:
        """The attested node with this SPIFFE ID; NotFoundError when there is none."""
        check_spiffe_id(spiffe_id, "attested node spiffe_id")
        async with self._read() as conn:
            row = await self._node_row(conn, spiffe_id)
            return (await self._load_nodes(conn, [row]))[0]

    async def update_node(
        self,
        node: AttestedNode,
        mask: Iterable[str] | None = None,
        *,
        expect_not_banned: bool = False,
        expect_new_serial: str | None = None,
    ) -> AttestedNode:
        """Change the fields named in ``mask`` (all of :data:`NODE_FIELDS` when None).

        The expectations are checked on the stored row inside the same write transaction
        (the row is locked first), so a concurrent ban cannot slip in between the check and
        the write; when one does not hold, nothing is written and
        :class:`FailedPreconditionError` is raised:

        * ``expect_not_banned``: the stored node is not banned (a serial number is set);
        * ``expect_new_serial``: the stored node's new serial number is exactly this
          (non-empty) value and its current serial number is not blank (not banned).
        """
        fields = NODE_FIELDS if mask is None else frozenset(mask)
        unknown = fields - NODE_FIELDS
        if unknown:
            raise InvalidArgumentError(
                f"attested node update mask names unknown fields: {sorted(unknown)}"
            )
        check_spiffe_id(node.spiffe_id, "attested node spiffe_id")
        async with self._write() as conn:
            row = await self._node_row(conn, node.spiffe_id, for_update=True)
            old = (await self._load_nodes(conn, [row]))[0]
            if expect_not_banned and old.banned:
                raise FailedPreconditionError(f"attested node {node.spiffe_id!r} is banned")
            if expect_new_serial is not None and (
                not expect_new_serial
                or old.new_cert_serial_number != expect_new_serial
                or not old.cert_serial_number
            ):
                raise FailedPreconditionError(
                    f"attested node {node.spiffe_id!r} no longer has new serial number "
                    f"{expect_new_serial!r} with a current one set"
                )
            merged = normalize_node(replace(old, **{f: getattr(node, f) for f in fields}))
            await conn.execute(
                sa.update(N)
                .where(N.c.id == row.id)
                .values(updated_at=self._now(), **_values(merged))
            )
            if "selectors" in fields:
                await self._replace_selectors(conn, merged.spiffe_id, merged.selectors)
            await self._append_events(conn, EventKind.NODE, [node.spiffe_id])
        return merged

    async def set_node_selectors(
        self, spiffe_id: str, selectors: Iterable[Selector]
    ) -> tuple[Selector, ...]:
        """Replace a node's selectors (the node record need not exist yet, as in SPIRE)."""
        check_spiffe_id(spiffe_id, "attested node spiffe_id")
        sels = normalize_selectors(
            selectors, f"attested node {spiffe_id!r} selectors", empty_ok=True
        )
        async with self._write() as conn:
            await self._replace_selectors(conn, spiffe_id, sels)
            await self._append_events(conn, EventKind.NODE, [spiffe_id])
        return sels

    async def ban_node(self, spiffe_id: str) -> AttestedNode:
        """Ban a node: blank its current and new certificate serial numbers."""
        blank = AttestedNode(spiffe_id=spiffe_id)
        return await self.update_node(blank, {"cert_serial_number", "new_cert_serial_number"})

    async def delete_node(self, spiffe_id: str) -> AttestedNode:
        """Delete (evict) a node and its selectors; returns it as it was."""
        check_spiffe_id(spiffe_id, "attested node spiffe_id")
        async with self._write() as conn:
            row = await self._node_row(conn, spiffe_id, for_update=True)
            old = (await self._load_nodes(conn, [row]))[0]
            await conn.execute(sa.delete(N).where(N.c.id == row.id))
            await conn.execute(sa.delete(NS).where(NS.c.spiffe_id == spiffe_id))
            await self._append_events(conn, EventKind.NODE, [spiffe_id])
        return old

    def _node_where(self, flt: NodeFilter) -> list[sa.ColumnElement[bool]]:
        where: list[sa.ColumnElement[bool]] = []
        if flt.by_attestation_type is not None:
            where.append(N.c.data_type == flt.by_attestation_type)
        if flt.by_banned is not None:
            banned = sa.and_(N.c.serial_number == "", N.c.new_serial_number == "")
            where.append(banned if flt.by_banned else ~banned)
        if flt.by_expires_before is not None:
            check_int(flt.by_expires_before, "node filter by_expires_before")
            where.append(N.c.expires_at < flt.by_expires_before)
        if flt.by_can_reattest is not None:
            where.append(N.c.can_reattest == flt.by_can_reattest)
        if flt.by_selectors is not None:
            sels = normalize_selectors(flt.by_selectors.selectors, "node filter by_selectors")
            where.append(
                set_match(
                    outer_key=N.c.spiffe_id,
                    owner=NS.c.spiffe_id,
                    source=NS,
                    is_given=selector_pairs_in(NS.c.type, NS.c.value, sels),
                    n_given=len(sels),
                    match=flt.by_selectors.match,
                )
            )
        return where

    async def list_nodes(
        self, flt: NodeFilter | None = None, *, page_size: int = 0, page_token: str = ""
    ) -> Page[AttestedNode]:
        """Attested nodes matching ``flt`` in creation order, ``page_size`` at a time."""
        check_page_size(page_size, "list_nodes")
        after = decode_token(page_token, "list_nodes")
        query = sa.select(N).where(N.c.id > after, *self._node_where(flt or NodeFilter()))
        query = query.order_by(N.c.id)
        if page_size:
            query = query.limit(page_size)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
            items = await self._load_nodes(conn, rows)
        token = encode_token(rows[-1].id) if page_size and len(rows) == page_size else ""
        return Page(tuple(items), token)

    async def count_nodes(self, flt: NodeFilter | None = None) -> int:
        """How many attested nodes match ``flt``."""
        query = sa.select(sa.func.count()).select_from(N)
        query = query.where(*self._node_where(flt or NodeFilter()))
        async with self._read() as conn:
            return int((await conn.execute(query)).scalar_one())
