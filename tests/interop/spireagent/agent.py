"""Run a released ``spire-agent`` (v1.15.3) and a server (``spiffed-server`` or ``spire-server``)
as real processes for interop tests.

``spire-agent`` is built by :func:`tests.interop.spireserver.server.build_spire_agent` from the
same pinned module as spire-server. Both servers are driven through their CLI, which has the
same shape (``token generate``, ``entry create``, ``bundle show``, ``agent list``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.interop.spireserver.server import TRUST_DOMAIN, free_port, wait_for

SPIFFED_SERVER = Path(sys.executable).parent / "spiffed-server"


def short_dir(prefix: str) -> Path:
    """A new directory with a short path (Unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """Terminate a process we started; kill it if it does not stop within 20 s."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=20)


@dataclass
class ServerProcess:
    """A running server with sqlite, a memory key manager and the join_token attestor.

    ``binary`` is ``spiffed-server`` or SPIRE's ``spire-server``; both read this config.
    """

    binary: Path
    workdir: Path
    agent_ttl: str = "1h"
    """Lifetime of agent SVIDs; SPIRE's agent renews its SVID at half of its lifetime."""
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.workdir / "api.sock"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def config(self) -> str:
        data = self.workdir / "data"
        return f"""
server {{
    bind_address = "127.0.0.1"
    bind_port = "{self.port}"
    socket_path = "{self.socket_path}"
    trust_domain = "{TRUST_DOMAIN}"
    data_dir = "{data}"
    log_level = "DEBUG"
    agent_ttl = "{self.agent_ttl}"
}}
plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{data}/datastore.sqlite3"
        }}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
}}
"""

    def start(self) -> ServerProcess:
        """Start the server and wait until ``healthcheck`` passes."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "server.conf"
        conf.write_text(self.config())
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "run", "-config", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def healthy() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"{self.binary.name} exited:\n{self.log()}")
            return self.cli("healthcheck").returncode == 0

        wait_for(healthy, timeout=60, what=f"{self.binary.name} healthcheck", interval=0.2)
        return self

    def stop(self) -> None:
        stop_process(self.process)

    def cleanup(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``<server> <args...> -socketPath <ours>``."""
        return subprocess.run(
            [str(self.binary), *args, "-socketPath", str(self.socket_path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def check(self, *args: str) -> str:
        """A CLI command that must succeed; its standard output."""
        result = self.cli(*args)
        if result.returncode != 0:
            raise AssertionError(
                f"{self.binary.name} {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stderr}{result.stdout}"
            )
        return result.stdout

    def generate_token(self, spiffe_id: str) -> str:
        """``token generate -spiffeID <id>``; the token."""
        out = self.check("token", "generate", "-spiffeID", spiffe_id)
        return out.split("Token:", 1)[1].split()[0]

    def agent_serial(self, agent_id: str) -> str:
        """The serial of the agent SVID the server holds for ``agent_id`` (``agent show``)."""
        out = self.check("agent", "show", "-spiffeID", agent_id)
        for line in out.splitlines():
            if line.startswith("Serial number"):
                return line.split(":", 1)[1].strip()
        raise AssertionError(f"agent show printed no serial number:\n{out}")

    def create_entry(self, parent_id: str, spiffe_id: str, *selectors: str) -> str:
        """``entry create``; the new entry's ID."""
        args = ["entry", "create", "-parentID", parent_id, "-spiffeID", spiffe_id]
        for selector in selectors:
            args += ["-selector", selector]
        out = json.loads(self.check(*args, "-output", "json"))
        (result,) = out["results"]
        assert result["status"].get("code", 0) == 0, result
        return str(result["entry"]["id"])


@dataclass
class SpireAgent:
    """One ``spire-agent run`` with a join token, a memory key manager and the unix attestor."""

    binary: Path
    server: ServerProcess
    bundle_path: Path
    join_token: str
    use_sync_authorized_entries: bool = True
    """``False`` makes the agent sync with GetAuthorizedEntries instead of the streaming RPC."""
    workdir: Path = field(default_factory=lambda: short_dir("iag-"))
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.workdir / "api.sock"

    @property
    def log_path(self) -> Path:
        return self.workdir / "agent.log"

    def config(self) -> str:
        experimental = (
            ""
            if self.use_sync_authorized_entries
            else "experimental {\n        use_sync_authorized_entries = false\n    }"
        )
        return f"""
agent {{
    data_dir = "{self.workdir / "data"}"
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = "{self.server.port}"
    socket_path = "{self.socket_path}"
    trust_bundle_path = "{self.bundle_path}"
    trust_domain = "{TRUST_DOMAIN}"
    {experimental}
}}
plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
}}
"""

    def start(self) -> SpireAgent:
        """Start ``spire-agent run -joinToken``; does not wait (see :meth:`wait_healthy`)."""
        conf = self.workdir / "agent.conf"
        conf.write_text(self.config())
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "run", "-config", str(conf), "-joinToken", self.join_token],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_healthy(self, timeout: float = 30) -> None:
        """Wait until ``spire-agent healthcheck`` passes (attested, cache initialized)."""

        def healthy() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"spire-agent exited with {self.process.returncode}:\n{self.logs()}"
                )
            return self.cli("healthcheck").returncode == 0

        try:
            wait_for(healthy, timeout=timeout, what="spire-agent healthcheck", interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def stop(self) -> None:
        stop_process(self.process)

    def cleanup(self) -> None:
        """Stop the agent and remove its directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def logs(self) -> str:
        """The agent's log (without debug lines) and the end of the server's, for failures."""
        agent = "\n".join(line for line in self.log().splitlines() if "level=debug" not in line)
        return (
            f"--- spire-agent log ---\n{agent[-8000:]}\n"
            f"--- server log (end) ---\n{self.server.log()[-6000:]}"
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``spire-agent <args...> -socketPath <ours>``."""
        return subprocess.run(
            [str(self.binary), *args, "-socketPath", str(self.socket_path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def fetch_x509(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """``spire-agent api fetch x509`` as the current user (the workload)."""
        return self.cli("api", "fetch", "x509", "-timeout", "5s", *extra)
