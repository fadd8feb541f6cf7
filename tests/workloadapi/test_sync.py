"""Synchronous wrappers, used from plain threads while the in-process agent runs on the
test's event loop."""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from grpclib.const import Status

from spiffed.authorize import authorize_id
from spiffed.backoff import Backoff
from spiffed.spiffeid import SpiffeId
from spiffed.tls import SpiffeHTTPServer, SpiffeTls, peer_spiffe_id
from spiffed.workloadapi import WorkloadApiError
from spiffed.workloadapi.sync import BundleSource, JwtSource, WorkloadApiClient, X509Source
from tests.agent.endpoints.support import DEADLINE, MY_UID, TD, Agent, entry, running_agent


def fast() -> Backoff:
    return Backoff(initial=0.01, maximum=0.05)


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    async with running_agent(tmp_path / "agent.sock") as a:
        yield a


def addr(agent: Agent) -> str:
    return f"unix://{agent.socket_path}"


async def until(predicate: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(DEADLINE):
        while not predicate():
            await asyncio.sleep(0.01)
    assert predicate(), what


async def in_thread(fn: Callable[[], Any]) -> Any:
    """Run blocking code on a plain thread (the agent needs this loop free)."""
    return await asyncio.wait_for(asyncio.to_thread(fn), DEADLINE)


async def test_sync_x509_source_follows_rotation_and_stops_its_thread(agent: Agent) -> None:
    e = entry("a", "/db", MY_UID)
    first = agent.add(e)["a"]
    source: X509Source = await in_thread(lambda: X509Source(addr(agent), backoff=fast))
    threads: list[str] = []
    source.subscribe(lambda s: threads.append(threading.current_thread().name))
    try:
        assert source.get_x509_svid().leaf == first.leaf
        assert source.get_x509_bundle_for_trust_domain(TD) is not None
        second = agent.rotate(e)
        await until(lambda: source.get_x509_svid().leaf == second.leaf, "rotation")
        await until(lambda: bool(threads), "callback")
        assert threads[0] == "spiffed-workloadapi"
        assert source.thread.is_alive()
    finally:
        await in_thread(source.close)
    assert not source.thread.is_alive()
    assert source.closed


async def test_sync_client_calls(agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID))

    def work() -> tuple[Any, ...]:
        with WorkloadApiClient(addr(agent)) as client:
            svid = client.fetch_x509_svid()
            bundles = client.fetch_x509_bundles()
            token = client.fetch_jwt_svid("aud")
            validated = client.validate_jwt_svid(token.token, "aud")
            jwt_bundles = client.fetch_jwt_bundles()
        return svid, bundles, token, validated, jwt_bundles, client

    svid, bundles, token, validated, jwt_bundles, client = await in_thread(work)
    assert str(svid.spiffe_id) == "spiffe://example.org/db"
    assert TD in bundles.bundles and TD in jwt_bundles.bundles
    assert validated.spiffe_id == token.spiffe_id
    assert not client.thread.is_alive()
    with pytest.raises(WorkloadApiError) as err:
        client.fetch_x509_context()
    assert err.value.status == Status.CANCELLED


async def test_sync_client_reports_server_status(agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID))

    def bad_token() -> None:
        with WorkloadApiClient(addr(agent)) as client:
            client.validate_jwt_svid("not-a-token", "aud")

    with pytest.raises(WorkloadApiError) as err:
        await in_thread(bad_token)
    assert err.value.status == Status.INVALID_ARGUMENT


async def test_sync_jwt_and_bundle_sources(agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID))

    def work() -> tuple[Any, ...]:
        with JwtSource(addr(agent)) as jwts, BundleSource(addr(agent)) as bundles:
            token = jwts.fetch_jwt_svid("aud")
            checked = jwts.validate_jwt_svid(token.token, "aud")
            return (
                checked,
                jwts.get_jwt_bundle_for_trust_domain(TD),
                bundles.get_bundle_for_trust_domain(TD),
            )

    checked, jwt_bundle, spiffe_bundle = await in_thread(work)
    assert checked.spiffe_id == SpiffeId.parse("spiffe://example.org/db")
    assert jwt_bundle is not None and agent.ca.jwt_kid in jwt_bundle.authorities
    assert spiffe_bundle.x509_authorities == (agent.ca.ca_cert,)


async def test_sync_start_timeout_raises_and_ends_thread(agent: Agent) -> None:
    before = {t for t in threading.enumerate() if t.name == "spiffed-workloadapi"}
    with pytest.raises(WorkloadApiError) as err:
        await in_thread(lambda: X509Source(addr(agent), timeout=0.2, backoff=fast))
    assert err.value.status == Status.DEADLINE_EXCEEDED
    after = {t for t in threading.enumerate() if t.name == "spiffed-workloadapi"}
    assert after <= before


class WhoAmI(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = str(peer_spiffe_id(self.request)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_http_server_on_sync_sources_follows_rotation(agent: Agent) -> None:
    entries = [entry("s", "/server", MY_UID), entry("c", "/client", MY_UID)]
    agent.add(*entries)
    server_id, client_id = entries[0].spiffe_id, entries[1].spiffe_id

    def picker(wanted: SpiffeId) -> Any:
        return lambda svids: next(s for s in svids if s.spiffe_id == wanted)

    server_src: X509Source = await in_thread(
        lambda: X509Source(addr(agent), picker=picker(server_id))
    )
    client_src: X509Source = await in_thread(
        lambda: X509Source(addr(agent), picker=picker(client_id))
    )
    httpd = SpiffeHTTPServer(
        ("127.0.0.1", 0), WhoAmI, SpiffeTls(server_src, authorize_id(client_id))
    )
    serving = threading.Thread(target=httpd.serve_forever, daemon=True)
    serving.start()
    client_ctx = SpiffeTls(client_src, authorize_id(server_id)).client_context()

    def get() -> tuple[bytes, Any]:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", httpd.server_address[1], context=client_ctx, timeout=DEADLINE
        )
        conn.request("GET", "/")
        cert = conn.sock.getpeercert(binary_form=True)
        body = conn.getresponse().read()
        conn.close()
        return body, cert

    try:
        body, _ = await in_thread(get)
        assert body == str(client_id).encode()
        new_server = agent.rotate(entries[0])
        agent.rotate(entries[1])
        await until(lambda: server_src.get_x509_svid().leaf == new_server.leaf, "server svid")
        body, cert = await in_thread(get)
        assert body == str(client_id).encode()
        assert cert == new_server.leaf.public_bytes(Encoding.DER)
    finally:
        await in_thread(httpd.shutdown)
        httpd.server_close()
        await in_thread(server_src.close)
        await in_thread(client_src.close)


async def test_sync_source_refused_inside_a_running_event_loop(agent: Agent) -> None:
    """A blocking source made on a thread running an event loop (here the loop serving the
    agent) would block that loop until the timeout; it is refused at once."""
    agent.add(entry("a", "/db", MY_UID))
    before = {t for t in threading.enumerate() if t.name == "spiffed-workloadapi"}
    with pytest.raises(RuntimeError, match="running an asyncio event loop"):
        X509Source(addr(agent), timeout=None, backoff=fast)
    with pytest.raises(RuntimeError, match="running an asyncio event loop"):
        WorkloadApiClient(addr(agent))
    after = {t for t in threading.enumerate() if t.name == "spiffed-workloadapi"}
    assert after <= before
    # made on another thread, its blocking calls are refused on the loop's thread too
    client: WorkloadApiClient = await in_thread(lambda: WorkloadApiClient(addr(agent)))
    try:
        with pytest.raises(RuntimeError, match="running an asyncio event loop"):
            client.fetch_x509_context()
    finally:
        await in_thread(client.close)


async def test_sync_source_closed_from_its_subscriber_callback(agent: Agent) -> None:
    e = entry("a", "/db", MY_UID)
    agent.add(e)
    source: X509Source = await in_thread(lambda: X509Source(addr(agent), backoff=fast))
    errors: list[BaseException] = []

    def close_it(s: X509Source) -> None:
        try:
            s.close()
            s.close()  # idempotent there too
        except BaseException as exc:  # pragma: no cover (the failure being tested)
            errors.append(exc)

    source.subscribe(close_it)
    agent.rotate(e)
    await until(lambda: errors != [] or not source.thread.is_alive(), "thread ended")
    assert errors == []
    assert source.closed
    await in_thread(source.close)  # and again from another thread: returns at once
    with pytest.raises(WorkloadApiError):
        source.get_x509_svid()
