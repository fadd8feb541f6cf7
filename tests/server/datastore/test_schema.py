"""Opening the datastore: engines, migrations, schema version checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from spiffed.server.datastore import (
    DataStore,
    InvalidArgumentError,
    RegistrationEntry,
    SchemaVersionError,
    Selector,
    open_datastore,
    postgres_url,
)
from tests.server.datastore.conftest import Backend

ENTRY = RegistrationEntry("spiffe://td/w", "spiffe://td/a", (Selector("t", "1"),))


async def test_reopen_keeps_data(backend: Backend) -> None:
    first = await backend.open()
    made = await first.create_entry(ENTRY)
    await first.close()
    again = await backend.open()
    try:
        assert await again.get_entry(made.id) == made
    finally:
        await again.close()


async def test_newer_schema_refused(backend: Backend) -> None:
    store = await backend.open()
    async with store.engine.begin() as conn:
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
    await store.close()
    with pytest.raises(SchemaVersionError, match="'9999_future', newer than this spiffed"):
        await backend.open()


async def test_disable_migration_on_empty_database(backend: Backend) -> None:
    with pytest.raises(SchemaVersionError, match="disable_migration"):
        await backend.open(disable_migration=True)
    store = await backend.open()
    await store.close()
    store = await backend.open(disable_migration=True)  # up to date: fine
    await store.close()


async def test_sqlite_default_path_and_pragmas(tmp_path: Path) -> None:
    store = await open_datastore("sqlite3", data_dir=tmp_path / "data")
    try:
        assert (tmp_path / "data" / "datastore.sqlite3").exists()
        async with store.engine.connect() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
            sync = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
            fks = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar()
            busy = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar()
        assert (mode, sync, fks) == ("wal", 2, 1)
        assert busy and busy > 0
    finally:
        await store.close()


@pytest.mark.parametrize("how", ["memory", "config"])
async def test_in_memory_store(how: str) -> None:
    store = await (DataStore.memory() if how == "memory" else open_datastore("sqlite3", ":memory:"))
    try:
        made = await store.create_entry(ENTRY)
        assert await store.get_entry(made.id) == made
    finally:
        await store.close()


def test_postgres_connection_strings() -> None:
    url, args = postgres_url(
        "host=db port=5433 user=spire password=s%20x dbname=spire sslmode=require"
    )
    assert (url.drivername, url.host, url.port, url.username, url.database) == (
        "postgresql+asyncpg",
        "db",
        5433,
        "spire",
        "spire",
    )
    assert url.password == "s x" and args == {"ssl": "require"}
    url, args = postgres_url("postgres://u:p@h:1/d?sslmode=disable")
    assert (url.drivername, url.host, url.database, args) == (
        "postgresql+asyncpg",
        "h",
        "d",
        {"ssl": "disable"},
    )
    with pytest.raises(InvalidArgumentError, match="unsupported item 'bogus'"):
        postgres_url("bogus=1")
    with pytest.raises(InvalidArgumentError, match="want postgres"):
        postgres_url("mysql://x/y")


async def test_unknown_database_type() -> None:
    with pytest.raises(InvalidArgumentError, match="'mysql' is not supported"):
        await open_datastore("mysql", "x")


async def test_migrated_schema_matches_schema_module(backend: Backend) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from spiffed.server.datastore import schema

    store = await backend.open()
    try:
        async with store.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), schema.METADATA)
            )
    finally:
        await store.close()
    assert diff == []
