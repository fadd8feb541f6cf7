"""Real ``spiffed-server`` and ``spiffed-agent`` processes, driven as an operator would.

The server is :class:`tests.server.e2e.conftest.ServerProcess` (``spiffed-server run`` on a
temporary config, managed through its CLI on the admin socket); the agents are
``spiffed-agent run`` processes with their own config, data directory, Workload API socket
and log file. Nothing here talks to either process in-process: what a test sees is what an
operator or a workload would see.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from spiffed.agent.manager.storage import AgentState, load_state
from spiffed.spiffeid import TrustDomain
from tests.agent.core.test_agent_run import UID_SELECTOR, fetch_ids, short_dir
from tests.server.e2e.conftest import ServerProcess, free_port
from tests.server.nodeattestor.pki import Issued, make_cert

__all__ = [
    "TD",
    "UID_SELECTOR",
    "AgentProcess",
    "E2EServer",
    "X509PopMaterial",
    "make_x509pop_material",
    "start_server",
    "fetch_ids",
    "poll",
    "apoll",
    "uid_selector",
    "x509pop_material",
]

AGENT_BIN = Path(sys.executable).parent / "spiffed-agent"
TD = TrustDomain("example.org")


def poll(condition: Callable[[], Any], *, timeout: float, what: str, every: float = 0.05) -> Any:
    """The first truthy ``condition()`` within ``timeout`` seconds (AssertionError otherwise)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


async def apoll(
    condition: Callable[[], Any], *, timeout: float, what: str, every: float = 0.05
) -> Any:
    """:func:`poll` for async tests (the event loop keeps running while waiting)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


# --- server ------------------------------------------------------------------------------


def server_config(
    root: Path,
    port: int,
    *,
    x509pop_ca: Path | None = None,
    server_extra: str = "",
) -> Path:
    """A sqlite, disk-KeyManager server config (so a restart keeps its CA and agents)."""
    data = root / "data"
    x509pop = (
        f'NodeAttestor "x509pop" {{ plugin_data {{ ca_bundle_path = "{x509pop_ca}" }} }}'
        if x509pop_ca
        else ""
    )
    conf = root / "server.conf"
    conf.write_text(f"""
server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  socket_path = "{root}/private/api.sock"
  trust_domain = "example.org"
  data_dir = "{data}"
  log_level = "DEBUG"
  {server_extra}
}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{data}/datastore.sqlite3"
    }}
  }}
  NodeAttestor "join_token" {{ plugin_data {{}} }}
  {x509pop}
  KeyManager "disk" {{ plugin_data {{ keys_path = "{data}/keys.json" }} }}
}}
""")
    return conf


class E2EServer(ServerProcess):
    """A ``spiffed-server run`` process with the CLI calls the tests make."""

    def ok(self, *args: str) -> str:
        result = self.cli(*args)
        assert result.returncode == 0, f"spiffed-server {' '.join(args)}: {result.stderr}"
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "-output", "json"))

    def token(self, ttl: int = 600) -> tuple[str, int]:
        """``token generate``: the token and when it expires (Unix seconds)."""
        out = self.json("token", "generate", "-ttl", str(ttl))
        return str(out["value"]), int(out["expires_at"])

    def entry(self, parent_id: str, spiffe_id: str, *selectors: str) -> str:
        """``entry create``: the new entry's ID."""
        args = ["entry", "create", "-parentID", parent_id, "-spiffeID", spiffe_id]
        for s in selectors:
            args += ["-selector", s]
        out = self.json(*args)
        (result,) = out["results"]
        assert result["status"]["code"] == 0, result
        return str(result["entry"]["id"])

    def agents(self) -> dict[str, dict[str, Any]]:
        """``agent list``: the attested agents by SPIFFE ID."""
        out = self.json("agent", "list")
        return {
            f"spiffe://{a['id']['trust_domain']}{a['id']['path']}": a for a in out.get("agents", [])
        }

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())


def start_server(root: Path, **kwargs: Any) -> E2EServer:
    """Start a server in ``root`` (``x509pop_ca=``, ``server_extra=`` as :func:`server_config`)."""
    root.mkdir(parents=True)
    port = free_port()
    server = E2EServer(root, server_config(root, port, **kwargs), port)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., E2EServer]]:
    """Start servers on demand (``factory(x509pop_ca=..., server_extra=...)``); all are
    stopped at the end of the test."""
    started: list[E2EServer] = []

    def start(**kwargs: Any) -> E2EServer:
        server = start_server(tmp_path / f"server{len(started)}", **kwargs)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for s in started:
            s.stop()


@pytest.fixture
def server(server_factory: Callable[..., E2EServer]) -> E2EServer:
    """A running server with the join_token attestor (default TTLs)."""
    return server_factory()


# --- x509pop material --------------------------------------------------------------------


@dataclass(frozen=True)
class X509PopMaterial:
    """A node CA for the server's ``ca_bundle_path`` and node credentials for agents."""

    ca_path: Path
    root: Issued
    dir: Path

    def node(self, name: str, *, issuer: Issued | None = None, key_of: Issued | None = None) -> str:
        """Write a node certificate (signed by ``issuer``, default the node CA) and a key
        (``key_of``'s key, default the certificate's own); the agent's NodeAttestor block."""
        cert = make_cert(name, issuer=issuer or self.root)
        key = (key_of or cert).key
        cert_path = self.dir / f"{name}.crt"
        key_path = self.dir / f"{name}.key"
        cert_path.write_bytes(cert.cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return (
            f'NodeAttestor "x509pop" {{ plugin_data {{ private_key_path = "{key_path}" '
            f'certificate_path = "{cert_path}" }} }}'
        )


def make_x509pop_material(d: Path) -> X509PopMaterial:
    """A new node CA written to ``d``."""
    d.mkdir(parents=True)
    root = make_cert("node-ca", ca=True)
    ca_path = d / "node-ca.pem"
    ca_path.write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))
    return X509PopMaterial(ca_path, root, d)


@pytest.fixture
def x509pop_material(tmp_path: Path) -> X509PopMaterial:
    return make_x509pop_material(tmp_path / "x509pop")


@pytest.fixture(scope="session")
def pop(tmp_path_factory: pytest.TempPathFactory) -> X509PopMaterial:
    """The node CA of :func:`shared_server`'s x509pop attestor."""
    return make_x509pop_material(tmp_path_factory.mktemp("shared") / "x509pop")


@pytest.fixture(scope="session")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, pop: X509PopMaterial
) -> Iterator[E2EServer]:
    """One server (join_token and x509pop, default TTLs) for the tests that neither restart
    nor reconfigure it; each test uses its own agents, tokens and entries. (A server takes
    several seconds to start on a busy machine.)"""
    s = start_server(tmp_path_factory.mktemp("shared") / "server", x509pop_ca=pop.ca_path)
    try:
        yield s
    finally:
        s.stop()


# --- agent -------------------------------------------------------------------------------

JOIN_TOKEN = 'NodeAttestor "join_token" { plugin_data {} }'


@dataclass
class AgentProcess:
    """One ``spiffed-agent run`` process (restartable with the same data directory)."""

    root: Path
    server: E2EServer
    attestor: str = JOIN_TOKEN
    token: str = ""
    sync_interval: str = ""
    socket_path: Path = field(default_factory=lambda: short_dir() / "api.sock")
    proc: asyncio.subprocess.Process | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        exp = (
            f'experimental {{ sync_interval = "{self.sync_interval}" }}'
            if self.sync_interval
            else ""
        )
        token = f'join_token = "{self.token}"' if self.token else ""
        conf = self.root / "agent.conf"
        conf.write_text(f"""
agent {{
    trust_domain = "example.org"
    server_address = "127.0.0.1"
    server_port = "{self.server.port}"
    data_dir = "{self.data_dir}"
    socket_path = "{self.socket_path}"
    log_level = "DEBUG"
    insecure_bootstrap = true
    {token}
    {exp}
}}
plugins {{
    {self.attestor}
    KeyManager "disk" {{ plugin_data {{ directory = "{self.data_dir}" }} }}
    WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
""")
        return conf

    async def start(self) -> None:
        log = self.root / f"agent-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                str(AGENT_BIN),
                "run",
                "-config",
                str(self.config),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def log(self) -> str:
        """The current run's log."""
        return self.logs[-1].read_text(errors="replace") if self.logs else ""

    async def wait_ready(self, timeout: float = 20) -> None:
        """Until the Workload API listens (the agent attested or reused its SVID)."""

        def ready() -> bool:
            if self.proc is not None and self.proc.returncode is not None:
                raise AssertionError(f"agent exited ({self.proc.returncode}):\n{self.log}")
            return "Starting Workload API" in self.log and self.socket_path.exists()

        await apoll(ready, timeout=timeout, what=f"agent ready:\n{self.log}")

    async def wait_exit(self, timeout: float = 20) -> int:
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout=timeout)
        except TimeoutError:
            raise AssertionError(f"agent still running after {timeout}s:\n{self.log}") from None

    async def stop(self) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout=20)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def state(self) -> AgentState | None:
        """The agent's stored SVID and bundle (what an attacker on its node could read)."""
        return load_state(self.data_dir, TD, self.data_dir)

    def agent_id(self) -> str:
        state = self.state()
        assert state is not None, f"the agent stored no SVID:\n{self.log}"
        return str(state.svid.spiffe_id)


@pytest.fixture
async def agents(tmp_path: Path) -> AsyncIterator[Callable[..., AgentProcess]]:
    """Create agents (``agents(server, token=..., attestor=...)``); all are stopped at the
    end of the test."""
    made: list[AgentProcess] = []

    def make(server: E2EServer, **kwargs: Any) -> AgentProcess:
        root = tmp_path / f"agent{len(made)}"
        root.mkdir()
        agent = AgentProcess(root, server, **kwargs)
        made.append(agent)
        return agent

    try:
        yield make
    finally:
        for a in made:
            await a.stop()
            if a.socket_path.parent.exists() and str(a.socket_path).startswith("/tmp/sa-"):
                for p in a.socket_path.parent.iterdir():
                    p.unlink()
                a.socket_path.parent.rmdir()


def uid_selector(uid: int | None = None) -> str:
    return f"unix:uid:{os.getuid() if uid is None else uid}"
