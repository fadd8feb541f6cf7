"""An HTTP service that authenticates callers by their JWT-SVID.

Each request must carry ``Authorization: Bearer <JWT-SVID>`` for this service's audience.
The token is validated locally against the JWT bundles that a ``JwtSource`` keeps current
from the Workload API (``SPIFFE_ENDPOINT_SOCKET``); with ``--via-agent`` the agent validates it
instead (``ValidateJWTSVID``). A valid token gets 200 and a greeting naming the caller's
SPIFFE ID; anything else gets 401 with the reason.

    python examples/jwt/server.py --audience spiffe://example.org/jwt/server

Written with the blocking API (``spiffed.workloadapi.sync``) and ``http.server``;
examples/README.md shows how to run it against ``spiffed dev``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

from spiffed.spiffeid import SpiffeId
from spiffed.svid.jwt import JwtSvidError
from spiffed.workloadapi import WorkloadApiError
from spiffed.workloadapi.sync import JwtSource, WorkloadApiClient


def say(line: str) -> None:
    print(line, flush=True)


def local_validator(source: JwtSource, audience: str) -> Callable[[str], SpiffeId]:
    """Validate tokens here, with the JWT bundles the source keeps current."""

    def validate(token: str) -> SpiffeId:
        return source.validate_jwt_svid(token, audience).spiffe_id

    return validate


def agent_validator(client: WorkloadApiClient, audience: str) -> Callable[[str], SpiffeId]:
    """Ask the agent (the Workload API's ValidateJWTSVID) to validate tokens."""

    def validate(token: str) -> SpiffeId:
        return client.validate_jwt_svid(token, audience).spiffe_id

    return validate


def make_handler(validate: Callable[[str], SpiffeId]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            scheme, _, token = self.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                self.answer(401, "missing 'Authorization: Bearer <JWT-SVID>'")
                return
            try:
                caller = validate(token.strip())
            except (JwtSvidError, WorkloadApiError) as exc:
                self.answer(401, f"invalid JWT-SVID: {exc}")
                return
            self.answer(200, f"hello {caller}")

        def answer(self, status: int, text: str) -> None:
            body = (text + "\n").encode()
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Bearer error="invalid_token"')
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            say(f"{self.command} {self.path} -> {status} {text}")

        def log_message(self, format: str, *args: object) -> None:
            pass  # answer() prints one line per request

    return Handler


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: let the kernel pick one")
    parser.add_argument(
        "--audience", default="spiffe://example.org/jwt/server", help="the audience we accept"
    )
    parser.add_argument(
        "--via-agent", action="store_true", help="validate with the agent (ValidateJWTSVID)"
    )
    parser.add_argument("--timeout", type=float, default=15.0, help="wait for the JWT bundles")
    args = parser.parse_args()

    helper: JwtSource | WorkloadApiClient
    try:
        if args.via_agent:
            client = WorkloadApiClient(timeout=args.timeout)
            helper, validate = client, agent_validator(client, args.audience)
        else:
            source = JwtSource(timeout=args.timeout)
            helper, validate = source, local_validator(source, args.audience)
    except WorkloadApiError as exc:
        say(f"error: cannot reach the Workload API: {exc}")
        return 1

    with helper:
        httpd = ThreadingHTTPServer((args.host, args.port), make_handler(validate))
        port = httpd.server_port
        how = "the agent" if args.via_agent else "local JWT bundles"
        url = f"http://{args.host}:{port}/"
        say(f"listening on {url} for audience {args.audience} (validated by {how})")

        def stop(_signum: int, _frame: FrameType | None) -> None:
            threading.Thread(target=httpd.shutdown).start()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        httpd.serve_forever()
        httpd.server_close()
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
