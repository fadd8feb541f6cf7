"""TLS contexts from in-memory identities: handshakes over loopback, live updates."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from cryptography import x509

from spiffed.tls import (
    TlsError,
    add_trust_anchors,
    client_context,
    load_identity,
    peer_certificate,
    server_context,
)
from tests.server.nodeattestor.pki import make_cert


async def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> tuple[x509.Certificate | None, x509.Certificate | None]:
    """Connect once; return (cert the server saw, cert the client saw)."""
    seen: asyncio.Future[x509.Certificate | None] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result(peer_certificate(writer.get_extra_info("ssl_object")))
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_ctx), 10
        )
        client_saw = peer_certificate(writer.get_extra_info("ssl_object"))
        server_saw = await asyncio.wait_for(seen, 10)
        writer.close()
        return server_saw, client_saw
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="module")
def pki():
    root = make_cert("root", ca=True)
    return {
        "root": root,
        "server": make_cert("server", issuer=root),
        "client": make_cert("client", issuer=root),
        "other_root": make_cert("other root", ca=True),
    }


async def test_mutual_tls_with_in_memory_keys(pki) -> None:
    srv = server_context(
        [pki["server"].cert], pki["server"].key, [pki["root"].cert], require_client_certificate=True
    )
    cli = client_context([pki["root"].cert], [pki["client"].cert], pki["client"].key)
    server_saw, client_saw = await handshake(srv, cli)
    assert server_saw == pki["client"].cert
    assert client_saw == pki["server"].cert


async def test_optional_client_certificate_lets_anonymous_clients_in(pki) -> None:
    srv = server_context(
        [pki["server"].cert],
        pki["server"].key,
        [pki["root"].cert],
        require_client_certificate=False,
    )
    server_saw, _ = await handshake(srv, client_context([pki["root"].cert]))
    assert server_saw is None


async def refused_by_server(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> bool:
    """True when the server ends the handshake and never hands the connection to the app."""
    served: list[bool] = []

    async def on_client(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(True)
        writer.write(b"x")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=client_ctx), 10
            )
        except (ssl.SSLError, ConnectionError):
            return not served
        try:
            # TLS 1.3: the client finishes first; the server's alert arrives on the first read.
            data = await asyncio.wait_for(reader.read(1), 10)
        except (ssl.SSLError, ConnectionError):
            data = b""
        writer.close()
        return data == b"" and not served
    finally:
        server.close()
        await server.wait_closed()


async def test_required_client_certificate_refuses_anonymous_and_untrusted(pki) -> None:
    srv = server_context(
        [pki["server"].cert], pki["server"].key, [pki["root"].cert], require_client_certificate=True
    )
    stranger = make_cert("stranger", issuer=pki["other_root"])
    assert await refused_by_server(srv, client_context([pki["root"].cert]))
    assert await refused_by_server(
        srv, client_context([pki["root"].cert], [stranger.cert], stranger.key)
    )
    assert not await refused_by_server(
        srv, client_context([pki["root"].cert], [pki["client"].cert], pki["client"].key)
    )


async def test_client_refuses_a_server_outside_its_roots(pki) -> None:
    srv = server_context(
        [pki["server"].cert],
        pki["server"].key,
        [pki["root"].cert],
        require_client_certificate=False,
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(srv, client_context([pki["other_root"].cert]))


async def test_live_context_takes_new_roots_and_a_rotated_identity(pki) -> None:
    srv = server_context(
        [pki["server"].cert], pki["server"].key, [pki["root"].cert], require_client_certificate=True
    )
    newcomer = make_cert("newcomer", issuer=pki["other_root"])
    add_trust_anchors(srv, [pki["other_root"].cert])
    server_saw, _ = await handshake(
        srv, client_context([pki["root"].cert], [newcomer.cert], newcomer.key)
    )
    assert server_saw == newcomer.cert

    rotated = make_cert("server-rotated", issuer=pki["root"])
    load_identity(srv, [rotated.cert], rotated.key)
    _, client_saw = await handshake(
        srv, client_context([pki["root"].cert], [pki["client"].cert], pki["client"].key)
    )
    assert client_saw == rotated.cert


def test_mismatched_key_is_a_clear_error(pki) -> None:
    with pytest.raises(TlsError, match="cannot load the certificate chain and key"):
        server_context(
            [pki["server"].cert], pki["client"].key, [], require_client_certificate=False
        )
    with pytest.raises(TlsError, match="needs both"):
        client_context([pki["root"].cert], [pki["client"].cert], None)
