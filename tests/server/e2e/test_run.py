"""``spiffed-server run`` as a process, used through the CLI as a new operator would."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sqlite3
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from spiffed._proto.spire.api.server.bundle.v1 import bundle_grpc, bundle_pb2
from spiffed._proto.spire.api.server.entry.v1 import entry_grpc, entry_pb2

from .conftest import BIN, ServerProcess

W = "spiffe://example.org/workload"
AGENT = "spiffe://example.org/spire/agent/join_token/abc"


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def test_ready_log_names_socket_and_address(server: ServerProcess) -> None:
    log = server.logs[-1].read_text()
    assert "Starting Server APIs" in log
    assert str(server.socket_path) in log
    assert f"127.0.0.1:{server.port}" in log
    assert server.socket_path.parent.stat().st_mode & 0o777 == 0o700
    assert _ok(server.cli("healthcheck")) == "Server is healthy.\n"


def test_entry_create_show_filter(server: ServerProcess) -> None:
    out = _ok(
        server.cli(
            "entry",
            "create",
            "-spiffeID",
            W,
            "-parentID",
            AGENT,
            "-selector",
            "unix:uid:1000",
            "-selector",
            "unix:gid:1000",
            "-dns",
            "w.example.org",
            "-x509SVIDTTL",
            "600",
        )
    )
    assert f"SPIFFE ID               : {W}" in out
    assert "X509-SVID TTL           : 600" in out
    assert "DNS name                : w.example.org" in out
    _ok(
        server.cli(
            "entry",
            "create",
            "-spiffeID",
            W + "2",
            "-parentID",
            AGENT,
            "-selector",
            "unix:uid:2000",
        )
    )
    again = server.cli(
        "entry",
        "create",
        "-spiffeID",
        W,
        "-parentID",
        AGENT,
        "-selector",
        "unix:uid:1000",
        "-selector",
        "unix:gid:1000",
    )
    assert again.returncode == 1
    assert "code: AlreadyExists" in again.stderr
    assert "Error: failed to create one or more entries" in again.stderr

    shown = _ok(server.cli("entry", "show", "-selector", "unix:uid:1000"))
    assert shown.startswith("Found 1 entry\n")
    assert W + "2" not in shown
    assert _ok(server.cli("entry", "show")).startswith("Found 2 entries\n")
    assert _ok(server.cli("entry", "count")) == "2 registration entries\n"
    doc = json.loads(_ok(server.cli("entry", "show", "-spiffeID", W, "-output", "json")))
    [entry] = doc["entries"]
    assert entry["spiffe_id"] == {"trust_domain": "example.org", "path": "/workload"}
    deleted = _ok(server.cli("entry", "delete", "-entryID", entry["id"]))
    assert f"Deleted entry with ID: {entry['id']}" in deleted
    assert _ok(server.cli("entry", "count")) == "1 registration entry\n"


def test_entry_create_from_data_file(server: ServerProcess, tmp_path: Path) -> None:
    data = tmp_path / "entries.json"
    data.write_text(
        json.dumps(
            {
                "entries": [
                    {
                        "spiffe_id": W,
                        "parent_id": AGENT,
                        "selectors": [{"type": "unix", "value": "uid:1"}],
                    },
                    {
                        "spiffe_id": W + "/b",
                        "parent_id": AGENT,
                        "admin": True,
                        "selectors": [{"type": "unix", "value": "uid:2"}],
                    },
                ]
            }
        )
    )
    out = _ok(server.cli("entry", "create", "-data", str(data)))
    assert out.count("Entry ID") == 2
    assert "Admin                   : true" in out


def test_cli_errors_are_spire_style(server: ServerProcess, tmp_path: Path) -> None:
    missing = server.cli("entry", "create", "-spiffeID", W, "-parentID", AGENT)
    assert missing.returncode == 1
    assert missing.stderr == "Error: at least one selector is required\n"
    gone = subprocess.run(
        [str(BIN), "entry", "count", "-socketPath", str(tmp_path / "nothing.sock")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert gone.returncode == 1
    assert gone.stderr.startswith("Error: connection error")
    notfound = server.cli("entry", "show", "-entryID", "no-such-entry")
    assert notfound.returncode == 1
    assert notfound.stderr.startswith("Error: rpc error: code = NotFound desc = ")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl tool")
def test_x509_mint_verifies_against_bundle_show(server: ServerProcess, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(_ok(server.cli("bundle", "show")))
    out_dir = tmp_path / "minted"
    out_dir.mkdir()
    out = _ok(
        server.cli("x509", "mint", "-spiffeID", W, "-dns", "w.example.org", "-write", str(out_dir))
    )
    assert f"X509-SVID written to {out_dir}/svid.pem" in out
    assert (out_dir / "key.pem").stat().st_mode & 0o777 == 0o600
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(bundle), str(out_dir / "svid.pem")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    leaf = x509.load_pem_x509_certificates((out_dir / "svid.pem").read_bytes())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [W]
    assert san.get_values_for_type(x509.DNSName) == ["w.example.org"]
    spiffe_doc = json.loads(_ok(server.cli("bundle", "show", "-format", "spiffe")))
    assert {k["use"] for k in spiffe_doc["keys"]} == {"x509-svid", "jwt-svid"}


def test_jwt_mint_and_token_generate(server: ServerProcess) -> None:
    token = _ok(server.cli("jwt", "mint", "-spiffeID", W, "-audience", "db")).strip()
    assert token.count(".") == 2
    # A user checks it as a workload would: against the bundle's JWKS document.
    from spiffed.bundle import SpiffeBundle
    from spiffed.spiffeid import TrustDomain
    from spiffed.svid import JwtSvid, JwtSvidError

    jwks = _ok(server.cli("bundle", "show", "-format", "spiffe"))
    bundle = SpiffeBundle.parse(TrustDomain("example.org"), jwks.encode())
    assert str(JwtSvid.parse_and_validate(token, bundle, "db").spiffe_id) == W
    with pytest.raises(JwtSvidError):
        JwtSvid.parse_and_validate(token, bundle, "not-db")
    no_aud = server.cli("jwt", "mint", "-spiffeID", W)
    assert no_aud.stderr == "Error: at least one audience must be specified\n"
    out = _ok(server.cli("token", "generate", "-spiffeID", "spiffe://example.org/node"))
    assert out.startswith("Token: ")
    assert "Warning" not in out
    assert "Warning: Missing SPIFFE ID." in _ok(server.cli("token", "generate"))


def _tls_call(
    server: ServerProcess, bundle_pem: str, client: Path | None = None
) -> tuple[str, Status | None]:
    roots = bundle_pem

    async def go() -> tuple[str, Status | None]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=roots)
        ctx.set_alpn_protocols(["h2"])
        if client is not None:
            ctx.load_cert_chain(client / "svid.pem", client / "key.pem")
        channel = Channel("127.0.0.1", server.port, ssl=ctx)
        try:
            got = await bundle_grpc.BundleStub(channel).GetBundle(bundle_pb2.GetBundleRequest())
            try:
                await entry_grpc.EntryStub(channel).CountEntries(entry_pb2.CountEntriesRequest())
                status = None
            except GRPCError as exc:
                status = exc.status
            return got.trust_domain, status
        finally:
            channel.close()

    return asyncio.run(go())


def test_tcp_without_svid_gets_bundle_not_admin_rpcs(server: ServerProcess) -> None:
    td, status = _tls_call(server, _ok(server.cli("bundle", "show")))
    assert td == "example.org"
    assert status is Status.PERMISSION_DENIED


def test_sigterm_shuts_down_cleanly(server: ServerProcess) -> None:
    assert server.signal(signal.SIGTERM) == 0
    assert not server.socket_path.exists()
    assert "Server stopped gracefully" in server.logs[-1].read_text()


def test_restart_keeps_entries_and_ca(server: ServerProcess) -> None:
    _ok(
        server.cli("entry", "create", "-spiffeID", W, "-parentID", AGENT, "-selector", "unix:uid:1")
    )
    before = _ok(server.cli("bundle", "show"))
    assert server.signal(signal.SIGTERM) == 0
    server.start()
    assert _ok(server.cli("bundle", "show")) == before
    assert _ok(server.cli("entry", "count")) == "1 registration entry\n"
    # the restarted server still signs with the same CA: a new SVID chains to the old roots
    bundle_file = server.root / "before.pem"
    bundle_file.write_text(before)
    out_dir = server.root / "after"
    out_dir.mkdir()
    _ok(server.cli("x509", "mint", "-spiffeID", W, "-write", str(out_dir)))
    if shutil.which("openssl"):
        verify = subprocess.run(
            ["openssl", "verify", "-CAfile", str(bundle_file), str(out_dir / "svid.pem")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verify.returncode == 0, verify.stderr


def test_sigkill_during_entry_creates_loses_no_acknowledged_entry(server: ServerProcess) -> None:
    """Entries the CLI reported created survive a SIGKILL; none is half-written."""
    acknowledged: list[str] = []
    stop = threading.Event()
    enough = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            sid = f"{W}/n{i}"
            res = server.cli(
                "entry",
                "create",
                "-spiffeID",
                sid,
                "-parentID",
                AGENT,
                "-selector",
                f"unix:uid:{i}",
                "-selector",
                "unix:gid:7",
                "-dns",
                f"n{i}.example.org",
            )
            if res.returncode == 0 and "Entry ID" in res.stdout:
                acknowledged.append(sid)
                if len(acknowledged) >= 5:
                    enough.set()
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert enough.wait(timeout=60), "no entries acknowledged within 60s"
        server.signal(signal.SIGKILL)
    finally:
        stop.set()
        thread.join(timeout=120)
    server.start()
    doc = json.loads(_ok(server.cli("entry", "show", "-output", "json")))
    stored = {f"spiffe://example.org{e['spiffe_id']['path']}": e for e in doc["entries"]}
    missing = [sid for sid in acknowledged if sid not in stored]
    assert not missing, f"acknowledged but lost: {missing}"
    for sid, e in stored.items():
        i = sid.rsplit("/n", 1)[1]
        sels = {(s["type"], s["value"]) for s in e["selectors"]}
        assert sels == {("unix", f"uid:{i}"), ("unix", "gid:7")}, e
        assert e["dns_names"] == [f"n{i}.example.org"], e
    # the datastore file itself is consistent
    db = server.root / "data" / "datastore.sqlite3"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_tcp_with_svid_admin_only_when_admin_entry(server: ServerProcess) -> None:
    bundle = _ok(server.cli("bundle", "show"))
    ops = "spiffe://example.org/ops"
    creds = server.root / "ops"
    creds.mkdir()
    _ok(server.cli("x509", "mint", "-spiffeID", ops, "-write", str(creds)))
    assert _tls_call(server, bundle, creds) == ("example.org", Status.PERMISSION_DENIED)
    _ok(
        server.cli(
            "entry",
            "create",
            "-spiffeID",
            ops,
            "-parentID",
            AGENT,
            "-selector",
            "unix:uid:0",
            "-admin",
        )
    )
    assert _tls_call(server, bundle, creds) == ("example.org", None)


def test_localauthority_forced_rotation(server: ServerProcess, tmp_path: Path) -> None:
    old_root = _ok(server.cli("bundle", "show"))
    state = json.loads(_ok(server.cli("localauthority", "x509", "show", "-output", "json")))
    old_id = state["active"]["authority_id"]
    assert "Prepared X.509 authority:" in _ok(server.cli("localauthority", "x509", "prepare"))
    state = json.loads(_ok(server.cli("localauthority", "x509", "show", "-output", "json")))
    new_id = state["prepared"]["authority_id"]
    out = _ok(server.cli("localauthority", "x509", "activate", "-authorityID", new_id))
    assert out.startswith(f"Activated X.509 authority:\n  Authority ID: {new_id}\n")
    no_id = server.cli("localauthority", "x509", "taint")
    assert no_id.stderr == "Error: an authority ID is required\n"
    _ok(server.cli("localauthority", "x509", "taint", "-authorityID", old_id))
    revoked = _ok(server.cli("localauthority", "x509", "revoke", "-authorityID", old_id))
    assert revoked.startswith(f"Revoked X.509 authority:\n  Authority ID: {old_id}\n")
    new_roots = _ok(server.cli("bundle", "show"))
    assert old_root not in new_roots
    # what the server mints now chains to the new root only
    out_dir = tmp_path / "after"
    out_dir.mkdir()
    _ok(server.cli("x509", "mint", "-spiffeID", W, "-write", str(out_dir)))
    if shutil.which("openssl"):
        for roots, want in ((new_roots, 0), (old_root, 2)):
            ca = tmp_path / "ca.pem"
            ca.write_text(roots)
            verify = subprocess.run(
                ["openssl", "verify", "-CAfile", str(ca), str(out_dir / "svid.pem")],
                capture_output=True,
                text=True,
                check=False,
            )
            assert verify.returncode == want, verify.stdout + verify.stderr


def test_agent_commands_without_agents(server: ServerProcess) -> None:
    assert _ok(server.cli("agent", "list")) == "No attested agents found\n"
    assert _ok(server.cli("agent", "count")) == "0 attested agents\n"
    for verb in ("show", "ban", "evict"):
        missing = server.cli("agent", verb)
        assert missing.stderr == "Error: a SPIFFE ID is required\n"
        unknown = server.cli("agent", verb, "-spiffeID", "spiffe://example.org/spire/agent/x")
        assert unknown.returncode == 1
        assert unknown.stderr.startswith("Error: rpc error: code = NotFound desc = "), (
            unknown.stderr
        )


def test_federated_bundle_set_list_delete(server: ServerProcess, tmp_path: Path) -> None:
    pem = tmp_path / "other.pem"
    pem.write_text(_ok(server.cli("bundle", "show")))
    assert _ok(server.cli("bundle", "set", "-id", "spiffe://other.org", "-path", str(pem))) == (
        "bundle set.\n"
    )
    doc = tmp_path / "third.json"
    doc.write_text(_ok(server.cli("bundle", "show", "-format", "spiffe")))
    _ok(server.cli("bundle", "set", "-id", "third.org", "-path", str(doc), "-format", "spiffe"))
    assert _ok(server.cli("bundle", "count")) == "3 bundles\n"
    listed = _ok(server.cli("bundle", "list"))
    assert "* other.org\n" in listed
    assert "* third.org\n" in listed
    assert listed.count("BEGIN CERTIFICATE") == 2
    one = _ok(server.cli("bundle", "list", "-id", "spiffe://third.org", "-format", "spiffe"))
    assert {k["use"] for k in json.loads(one)["keys"]} == {"x509-svid", "jwt-svid"}
    assert _ok(server.cli("bundle", "delete", "-id", "spiffe://other.org")) == "bundle deleted.\n"
    assert _ok(server.cli("bundle", "count")) == "2 bundles\n"
    own = server.cli("bundle", "set", "-id", "spiffe://example.org", "-path", str(pem))
    assert own.returncode == 1
    assert own.stderr.startswith("Error: failed to set federated bundle: ")
    assert server.cli("bundle", "delete").stderr == "Error: id is required\n"


def test_json_logs_and_flag_overrides(tmp_path: Path) -> None:
    from .conftest import free_port, write_config

    proc = ServerProcess(tmp_path, write_config(tmp_path, 1, key_manager="memory"), free_port())
    log_file = tmp_path / "server.json.log"
    proc.start(
        "-logFormat",
        "json",
        "-logFile",
        str(log_file),
        "-serverPort",
        str(proc.port),
        "-logLevel",
        "INFO",
    )
    try:
        lines = [json.loads(line) for line in log_file.read_text().splitlines() if line]
        ready = [rec for rec in lines if rec.get("event") == "Starting Server APIs"]
        assert ready, lines
        assert ready[0]["address"] == f"127.0.0.1:{proc.port}"
        assert ready[0]["level"] == "info"
        assert not [rec for rec in lines if rec.get("level") == "debug"]
    finally:
        proc.stop()


async def test_postgres_datastore_keeps_entries_and_ca(tmp_path: Path, postgres_server) -> None:  # type: ignore[no-untyped-def]
    """The same server on PostgreSQL (connection_string): entries and CA survive a SIGKILL."""
    from .conftest import free_port, write_config

    await postgres_server.create_database("e2e_run")
    conn = postgres_server.connection_string("e2e_run")
    port = free_port()
    proc = ServerProcess(tmp_path, write_config(tmp_path, port, postgres=conn), port)
    await asyncio.to_thread(proc.start)
    try:
        cli = proc.cli
        _ok(
            await asyncio.to_thread(
                cli,
                "entry",
                "create",
                "-spiffeID",
                W,
                "-parentID",
                AGENT,
                "-selector",
                "unix:uid:1",
            )
        )
        before = _ok(await asyncio.to_thread(cli, "bundle", "show"))
        await asyncio.to_thread(proc.signal, signal.SIGKILL)
        await asyncio.to_thread(proc.start)
        assert _ok(await asyncio.to_thread(cli, "bundle", "show")) == before
        assert _ok(await asyncio.to_thread(cli, "entry", "count")) == "1 registration entry\n"
    finally:
        await asyncio.to_thread(proc.stop)
