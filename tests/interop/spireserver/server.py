"""Build and run a released ``spire-server`` (github.com/spiffe/spire v1.15.3) for interop tests.

``spire-agent`` comes from the same pinned module (:func:`build_spire_agent`). Both binaries
are built from the Go module required by ``go.mod`` beside this file (cgo on, for SQLite).
``github.com/Keyfactor/ejbca-go-client-sdk`` is replaced by a compile-only stub
(``ejbcastub/``) because the module proxy refuses to serve it; it is only used by SPIRE's
EJBCA UpstreamAuthority plugin, which these tests never configure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPIRE_VERSION = "v1.15.3"
TRUST_DOMAIN = "example.org"

_BUILT: dict[str, Path] = {}
"""Binaries already built by this process (one test session), by command name."""


def build_spire_command(command: str, out_dir: Path) -> Path:
    """``go build`` SPIRE's ``cmd/<command>`` (v1.15.3) into ``out_dir``; fails without Go.

    ``command`` is ``spire-server`` or ``spire-agent``; both are pinned by ``tools.go`` and
    built from this module (cgo on: spire-server needs it for SQLite). A binary is built once
    per test session: later calls copy the first build into ``out_dir``.
    """
    out = out_dir / command
    earlier = _BUILT.get(command)
    if earlier is not None and earlier.exists():
        shutil.copy2(earlier, out)
        return out
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if go is None:
        raise AssertionError(f"the Go toolchain is needed to build {command}; install Go")
    env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "1"}
    result = subprocess.run(
        [go, "build", "-o", str(out), f"github.com/spiffe/spire/cmd/{command}"],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    if result.returncode != 0:
        raise AssertionError(f"go build of {command} {SPIRE_VERSION} failed:\n{result.stderr}")
    _BUILT[command] = out
    return out


def build_spire_server(out_dir: Path) -> Path:
    """``go build`` SPIRE's ``cmd/spire-server`` into ``out_dir``; fails without Go."""
    return build_spire_command("spire-server", out_dir)


def build_spire_agent(out_dir: Path) -> Path:
    """``go build`` SPIRE's ``cmd/spire-agent`` into ``out_dir``; fails without Go."""
    return build_spire_command("spire-agent", out_dir)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition, *, timeout: float, what: str, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll ``condition()`` until it returns a truthy value or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class SpireServer:
    """One running spire-server with sqlite in ``workdir`` and a join_token attestor."""

    binary: Path
    workdir: Path
    agent_ttl: str = "1h"
    x509_svid_ttl: str = "1h"
    ca_ttl: str = "24h"
    key_manager: str = "memory"
    """``memory`` (new CA keys on every start) or ``disk`` (kept in ``workdir``)."""
    x509pop_ca: Path | None = None
    """Also enable ``NodeAttestor "x509pop"`` with this CA bundle."""
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        """The admin (local) API socket."""
        return self.workdir / "api.sock"

    def config(self) -> str:
        """server.conf text."""
        data = self.workdir / "data"
        return f"""
server {{
    bind_address = "127.0.0.1"
    bind_port = "{self.port}"
    socket_path = "{self.socket_path}"
    trust_domain = "{TRUST_DOMAIN}"
    data_dir = "{data}"
    log_level = "DEBUG"
    ca_ttl = "{self.ca_ttl}"
    default_x509_svid_ttl = "{self.x509_svid_ttl}"
    agent_ttl = "{self.agent_ttl}"
}}
plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{data}/datastore.sqlite3"
        }}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    {self._key_manager()}
    {self._x509pop()}
}}
"""

    def _key_manager(self) -> str:
        if self.key_manager == "disk":
            keys = self.workdir / "data" / "keys.json"
            return f'KeyManager "disk" {{ plugin_data {{ keys_path = "{keys}" }} }}'
        return 'KeyManager "memory" { plugin_data {} }'

    def _x509pop(self) -> str:
        if self.x509pop_ca is None:
            return ""
        return (
            f'NodeAttestor "x509pop" {{ plugin_data {{ ca_bundle_path = "{self.x509pop_ca}" }} }}'
        )

    def start(self) -> SpireServer:
        """Start the server (again, after :meth:`stop`) and wait until its healthcheck passes."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "server.conf"
        conf.write_text(self.config())
        log = (self.workdir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [str(self.binary), "run", "-config", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def healthy() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"spire-server exited:\n{self.log()}")
            return self.cli("healthcheck").returncode == 0

        wait_for(healthy, timeout=60, what="spire-server healthcheck", interval=0.2)
        return self

    def log(self) -> str:
        """The server's log so far."""
        path = self.workdir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop the process we started."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``spire-server <args...> -socketPath <ours>``."""
        return subprocess.run(
            [str(self.binary), *args, "-socketPath", str(self.socket_path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def check(self, *args: str) -> str:
        """Run a CLI command that must succeed and return its standard output."""
        result = self.cli(*args)
        if result.returncode != 0:
            raise AssertionError(f"spire-server {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def generate_token(self, spiffe_id: str = f"spiffe://{TRUST_DOMAIN}/host") -> str:
        """``token generate``; returns the token."""
        out = self.check("token", "generate", "-spiffeID", spiffe_id)
        # "Token: <uuid>"
        return out.split("Token:", 1)[1].split()[0]

    def bundle_pem(self) -> bytes:
        """``bundle show`` (PEM)."""
        return self.check("bundle", "show").encode()

    def agent_count(self) -> int:
        """``agent count``."""
        out = self.check("agent", "count")
        return int(out.split()[0])
