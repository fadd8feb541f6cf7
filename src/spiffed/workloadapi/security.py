"""The Workload API's security header (SPIFFE Workload Endpoint §5, WE-05..WE-07).

Every request carries the metadata ``workload.spiffe.io: true`` so that a server can tell a
deliberate Workload API call from a request a browser or a confused program was tricked
into making. A server rejects a request without exactly one such value, equal to the exact
string ``true``, with INVALID_ARGUMENT before anything else (AMB-12: as SPIRE), and a client
never retries that error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server

__all__ = [
    "HEADER_KEY",
    "HEADER_VALUE",
    "METHOD_PREFIX",
    "MISSING_HEADER_MESSAGE",
    "check_security_header",
    "client_metadata",
    "require_security_header",
]

HEADER_KEY = "workload.spiffe.io"
HEADER_VALUE = "true"
METHOD_PREFIX = "/SpiffeWorkloadAPI/"
MISSING_HEADER_MESSAGE = "security header missing from request"


def client_metadata() -> dict[str, str]:
    """The metadata a Workload API client sends on every call (WE-05)."""
    return {HEADER_KEY: HEADER_VALUE}


def check_security_header(metadata: Mapping[str, Any] | Any) -> None:
    """Raise INVALID_ARGUMENT unless ``metadata`` has exactly one ``workload.spiffe.io: true``."""
    getall = getattr(metadata, "getall", None)
    values: Sequence[Any] = (
        getall(HEADER_KEY, [])
        if getall
        else ([metadata[HEADER_KEY]] if HEADER_KEY in metadata else [])
    )
    if len(values) != 1 or values[0] != HEADER_VALUE:
        raise GRPCError(Status.INVALID_ARGUMENT, MISSING_HEADER_MESSAGE)


def require_security_header(server: Server, prefix: str = METHOD_PREFIX) -> None:
    """Check the header on every request to ``prefix`` methods of ``server``, before the
    method's handler runs (WE-06)."""

    async def on_request(event: RecvRequest) -> None:
        if event.method_name.startswith(prefix):
            check_security_header(event.metadata)

    listen(server, RecvRequest, on_request)
