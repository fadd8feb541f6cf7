"""X509Source, JwtSource and BundleSource against the in-process Workload API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status

from spiffed.backoff import Backoff
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.jwt import JwtSvidError
from spiffed.workloadapi import BundleSource, JwtSource, WorkloadApiError, X509Source, sources
from spiffed.workloadapi.sources import SourceClosedError
from tests.agent.endpoints.support import (
    DEADLINE,
    FED,
    MY_UID,
    TD,
    Agent,
    entry,
    running_agent,
)


def fast() -> Backoff:
    return Backoff(initial=0.01, maximum=0.05)


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    async with running_agent(tmp_path / "agent.sock") as a:
        yield a


def addr(agent: Agent) -> str:
    return f"unix://{agent.socket_path}"


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` until it holds (fails after DEADLINE seconds)."""
    async with asyncio.timeout(DEADLINE):
        while not predicate():
            await asyncio.sleep(0.01)
    assert predicate(), what


async def test_x509_source_follows_rotation_and_calls_subscribers(agent: Agent) -> None:
    e = entry("a", "/db", MY_UID, federates_with=[FED])
    first = agent.add(e)["a"]
    seen: list[int] = []
    async with X509Source(address=addr(agent), backoff=fast) as source:
        source.subscribe(lambda s: seen.append(s.version))
        assert source.get_x509_svid().leaf == first.leaf
        assert source.get_x509_bundle_for_trust_domain(TD).authorities == (agent.ca.ca_cert,)
        assert source.get_bundle_for_trust_domain(FED) is None
        second = agent.rotate(e)
        await until(lambda: source.get_x509_svid().leaf == second.leaf, "rotation seen")
        assert seen, "subscriber called"
        agent.set_federation(agent.fed.bundle())
        await until(lambda: source.get_x509_bundle_for_trust_domain(FED) is not None, "fed")
        assert set(source.get_x509_bundles()) == {TD, FED}
    assert source.closed
    with pytest.raises(SourceClosedError):
        source.get_x509_svid()


async def test_x509_source_picker_chooses_svid(agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID, hint="db"), entry("b", "/web", MY_UID, hint="web"))

    def pick_web(svids: Any) -> Any:
        return next(s for s in svids if s.spiffe_id.path == "/web")

    async with X509Source(address=addr(agent), picker=pick_web) as source:
        assert source.get_x509_svid().spiffe_id == SpiffeId.parse("spiffe://example.org/web")
        assert len(source.get_x509_svids()) == 2


async def test_we_09_source_reads_spiffe_endpoint_socket(agent: Agent) -> None:
    svid = agent.add(entry("a", "/db", MY_UID))["a"]
    environ = {"SPIFFE_ENDPOINT_SOCKET": addr(agent)}
    async with X509Source(environ=environ) as source:
        assert source.get_x509_svid().leaf == svid.leaf


async def test_close_stops_background_tasks(agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID))
    source = await X509Source(address=addr(agent)).start()
    tasks = list(source._tasks)
    assert tasks and not any(t.done() for t in tasks)
    await source.close()
    assert all(t.done() for t in tasks)
    calls: list[object] = []
    source.subscribe(calls.append)
    agent.rotate(agent.cache.entries()[0])
    await asyncio.sleep(0)  # nothing may run any more; no wait would make it pass
    assert calls == []


async def test_permission_denied_is_retried_until_registered(agent: Agent) -> None:
    """No entry yet: the agent answers PERMISSION_DENIED, which a source retries."""
    source = X509Source(address=addr(agent), backoff=fast, timeout=DEADLINE)
    starting = asyncio.create_task(source.start())
    await until(lambda: bool(source._watches) and source._watches[0].failures >= 2, "retries")
    assert not starting.done()
    svid = agent.add(entry("a", "/db", MY_UID))["a"]
    await asyncio.wait_for(starting, DEADLINE)
    assert source.get_x509_svid().leaf == svid.leaf
    await source.close()


async def test_start_times_out_with_clear_error(agent: Agent) -> None:
    source = X509Source(address=addr(agent), backoff=fast, timeout=0.3)
    with pytest.raises(WorkloadApiError) as err:
        await source.start()
    assert err.value.status == Status.DEADLINE_EXCEEDED
    assert "no first update" in err.value.message
    assert "PERMISSION_DENIED" in err.value.message  # the agent has no identity for us
    assert source.closed


class RefusingClient:
    """A client whose streams fail with one status, counting the attempts."""

    def __init__(self, status: Status) -> None:
        self.status = status
        self.attempts = 0
        self.address = "unix:///nowhere"

    async def watch_x509_context(self) -> AsyncIterator[Any]:
        self.attempts += 1
        raise WorkloadApiError(self.status, "refused")
        yield  # pragma: no cover

    def close(self) -> None:
        pass


async def test_invalid_argument_is_not_retried() -> None:
    client = RefusingClient(Status.INVALID_ARGUMENT)
    source = X509Source(client, backoff=fast, timeout=DEADLINE)  # type: ignore[arg-type]
    with pytest.raises(WorkloadApiError) as err:
        await source.start()
    assert err.value.status == Status.INVALID_ARGUMENT
    assert client.attempts == 1


class Proxy:
    """A Unix-socket relay to an agent socket; :meth:`crash` drops every connection, as the
    kernel does when an agent process dies, and later connections go to ``upstream``."""

    def __init__(self, path: Path, upstream: Path) -> None:
        self.path = path
        self.upstream = upstream
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._relay, path=str(self.path))

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.upstream))
        except OSError:
            writer.close()
            return
        self.writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def crash(self, new_upstream: Path) -> None:
        self.upstream = new_upstream
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        assert self.server is not None
        self.crash(self.upstream)
        self.server.close()


async def test_reconnects_after_agent_restart(tmp_path: Path) -> None:
    """The stream breaks (agent gone): the source keeps the last state, retries with back-off
    and follows the new agent once it is up."""
    proxy = Proxy(tmp_path / "front.sock", tmp_path / "one.sock")
    await proxy.start()
    try:
        async with running_agent(tmp_path / "one.sock") as first_agent:
            first_agent.add(entry("a", "/db", MY_UID))
            source = await X509Source(address=f"unix://{proxy.path}", backoff=fast).start()
            old = source.get_x509_svid()
        proxy.crash(tmp_path / "two.sock")  # nothing listens there yet
        await until(lambda: source._watches[0].failures >= 2, "reconnect attempts")
        assert source.get_x509_svid() is old  # last good state stays in use
        async with running_agent(tmp_path / "two.sock") as second_agent:
            svid = second_agent.add(entry("a", "/db", MY_UID))["a"]
            await until(lambda: source.get_x509_svid().leaf == svid.leaf, "new agent's SVID")
            bundle = source.get_x509_bundle_for_trust_domain(TD)
            assert bundle is not None and bundle.authorities == (second_agent.ca.ca_cert,)
        await source.close()
    finally:
        await proxy.close()


async def test_jwt_source_bundles_fetch_and_local_validation(agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID, federates_with=[FED]))
    async with JwtSource(address=addr(agent), backoff=fast) as source:
        bundle = source.get_jwt_bundle_for_trust_domain(TD)
        assert bundle is not None and agent.ca.jwt_kid in bundle.authorities
        svid = await source.fetch_jwt_svid("aud1")
        assert str(svid.spiffe_id) == "spiffe://example.org/db"
        assert source.validate_jwt_svid(svid.token, "aud1").spiffe_id == svid.spiffe_id
        with pytest.raises(JwtSvidError):
            source.validate_jwt_svid(svid.token, "other-audience")
        forged = agent.fed.jwt(SpiffeId.parse("spiffe://example.org/db"), ["aud1"])
        with pytest.raises(JwtSvidError):
            source.validate_jwt_svid(forged, "aud1")
        agent.set_federation(agent.fed.bundle())
        await until(lambda: source.get_jwt_bundle_for_trust_domain(FED) is not None, "fed jwt")


async def test_bundle_source_combines_x509_and_jwt(agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID, federates_with=[FED]))
    agent.set_federation(agent.fed.bundle())
    async with BundleSource(address=addr(agent), backoff=fast) as source:
        own = source.get_bundle_for_trust_domain(TD)
        assert own is not None
        assert own.x509_authorities == (agent.ca.ca_cert,)
        assert set(own.jwt_authorities) == {agent.ca.jwt_kid}
        await until(lambda: source.get_x509_bundle_for_trust_domain(FED) is not None, "fed")
        assert source.get_bundle_for_trust_domain(TrustDomain("x.org")) is None


async def test_we_07_source_stopped_by_invalid_argument_closes_its_connection(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream refused for good after the start closes the source and the connection the
    source opened (no channel left behind)."""
    closes: list[int] = []

    class RefusedLater(sources.WorkloadApiClient):
        async def watch_x509_context(self) -> AsyncIterator[Any]:  # type: ignore[override]
            async for context in super().watch_x509_context():
                yield context
                break
            raise WorkloadApiError(Status.INVALID_ARGUMENT, "refused from now on")

        def close(self) -> None:
            closes.append(1)
            super().close()

    monkeypatch.setattr(sources, "WorkloadApiClient", RefusedLater)
    agent.add(entry("a", "/a", MY_UID))
    source = await X509Source(address=addr(agent), backoff=fast).start()
    await until(lambda: source.closed, "source stopped for good")
    assert closes, "the source's own connection was not closed"
    assert source.client._channel is None  # type: ignore[attr-defined]
    with pytest.raises(WorkloadApiError) as err:
        source.get_x509_svid()
    assert err.value.status == Status.INVALID_ARGUMENT
    await source.close()
