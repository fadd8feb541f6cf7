"""Fixtures: a released spire-server v1.15.3, built once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
