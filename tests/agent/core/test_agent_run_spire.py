"""spiffed.agent.run.serve against a real spire-server v1.15.3: SyncAuthorizedEntries (also
its sparse form past 500 entries), no Watch extension (polling), JWT-SVIDs from SPIRE's
NewJWTSVID, cached SVIDs still served while the server is down."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from spiffed.agent.cache import IdentityCache
from spiffed.agent.manager.run import build_manager
from spiffed.agent.manager.storage import SVID_FILE
from spiffed.agent.run import AgentRunError
from spiffed.svid.jwt import JwtSvid
from spiffed.workloadapi.client import WorkloadApiClient
from tests.agent.core.test_agent_run import (
    UID_SELECTOR,
    agent_conf,
    fetch_ids,
    running_agent,
    short_dir,
    wait_until,
)
from tests.interop.spireserver.server import SpireServer

pytestmark = pytest.mark.interop


async def test_serve_against_spire_polls_and_keeps_serving_while_it_is_down(
    spire: SpireServer, tmp_path: Path
) -> None:
    token = spire.generate_token()
    agent_id = f"spiffe://example.org/spire/agent/join_token/{token}"
    spire.check(
        "entry", "create", "-parentID", agent_id, "-spiffeID", "spiffe://example.org/web",
        "-selector", UID_SELECTOR,
    )  # fmt: skip
    bundle = tmp_path / "bootstrap.pem"
    bundle.write_bytes(spire.bundle_pem())
    sock = short_dir() / "api.sock"
    config = agent_conf(
        spire.port, tmp_path / "agent", sock, token=token, trust=f'trust_bundle_path = "{bundle}"'
    )
    async with running_agent(config) as (agent, task):
        m = agent.manager
        m.sync_interval = 0.5
        m.wake()
        assert await fetch_ids(sock, timeout=60) == ["spiffe://example.org/web"]
        assert m.sync_supported is True
        await wait_until(lambda: m.watch_supported is False, timeout=10, what="Watch refused")

        async with WorkloadApiClient(f"unix://{sock}") as client:
            jwt = await client.fetch_jwt_svid("aud")
            bundles = await client.fetch_jwt_bundles()
        assert str(JwtSvid.parse_and_validate(jwt.token, bundles, ["aud"]).spiffe_id) == (
            "spiffe://example.org/web"
        )

        await asyncio.to_thread(spire.stop)
        await wait_until(lambda: m.failures >= 2, timeout=30, what="failed syncs")
        assert await fetch_ids(sock) == ["spiffe://example.org/web"], "cached SVID served"
        assert not task.done()


async def test_sparse_sync_fetches_only_new_or_changed_entries(
    spire: SpireServer, tmp_path: Path
) -> None:
    token = spire.generate_token()
    agent_id = f"spiffe://example.org/spire/agent/join_token/{token}"
    entries = [
        {
            "spiffe_id": f"spiffe://example.org/w{i}",
            "parent_id": agent_id,
            "selectors": [{"type": "unix", "value": "uid:4242"}],
        }
        for i in range(510)
    ]
    data = tmp_path / "entries.json"
    data.write_text(json.dumps({"entries": entries}))
    out = spire.check("entry", "create", "-data", str(data))
    assert out.count("Entry ID") == 510, out[-500:]
    config = agent_conf(spire.port, tmp_path / "agent", short_dir() / "api.sock", token=token)
    m = build_manager(config, IdentityCache(config.trust_domain))
    m.use_watch = False
    await m.initialize()

    async def synced_entries() -> int:
        result = await m.sync_once()
        return result.entries

    count = 0
    deadline = asyncio.get_running_loop().time() + 60
    while count < 510:  # spire-server's entry cache lags behind the CLI by seconds
        assert asyncio.get_running_loop().time() < deadline, f"only {count} entries synced"
        count = await synced_entries()
        if count < 510:
            await asyncio.sleep(0.5)
    assert m.sync_supported is True
    assert m.cache.svid(m.cache.entries()[0].id) is not None
    await m.sync_once()
    assert m.last_fetched == 0, "unchanged entries are not sent again"
    assert len(m.cache.entries()) == count


@pytest.mark.parametrize(
    ("command", "message"),
    [("evict", "agent needs to re-attest"), ("ban", "agent is banned")],
)
async def test_evicted_or_banned_join_token_agent_stops(
    spire: SpireServer, tmp_path: Path, command: str, message: str
) -> None:
    token = spire.generate_token()
    agent_id = f"spiffe://example.org/spire/agent/join_token/{token}"
    sock = short_dir() / "api.sock"
    config = agent_conf(spire.port, tmp_path / "agent", sock, token=token)
    async with running_agent(config) as (agent, task):
        m = agent.manager
        m.sync_interval = 0.2
        m.wake()
        await wait_until(lambda: m.syncs > 0, timeout=30, what="a first sync")
        spire.check("agent", command, "-spiffeID", agent_id)
        await wait_until(task.done, timeout=60, what="the agent to stop")
        with pytest.raises(AgentRunError, match=message):
            task.result()
    assert not (tmp_path / "agent" / SVID_FILE).exists(), "as SPIRE: the SVID is removed"
