"""Shared plumbing: transactions, input checks, pagination tokens, set-match filters."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import schema
from .errors import InvalidArgumentError
from .records import EventKind, MatchBehavior, Selector

MAX_ID_LEN = 2048
MAX_ENTRY_ID_LEN = 255
MAX_NAME_LEN = 255
MAX_HINT_LEN = 1024
MAX_TTL = 2**31 - 1
MAX_TIME = 2**62
_EVENT_LOCK_KEY = 0x5350_4946_4645_4431  # "SPIFFED1": orders event IDs by commit (PostgreSQL)
_TD_RE = re.compile(r"^[a-z0-9._-]{1,255}$")
_IN_CHUNK = 5000
_EVENTS_APPENDED = "spiffed_events_appended"
T = TypeVar("T")


class Base:
    """State and helpers shared by the datastore's parts."""

    _engine: AsyncEngine
    _postgres: bool
    _memory: bool
    _write_lock: asyncio.Lock
    _clock: Callable[[], float]

    def _now(self) -> int:
        return int(self._clock())

    def _lock_for(self, *, write: bool) -> AbstractAsyncContextManager[object]:
        if self._postgres or not (write or self._memory):
            return nullcontext()
        return self._write_lock

    def add_commit_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after each write transaction that appended change events
        commits (in this process). It runs synchronously in the writer's task, so it must
        be quick and must not raise; a cache uses it to wake its event follower."""
        listeners: list[Callable[[], None]] = self.__dict__.setdefault("_commit_listeners", [])
        listeners.append(callback)

    def remove_commit_listener(self, callback: Callable[[], None]) -> None:
        """Forget a callback given to :meth:`add_commit_listener` (no error if unknown)."""
        listeners: list[Callable[[], None]] = self.__dict__.get("_commit_listeners", [])
        if callback in listeners:
            listeners.remove(callback)

    def _notify_commit(self) -> None:
        for callback in list(self.__dict__.get("_commit_listeners", ())):
            with contextlib.suppress(Exception):  # a listener must not fail the write
                callback()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on success;
        commit listeners are told when it appended events."""
        async with self._lock_for(write=True):
            engine = self._engine.execution_options(spiffed_write=True)
            async with engine.begin() as conn:
                try:
                    yield conn
                finally:
                    appended = conn.info.pop(_EVENTS_APPENDED, False)
        if appended:
            self._notify_commit()

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        """One read transaction with a consistent snapshot."""
        async with self._lock_for(write=False):
            engine = self._engine
            if self._postgres:
                engine = engine.execution_options(isolation_level="REPEATABLE READ")
            async with engine.connect() as conn, conn.begin():
                yield conn

    async def _append_events(
        self, conn: AsyncConnection, kind: EventKind, record_ids: Iterable[str]
    ) -> None:
        """Append change events; call it last in a write transaction.

        On PostgreSQL a transaction-scoped advisory lock is taken before the IDs are drawn, so
        event IDs become visible in increasing order and a reader never skips one.
        """
        rows = [
            {"kind": kind.value, "record_id": rid, "created_at": self._now()} for rid in record_ids
        ]
        if not rows:
            return
        if self._postgres:
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_EVENT_LOCK_KEY)))
        await conn.execute(sa.insert(schema.events), rows)
        conn.info[_EVENTS_APPENDED] = True


def chunks(items: Sequence[T]) -> Iterable[Sequence[T]]:
    """Split a long ``IN (...)`` list into pieces the drivers accept."""
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


def encode_token(last_pk: int) -> str:
    """An opaque page token for "rows after primary key ``last_pk``"."""
    return base64.urlsafe_b64encode(f"p{last_pk}".encode()).decode().rstrip("=")


def decode_token(token: str, what: str) -> int:
    """The primary key a page token stands for; InvalidArgumentError when malformed."""
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise InvalidArgumentError(f"{what}: malformed page token {token[:40]!r}") from None
    if not raw.startswith("p") or not raw[1:].isdigit() or len(raw) > 24:
        raise InvalidArgumentError(f"{what}: malformed page token {token[:40]!r}")
    return int(raw[1:])


def check_page_size(page_size: int, what: str) -> None:
    """Page sizes are 0 (everything) or positive."""
    if page_size < 0:
        raise InvalidArgumentError(f"{what}: page_size must not be negative, got {page_size}")


def check_text(
    value: str, what: str, *, max_len: int = MAX_NAME_LEN, empty_ok: bool = False
) -> str:
    """A string field: length bounds and no NUL characters."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a string, got {type(value).__name__}")
    if not value and not empty_ok:
        raise InvalidArgumentError(f"{what} must not be empty")
    if len(value) > max_len:
        raise InvalidArgumentError(f"{what} is too long: {len(value)} > {max_len} characters")
    if "\x00" in value:
        raise InvalidArgumentError(f"{what} must not contain NUL characters")
    return value


def check_spiffe_id(value: str, what: str, *, empty_ok: bool = False) -> str:
    """A SPIFFE ID string (the API layer parses it fully; here: shape and size)."""
    check_text(value, what, max_len=MAX_ID_LEN, empty_ok=empty_ok)
    if value and not value.startswith("spiffe://"):
        raise InvalidArgumentError(f"{what} {value!r} is not a spiffe:// ID")
    return value


def check_int(value: int, what: str, *, high: int = MAX_TIME) -> int:
    """A non-negative integer field."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{what} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= high:
        raise InvalidArgumentError(f"{what} must be between 0 and {high}, got {value}")
    return value


def check_bool(value: bool, what: str) -> bool:
    """A boolean field."""
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{what} must be a boolean, got {type(value).__name__}")
    return value


def trust_domain_name(value: str, what: str) -> str:
    """A trust domain name, with or without ``spiffe://``, as its bare lower-case name."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a string, got {type(value).__name__}")
    name = value.removeprefix("spiffe://")
    if not _TD_RE.match(name):
        raise InvalidArgumentError(f"{what} {value!r} is not a valid trust domain name")
    return name


def normalize_selectors(
    selectors: Iterable[Selector], what: str, *, empty_ok: bool = False
) -> tuple[Selector, ...]:
    """Sorted, de-duplicated, checked selectors."""
    out: set[Selector] = set()
    for sel in selectors:
        if not isinstance(sel, Selector):
            raise InvalidArgumentError(f"{what} must hold Selector values, got {sel!r}")
        check_text(sel.type, f"{what} type", max_len=MAX_NAME_LEN)
        if ":" in sel.type:
            raise InvalidArgumentError(f"{what} type {sel.type!r} must not contain ':'")
        check_text(sel.value, f"{what} value of type {sel.type!r}", max_len=MAX_ID_LEN)
        out.add(sel)
    if not out and not empty_ok:
        raise InvalidArgumentError(f"{what} must not be empty")
    return tuple(sorted(out))


def set_match(
    *,
    outer_key: sa.ColumnElement[object],
    owner: sa.ColumnElement[object],
    source: sa.FromClause,
    is_given: sa.ColumnElement[bool],
    n_given: int,
    match: MatchBehavior,
) -> sa.ColumnElement[bool]:
    """Compare each record's member set (rows of ``source`` owned by ``outer_key``) with a
    given set: ``is_given`` tells whether one member row is in it, ``n_given`` is its size."""
    hits = sa.select(owner).select_from(source).where(is_given)
    any_ = outer_key.in_(hits)
    superset = outer_key.in_(hits.group_by(owner).having(sa.func.count() == n_given))
    no_others = ~sa.exists(sa.select(1).select_from(source).where(owner == outer_key, ~is_given))
    if match is MatchBehavior.ANY:
        return any_
    if match is MatchBehavior.SUPERSET:
        return superset
    if match is MatchBehavior.SUBSET:
        return sa.and_(any_, no_others)
    if match is MatchBehavior.EXACT:
        return sa.and_(superset, no_others)
    raise InvalidArgumentError(f"unknown match behavior {match!r}")


def selector_pairs_in(
    type_col: sa.ColumnElement[str], value_col: sa.ColumnElement[str], sels: Sequence[Selector]
) -> sa.ColumnElement[bool]:
    """``(type, value)`` is one of ``sels``."""
    return sa.or_(*(sa.and_(type_col == s.type, value_col == s.value) for s in sels))
