"""Join tokens, CA journals and the change-event log."""

from __future__ import annotations

import sqlalchemy as sa

from . import schema
from ._base import Base, check_int, check_text
from .errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from .records import CAJournal, Event, EventKind, JoinToken

__all__ = ["MiscMixin"]

J = schema.join_tokens
CJ = schema.ca_journals
EV = schema.events
MAX_JOURNAL_BYTES = 16 * 1024 * 1024


class MiscMixin(Base):
    """Join-token, CA-journal and event operations of the datastore."""

    async def create_join_token(self, token: JoinToken) -> JoinToken:
        """Store a join token; AlreadyExistsError when the token exists."""
        check_text(token.token, "join token")
        check_int(token.expiry, f"join token {token.token!r} expiry")
        async with self._write() as conn:
            taken = await conn.execute(sa.select(J.c.token).where(J.c.token == token.token))
            if taken.first() is not None:
                raise AlreadyExistsError(f"join token {token.token!r} already exists")
            await conn.execute(sa.insert(J).values(token=token.token, expiry=token.expiry))
        return token

    async def consume_join_token(self, token: str) -> JoinToken:
        """Fetch and delete a join token in one statement: of concurrent callers (in one or
        several processes) exactly one gets it, the others get NotFoundError. The caller
        checks the expiry."""
        check_text(token, "join token")
        async with self._write() as conn:
            expiry = (
                await conn.execute(sa.delete(J).where(J.c.token == token).returning(J.c.expiry))
            ).scalar()
        if expiry is None:
            raise NotFoundError(f"join token {token!r} not found")
        return JoinToken(token, int(expiry))

    async def prune_join_tokens(self, expires_before: int) -> int:
        """Delete tokens that expired before the time given; returns how many."""
        check_int(expires_before, "prune_join_tokens expires_before")
        async with self._write() as conn:
            result = await conn.execute(sa.delete(J).where(J.c.expiry < expires_before))
        return int(result.rowcount)

    # ----- CA journals -----------------------------------------------------------------------

    async def set_ca_journal(self, journal: CAJournal) -> CAJournal:
        """Create (``id`` 0) or replace (``id`` given) a CA journal; returns it with its ID."""
        what = "CA journal"
        check_text(journal.active_x509_authority_id, f"{what} active_x509_authority_id")
        check_int(journal.expires_at, f"{what} expires_at")
        check_int(journal.id, f"{what} id")
        if not isinstance(journal.data, bytes) or not journal.data:
            raise InvalidArgumentError(f"{what} data must be non-empty bytes")
        if len(journal.data) > MAX_JOURNAL_BYTES:
            raise InvalidArgumentError(f"{what} data is larger than {MAX_JOURNAL_BYTES} bytes")
        values = {
            "active_x509_authority_id": journal.active_x509_authority_id,
            "data": journal.data,
            "expires_at": journal.expires_at,
            "updated_at": self._now(),
        }
        async with self._write() as conn:
            if journal.id == 0:
                pk = await conn.execute(sa.insert(CJ).values(values).returning(CJ.c.id))
                return CAJournal(
                    journal.active_x509_authority_id, journal.data, journal.expires_at,
                    int(pk.scalar_one()),
                )  # fmt: skip
            result = await conn.execute(sa.update(CJ).where(CJ.c.id == journal.id).values(values))
            if result.rowcount == 0:
                raise NotFoundError(f"CA journal {journal.id} not found")
        return journal

    async def fetch_ca_journal(self, active_x509_authority_id: str) -> CAJournal:
        """The newest journal whose active X.509 authority is the one given."""
        check_text(active_x509_authority_id, "CA journal active_x509_authority_id")
        query = sa.select(CJ).where(CJ.c.active_x509_authority_id == active_x509_authority_id)
        async with self._read() as conn:
            row = (await conn.execute(query.order_by(CJ.c.id.desc()).limit(1))).first()
        if row is None:
            raise NotFoundError(f"CA journal for authority {active_x509_authority_id!r} not found")
        return CAJournal(row.active_x509_authority_id, bytes(row.data), row.expires_at, row.id)

    async def latest_ca_journal(self) -> CAJournal | None:
        """The most recently written journal, or None."""
        query = sa.select(CJ).order_by(CJ.c.updated_at.desc(), CJ.c.id.desc()).limit(1)
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return CAJournal(row.active_x509_authority_id, bytes(row.data), row.expires_at, row.id)

    async def prune_ca_journals(self, expires_before: int) -> int:
        """Delete journals whose every authority expired before the time given."""
        check_int(expires_before, "prune_ca_journals expires_before")
        async with self._write() as conn:
            result = await conn.execute(sa.delete(CJ).where(CJ.c.expires_at < expires_before))
        return int(result.rowcount)

    # ----- events ----------------------------------------------------------------------------

    async def list_events(self, after_id: int = 0, *, limit: int = 0) -> tuple[Event, ...]:
        """Events with an ID above ``after_id``, oldest first (at most ``limit``; 0 = all).

        IDs are visible in increasing order, so a reader that remembers the last ID it saw
        and asks for the ones after it never misses an event.
        """
        check_int(after_id, "list_events after_id")
        check_int(limit, "list_events limit")
        query = sa.select(EV).where(EV.c.id > after_id).order_by(EV.c.id)
        if limit:
            query = query.limit(limit)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return tuple(Event(r.id, EventKind(r.kind), r.record_id, r.created_at) for r in rows)

    async def last_event_id(self) -> int:
        """The highest event ID so far (0 when there is none): a start point for a cache."""
        async with self._read() as conn:
            value = (await conn.execute(sa.select(sa.func.max(EV.c.id)))).scalar()
        return int(value or 0)

    async def prune_events(self, older_than: int) -> int:
        """Delete events created before ``older_than`` (epoch seconds); returns how many."""
        check_int(older_than, "prune_events older_than")
        async with self._write() as conn:
            result = await conn.execute(sa.delete(EV).where(EV.c.created_at < older_than))
        return int(result.rowcount)
