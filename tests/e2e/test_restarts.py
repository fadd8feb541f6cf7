"""Issue #4 restarts with real processes: the server restarts or stays down for a while (the
agent keeps serving what it has and reconnects with back-off), and the agent restarts from
its disk KeyManager state (no new attestation, no join token needed)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import Callable

from spiffed.workloadapi.client import WorkloadApiClient, X509Context
from tests.e2e.conftest import (
    AgentProcess,
    E2EServer,
    apoll,
    fetch_ids,
    uid_selector,
)

JT = "spiffe://example.org/spire/agent/join_token/"
WEB = "spiffe://example.org/web"
API = "spiffe://example.org/api"


def ids(ctx: X509Context) -> list[str]:
    return sorted(str(s.spiffe_id) for s in ctx.svids)


def attestations(server: E2EServer, agent_id: str) -> int:
    """How many times the server admitted ``agent_id`` (its log, over all its runs)."""
    return sum(
        1
        for line in server.log_text().splitlines()
        if "agent attestation request completed" in line and agent_id in line
    )


async def test_server_down_for_a_while_then_restarted(
    server: E2EServer, agents: Callable[..., AgentProcess]
) -> None:
    token, _ = server.token()
    agent_id = JT + token
    server.entry(agent_id, WEB, uid_selector())
    agent = agents(server, token=token, sync_interval="1s")
    await agent.start()
    await agent.wait_ready()
    record = server.agents()[agent_id]

    # A workload keeps one FetchX509SVID stream open through the whole outage.
    updates: list[X509Context] = []
    client = WorkloadApiClient(f"unix://{agent.socket_path}")

    async def watch() -> None:
        async for ctx in client.watch_x509_context():
            updates.append(ctx)

    watcher = asyncio.create_task(watch())
    try:
        await apoll(lambda: updates, timeout=15, what="the first X509-SVID on the stream")
        assert ids(updates[-1]) == [WEB]
        svid = updates[-1].svids[0]

        assert server.signal(signal.SIGTERM) == 0
        # Several failed syncs, with growing (jittered exponential) delays between them.
        failed = re.compile(r"sync failed .*retry_in=([0-9.]+)")
        await apoll(
            lambda: len(failed.findall(agent.log)) >= 3,
            timeout=20,
            what="three failed syncs",
            every=0.1,
        )
        delays = [float(d) for d in failed.findall(agent.log)]
        assert delays[2] > delays[0], f"back-off grows: {delays}"

        # Meanwhile the agent serves what it has: the open stream is still open with its
        # SVID, and a new caller gets the same SVID at once.
        assert not watcher.done()
        assert updates[-1].svids[0].leaf.serial_number == svid.leaf.serial_number
        assert await fetch_ids(agent.socket_path, timeout=5) == [WEB]
        assert agent.running

        server.start()
        assert server.agents()[agent_id] == record, "the server kept the agent"
        # A new entry created after the restart reaches the stream that stayed open.
        server.entry(agent_id, API, uid_selector())
        await apoll(
            lambda: ids(updates[-1]) == [API, WEB],
            timeout=20,
            what="the new entry's SVID on the open stream",
            every=0.1,
        )
        assert not watcher.done()
        web = next(s for s in updates[-1].svids if str(s.spiffe_id) == WEB)
        assert web.leaf.serial_number == svid.leaf.serial_number, "the cached SVID was kept"
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        client.close()
    assert agent.log.count("node attested") == 1, "no re-attestation"
    assert attestations(server, agent_id) == 1


async def test_agent_restart_reuses_its_svid_without_the_token(
    shared_server: E2EServer, agents: Callable[..., AgentProcess]
) -> None:
    server = shared_server
    token, _ = server.token()
    agent_id = JT + token
    server.entry(agent_id, WEB, uid_selector())
    agent = agents(server, token=token)
    await agent.start()
    await agent.wait_ready()
    assert await fetch_ids(agent.socket_path) == [WEB]
    before = server.agents()
    assert attestations(server, agent_id) == 1
    assert await agent.stop() == 0

    agent.token = ""  # the join token is not needed again (and is spent anyway)
    started = time.monotonic()
    await agent.start()
    assert await fetch_ids(agent.socket_path, timeout=15) == [WEB]
    elapsed = time.monotonic() - started
    log = agent.log
    assert "reusing stored agent SVID" in log
    assert "node attested" not in log
    assert server.agents() == before, "the same agent, with the same SVID serial"
    assert attestations(server, agent_id) == 1
    print(f"workload SVID {elapsed:.2f} s after the agent process was started again")
    assert elapsed < 10, f"workload SVID {elapsed:.1f}s after the restart"
