"""An mTLS client that checks the server's SPIFFE ID, across SVID rotation.

It gets its X509-SVID and the trust bundle from the Workload API (``SPIFFE_ENDPOINT_SOCKET``)
and opens a new mTLS connection for every request, so each request uses the SVIDs current at
that moment. It prints when it sees the server's SVID or its own (as the server saw it)
change, and a summary at the end. The exit status is 0 only when every request succeeded.

    python examples/mtls/client.py                      # 10 requests, any server of our TD
    python examples/mtls/client.py --requests 0 --server-id spiffe://example.org/mtls/server

examples/README.md shows how to run it against ``spiffed dev``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
from collections.abc import Callable, Sequence

from spiffed.authorize import authorize_id, authorize_member_of
from spiffed.spiffeid import SpiffeId
from spiffed.svid.x509 import X509Svid
from spiffed.tls import SpiffeTls, peer_certificate
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


class Serials:
    """Counts how often a certificate serial changed."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.current: str | None = None
        self.changes = 0

    def see(self, serial: str) -> None:
        if serial == self.current:
            return
        if self.current is not None:
            self.changes += 1
        self.current = serial
        say(f"{self.what} SVID serial {serial} (changes seen: {self.changes})")


async def request(tls: SpiffeTls, host: str, port: int, n: int, timeout: float) -> tuple[str, str]:
    """One request on a new connection: (the server's SVID serial, the answer)."""
    reader, writer = await asyncio.wait_for(tls.open_connection(host, port), timeout)
    try:
        cert = peer_certificate(writer.get_extra_info("ssl_object"))
        server_serial = f"{cert.serial_number:x}" if cert is not None else "?"
        writer.write(f"hello {n}\n".encode())
        await writer.drain()
        answer = (await asyncio.wait_for(reader.readline(), timeout)).decode().strip()
    finally:
        writer.close()
    if not answer:
        raise ConnectionError("the server closed the connection without answering")
    return server_serial, answer


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--id", help="our SPIFFE ID, when the agent gives us several")
    parser.add_argument(
        "--server-id", help="the server's SPIFFE ID (default: any ID of our trust domain)"
    )
    parser.add_argument("--requests", type=int, default=10, help="0: until Ctrl-C or SIGTERM")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between requests")
    parser.add_argument("--timeout", type=float, default=15.0, help="wait for the first SVID")
    parser.add_argument(
        "--request-timeout", type=float, default=10.0, help="seconds to connect and get an answer"
    )
    args = parser.parse_args()

    try:
        source = await X509Source(picker=pick_svid(args.id), timeout=args.timeout).start()
    except WorkloadApiError as exc:
        say(f"error: cannot get an X509-SVID from the Workload API: {exc}")
        return 1
    me = source.get_x509_svid().spiffe_id
    policy = (
        authorize_id(args.server_id) if args.server_id else authorize_member_of(me.trust_domain)
    )
    tls = SpiffeTls(source, policy)
    say(f"client {me}: calling {args.host}:{args.port}, expecting {policy}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    server_serials, my_serials = Serials("server"), Serials("my")
    sent = ok = 0
    while not stop.is_set() and (args.requests == 0 or sent < args.requests):
        sent += 1
        try:
            server_serial, answer = await request(
                tls, args.host, args.port, sent, args.request_timeout
            )
            words = answer.split()
            if words[:2] != ["hello", str(sent)] or words[-2] != "serial":
                raise ValueError(f"unexpected answer {answer!r}")
        except (OSError, ssl.SSLError, TimeoutError, ValueError) as exc:
            say(f"request {sent} failed: {type(exc).__name__}: {exc}")
        else:
            ok += 1
            server_serials.see(server_serial)
            my_serials.see(words[-1])
            if sent == 1:
                say(f"answer: {answer}")
        if args.interval > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.interval)

    tls.close()
    await source.close()
    say(
        f"requests: {sent}, ok: {ok}, failed: {sent - ok}, "
        f"server SVID changes: {server_serials.changes}, my SVID changes: {my_serials.changes}"
    )
    return 0 if sent > 0 and ok == sent else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
