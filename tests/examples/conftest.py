"""The examples in examples/, run as real processes against a real ``spiffed dev``.

One ``spiffed dev --ephemeral`` runs for the whole package. Every process of the tests runs
as the same user, so all identities are registered for ``unix:uid:<uid>`` and each example
picks its own by SPIFFE ID (``--id``); the mTLS pair's entries are created with the admin CLI
with a 10 s X509-SVID TTL, so their SVIDs rotate about every 5 s (the agent renews at half
life and syncs every 5 s).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from spiffed.workloadapi import WorkloadApiError
from spiffed.workloadapi.sync import WorkloadApiClient

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
BIN = Path(sys.executable).parent
UID = os.getuid()
TD = "example.org"

MTLS_SERVER = f"spiffe://{TD}/examples/mtls-server"
MTLS_CLIENT = f"spiffe://{TD}/examples/mtls-client"
INTRUDER = f"spiffe://{TD}/examples/intruder"
JWT_CLIENT = f"spiffe://{TD}/examples/jwt-client"
SHORT_TTL = 10


def poll(condition: Callable[[], object], *, timeout: float, what: str) -> object:
    """The first truthy ``condition()`` within ``timeout`` seconds (AssertionError otherwise)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Proc:
    """A child process whose merged stdout/stderr lines are collected by a thread."""

    name: str
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @classmethod
    def start(cls, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = subprocess.Popen(
            args,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        me = cls(name, proc)
        me.reader = threading.Thread(target=me._read, name=f"read {name}", daemon=True)
        me.reader.start()
        return me

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def find(self, pattern: str) -> re.Match[str] | None:
        for line in list(self.lines):
            if m := re.search(pattern, line):
                return m
        return None

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first output line matching ``pattern``; fails when the process exits first."""

        def found() -> re.Match[str] | None:
            m = self.find(pattern)
            if m is None and self.proc.poll() is not None:
                self.wait()
                m = self.find(pattern)
                if m is None:
                    raise AssertionError(
                        f"{self.name} exited ({self.proc.returncode}) before printing "
                        f"{pattern!r}:\n{self.output}"
                    )
            return m

        try:
            m = poll(found, timeout=timeout, what=f"{self.name} to print {pattern!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.name} output:\n{self.output}") from None
        assert isinstance(m, re.Match)
        return m

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for the exit status, and for the reader to have taken every line."""
        rc = self.proc.wait(timeout)
        if self.reader is not None:
            self.reader.join(5)
        return rc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` (SIGKILL after ``timeout``) and return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.wait()


@dataclass
class Dev:
    """The running ``spiffed dev`` and how to reach it."""

    proc: Proc
    endpoint: str
    admin_socket: str
    agent_id: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SPIFFE_ENDPOINT_SOCKET": self.endpoint}

    def example(self, name: str, *args: str) -> Proc:
        """Start ``python examples/<name>.py args...`` with SPIFFE_ENDPOINT_SOCKET set."""
        return Proc.start(name, [sys.executable, str(EXAMPLES / f"{name}.py"), *args], self.env)

    def server_cli(self, *args: str) -> str:
        result = subprocess.run(
            [str(BIN / "spiffed-server"), *args, "-socketPath", self.admin_socket],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, f"spiffed-server {' '.join(args)}: {result.stderr}"
        return result.stdout


def _wait_for_ids(endpoint: str, ids: set[str], timeout: float) -> None:
    with WorkloadApiClient(endpoint, timeout=5) as client:

        def served() -> bool:
            try:
                ctx = client.fetch_x509_context()
            except WorkloadApiError:
                return False
            return ids <= {str(s.spiffe_id) for s in ctx.svids}

        poll(served, timeout=timeout, what=f"the agent to serve {sorted(ids)}")


@pytest.fixture(scope="package")
def dev() -> Iterator[Dev]:
    """``spiffed dev --ephemeral`` with the examples' identities registered."""
    proc = Proc.start(
        "spiffed dev",
        [
            str(BIN / "spiffed"),
            "dev",
            "--ephemeral",
            "--register",
            f"{INTRUDER}=unix:uid:{UID}",
            "--register",
            f"{JWT_CLIENT}=unix:uid:{UID}",
        ],
    )
    try:
        export = proc.wait_for(r"^export (.*SPIFFE_ENDPOINT_SOCKET=.*)$", timeout=30)
        (assignment,) = shlex.split(export.group(1))
        endpoint = assignment.split("=", 1)[1]
        admin = proc.wait_for(r"^admin socket: (\S+)").group(1)
        d = Dev(proc, endpoint, admin, agent_id="")
        entries = json.loads(d.server_cli("entry", "show", "-output", "json"))["entries"]
        parent = entries[0]["parent_id"]
        d.agent_id = f"spiffe://{parent['trust_domain']}{parent['path']}"
        for spiffe_id in (MTLS_SERVER, MTLS_CLIENT):
            d.server_cli(
                "entry", "create",
                "-parentID", d.agent_id,
                "-spiffeID", spiffe_id,
                "-selector", f"unix:uid:{UID}",
                "-x509SVIDTTL", str(SHORT_TTL),
            )  # fmt: skip
        _wait_for_ids(endpoint, {MTLS_SERVER, MTLS_CLIENT, INTRUDER, JWT_CLIENT}, timeout=20)
        yield d
    finally:
        rc = proc.stop(signal.SIGTERM)
        assert rc == 0, f"spiffed dev exited with {rc}:\n{proc.output}"
