"""Fixtures: the same datastore tests run against SQLite (a file) and a private PostgreSQL."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from spiffed.server.datastore import DataStore, open_datastore


@dataclass(frozen=True)
class PostgresServer:
    """A running private PostgreSQL: connect as ``postgres`` without a password."""

    host: str
    port: int

    def connection_string(self, dbname: str) -> str:
        return f"host={self.host} port={self.port} user=postgres dbname={dbname} sslmode=disable"

    async def create_database(self, name: str) -> None:
        conn = await asyncpg.connect(
            host=self.host, port=self.port, user="postgres", database="postgres", ssl=False
        )
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()


def _pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        pytest.fail(
            "PostgreSQL server binaries are missing (/usr/lib/postgresql/*/bin/pg_ctl): "
            "run `make sysdeps` (as root) to install them",
            pytrace=False,
        )
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL on 127.0.0.1 in a temporary directory, for the whole session."""
    bindir = _pg_bindir()
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="spiffed-pg-"))
    if as_root:
        shutil.chown(base, "postgres", "postgres")
    data, log = base / "data", base / "server.log"

    def run(*args: str) -> None:
        done = subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            pytest.fail(f"{args[0]} failed: {done.stdout}{done.stderr}{tail}", pytrace=False)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    port = _free_port()
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start")
    try:
        yield PostgresServer("127.0.0.1", port)
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)


_db_numbers = itertools.count()


@dataclass(frozen=True)
class Backend:
    """How to open (more) datastores on one fresh database."""

    kind: str
    database_type: str
    connection_string: str

    async def open(self, **kwargs: object) -> DataStore:
        return await open_datastore(self.database_type, self.connection_string, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A fresh, empty database on each engine."""
    if request.param == "sqlite":
        return Backend("sqlite", "sqlite3", str(tmp_path / "datastore.sqlite3"))
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"t{os.getpid()}_{next(_db_numbers)}"
    await server.create_database(name)
    return Backend("postgres", "postgres", server.connection_string(name))


@pytest.fixture
async def ds(backend: Backend) -> AsyncIterator[DataStore]:
    """An open datastore on a fresh database of each engine."""
    store = await backend.open()
    try:
        yield store
    finally:
        await store.close()
