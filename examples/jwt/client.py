"""Call an HTTP service with a JWT-SVID.

Fetches a JWT-SVID for the service's audience from the Workload API
(``SPIFFE_ENDPOINT_SOCKET``), sends it as ``Authorization: Bearer``, and prints the answer.
The exit status is 0 when the service answered 200, 1 otherwise.

    python examples/jwt/client.py --url http://127.0.0.1:8080/ \
        --audience spiffe://example.org/jwt/server

examples/README.md shows how to run it against ``spiffed dev``.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

from spiffed.workloadapi import WorkloadApiError
from spiffed.workloadapi.sync import WorkloadApiClient


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080/")
    parser.add_argument(
        "--audience", default="spiffe://example.org/jwt/server", help="the service's audience"
    )
    parser.add_argument("--id", help="our SPIFFE ID, when the agent gives us several")
    args = parser.parse_args()
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"--url {args.url!r}: expected an http:// or https:// URL")

    try:
        with WorkloadApiClient(timeout=15.0) as client:
            svid = client.fetch_jwt_svid(args.audience, spiffe_id=args.id)
    except WorkloadApiError as exc:
        print(f"error: cannot get a JWT-SVID from the Workload API: {exc}", flush=True)
        return 1
    print(f"JWT-SVID for {svid.spiffe_id}, audience {list(svid.audience)}", flush=True)

    headers = {"Authorization": f"Bearer {svid.token}"}
    request = urllib.request.Request(args.url, headers=headers)  # noqa: S310 (checked above)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError as exc:
        print(f"error: cannot call {args.url}: {exc}", flush=True)
        return 1
    print(f"{status} {body.decode(errors='replace').strip()}", flush=True)
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
