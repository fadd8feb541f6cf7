"""The datastore: opening the engine, migrating the schema, and the operations."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from ._bundles import BundlesMixin
from ._entries import EntriesMixin
from ._misc import MiscMixin
from ._nodes import NodesMixin
from .errors import InvalidArgumentError, SchemaVersionError

__all__ = ["DEFAULT_SQLITE_NAME", "DataStore", "open_datastore", "postgres_url"]

DEFAULT_SQLITE_NAME = "datastore.sqlite3"
MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK_KEY = 0x5350_4946_4645_444D  # "SPIFFEDM"
_BUSY_TIMEOUT_MS = 30_000
_LIBPQ_KEYS = {"host", "hostaddr", "port", "user", "password", "dbname", "sslmode"}


def postgres_url(connection_string: str) -> tuple[sa.URL, dict[str, Any]]:
    """A SQLAlchemy asyncpg URL (and connect args) from a libpq ``key=value`` string or a
    ``postgres://`` URL, the two forms SPIRE's ``connection_string`` takes."""
    text = connection_string.strip()
    if "://" in text:
        try:
            url = sa.make_url(text)
        except sa.exc.ArgumentError:
            raise InvalidArgumentError("postgres connection_string is not a valid URL") from None
        if url.get_backend_name() not in ("postgres", "postgresql"):
            raise InvalidArgumentError(
                f"postgres connection_string has scheme {url.drivername!r}, want postgres://"
            )
        query = dict(url.query)
        sslmode = query.pop("sslmode", None)
        url = url.set(drivername="postgresql+asyncpg", query=query)
        return url, ({"ssl": sslmode} if isinstance(sslmode, str) else {})
    fields: dict[str, str] = {}
    for part in text.split():
        key, sep, value = part.partition("=")
        if not sep or key not in _LIBPQ_KEYS:
            raise InvalidArgumentError(
                f"postgres connection_string: unsupported item {key!r} "
                f"(spiffed understands {sorted(_LIBPQ_KEYS)})"
            )
        fields[key] = unquote(value.strip("'"))
    url = sa.URL.create(
        "postgresql+asyncpg",
        username=fields.get("user"),
        password=fields.get("password"),
        host=fields.get("host") or fields.get("hostaddr"),
        port=int(fields["port"]) if "port" in fields else None,
        database=fields.get("dbname"),
    )
    return url, ({"ssl": fields["sslmode"]} if "sslmode" in fields else {})


def _sqlite_engine(path: Path | None, echo: bool) -> AsyncEngine:
    if path is None:
        engine = create_async_engine(
            "sqlite+aiosqlite://",
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
            echo=echo,
        )
    else:
        engine = create_async_engine(f"sqlite+aiosqlite:///{path}", echo=echo)

    @sa.event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _on_begin)
        cursor = dbapi_conn.cursor()
        if path is not None:
            cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a transaction acknowledged to the caller survives power loss, not just a crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # Writers take the write lock up front, so two writers never deadlock upgrading locks.
        write = conn.get_execution_options().get("spiffed_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _migrate(sync_conn: sa.Connection, allow_upgrade: bool) -> None:
    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()
    current = MigrationContext.configure(sync_conn).get_current_revision()
    if current is not None:
        try:
            script.get_revision(current)
        except CommandError:
            raise SchemaVersionError(
                f"the database schema is at revision {current!r}, newer than this spiffed "
                f"knows (latest {head!r}); upgrade spiffed or point it at another database"
            ) from None
    if current == head:
        return
    if not allow_upgrade:
        raise SchemaVersionError(
            f"the database schema is at revision {current or 'none'!r}, this spiffed needs "
            f"{head!r}, and disable_migration is set; migrate it or unset disable_migration"
        )
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


class DataStore(EntriesMixin, NodesMixin, BundlesMixin, MiscMixin):
    """The server's SQL datastore. Open it with :meth:`open`, :func:`open_datastore` or
    :meth:`memory`; close it with :meth:`close` (or use ``async with``)."""

    def __init__(
        self, engine: AsyncEngine, *, memory: bool = False, clock: Callable[[], float] = time.time
    ) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._memory = memory
        self._write_lock = asyncio.Lock()
        self._clock = clock

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine (for tests and diagnostics)."""
        return self._engine

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    @classmethod
    async def open(
        cls,
        engine: AsyncEngine,
        *,
        memory: bool = False,
        disable_migration: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> DataStore:
        """Wrap an engine: check the schema version and migrate it to the latest revision."""
        store = cls(engine, memory=memory, clock=clock)
        try:
            async with store._write() as conn:
                if store._postgres:
                    await conn.execute(
                        sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY))
                    )
                await conn.run_sync(_migrate, not disable_migration)
        except BaseException:
            await engine.dispose()
            raise
        return store

    @classmethod
    async def memory(cls, *, clock: Callable[[], float] = time.time) -> DataStore:
        """An empty in-memory SQLite datastore (tests, ephemeral mode)."""
        return await cls.open(_sqlite_engine(None, False), memory=True, clock=clock)

    async def close(self) -> None:
        """Close every connection."""
        await self._engine.dispose()

    async def __aenter__(self) -> DataStore:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


async def open_datastore(
    database_type: str,
    connection_string: str = "",
    *,
    data_dir: Path | None = None,
    disable_migration: bool = False,
    max_open_conns: int | None = None,
    conn_max_lifetime: float | None = None,
    log_sql: bool = False,
    clock: Callable[[], float] = time.time,
) -> DataStore:
    """Open the datastore the server config describes.

    ``sqlite3``: ``connection_string`` is a file path (``:memory:`` for an ephemeral store);
    empty means ``<data_dir>/datastore.sqlite3``. ``postgres``: a libpq string or URL.
    """
    if database_type == "sqlite3":
        if connection_string == ":memory:":
            return await DataStore.open(_sqlite_engine(None, log_sql), memory=True, clock=clock)
        if connection_string:
            path = Path(connection_string.removeprefix("file:").split("?", 1)[0])
        elif data_dir is not None:
            path = data_dir / DEFAULT_SQLITE_NAME
        else:
            raise InvalidArgumentError("sqlite3 datastore needs a connection_string or data_dir")
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = _sqlite_engine(path, log_sql)
        return await DataStore.open(engine, disable_migration=disable_migration, clock=clock)
    if database_type == "postgres":
        url, connect_args = postgres_url(connection_string)
        kwargs: dict[str, Any] = {"connect_args": connect_args, "echo": log_sql}
        if max_open_conns:
            kwargs["pool_size"] = max_open_conns
            kwargs["max_overflow"] = 0
        if conn_max_lifetime:
            kwargs["pool_recycle"] = conn_max_lifetime
        engine = create_async_engine(url, pool_pre_ping=True, **kwargs)
        return await DataStore.open(engine, disable_migration=disable_migration, clock=clock)
    raise InvalidArgumentError(
        f"database_type {database_type!r} is not supported (sqlite3 or postgres)"
    )
