"""A real ``spiffed-server run`` process on a temporary config, driven through the CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.server.datastore.conftest import postgres_server  # noqa: F401 - shared fixture

BIN = Path(sys.executable).parent / "spiffed-server"
READY_DEADLINE = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(root: Path, port: int, *, key_manager: str = "disk", postgres: str = "") -> Path:
    data = root / "data"
    db_type, conn = ("postgres", postgres) if postgres else ("sqlite3", f"{data}/datastore.sqlite3")
    km = (
        f'KeyManager "disk" {{\n plugin_data {{\n keys_path = "{data}/keys.json"\n }}\n }}'
        if key_manager == "disk"
        else 'KeyManager "memory" {\n plugin_data {}\n }'
    )
    conf = root / "server.conf"
    conf.write_text(
        f"""
server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  socket_path = "{root}/private/api.sock"
  trust_domain = "example.org"
  data_dir = "{data}"
  log_level = "DEBUG"
}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "{db_type}"
      connection_string = "{conn}"
    }}
  }}
  {km}
}}
"""
    )
    return conf


@dataclass
class ServerProcess:
    root: Path
    config: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def socket_path(self) -> Path:
        return self.root / "private" / "api.sock"

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``spiffed-server <args> -socketPath <socket>`` as a user would."""
        return subprocess.run(
            [str(BIN), *args, "-socketPath", str(self.socket_path)],
            capture_output=True,
            text=True,
            input=stdin,
            timeout=60,
            check=False,
        )

    def start(self, *extra: str) -> None:
        log = self.root / f"server-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(BIN), "run", "-config", str(self.config), *extra],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "SPIFFED_CA_ROTATE_INTERVAL": "1"},
            )
        deadline = time.monotonic() + READY_DEADLINE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{log.read_text()}")
            if self.cli("healthcheck").returncode == 0:
                return
        raise AssertionError(f"server not healthy within {READY_DEADLINE}s:\n{log.read_text()}")

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    port = free_port()
    proc = ServerProcess(tmp_path, write_config(tmp_path, port), port)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
