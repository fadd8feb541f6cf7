"""Bundles (opaque bytes per trust domain) and federation relationships."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from . import schema
from ._base import (
    Base,
    check_page_size,
    check_spiffe_id,
    check_text,
    decode_token,
    encode_token,
    trust_domain_name,
)
from .errors import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError
from .records import Bundle, BundleDeleteMode, EventKind, FederationRelationship, Page

__all__ = ["FEDERATION_FIELDS", "BundlesMixin"]

B = schema.bundles
FE = schema.federated_entries
FTD = schema.federated_trust_domains
E = schema.registered_entries

MAX_BUNDLE_BYTES = 16 * 1024 * 1024
PROFILES = ("https_web", "https_spiffe")
FEDERATION_FIELDS = frozenset(
    {"bundle_endpoint_url", "profile", "endpoint_spiffe_id", "trust_domain_bundle"}
)
"""Fields a federation-relationship update mask may name."""


def _check_bundle(bundle: Bundle) -> Bundle:
    td = trust_domain_name(bundle.trust_domain, "bundle trust_domain")
    if not isinstance(bundle.data, bytes) or not bundle.data:
        raise InvalidArgumentError(f"bundle {td!r} data must be non-empty bytes")
    if len(bundle.data) > MAX_BUNDLE_BYTES:
        raise InvalidArgumentError(f"bundle {td!r} data is larger than {MAX_BUNDLE_BYTES} bytes")
    return Bundle(td, bundle.data)


def _check_relationship(rel: FederationRelationship) -> FederationRelationship:
    td = trust_domain_name(rel.trust_domain, "federation relationship trust_domain")
    what = f"federation relationship {td!r}"
    url = check_text(rel.bundle_endpoint_url, f"{what} bundle_endpoint_url", max_len=2048)
    if not url.startswith("https://"):
        raise InvalidArgumentError(f"{what} bundle_endpoint_url {url!r} must be an https URL")
    if rel.profile not in PROFILES:
        raise InvalidArgumentError(f"{what} profile {rel.profile!r} must be one of {PROFILES}")
    if rel.profile == "https_spiffe":
        check_spiffe_id(rel.endpoint_spiffe_id, f"{what} endpoint_spiffe_id")
    elif rel.endpoint_spiffe_id:
        raise InvalidArgumentError(f"{what} endpoint_spiffe_id is only for https_spiffe")
    if rel.trust_domain_bundle is not None:
        _check_bundle(Bundle(td, rel.trust_domain_bundle))
    return replace(rel, trust_domain=td)


class BundlesMixin(Base):
    """Bundle and federation operations of :class:`~spiffed.server.datastore.DataStore`."""

    async def _put_bundle(self, conn: AsyncConnection, bundle: Bundle, *, create: bool) -> bool:
        """Insert or update; returns True when a row existed before."""
        now = self._now()
        row = await conn.execute(sa.select(B.c.id).where(B.c.trust_domain == bundle.trust_domain))
        pk = row.scalar()
        if pk is None:
            await conn.execute(
                sa.insert(B).values(
                    trust_domain=bundle.trust_domain,
                    data=bundle.data,
                    created_at=now,
                    updated_at=now,
                )
            )
            return False
        if create:
            raise AlreadyExistsError(
                f"bundle for trust domain {bundle.trust_domain!r} already exists"
            )
        await conn.execute(
            sa.update(B).where(B.c.id == pk).values(data=bundle.data, updated_at=now)
        )
        return True

    async def create_bundle(self, bundle: Bundle) -> Bundle:
        """Store a new bundle; AlreadyExistsError when the trust domain has one."""
        bundle = _check_bundle(bundle)
        async with self._write() as conn:
            await self._put_bundle(conn, bundle, create=True)
        return bundle

    async def set_bundle(self, bundle: Bundle) -> Bundle:
        """Store a bundle, replacing any for that trust domain."""
        bundle = _check_bundle(bundle)
        async with self._write() as conn:
            await self._put_bundle(conn, bundle, create=False)
        return bundle

    async def update_bundle(self, bundle: Bundle) -> Bundle:
        """Replace an existing bundle; NotFoundError when there is none."""
        bundle = _check_bundle(bundle)
        async with self._write() as conn:
            result = await conn.execute(
                sa.update(B)
                .where(B.c.trust_domain == bundle.trust_domain)
                .values(data=bundle.data, updated_at=self._now())
            )
            if result.rowcount == 0:
                raise NotFoundError(f"bundle for trust domain {bundle.trust_domain!r} not found")
        return bundle

    async def get_bundle(self, trust_domain: str) -> Bundle:
        """The bundle of a trust domain; NotFoundError when there is none."""
        td = trust_domain_name(trust_domain, "bundle trust_domain")
        async with self._read() as conn:
            data = (await conn.execute(sa.select(B.c.data).where(B.c.trust_domain == td))).scalar()
        if data is None:
            raise NotFoundError(f"bundle for trust domain {td!r} not found")
        return Bundle(td, bytes(data))

    async def delete_bundle(
        self, trust_domain: str, mode: BundleDeleteMode = BundleDeleteMode.RESTRICT
    ) -> None:
        """Delete a bundle; entries federating with it are handled as ``mode`` says."""
        td = trust_domain_name(trust_domain, "bundle trust_domain")
        async with self._write() as conn:
            pk = (await conn.execute(sa.select(B.c.id).where(B.c.trust_domain == td))).scalar()
            if pk is None:
                raise NotFoundError(f"bundle for trust domain {td!r} not found")
            users = (
                await conn.execute(
                    sa.select(E.c.id, E.c.entry_id)
                    .join(FE, FE.c.registered_entry_id == E.c.id)
                    .where(FE.c.bundle_id == pk)
                    .order_by(E.c.id)
                )
            ).all()
            if users and mode is BundleDeleteMode.RESTRICT:
                raise FailedPreconditionError(
                    f"bundle for trust domain {td!r} is federated with by {len(users)} "
                    f"registration entries (first: {users[0].entry_id!r}); "
                    "delete with mode dissociate or delete"
                )
            pks = [u.id for u in users]
            if users and mode is BundleDeleteMode.DELETE:
                await conn.execute(sa.delete(E).where(E.c.id.in_(pks)))
            elif users:
                await conn.execute(
                    sa.update(E)
                    .where(E.c.id.in_(pks))
                    .values(revision_number=E.c.revision_number + 1)
                )
            await conn.execute(sa.delete(FE).where(FE.c.bundle_id == pk))
            await conn.execute(sa.delete(B).where(B.c.id == pk))
            await self._append_events(conn, EventKind.ENTRY, [u.entry_id for u in users])

    async def list_bundles(self, *, page_size: int = 0, page_token: str = "") -> Page[Bundle]:
        """Every bundle, in creation order, ``page_size`` at a time (0 = all)."""
        check_page_size(page_size, "list_bundles")
        after = decode_token(page_token, "list_bundles")
        query = sa.select(B.c.id, B.c.trust_domain, B.c.data).where(B.c.id > after).order_by(B.c.id)
        if page_size:
            query = query.limit(page_size)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        token = encode_token(rows[-1].id) if page_size and len(rows) == page_size else ""
        return Page(tuple(Bundle(r.trust_domain, bytes(r.data)) for r in rows), token)

    async def count_bundles(self) -> int:
        """How many bundles are stored."""
        async with self._read() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(B))).scalar_one())

    # ----- federation relationships --------------------------------------------------------

    async def _relationship(
        self, conn: AsyncConnection, row: sa.Row[tuple[object, ...]]
    ) -> FederationRelationship:
        data = (
            await conn.execute(sa.select(B.c.data).where(B.c.trust_domain == row.trust_domain))
        ).scalar()
        return FederationRelationship(
            trust_domain=str(row.trust_domain),
            bundle_endpoint_url=str(row.bundle_endpoint_url),
            profile=str(row.bundle_endpoint_profile),
            endpoint_spiffe_id=str(row.endpoint_spiffe_id),
            trust_domain_bundle=None if data is None else bytes(data),
        )

    async def create_federation_relationship(
        self, rel: FederationRelationship
    ) -> FederationRelationship:
        """Store a relationship (and its bundle, when given)."""
        rel = _check_relationship(rel)
        now = self._now()
        async with self._write() as conn:
            taken = await conn.execute(
                sa.select(FTD.c.id).where(FTD.c.trust_domain == rel.trust_domain)
            )
            if taken.first() is not None:
                raise AlreadyExistsError(
                    f"federation relationship with {rel.trust_domain!r} already exists"
                )
            await conn.execute(
                sa.insert(FTD).values(
                    trust_domain=rel.trust_domain,
                    bundle_endpoint_url=rel.bundle_endpoint_url,
                    bundle_endpoint_profile=rel.profile,
                    endpoint_spiffe_id=rel.endpoint_spiffe_id,
                    created_at=now,
                    updated_at=now,
                )
            )
            if rel.trust_domain_bundle is not None:
                await self._put_bundle(
                    conn, Bundle(rel.trust_domain, rel.trust_domain_bundle), create=False
                )
            row = (
                await conn.execute(sa.select(FTD).where(FTD.c.trust_domain == rel.trust_domain))
            ).one()
            return await self._relationship(conn, row)

    async def get_federation_relationship(self, trust_domain: str) -> FederationRelationship:
        """The relationship with a trust domain; NotFoundError when there is none."""
        td = trust_domain_name(trust_domain, "federation relationship trust_domain")
        async with self._read() as conn:
            row = (await conn.execute(sa.select(FTD).where(FTD.c.trust_domain == td))).first()
            if row is None:
                raise NotFoundError(f"federation relationship with {td!r} not found")
            return await self._relationship(conn, row)

    async def update_federation_relationship(
        self, rel: FederationRelationship, mask: Iterable[str] | None = None
    ) -> FederationRelationship:
        """Change the fields named in ``mask`` (all of :data:`FEDERATION_FIELDS` when None)."""
        fields = FEDERATION_FIELDS if mask is None else frozenset(mask)
        unknown = fields - FEDERATION_FIELDS
        if unknown:
            raise InvalidArgumentError(
                f"federation relationship update mask names unknown fields: {sorted(unknown)}"
            )
        td = trust_domain_name(rel.trust_domain, "federation relationship trust_domain")
        async with self._write() as conn:
            row = (
                await conn.execute(sa.select(FTD).where(FTD.c.trust_domain == td).with_for_update())
            ).first()
            if row is None:
                raise NotFoundError(f"federation relationship with {td!r} not found")
            old = await self._relationship(conn, row)
            merged = replace(old, **{f: getattr(rel, f) for f in fields})
            if "trust_domain_bundle" not in fields or rel.trust_domain_bundle is None:
                merged = replace(merged, trust_domain_bundle=None)
            merged = _check_relationship(merged)
            await conn.execute(
                sa.update(FTD)
                .where(FTD.c.id == row.id)
                .values(
                    bundle_endpoint_url=merged.bundle_endpoint_url,
                    bundle_endpoint_profile=merged.profile,
                    endpoint_spiffe_id=merged.endpoint_spiffe_id,
                    updated_at=self._now(),
                )
            )
            if merged.trust_domain_bundle is not None:
                await self._put_bundle(conn, Bundle(td, merged.trust_domain_bundle), create=False)
            row = (await conn.execute(sa.select(FTD).where(FTD.c.id == row.id))).one()
            return await self._relationship(conn, row)

    async def delete_federation_relationship(self, trust_domain: str) -> None:
        """Delete a relationship (its bundle stays, as in SPIRE)."""
        td = trust_domain_name(trust_domain, "federation relationship trust_domain")
        async with self._write() as conn:
            result = await conn.execute(sa.delete(FTD).where(FTD.c.trust_domain == td))
            if result.rowcount == 0:
                raise NotFoundError(f"federation relationship with {td!r} not found")

    async def list_federation_relationships(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> Page[FederationRelationship]:
        """Every relationship in creation order, ``page_size`` at a time (0 = all)."""
        check_page_size(page_size, "list_federation_relationships")
        after = decode_token(page_token, "list_federation_relationships")
        query = sa.select(FTD).where(FTD.c.id > after).order_by(FTD.c.id)
        if page_size:
            query = query.limit(page_size)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
            items = [await self._relationship(conn, r) for r in rows]
        token = encode_token(rows[-1].id) if page_size and len(rows) == page_size else ""
        return Page(tuple(items), token)
