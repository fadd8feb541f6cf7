"""A released spire-agent (github.com/spiffe/spire v1.15.3) against spiffed-server (issue #4).

Real processes: ``spiffed-server run``, ``spire-agent run -joinToken`` and the workload side
``spire-agent api fetch x509``. The agent attests with a join token, syncs its entries (with
SyncAuthorizedEntries, its default, and with GetAuthorizedEntries), gets the workload's
X509-SVID signed and serves it over the Workload API; it renews its own SVID (RenewAgent).
The main tests also run against SPIRE's own spire-server, so what they expect is what SPIRE
does (all of them passed against it when written).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.interop.spireagent.agent import SPIFFED_SERVER, ServerProcess, SpireAgent, short_dir
from tests.interop.spireserver.server import (
    TRUST_DOMAIN,
    build_spire_agent,
    build_spire_server,
    wait_for,
)

pytestmark = pytest.mark.interop

TD = f"spiffe://{TRUST_DOMAIN}"
SYNC_DEADLINE = 30.0
"""The agent syncs every 5 s; an entry change shows within a few syncs."""


@pytest.fixture(scope="session")
def spire_agent_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """spire-agent built from github.com/spiffe/spire v1.15.3, once per test session."""
    return build_spire_agent(tmp_path_factory.mktemp("spire-agent-bin"))


BOTH = pytest.mark.parametrize(
    "server_binary", ["spiffed-server", "spire-server"], indirect=True, scope="module"
)
"""Against spiffed-server, and against SPIRE's spire-server to show the expectations are SPIRE's."""
SPIFFED = pytest.mark.parametrize(
    "server_binary", ["spiffed-server"], indirect=True, scope="module"
)
"""Against spiffed-server only (checked once against spire-server; left out to keep the file
short)."""


@pytest.fixture(scope="module")
def server_binary(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server program named by the test's parameter."""
    if request.param == "spiffed-server":
        return SPIFFED_SERVER
    return build_spire_server(tmp_path_factory.mktemp("spire-server-bin"))


@pytest.fixture(scope="module")
def server(server_binary: Path) -> Iterator[ServerProcess]:
    """One running server for the module's tests."""
    proc = ServerProcess(server_binary, short_dir("isv-"))
    try:
        yield proc.start()
    finally:
        proc.cleanup()


def write_bundle(server: ServerProcess, path: Path) -> Path:
    """``bundle show`` written to ``path`` (an agent's trust_bundle_path)."""
    path.write_text(server.check("bundle", "show"))
    return path


@pytest.fixture
def bundle(server: ServerProcess, tmp_path: Path) -> Path:
    return write_bundle(server, tmp_path / "bundle.pem")


StartAgent = Callable[..., SpireAgent]


@pytest.fixture
def agents(spire_agent_binary: Path, server: ServerProcess, bundle: Path) -> Iterator[StartAgent]:
    """``agents(token, use_sync_authorized_entries=..., server=..., bundle=...)`` starts a
    spire-agent (by default against the module's server); all of them are stopped and removed
    after the test."""
    started: list[SpireAgent] = []

    def start(
        token: str,
        use_sync_authorized_entries: bool = True,
        server: ServerProcess = server,
        bundle: Path = bundle,
    ) -> SpireAgent:
        agent = SpireAgent(
            spire_agent_binary,
            server,
            bundle,
            token,
            use_sync_authorized_entries=use_sync_authorized_entries,
        )
        started.append(agent)
        return agent.start()

    try:
        yield start
    finally:
        for agent in started:
            agent.cleanup()


def svid_ids(output: str) -> set[str]:
    """The SPIFFE IDs ``api fetch x509`` printed."""
    return {
        line.split(":", 1)[1].strip()
        for line in output.splitlines()
        if line.startswith("SPIFFE ID:")
    }


@pytest.mark.parametrize(
    ("server_binary", "sync_rpc"),
    [
        ("spiffed-server", "SyncAuthorizedEntries"),
        ("spiffed-server", "GetAuthorizedEntries"),
        ("spire-server", "SyncAuthorizedEntries"),
    ],
    indirect=["server_binary"],
    scope="module",
)
def test_spire_agent_attests_syncs_and_serves_x509_svid(
    server: ServerProcess, agents: StartAgent, bundle: Path, tmp_path: Path, sync_rpc: str
) -> None:
    node_alias = f"{TD}/node-{sync_rpc}"
    token = server.generate_token(node_alias)
    agent_id = f"{TD}/spire/agent/join_token/{token}"
    agent = agents(token, use_sync_authorized_entries=sync_rpc == "SyncAuthorizedEntries")
    agent.wait_healthy()

    listed = server.check("agent", "list")
    assert f"SPIFFE ID         : {agent_id}" in listed, listed
    assert "Attestation type  : join_token" in listed, listed

    uid = f"unix:uid:{os.getuid()}"
    workload = f"{TD}/workload"
    # One entry under the node alias that token generate made, one under the agent ID itself.
    server.create_entry(node_alias, workload, uid)
    server.create_entry(agent_id, f"{TD}/workload-direct", uid)

    def served() -> str | None:
        result = agent.fetch_x509()
        ids = svid_ids(result.stdout)
        return result.stdout if {workload, f"{TD}/workload-direct"} <= ids else None

    out = wait_for(
        served, timeout=SYNC_DEADLINE, what="the workload's SVIDs from the agent", interval=0.5
    )
    assert f"SPIFFE ID:\t\t{workload}" in out

    written = tmp_path / "svids"
    written.mkdir()
    fetched = agent.fetch_x509("-write", str(written))
    assert fetched.returncode == 0, fetched.stderr
    verified = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(written / "bundle.0.pem"),
            str(written / "svid.0.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.strip().endswith(": OK")
    # The bundle the agent serves is the server's bundle.
    served_bundle = x509.load_pem_x509_certificates((written / "bundle.0.pem").read_bytes())
    server_bundle = x509.load_pem_x509_certificates(bundle.read_bytes())
    assert set(served_bundle) == set(server_bundle)
    # X5-01: the SVID the server signed carries exactly one URI SAN, the SPIFFE ID.
    leaf = x509.load_pem_x509_certificates((written / "svid.0.pem").read_bytes())[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert len(sans.get_values_for_type(x509.UniformResourceIdentifier)) == 1
    assert sans.get_values_for_type(x509.UniformResourceIdentifier)[0] in svid_ids(fetched.stdout)


@BOTH
def test_used_join_token_is_refused_and_deleted_entry_is_withdrawn(
    server: ServerProcess, agents: StartAgent
) -> None:
    token = server.generate_token(f"{TD}/node-reuse")
    agent_id = f"{TD}/spire/agent/join_token/{token}"
    first = agents(token)
    first.wait_healthy()
    workload = f"{TD}/workload-deleted"
    entry_id = server.create_entry(agent_id, workload, f"unix:uid:{os.getuid()}")

    wait_for(
        lambda: workload in svid_ids(first.fetch_x509().stdout),
        timeout=SYNC_DEADLINE,
        what="the workload's SVID",
        interval=0.5,
    )

    # The attacker's side: a second agent presenting the token already used. SPIRE's agent
    # retries an InvalidArgument refusal for a minute before it gives up, so the test reads
    # the refusal from its log and checks that it got no identity.
    agents_before = server.check("agent", "count")
    second = agents(token)
    refusal = "join token does not exist or has already been used"

    def refused() -> bool:
        exited = second.process is not None and second.process.poll() is not None
        return exited or refusal in second.log()

    wait_for(refused, timeout=SYNC_DEADLINE, what="the second agent's refusal", interval=0.2)
    log = second.log()
    assert refusal in log, log
    assert "code = InvalidArgument" in log, log
    assert "Node attestation was successful" not in log, log
    assert second.cli("healthcheck").returncode != 0
    assert server.check("agent", "count") == agents_before
    # The first agent is untouched and still served.
    assert workload in svid_ids(first.fetch_x509().stdout)

    server.check("entry", "delete", "-entryID", entry_id)

    def withdrawn() -> str | None:
        result = first.fetch_x509()
        if result.returncode != 0 and "no identity issued" in result.stderr:
            return result.stderr
        return None

    err = wait_for(
        withdrawn, timeout=SYNC_DEADLINE, what="the deleted entry's SVID to go", interval=0.5
    )
    assert "PermissionDenied" in err


@SPIFFED
def test_spire_agent_renews_its_svid_and_keeps_syncing(
    server_binary: Path, agents: StartAgent, tmp_path: Path
) -> None:
    """RenewAgent: with 15 s agent SVIDs (25 s of validity with the 10 s backdate) the agent
    rotates at its check about 5 s in (half-life with SPIRE's +-10 % jitter); the server takes
    the new SVID (its serial becomes the agent's once the agent uses it) and the agent goes on
    syncing with it."""
    short = ServerProcess(server_binary, short_dir("isv-"), agent_ttl="15s")
    try:
        short.start()
        bundle = write_bundle(short, tmp_path / "bundle.pem")
        token = short.generate_token(f"{TD}/node-renew")
        agent_id = f"{TD}/spire/agent/join_token/{token}"
        agent = agents(token, server=short, bundle=bundle)
        agent.wait_healthy()
        attested_serial = short.agent_serial(agent_id)

        wait_for(
            lambda: "Successfully rotated agent SVID" in agent.log(),
            timeout=SYNC_DEADLINE,
            what=f"the agent to rotate its SVID\n{agent.logs()}",
            interval=0.5,
        )
        wait_for(
            lambda: short.agent_serial(agent_id) != attested_serial,
            timeout=SYNC_DEADLINE,
            what="the server to take the renewed SVID as the agent's",
            interval=0.5,
        )
        assert "Could not rotate agent SVID" not in agent.log(), agent.logs()

        workload = f"{TD}/workload-after-renewal"
        short.create_entry(agent_id, workload, f"unix:uid:{os.getuid()}")
        wait_for(
            lambda: workload in svid_ids(agent.fetch_x509().stdout),
            timeout=SYNC_DEADLINE,
            what="an entry created after the renewal",
            interval=0.5,
        )
    finally:
        short.cleanup()
