"""Helpers shared by the SPIRE-style admin commands: the local socket, errors, printing.

Output and error wording follow ``spire-server``'s CLI (``cmd/spire-server/cli``) so that
scripts written against SPIRE keep working: errors go to standard error as ``Error: ...``
with exit status 1, gRPC failures as ``rpc error: code = <Code> desc = <message>``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf import json_format
from google.protobuf.message import Message
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from spiffed._proto.spire.api.types import bundle_pb2, entry_pb2, selector_pb2, spiffeid_pb2

__all__ = [
    "DEFAULT_SOCKET_PATH",
    "call",
    "check_health",
    "fail",
    "id_to_proto",
    "id_to_str",
    "parse_selector",
    "print_bundle",
    "print_entry",
    "print_json",
    "pluralize",
    "socket_option",
    "output_option",
    "status_name",
]

DEFAULT_SOCKET_PATH = "/tmp/spire-server/private/api.sock"  # noqa: S108 - SPIRE's default
"""Where ``spire-server`` looks for the server's API socket unless ``-socketPath`` says."""

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


def socket_option(func: _F) -> _F:
    """Add SPIRE's ``-socketPath`` flag (as ``socket_path``)."""
    return click.option(
        "-socketPath",
        "--socketPath",
        "socket_path",
        default=DEFAULT_SOCKET_PATH,
        metavar="PATH",
        show_default=True,
        help="Path to the SPIRE Server API socket",
    )(func)


def output_option(func: _F) -> _F:
    """Add SPIRE's ``-output pretty|json`` flag (as ``output``)."""
    return click.option(
        "-output",
        "--output",
        "output",
        type=click.Choice(["pretty", "json"]),
        default="pretty",
        show_default=True,
        help="Desired output format (pretty, json)",
    )(func)


def fail(message: str) -> NoReturn:
    """Print ``Error: message`` to standard error and exit 1, as spire-server does."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


def status_name(status: Status | int) -> str:
    """Go's name of a gRPC status code (``PermissionDenied``), as SPIRE prints it."""
    code = Status(status)
    if code is Status.OK:
        return "OK"
    return "".join(part.capitalize() for part in code.name.split("_"))


def call(socket_path: str, action: Callable[[Channel], Awaitable[_T]], *, what: str = "") -> _T:
    """Run ``action`` on a channel to the server's socket; fail SPIRE-style on errors."""

    async def run() -> _T:
        channel = Channel(path=socket_path)
        try:
            return await asyncio.wait_for(action(channel), 30)
        finally:
            channel.close()

    prefix = f"{what}: " if what else ""
    try:
        return asyncio.run(run())
    except GRPCError as exc:
        fail(f"{prefix}rpc error: code = {status_name(exc.status)} desc = {exc.message or ''}")
    except (OSError, ConnectionError) as exc:
        fail(
            f'{prefix}connection error: desc = "transport: error while dialing: dial unix '
            f'{socket_path}: connect: {exc.strerror or exc}"'
        )
    except TimeoutError:
        fail(f"{prefix}rpc error: code = DeadlineExceeded desc = context deadline exceeded")


async def check_health(socket_path: str, *, verbose: bool = False) -> tuple[bool, str]:
    """Ask the server's Health service over ``socket_path``: (serving, detail for -verbose)."""
    channel = Channel(path=socket_path)
    try:
        reply = await asyncio.wait_for(HealthStub(channel).Check(HealthCheckRequest()), 10)
    except (OSError, GRPCError, TimeoutError) as exc:
        return False, f"Failed to check health: {exc}"
    finally:
        channel.close()
    if reply.status != HealthCheckResponse.SERVING:
        name = HealthCheckResponse.ServingStatus.Name(reply.status)
        return False, f"server returned status {name!r}"
    return True, ""


def pluralize(prefix: str, singular: str, plural: str, count: int) -> str:
    """SPIRE's ``util.Pluralizer``."""
    return prefix + (singular if count == 1 else plural)


def print_json(message: Message) -> None:
    """``-output json``: the response message as protobuf JSON (proto field names)."""
    text = json_format.MessageToJson(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    click.echo(json.dumps(json.loads(text)))


def id_to_proto(spiffe_id: str) -> spiffeid_pb2.SPIFFEID:
    """A ``spiffe://`` string as the API's SPIFFEID message; fails on a malformed ID."""
    from spiffed.spiffeid import SpiffeId, SpiffeIdError

    try:
        sid = SpiffeId.parse(spiffe_id)
    except SpiffeIdError as exc:
        fail(str(exc))
    return spiffeid_pb2.SPIFFEID(trust_domain=sid.trust_domain.name, path=sid.path)


def id_to_str(sid: spiffeid_pb2.SPIFFEID | None) -> str:
    """The API's SPIFFEID message as a string (empty for none)."""
    if sid is None or not sid.trust_domain:
        return ""
    return f"spiffe://{sid.trust_domain}{sid.path}"


def parse_selector(text: str) -> selector_pb2.Selector:
    """``type:value`` as a Selector message (SPIRE's ``ParseSelector``)."""
    kind, sep, value = text.partition(":")
    if not sep or not kind or not value:
        fail(f'selector "{text}" must be formatted as type:value')
    return selector_pb2.Selector(type=kind, value=value)


def print_entry(e: entry_pb2.Entry, *, err: bool = False) -> None:
    """One entry in SPIRE's ``printEntry`` layout."""

    def out(label: str, value: object) -> None:
        click.echo(f"{label:<24}: {value}", err=err)

    out("Entry ID", e.id or "(none)")
    out("SPIFFE ID", id_to_str(e.spiffe_id))
    out("Parent ID", id_to_str(e.parent_id))
    out("Revision", e.revision_number)
    if e.downstream:
        out("Downstream", "true")
    out("X509-SVID TTL", e.x509_svid_ttl or "default")
    out("JWT-SVID TTL", e.jwt_svid_ttl or "default")
    if e.expires_at:
        when = datetime.fromtimestamp(e.expires_at, UTC)
        out("Expiration time", when.strftime("%Y-%m-%d %H:%M:%S +0000 UTC"))
    for s in e.selectors:
        out("Selector", f"{s.type}:{s.value}")
    for td in e.federates_with:
        out("FederatesWith", td)
    for dns in e.dns_names:
        out("DNS name", dns)
    if e.admin:
        out("Admin", "true")
    if e.store_svid:
        out("StoreSvid", "true")
    if e.hint:
        out("Hint", e.hint)
    click.echo("", err=err)


def pem_certificates(ders: Iterable[bytes]) -> str:
    """DER certificates as concatenated PEM blocks."""
    return "".join(
        x509.load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM).decode()
        for d in ders
    )


def print_bundle(bundle: bundle_pb2.Bundle, fmt: str) -> None:
    """A bundle as PEM (its X.509 authorities) or as a SPIFFE bundle document."""
    if fmt == "pem":
        click.echo(pem_certificates(a.asn1 for a in bundle.x509_authorities), nl=False)
        return
    from spiffed.bundle import SpiffeBundle
    from spiffed.spiffeid import TrustDomain

    keys = {}
    for k in bundle.jwt_authorities:
        keys[k.key_id] = serialization.load_der_public_key(k.public_key)
    doc = SpiffeBundle(
        TrustDomain.parse(bundle.trust_domain),
        tuple(x509.load_der_x509_certificate(a.asn1) for a in bundle.x509_authorities),
        keys,  # type: ignore[arg-type]
        bundle.sequence_number,
        bundle.refresh_hint or None,
    )
    click.echo(doc.marshal(indent=4).decode())


def bundle_from_spiffe(trust_domain: str, data: bytes) -> bundle_pb2.Bundle:
    """A SPIFFE bundle document (JWKS) as the API's Bundle message; fails SPIRE-style."""
    from spiffed.bundle import BundleError, SpiffeBundle
    from spiffed.spiffeid import TrustDomain

    try:
        doc = SpiffeBundle.parse(TrustDomain.parse(trust_domain), data)
    except (BundleError, ValueError) as exc:
        fail(f"unable to parse to spiffe bundle: {exc}")
    msg = bundle_pb2.Bundle(trust_domain=trust_domain, sequence_number=doc.sequence or 0)
    msg.refresh_hint = doc.refresh_hint or 0
    for cert in doc.x509_authorities:
        msg.x509_authorities.add(asn1=cert.public_bytes(serialization.Encoding.DER))
    for kid, key in doc.jwt_authorities.items():
        msg.jwt_authorities.add(
            key_id=kid,
            public_key=key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
    return msg
