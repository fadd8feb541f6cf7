"""The server's periodic pruning of expired registration entries (SPIRE's registration
manager): an expired entry, and what it granted, does not linger in the datastore."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from spiffed.server.datastore import (
    DataStore,
    JoinToken,
    RegistrationEntry,
    Selector,
    open_datastore,
)
from spiffed.server.run import ENTRY_PRUNE_INTERVAL, prune_entries_every, prune_expired_entries

NOW = 1_000_000.0
AGENT = "spiffe://example.org/spire/agent/join_token/a1"


@pytest.fixture
async def ds(tmp_path: Path) -> AsyncIterator[DataStore]:
    store = await open_datastore("sqlite3", str(tmp_path / "ds.sqlite3"))
    try:
        yield store
    finally:
        await store.close()


def entry(path: str, expires_at: int = 0) -> RegistrationEntry:
    return RegistrationEntry(
        f"spiffe://example.org{path}", AGENT, (Selector("unix", "uid:1"),), expires_at=expires_at
    )


def test_entries_are_pruned_every_five_minutes_as_spire() -> None:
    assert ENTRY_PRUNE_INTERVAL == 300.0


async def test_expired_entries_are_deleted_others_kept(ds: DataStore) -> None:
    await ds.create_entry(entry("/expired", int(NOW) - 1))
    await ds.create_entry(entry("/later", int(NOW) + 60))
    await ds.create_entry(entry("/never"))
    await ds.create_join_token(JoinToken("tok", int(NOW) - 1))
    assert await prune_expired_entries(ds, lambda: NOW) == 1
    left = {e.spiffe_id for e in (await ds.list_entries()).items}
    assert left == {"spiffe://example.org/later", "spiffe://example.org/never"}
    # SPIRE has no periodic join-token pruning: an expired token goes when it is shown.
    assert (await ds.consume_join_token("tok")).token == "tok"


class FlakyStore:
    """A datastore whose first prune fails; the second stops the loop."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.calls: list[int] = []

    async def prune_entries(self, expires_before: int) -> int:
        self.calls.append(expires_before)
        if len(self.calls) == 1:
            raise RuntimeError("database is gone")
        self.stop.set()
        return 0


async def test_prune_loop_survives_a_failure_and_stops_on_request() -> None:
    stop = asyncio.Event()
    store = FlakyStore(stop)
    await asyncio.wait_for(prune_entries_every(store, stop, every=0, clock=lambda: NOW), 5)
    assert store.calls == [int(NOW), int(NOW)]


async def test_prune_loop_does_nothing_once_stopped() -> None:
    stop = asyncio.Event()
    stop.set()
    store = FlakyStore(stop)
    await prune_entries_every(store, stop, every=0)
    assert store.calls == []
