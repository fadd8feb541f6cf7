"""py-spiffe (``spiffe`` 0.3.x, grpcio) talks to spiffed's Workload API unmodified.

py-spiffe's client is blocking and runs its streams in threads, so every call goes through
``asyncio.to_thread`` while the server runs on this test's event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from spiffe import JwtSource, SpiffeId, TrustDomain, WorkloadApiClient, X509Source
from spiffe.errors import PySpiffeError

from tests.agent.endpoints.support import DEADLINE, FED, MY_UID, Agent, entry, running_agent

pytestmark = pytest.mark.interop


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    async with running_agent(tmp_path / "agent.sock") as a:
        a.add(
            entry("a", "/db", MY_UID, federates_with=[FED]),
            entry("b", "/web", MY_UID),
        )
        a.set_federation(a.fed.bundle())
        yield a


def address(agent: Agent) -> str:
    return f"unix://{agent.socket_path}"


async def until(predicate, what: str) -> None:
    """Poll ``predicate`` (run in a thread) until true, failing after DEADLINE seconds."""
    deadline = time.monotonic() + DEADLINE
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)  # yield to the server between polls


async def test_client_fetches_the_x509_context_and_bundles(agent: Agent) -> None:
    client = WorkloadApiClient(socket_path=address(agent), default_timeout=DEADLINE)
    try:
        ctx = await asyncio.to_thread(client.fetch_x509_context)
        bundles = await asyncio.to_thread(client.fetch_x509_bundles)
    finally:
        client.close()
    assert [str(s.spiffe_id) for s in ctx.x509_svids] == [
        "spiffe://example.org/db",
        "spiffe://example.org/web",
    ]
    assert str(ctx.default_svid.spiffe_id) == "spiffe://example.org/db"
    assert ctx.default_svid.leaf == agent.cache.svid("a").leaf
    own = ctx.x509_bundle_set.get_bundle_for_trust_domain(TrustDomain("example.org"))
    fed = ctx.x509_bundle_set.get_bundle_for_trust_domain(TrustDomain("federated.org"))
    assert own is not None and own.x509_authorities == {agent.ca.ca_cert}
    assert fed is not None and fed.x509_authorities == {agent.fed.ca_cert}
    assert {str(b.trust_domain) for b in bundles.bundles} == {"example.org", "federated.org"}


async def test_client_fetches_and_validates_a_jwt_svid(agent: Agent) -> None:
    client = WorkloadApiClient(socket_path=address(agent), default_timeout=DEADLINE)
    try:
        svid = await asyncio.to_thread(client.fetch_jwt_svid, {"aud-1", "aud-2"})
        web = await asyncio.to_thread(
            client.fetch_jwt_svid, {"aud-1"}, SpiffeId("spiffe://example.org/web")
        )
        checked = await asyncio.to_thread(client.validate_jwt_svid, svid.token, "aud-1")
        with pytest.raises(PySpiffeError):
            await asyncio.to_thread(client.validate_jwt_svid, svid.token, "someone-else")
        with pytest.raises(PySpiffeError):
            await asyncio.to_thread(
                client.fetch_jwt_svid, {"a"}, SpiffeId("spiffe://example.org/not-mine")
            )
        jwt_bundles = await asyncio.to_thread(client.fetch_jwt_bundles)
    finally:
        client.close()
    assert str(svid.spiffe_id) == "spiffe://example.org/db"
    assert svid.audience == {"aud-1", "aud-2"}
    assert str(web.spiffe_id) == "spiffe://example.org/web"
    assert str(checked.spiffe_id) == "spiffe://example.org/db"
    own = jwt_bundles.get_bundle_for_trust_domain(TrustDomain("example.org"))
    assert own is not None and set(own.jwt_authorities) == {agent.ca.jwt_kid}


async def test_x509_source_follows_a_rotation_on_its_open_stream(agent: Agent) -> None:
    source = await asyncio.to_thread(
        X509Source, socket_path=address(agent), timeout_in_seconds=DEADLINE
    )
    try:
        first = source.get_x509_context().default_svid.leaf.serial_number
        assert first == agent.cache.svid("a").leaf.serial_number
        rotated = agent.rotate(agent.cache.entries()[0])
        await until(
            lambda: (
                source.get_x509_context().default_svid.leaf.serial_number
                == rotated.leaf.serial_number
            ),
            "the rotated SVID in X509Source",
        )
        # WA-09: the federated bundle goes away when the message leaves it out.
        agent.set_federation()
        await until(
            lambda: source.get_bundle_for_trust_domain(TrustDomain("federated.org")) is None,
            "the federated bundle to be dropped",
        )
    finally:
        await asyncio.to_thread(source.close)


async def test_jwt_source_fetches_svids_and_tracks_bundles(agent: Agent) -> None:
    source = await asyncio.to_thread(
        JwtSource, socket_path=address(agent), timeout_in_seconds=DEADLINE
    )
    try:
        svid = await asyncio.to_thread(source.fetch_svid, {"aud"})
        assert str(svid.spiffe_id) == "spiffe://example.org/db"
        own = source.get_bundle_for_trust_domain(TrustDomain("example.org"))
        assert own is not None and own.get_jwt_authority(agent.ca.jwt_kid) is not None
        assert source.get_bundle_for_trust_domain(TrustDomain("federated.org")) is not None
        agent.set_federation()
        await until(
            lambda: source.get_bundle_for_trust_domain(TrustDomain("federated.org")) is None,
            "the federated JWT bundle to be dropped",
        )
    finally:
        await asyncio.to_thread(source.close)
