"""examples/mtls: the server and client examples as real processes against ``spiffed dev``."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator

import pytest

from tests.examples.conftest import INTRUDER, MTLS_CLIENT, MTLS_SERVER, Dev, Proc


def start_server(dev: Dev, *allow: str) -> tuple[Proc, str]:
    args = ["--id", MTLS_SERVER, "--port", "0"]
    for spiffe_id in allow:
        args += ["--allow", spiffe_id]
    server = dev.example("mtls/server", *args)
    port = server.wait_for(r"^listening on 127\.0\.0\.1:(\d+) as ").group(1)
    return server, port


def test_mtls_pair_keeps_talking_across_two_rotations_without_a_failed_request(dev: Dev) -> None:
    server, port = start_server(dev, MTLS_CLIENT)
    client = dev.example(
        "mtls/client",
        "--port", port,
        "--id", MTLS_CLIENT,
        "--server-id", MTLS_SERVER,
        "--requests", "0",
        "--interval", "0.05",
    )  # fmt: skip
    try:
        # Each request is a new connection; SVIDs live 10 s and are renewed at half life.
        client.wait_for(r"^server SVID serial \w+ \(changes seen: 2\)", timeout=40)
        client.wait_for(r"^my SVID serial \w+ \(changes seen: 2\)", timeout=15)
    finally:
        rc = client.stop(signal.SIGTERM)
        server.stop(signal.SIGTERM)
    summary = client.wait_for(
        r"^requests: (\d+), ok: (\d+), failed: (\d+), server SVID changes: (\d+), "
        r"my SVID changes: (\d+)$"
    )
    sent, ok, failed, server_changes, my_changes = map(int, summary.groups())
    assert failed == 0, client.output
    assert sent == ok > 20
    assert server_changes >= 2 and my_changes >= 2
    assert rc == 0, client.output
    assert not client.find(r"failed: \w+Error"), client.output
    # the server saw the client's rotated SVIDs, and announced its own rotations
    assert f"from {MTLS_SERVER} to {MTLS_CLIENT} serial" in client.output
    assert len([line for line in server.lines if line.startswith("my SVID is now serial")]) >= 2
    assert server.find(r"^stopped after \d+ answers$"), server.output


@pytest.fixture(scope="module")
def strict_server(dev: Dev) -> Iterator[tuple[Proc, str]]:
    """The server example accepting only MTLS_CLIENT."""
    server, port = start_server(dev, MTLS_CLIENT)
    yield server, port
    assert server.stop() == 0, server.output


def test_client_with_an_unauthorized_id_is_refused_by_the_servers_authorizer(
    dev: Dev, strict_server: tuple[Proc, str]
) -> None:
    server, port = strict_server
    intruder = dev.example("mtls/client", "--port", port, "--id", INTRUDER, "--requests", "1")
    assert intruder.wait() == 1, intruder.output
    refused = server.wait_for(r"^refused (\S+): (.*)$")
    assert refused.group(1) == INTRUDER
    assert refused.group(2) == f"unexpected ID {INTRUDER!r}: {MTLS_CLIENT!r} is expected"
    assert intruder.find(r"^request 1 failed: ")
    assert not intruder.find(r"^answer: "), intruder.output
    assert intruder.find(r"^requests: 1, ok: 0, failed: 1,")


def test_client_refuses_a_server_with_another_id(dev: Dev, strict_server: tuple[Proc, str]) -> None:
    server, port = strict_server
    wrong = "spiffe://example.org/examples/somebody-else"
    refusals = len([line for line in server.lines if line.startswith("refused ")])
    client = dev.example(
        "mtls/client", "--port", port, "--id", MTLS_CLIENT, "--server-id", wrong,
        "--requests", "1",
    )  # fmt: skip
    assert client.wait() == 1, client.output
    failure = client.wait_for(r"^request 1 failed: (.*)$").group(1)
    assert failure == (
        f"PeerRejectedError: peer {MTLS_SERVER} is not authorized: "
        f"unexpected ID {MTLS_SERVER!r}: {wrong!r} is expected"
    )
    # the client refused the server: the server's authorizer had nothing to refuse
    assert len([line for line in server.lines if line.startswith("refused ")]) == refusals


def test_default_server_accepts_any_member_of_the_trust_domain(dev: Dev) -> None:
    server, port = start_server(dev)
    try:
        assert server.find(r"accepting a member of 'example.org'$"), server.output
        client = dev.example("mtls/client", "--port", port, "--id", INTRUDER, "--requests", "2")
        assert client.wait() == 0, client.output
    finally:
        server.stop()
    answer = client.wait_for(r"^answer: (.*)$").group(1)
    assert re.fullmatch(rf"hello 1 from {MTLS_SERVER} to {INTRUDER} serial [0-9a-f]+", answer)
    assert client.find(r"^requests: 2, ok: 2, failed: 0,")
