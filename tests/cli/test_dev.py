"""``spiffed dev`` as a real process: the printed export line works for spiffed-agent's CLI
and py-spiffe, SIGTERM stops it cleanly, a second run resumes the same trust domain and
agent, ``--ephemeral`` leaves nothing behind, ``--register`` replaces the default entry,
and bad input is a usage error (exit 2) that creates nothing."""

from __future__ import annotations

import json
import os
import pwd
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
DEADLINE = 60.0  # a loaded CI machine; ready is normally well under 3 s
UID = os.getuid()
USER = pwd.getpwuid(UID).pw_name
ME = f"spiffe://example.org/dev/{USER}"


@dataclass
class Dev:
    """A running ``spiffed dev`` with its stdout read line by line in a thread."""

    proc: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float = DEADLINE) -> str:
        """The first stdout line starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} line in {timeout}s: {self.seen}") from None
            if line is None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(
                    f"spiffed dev ended (exit {self.proc.wait()}) before {prefix!r}: "
                    f"{self.seen}\n{err}"
                )
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def ready(self) -> tuple[str, Path, Path]:
        """(SPIFFE_ENDPOINT_SOCKET value, agent socket, admin socket) once ready."""
        export = self.wait_for("export SPIFFE_ENDPOINT_SOCKET=")
        address = export.removeprefix("export SPIFFE_ENDPOINT_SOCKET=")
        admin = self.wait_for("admin socket: ").removeprefix("admin socket: ").split()[0]
        return address, Path(address.removeprefix("unix://")), Path(admin)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, str]:
        """Send ``sig``; the exit status and stderr."""
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("spiffed dev did not stop on SIGTERM") from None
        err = self.proc.stderr.read() if self.proc.stderr else ""
        while (line := self.lines.get(timeout=DEADLINE)) is not None:
            self.seen.append(line)
        return rc, err


def env(tmp_path: Path) -> dict[str, str]:
    out = dict(os.environ)
    out.pop("SPIFFE_ENDPOINT_SOCKET", None)
    out["XDG_STATE_HOME"] = str(tmp_path / "state")  # the default data dir, if used
    return out


@pytest.fixture
def spiffed_dev(tmp_path: Path) -> Iterator[object]:
    started: list[Dev] = []

    def start(*args: str, environ: dict[str, str] | None = None) -> Dev:
        proc = subprocess.Popen(
            [str(BIN / "spiffed"), "dev", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ or env(tmp_path),
        )
        dev = Dev(proc)
        started.append(dev)
        return dev

    yield start
    for dev in started:
        if dev.proc.poll() is None:
            dev.proc.kill()
            dev.proc.wait()


def agent_fetch(socket_path: Path) -> str:
    out = subprocess.run(
        [str(BIN / "spiffed-agent"), "api", "fetch", "x509", "-socketPath", str(socket_path)],
        capture_output=True,
        check=False,
        text=True,
        timeout=DEADLINE,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def pyspiffe_fetch(address: str) -> tuple[str, bytes, list[bytes]]:
    """(SPIFFE ID, leaf DER, own roots DER) through py-spiffe, reading SPIFFE_ENDPOINT_SOCKET
    from the environment as the export line sets it."""
    from spiffe import TrustDomain, WorkloadApiClient, X509Source

    old = os.environ.get("SPIFFE_ENDPOINT_SOCKET")
    os.environ["SPIFFE_ENDPOINT_SOCKET"] = address
    try:
        client = WorkloadApiClient(default_timeout=DEADLINE)
        try:
            svid = client.fetch_x509_svid()
            bundles = client.fetch_x509_bundles()
        finally:
            client.close()
        with X509Source(timeout_in_seconds=DEADLINE) as source:
            assert str(source.get_x509_context().default_svid.spiffe_id) == str(svid.spiffe_id)
    finally:
        if old is None:
            del os.environ["SPIFFE_ENDPOINT_SOCKET"]
        else:
            os.environ["SPIFFE_ENDPOINT_SOCKET"] = old
    bundle = bundles.get_bundle_for_trust_domain(TrustDomain("example.org"))
    assert bundle is not None
    roots = sorted(c.public_bytes(encoding=_der()) for c in bundle.x509_authorities)
    return str(svid.spiffe_id), svid.leaf.public_bytes(encoding=_der()), roots


def _der() -> object:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def count_entries(admin: Path) -> int:
    out = subprocess.run(
        [str(BIN / "spiffed-server"), "entry", "count", "-socketPath", str(admin)],
        capture_output=True,
        check=False,
        text=True,
        timeout=DEADLINE,
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[0])


def test_dev_serves_the_user_resumes_and_stops_cleanly(spiffed_dev, tmp_path: Path) -> None:
    data = tmp_path / "d"
    dev = spiffed_dev("--data-dir", str(data))
    assert (
        dev.wait_for("spiffed dev: data directory") == f"spiffed dev: data directory {data} (new)"
    )
    address, sock, admin = dev.ready()
    assert sock == data / "agent.sock" and admin == data / "server" / "api.sock"
    assert any(
        line.startswith("spiffed dev: trust domain example.org ready in ") for line in dev.seen
    )
    assert f"SPIFFE ID:\t\t{ME}" in agent_fetch(sock)
    spiffe_id, _, roots = pyspiffe_fetch(address)
    assert spiffe_id == ME
    assert count_entries(admin) == 1
    assert oct(admin.parent.stat().st_mode & 0o777) == oct(0o700), "admin socket is private"

    # one spiffed dev per data directory
    other = subprocess.run(
        [str(BIN / "spiffed"), "dev", "--data-dir", str(data)],
        capture_output=True,
        check=False,
        text=True,
        timeout=DEADLINE,
        env=env(tmp_path),
    )
    assert other.returncode == 1
    assert "another spiffed dev is running on" in other.stderr

    rc, err = dev.stop()
    assert rc == 0, err
    assert dev.seen[-1] == "spiffed dev: stopped"
    assert not sock.exists() and not admin.exists(), "sockets are removed"
    state = json.loads((data / "dev.json").read_text())
    svid_file = data / "agent" / "agent_svid.der"
    stored = svid_file.read_bytes()

    # a second run resumes: same trust domain, same CA root, same agent, no new entry
    again = spiffed_dev("--data-dir", str(data))
    assert again.wait_for("spiffed dev: data directory").endswith("(resuming)")
    address, sock, admin = again.ready()
    spiffe_id, _, roots_again = pyspiffe_fetch(address)
    assert spiffe_id == ME
    assert set(roots) <= set(roots_again), "the first run's CA root is still trusted"
    assert count_entries(admin) == 1, "the registration is not duplicated"
    assert json.loads((data / "dev.json").read_text()) == state, "same agent"
    assert svid_file.read_bytes() == stored, "the stored agent SVID was reused, not re-attested"

    # an evicted join-token agent cannot attest again: spiffed dev stops and says why
    evict = subprocess.run(
        [
            BIN / "spiffed-server",
            "agent",
            "evict",
            "-socketPath",
            admin,
            "-spiffeID",
            state["agent_id"],
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=DEADLINE,
    )
    assert evict.returncode == 0, evict.stderr
    try:
        rc = again.proc.wait(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        raise AssertionError("spiffed dev kept running with an evicted agent") from None
    err = again.proc.stderr.read() if again.proc.stderr else ""
    assert rc == 1, err
    assert "spiffed dev: error: agent: agent needs to re-attest" in err
    assert "spiffed dev attests a new agent when started again" in err
    assert not sock.exists() and not admin.exists()

    # so the next run attests a new agent and moves the entry to it
    third = spiffed_dev("--data-dir", str(data))
    address, sock, admin = third.ready()
    assert pyspiffe_fetch(address)[0] == ME
    new_agent = json.loads((data / "dev.json").read_text())["agent_id"]
    assert new_agent != state["agent_id"]
    assert new_agent.startswith("spiffe://example.org/spire/agent/join_token/")
    assert count_entries(admin) == 1, "the entry moved to the new agent, not copied"
    rc, err = third.stop()
    assert rc == 0, err


def test_ephemeral_leaves_nothing_on_disk(spiffed_dev, tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    # PATH without the virtualenv, as under `make dev`: the printed commands still work
    environ = env(tmp_path) | {"TMPDIR": str(temp), "PATH": "/usr/bin:/bin"}
    dev = spiffed_dev("--ephemeral", environ=environ)
    address, sock, _ = dev.ready()
    assert str(sock).startswith(str(temp)), "the temporary directory is used"
    assert pyspiffe_fetch(address)[0] == ME
    fetch = shlex.split(dev.wait_for("fetch: ").removeprefix("fetch: "))
    assert fetch[0] == str(BIN / "spiffed-agent")
    out = subprocess.run(fetch, capture_output=True, check=False, text=True, timeout=DEADLINE)
    assert f"SPIFFE ID:\t\t{ME}" in out.stdout, out.stderr
    assert not (sock.parent / "server" / "datastore.sqlite3").exists(), "datastore in memory"
    assert not (sock.parent / "server" / "keys.json").exists(), "keys in memory"
    assert not (sock.parent / "agent" / "agent_svid.key").exists()
    rc, err = dev.stop(signal.SIGINT)  # Ctrl-C
    assert rc == 0, err
    assert list(temp.iterdir()) == [], "the temporary directory is removed"
    assert not (tmp_path / "state").exists(), "the default data directory is not touched"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_start_stops_cleanly(spiffed_dev, tmp_path: Path, sig) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    dev = spiffed_dev("--ephemeral", environ=env(tmp_path) | {"TMPDIR": str(temp)})
    dev.wait_for("spiffed dev: ephemeral")
    rc, err = dev.stop(sig)
    assert rc == 0, err
    assert dev.seen[-1] == "spiffed dev: stopped"
    assert "Traceback" not in err
    assert list(temp.iterdir()) == [], "nothing left behind"


def test_register_custom_selectors_and_long_data_dir(spiffed_dev, tmp_path: Path) -> None:
    data = tmp_path / ("x" * 60) / "data"
    gid = os.getgid()
    dev = spiffed_dev("--data-dir", str(data), "--register", f"/web=unix:uid:{UID},unix:gid:{gid}")
    note = dev.wait_for("spiffed dev: note: ")
    assert "too long for Unix socket paths" in note
    _, sock, _ = dev.ready()
    assert len(str(sock)) <= 107 and not str(sock).startswith(str(data))
    assert dev.seen[-3].startswith("spiffed dev: trust domain example.org ready in ")
    assert f"spiffed dev: spiffe://example.org/web for unix:gid:{gid},unix:uid:{UID}" in dev.seen
    out = agent_fetch(sock)
    assert "SPIFFE ID:\t\tspiffe://example.org/web" in out
    assert ME not in out, "--register replaces the default registration"
    rc, err = dev.stop()
    assert rc == 0, err
    assert not sock.parent.exists(), "the socket directory under /tmp is removed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--register", "spiffe://example.org/web"], "expected SPIFFEID=SELECTOR"),
        (["--register", "web=unix:uid:1"], "invalid SPIFFE ID"),
        (["--register", "spiffe://other.org/web=unix:uid:1"], "is not in trust domain"),
        (["--register", "/web=unix"], "invalid selector"),
        (["--register", "/web=unix:uid:1,"], "invalid selector"),
        (["--register", "/spire/agent/x=unix:uid:1"], "reserved namespace"),
        (["--trust-domain", "Bad_TD"], "--trust-domain 'Bad_TD'"),
        (["--ephemeral", "--data-dir", "{tmp}/d"], "cannot be used with --data-dir"),
        (["--log-level", "loud"], "--log-level 'loud'"),
    ],
)
def test_bad_input_is_a_usage_error(tmp_path: Path, args: list[str], message: str) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--data-dir" not in argv and "--ephemeral" not in argv:
        argv += ["--data-dir", str(tmp_path / "d")]
    out = subprocess.run(
        [str(BIN / "spiffed"), "dev", *argv],
        capture_output=True,
        check=False,
        text=True,
        timeout=DEADLINE,
        env=env(tmp_path),
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("spiffed dev: error: ")
    assert message in out.stderr
    assert not (tmp_path / "d").exists(), "nothing is created"
    assert out.stdout == ""


def test_data_dir_of_another_trust_domain_or_not_dev_is_refused(tmp_path: Path) -> None:
    def dev(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "spiffed"), "dev", *args],
            capture_output=True,
            check=False,
            text=True,
            timeout=DEADLINE,
            env=env(tmp_path),
        )

    data = tmp_path / "d"
    data.mkdir()
    (data / "dev.json").write_text('{"trust_domain": "example.org", "agent_id": null}')
    out = dev("--data-dir", str(data), "--trust-domain", "other.org")
    assert out.returncode == 2
    assert f"data directory {data} holds trust domain example.org, not other.org" in out.stderr

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    out = dev("--data-dir", str(busy))
    assert out.returncode == 2
    assert "is not empty and has no dev.json" in out.stderr
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"], "nothing is written"

    (busy / "dev.json").write_text("not json")
    out = dev("--data-dir", str(busy))
    assert out.returncode == 2
    assert "is not a spiffed dev state file" in out.stderr


def test_readme_run_command_is_spiffed_dev() -> None:
    root = Path(__file__).resolve().parents[2]
    makefile = (root / "Makefile").read_text()
    assert "dev: install\n\t$(BIN)/spiffed dev" in makefile
    readme = (root / "README.md").read_text()
    assert "make dev" in readme
