"""examples/jwt: a JWT-SVID authenticated HTTP call, as real processes against ``spiffed dev``."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.examples.conftest import JWT_CLIENT, Dev, Proc

AUDIENCE = "spiffe://example.org/examples/jwt-server"


@pytest.fixture(scope="module", params=["local", "via-agent"])
def jwt_server(request: pytest.FixtureRequest, dev: Dev) -> Iterator[tuple[Proc, str]]:
    """The JWT example server, validating locally (JwtSource) or with the agent."""
    args = ["--port", "0", "--audience", AUDIENCE]
    if request.param == "via-agent":
        args.append("--via-agent")
    server = dev.example("jwt/server", *args)
    url = server.wait_for(r"^listening on (http://\S+) for audience ").group(1)
    yield server, url
    assert server.stop() == 0, server.output
    assert server.find(r"^stopped$"), server.output


def test_client_with_a_jwt_svid_for_the_audience_gets_200(
    dev: Dev, jwt_server: tuple[Proc, str]
) -> None:
    server, url = jwt_server
    client = dev.example("jwt/client", "--url", url, "--audience", AUDIENCE, "--id", JWT_CLIENT)
    assert client.wait() == 0, client.output
    assert client.find(rf"^JWT-SVID for {JWT_CLIENT}, audience \['{AUDIENCE}'\]$"), client.output
    assert client.find(rf"^200 hello {JWT_CLIENT}$"), client.output
    server.wait_for(rf"^GET / -> 200 hello {JWT_CLIENT}$")


def test_token_for_another_audience_gets_401(dev: Dev, jwt_server: tuple[Proc, str]) -> None:
    server, url = jwt_server
    client = dev.example("jwt/client", "--url", url, "--audience", "spiffe://example.org/other")
    assert client.wait() == 1, client.output
    status = client.wait_for(r"^401 (.*)$").group(1)
    assert status.startswith("invalid JWT-SVID: ")
    assert status.endswith(
        "JWT-SVID 'aud' ['spiffe://example.org/other'] does not contain the expected "
        f"audience {AUDIENCE!r} (JWT-08)"
    )
    server.wait_for(r"^GET / -> 401 invalid JWT-SVID: ")


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "missing 'Authorization: Bearer <JWT-SVID>'"),
        ("Basic dXNlcjpwYXNz", "missing 'Authorization: Bearer <JWT-SVID>'"),
        ("Bearer not-a-jwt", "invalid JWT-SVID: "),
    ],
)
def test_request_without_a_valid_bearer_token_gets_401(
    jwt_server: tuple[Proc, str], authorization: str | None, reason: str
) -> None:
    _server, url = jwt_server
    headers = {"Authorization": authorization} if authorization else {}
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)
    assert info.value.code == 401
    assert info.value.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert info.value.read().decode().startswith(reason)
