"""An mTLS server that knows its clients by SPIFFE ID.

It gets its X509-SVID and the trust bundle from the Workload API (``SPIFFE_ENDPOINT_SOCKET``),
presents the current SVID on every new connection (so it follows rotation without a
restart) and accepts only clients whose X509-SVID verifies and whose SPIFFE ID is allowed.

Protocol: one line in, one line out. The client sends ``hello <n>``; the server answers
``hello <n> from <server ID> to <client ID> serial <client SVID serial>``.

    python examples/mtls/server.py                      # any ID of our trust domain
    python examples/mtls/server.py --allow spiffe://example.org/mtls/client

examples/README.md shows how to run it against ``spiffed dev``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence

from cryptography import x509

from spiffed.authorize import (
    AuthorizationError,
    Authorizer,
    authorize_member_of,
    authorize_one_of,
)
from spiffed.spiffeid import SpiffeId
from spiffed.svid.x509 import X509Svid
from spiffed.tls import SpiffeTls, peer_certificate, peer_spiffe_id
from spiffed.workloadapi import WorkloadApiError, X509Source


def say(line: str) -> None:
    print(line, flush=True)


def pick_svid(spiffe_id: str | None) -> Callable[[Sequence[X509Svid]], X509Svid] | None:
    """Choose the SVID of ``spiffe_id`` when the process has several (None: the default)."""
    if spiffe_id is None:
        return None
    wanted = SpiffeId.parse(spiffe_id)

    def picker(svids: Sequence[X509Svid]) -> X509Svid:
        for svid in svids:
            if svid.spiffe_id == wanted:
                return svid
        have = ", ".join(str(s.spiffe_id) for s in svids) or "none"
        raise LookupError(f"no X509-SVID for {wanted} from the agent (got: {have})")

    return picker


def logging_authorizer(inner: Authorizer) -> Authorizer:
    """Wrap an authorizer to print every refusal (the client only sees a closed connection)."""

    def authorize(peer: SpiffeId, chains: Sequence[Sequence[x509.Certificate]]) -> None:
        try:
            inner(peer, chains)
        except AuthorizationError as exc:
            say(f"refused {peer}: {exc}")
            raise

    return authorize


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443, help="0: let the kernel pick one")
    parser.add_argument("--id", help="our SPIFFE ID, when the agent gives us several")
    parser.add_argument(
        "--allow",
        action="append",
        metavar="SPIFFE_ID",
        help="a client ID to accept (repeatable; default: any ID of our trust domain)",
    )
    parser.add_argument("--timeout", type=float, default=15.0, help="wait for the first SVID")
    args = parser.parse_args()

    try:
        source = await X509Source(picker=pick_svid(args.id), timeout=args.timeout).start()
    except WorkloadApiError as exc:
        say(f"error: cannot get an X509-SVID from the Workload API: {exc}")
        return 1
    me = source.get_x509_svid().spiffe_id
    policy = authorize_one_of(*args.allow) if args.allow else authorize_member_of(me.trust_domain)
    tls = SpiffeTls(source, logging_authorizer(policy))
    served = 0

    def rotated(_source: X509Source) -> None:
        svid = _source.get_x509_svid()
        say(f"my SVID is now serial {svid.cert_chain[0].serial_number:x}")

    unsubscribe = source.subscribe(rotated)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        client_id = peer_spiffe_id(writer)  # verified and authorized in the handshake
        cert = peer_certificate(writer.get_extra_info("ssl_object"))
        serial = f"{cert.serial_number:x}" if cert is not None else "?"
        try:
            while line := await reader.readline():
                words = line.decode(errors="replace").split()
                if len(words) != 2 or words[0] != "hello":
                    writer.write(b"error: expected 'hello <n>'\n")
                else:
                    answer = f"hello {words[1]} from {me} to {client_id} serial {serial}\n"
                    writer.write(answer.encode())
                    served += 1
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await tls.start_server(handle, args.host, args.port)
    host, port = server.sockets[0].getsockname()[:2]
    say(f"listening on {host}:{port} as {me}, accepting {policy}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    server.close()
    await server.wait_closed()
    unsubscribe()
    tls.close()
    await source.close()
    say(f"stopped after {served} answers")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
