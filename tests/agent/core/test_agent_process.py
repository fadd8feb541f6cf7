"""A real ``spiffed-agent run`` process against an in-process spiffed-server: a workload
fetches its SVID over the socket, SIGTERM removes the socket, a restart with the disk
KeyManager does not attest again, a refused attestation exits 1 with the reason."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tests.agent.core.conftest import SpiffedServer
from tests.agent.core.test_agent_run import UID_SELECTOR, fetch_ids, short_dir

BIN = Path(sys.executable).parent / "spiffed-agent"


def write_conf(path: Path, data_dir: Path, *, key_manager: str = "disk") -> Path:
    km = (
        f'KeyManager "disk" {{ plugin_data {{ directory = "{data_dir}" }} }}'
        if key_manager == "disk"
        else 'KeyManager "memory" { plugin_data {} }'
    )
    path.write_text(f"""
agent {{
    trust_domain = "example.org"
    server_address = "127.0.0.1"
    server_port = "1"
    data_dir = "{data_dir}"
    log_level = "DEBUG"
    insecure_bootstrap = true
}}
plugins {{
    NodeAttestor "join_token" {{ plugin_data {{}} }}
    {km}
    WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
""")
    return path


async def start_agent(
    conf: Path, port: int, socket_path: Path, token: str | None, log: Path
) -> asyncio.subprocess.Process:
    args = ["run", "-config", str(conf), "-serverPort", str(port), "-socketPath", str(socket_path)]
    if token is not None:
        args += ["-joinToken", token]
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(str(BIN), *args, stdout=out, stderr=out)


async def stop_agent(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), timeout=20)


async def test_agent_process_serves_stops_cleanly_and_restarts_without_attesting(
    spiffed: SpiffedServer, tmp_path: Path
) -> None:
    token = await spiffed.generate_token()
    agent_id = f"spiffe://example.org/spire/agent/join_token/{token}"
    await spiffed.create_entry(agent_id, "spiffe://example.org/web", UID_SELECTOR)
    conf = write_conf(tmp_path / "agent.conf", tmp_path / "data")
    sock_dir = short_dir()
    sock = sock_dir / "public" / "api.sock"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"

    proc = await start_agent(conf, spiffed.port, sock, token, first_log)
    try:
        assert await fetch_ids(sock, timeout=30) == ["spiffe://example.org/web"]
        assert oct((sock_dir / "public").stat().st_mode & 0o777) == oct(0o755)
    finally:
        code = await stop_agent(proc)
    assert code == 0, first_log.read_text()
    assert not sock.exists(), "SIGTERM removes the socket"
    assert "node attested" in first_log.read_text()

    # a restart with the disk KeyManager reuses the stored SVID: no token needed
    proc = await start_agent(conf, spiffed.port, sock, None, second_log)
    try:
        assert await fetch_ids(sock, timeout=30) == ["spiffe://example.org/web"]
    finally:
        code = await stop_agent(proc)
    text = second_log.read_text()
    assert code == 0, text
    assert "reusing stored agent SVID" in text
    assert "node attested" not in text


async def test_refused_attestation_exits_1_with_the_reason(
    spiffed: SpiffedServer, tmp_path: Path
) -> None:
    conf = write_conf(tmp_path / "agent.conf", tmp_path / "data", key_manager="memory")
    log = tmp_path / "agent.log"
    proc = await start_agent(conf, spiffed.port, short_dir() / "api.sock", "bogus-token", log)
    code = await asyncio.wait_for(proc.wait(), timeout=30)
    text = log.read_text()
    assert code == 1, text
    assert "agent attestation failed: attestation refused" in text
    assert os.path.exists(tmp_path / "data") is False or not any((tmp_path / "data").iterdir())
