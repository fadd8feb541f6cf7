"""Fixtures: a released spire-server v1.15.3, built once per test session."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from spiffed.server.datastore.records import JoinToken, RegistrationEntry, Selector
from tests.interop.spireserver.server import SpireServer, build_spire_server


@pytest.fixture(scope="session")
def spire_server_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """spire-server built from github.com/spiffe/spire v1.15.3 (about 3 minutes the first time)."""
    return build_spire_server(tmp_path_factory.mktemp("spire-bin"))


@pytest.fixture
def spire(spire_server_binary: Path, tmp_path: Path) -> Iterator[SpireServer]:
    """A running spire-server with default TTLs."""
    server = SpireServer(spire_server_binary, tmp_path / "spire").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def short_ttl_spire(spire_server_binary: Path, tmp_path: Path) -> Iterator[SpireServer]:
    """A running spire-server issuing 20 s agent and workload SVIDs."""
    server = SpireServer(
        spire_server_binary, tmp_path / "spire", agent_ttl="20s", x509_svid_ttl="20s"
    ).start()
    try:
        yield server
    finally:
        server.stop()


# --- an in-process spiffed-server ------------------------------------------------------


@dataclass
class SpiffedServer:
    """A spiffed-server running in the test's event loop (spiffed.server.run.serve)."""

    endpoints: Any
    port: int
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def datastore(self) -> Any:
        return self.endpoints._ctx.datastore

    async def generate_token(self) -> str:
        token = str(uuid.uuid4())
        await self.datastore.create_join_token(JoinToken(token, int(time.time()) + 600))
        return token

    async def create_entry(self, parent_id: str, spiffe_id: str, *selectors: str) -> str:
        sels = tuple(Selector(*s.split(":", 1)) for s in selectors)
        entry = await self.datastore.create_entry(RegistrationEntry(spiffe_id, parent_id, sels))
        return str(entry.id)

    async def evict(self, agent_id: str) -> None:
        await self.datastore.delete_node(agent_id)


def spiffed_server_conf(
    root: Path, *, x509pop_ca: Path | None = None, port: int = 0, key_manager: str = "memory"
) -> str:
    from tests.interop.spireserver.server import free_port

    data = root / "data"
    x509pop = (
        f'NodeAttestor "x509pop" {{ plugin_data {{ ca_bundle_path = "{x509pop_ca}" }} }}'
        if x509pop_ca
        else ""
    )
    km = (
        f'KeyManager "disk" {{ plugin_data {{ keys_path = "{data}/keys.json" }} }}'
        if key_manager == "disk"
        else 'KeyManager "memory" { plugin_data {} }'
    )
    return f"""
server {{
    bind_address = "127.0.0.1"
    bind_port = "{port or free_port()}"
    socket_path = "{root}/private/api.sock"
    trust_domain = "example.org"
    data_dir = "{data}"
    log_level = "WARN"
}}
plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{data}/datastore.sqlite3"
        }}
    }}
    {km}
    {x509pop}
}}
"""


@contextlib.asynccontextmanager
async def run_spiffed_server(root: Path, **kwargs: Any) -> AsyncIterator[SpiffedServer]:
    """Start spiffed.server.run.serve in this loop; stop it on exit."""
    from spiffed.server.config import parse_server_config
    from spiffed.server.run import serve

    root.mkdir(parents=True, exist_ok=True)
    config = parse_server_config(spiffed_server_conf(root, **kwargs))
    stop = asyncio.Event()
    ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(config, stop=stop, on_ready=lambda ep: ready.done() or ready.set_result(ep))
    )
    done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    if ready not in done:
        task.cancel()
        raise AssertionError("spiffed-server did not start within 30 s")
    endpoints = ready.result()
    assert endpoints.tcp_address is not None
    server = SpiffedServer(endpoints, endpoints.tcp_address[1], stop, task)
    try:
        yield server
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


@pytest.fixture
async def spiffed(tmp_path: Path) -> AsyncIterator[SpiffedServer]:
    """A running in-process spiffed-server (sqlite, memory key manager)."""
    async with run_spiffed_server(tmp_path / "spiffed-server") as server:
        yield server
