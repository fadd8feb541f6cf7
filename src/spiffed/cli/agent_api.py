"""``spiffed-agent api ...`` and ``spiffed-agent healthcheck``: Workload API calls from the
command line, as ``spire-agent``'s (``cmd/spire-agent/cli/api``, ``cli/healthcheck``).

Flags, output lines and error wording follow SPIRE's so that scripts carry over: errors go
to standard error as SPIRE prints them (no ``Error:`` prefix here, unlike the server's
commands), gRPC failures as ``rpc error: code = <Code> desc = <message>``, exit status 1.
``api fetch jwtbundle`` is a spiffed addition (SPIRE has no such command).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from pathlib import Path
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

from spiffed._proto.workload import workload_pb2 as pb
from spiffed.bundle import X509Bundle
from spiffed.cli._spire import output_option, status_name
from spiffed.svid.x509 import X509SvidError, verify_chain
from spiffed.workloadapi.address import UnixAddress
from spiffed.workloadapi.client import (
    HintedJwtSvid,
    InvalidResponseError,
    JwtBundles,
    WorkloadApiClient,
    WorkloadApiError,
    X509Context,
)

__all__ = ["DEFAULT_SOCKET_PATH", "api", "format_duration", "healthcheck", "register"]

DEFAULT_SOCKET_PATH = "/tmp/spire-agent/public/api.sock"  # noqa: S108 - SPIRE's default
"""Where ``spire-agent``'s commands look for the Workload API unless ``-socketPath`` says."""

DEFAULT_TIMEOUT = 5.0
HEALTH_TIMEOUT = 30.0

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


class CommandError(Exception):
    """A command failed; the message is what SPIRE prints on standard error."""


# --- flags ---------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """A Go ``time.Duration`` such as ``5s``, ``1m30s`` or ``500ms``, in seconds."""
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(f"time: invalid duration {text!r}")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text:
        raise ValueError('time: invalid duration ""')
    return total


def _duration_callback(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(f'invalid value "{value}" for flag -timeout: {exc}') from None


def _flag(name: str, dest: str, **kwargs: Any) -> Callable[[_F], _F]:
    return click.option(f"-{name}", f"--{name}", dest, **kwargs)


def socket_flag(help_text: str) -> Callable[[_F], _F]:
    """SPIRE's ``-socketPath`` for the agent's public socket."""
    return _flag(
        "socketPath",
        "socket_path",
        default=DEFAULT_SOCKET_PATH,
        show_default=True,
        metavar="PATH",
        help=help_text,
    )


def common_flags(func: _F) -> _F:
    """``-socketPath`` and ``-timeout``, as SPIRE's api commands take them."""
    func = _flag(
        "timeout",
        "timeout",
        default="5s",
        callback=_duration_callback,
        show_default=True,
        help="Time to wait for a response",
    )(func)
    return socket_flag("Path to the SPIRE Agent API Unix domain socket")(func)


# --- running -------------------------------------------------------------------------------


def _socket_address(socket_path: str) -> UnixAddress:
    return UnixAddress(os.path.abspath(socket_path))


def describe_error(exc: WorkloadApiError, socket_path: str) -> str:
    """A client error as grpc-go prints it."""
    if isinstance(exc, InvalidResponseError):
        return exc.message
    if exc.status is Status.UNAVAILABLE and isinstance(exc.__cause__, OSError):
        reason = exc.__cause__.strerror or str(exc.__cause__)
        desc = (
            f'connection error: desc = "transport: Error while dialing: dial unix '
            f'{os.path.abspath(socket_path)}: connect: {reason.lower()}"'
        )
        return f"rpc error: code = Unavailable desc = {desc}"
    if exc.status is Status.DEADLINE_EXCEEDED:
        return "rpc error: code = DeadlineExceeded desc = context deadline exceeded"
    return f"rpc error: code = {status_name(exc.status)} desc = {exc.message}"


def _fail(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(1)


def _run(
    socket_path: str, timeout: float, action: Callable[[WorkloadApiClient], Awaitable[_T]]
) -> _T:
    """Run ``action`` with a client of the socket; print SPIRE's error and exit 1 on failure."""

    async def go() -> _T:
        async with WorkloadApiClient(
            _socket_address(socket_path), timeout=timeout or None
        ) as client:
            return await action(client)

    try:
        return asyncio.run(go())
    except CommandError as exc:
        _fail(str(exc))
    except WorkloadApiError as exc:
        _fail(describe_error(exc, socket_path))


def format_duration(seconds: float) -> str:
    """``seconds`` as Go's ``time.Duration.String`` writes it (``1.234ms``, ``2.5s``)."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)

    def fraction(value: int, digits: int) -> str:
        whole, frac = divmod(value, 10**digits)
        text = f"{frac:0{digits}d}".rstrip("0")
        return f"{whole}.{text}" if text else str(whole)

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{fraction(ns, 3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{fraction(ns, 6)}ms"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + f"{fraction(rest, 9)}s"


def go_time(when: datetime) -> str:
    """A UTC time as Go's ``%v`` of a ``time.Time`` prints it."""
    return when.strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def _normalize(value: Any) -> Any:
    """Integral floats as integers, as Go's JSON encoder writes numbers."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return value


def to_json(value: Any) -> str:
    """Compact JSON with sorted keys, as Go's ``encoding/json`` writes it."""
    return json.dumps(_normalize(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def message_json(message: Message) -> Any:
    """A message as protojson with proto field names and unpopulated fields."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def print_messages(*messages: Message) -> None:
    """SPIRE's ``-output json``: one object, or an array for several messages."""
    objs = [message_json(m) for m in messages]
    click.echo(to_json(objs[0] if len(objs) == 1 else objs))


# --- X.509 ---------------------------------------------------------------------------------


def _ders(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)


def _pems(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def x509_response(ctx: X509Context) -> pb.X509SVIDResponse:
    """The context as the Workload API's response message (for ``-output json``)."""
    resp = pb.X509SVIDResponse()
    for svid, hint in zip(ctx.svids, ctx.hints, strict=True):
        chain, key = svid.marshal_der()
        resp.svids.append(
            pb.X509SVID(
                spiffe_id=str(svid.spiffe_id),
                x509_svid=chain,
                x509_svid_key=key,
                bundle=_ders(ctx.bundle_for(svid).authorities),
                hint=hint,
            )
        )
    for td, bundle in ctx.federated_bundles().items():
        resp.federated_bundles[td.id_string()] = _ders(bundle.authorities)
    return resp


def _verify(ctx: X509Context) -> None:
    """Each SVID must chain to its bundle, as SPIRE checks before printing."""
    for svid in ctx.svids:
        try:
            verify_chain(svid.cert_chain, ctx.bundle_for(svid))
        except X509SvidError as exc:
            raise CommandError(
                f'"{svid.spiffe_id}" SVID failed verification against bundle: {exc}'
            ) from None


def print_x509_context(
    ctx: X509Context, elapsed: float, federated: Mapping[str, X509Bundle]
) -> None:
    """SPIRE's ``printX509SVIDResponse`` layout."""
    count = len(ctx.svids)
    click.echo(f"Received {count} svid{'' if count == 1 else 's'} after {format_duration(elapsed)}")
    for svid, hint in zip(ctx.svids, ctx.hints, strict=True):
        click.echo()
        click.echo(f"SPIFFE ID:\t\t{svid.spiffe_id}")
        if hint:
            click.echo(f"Hint:\t\t\t{hint}")
        click.echo(f"SVID Valid After:\t{go_time(svid.leaf.not_valid_before_utc)}")
        click.echo(f"SVID Valid Until:\t{go_time(svid.leaf.not_valid_after_utc)}")
        for i, cert in enumerate(svid.cert_chain[1:], 1):
            click.echo(f"Intermediate #{i} Valid After:\t{go_time(cert.not_valid_before_utc)}")
            click.echo(f"Intermediate #{i} Valid Until:\t{go_time(cert.not_valid_after_utc)}")
        for i, ca in enumerate(ctx.bundle_for(svid).authorities, 1):
            click.echo(f"CA #{i} Valid After:\t{go_time(ca.not_valid_before_utc)}")
            click.echo(f"CA #{i} Valid Until:\t{go_time(ca.not_valid_after_utc)}")
        for name, bundle in federated.items():
            for i, ca in enumerate(bundle.authorities, 1):
                click.echo(f"[{name}] CA #{i} Valid After:\t{go_time(ca.not_valid_before_utc)}")
                click.echo(f"[{name}] CA #{i} Valid Until:\t{go_time(ca.not_valid_after_utc)}")
    click.echo()


def _write_public(path: Path, data: bytes) -> None:
    _write_file(path, data, 0o644)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Create or truncate ``path`` with ``mode`` (a private key never readable by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def write_x509_context(ctx: X509Context, directory: str) -> None:
    """SPIRE's ``-write`` files: svid.N.pem, svid.N.key, bundle.N.pem, federated_bundle.N.M.pem."""
    base = Path(directory)
    federated = sorted(ctx.federated_bundles().items(), key=lambda kv: kv[0].id_string())
    for i, svid in enumerate(ctx.svids):
        svid_path, key_path = base / f"svid.{i}.pem", base / f"svid.{i}.key"
        bundle_path = base / f"bundle.{i}.pem"
        try:
            click.echo(f"Writing SVID #{i} to file {svid_path}.")
            _write_public(svid_path, _pems(svid.cert_chain))
            click.echo(f"Writing key #{i} to file {key_path}.")
            _write_file(key_path, svid.marshal_pem()[1], 0o600)
            click.echo(f"Writing bundle #{i} to file {bundle_path}.")
            _write_public(bundle_path, _pems(ctx.bundle_for(svid).authorities))
            for j, (td, bundle) in enumerate(federated):
                path = base / f"federated_bundle.{i}.{j}.pem"
                click.echo(
                    f"Writing federated bundle #{j} for trust domain {td.id_string()} "
                    f"to file {path}."
                )
                _write_public(path, _pems(bundle.authorities))
        except OSError as exc:
            raise CommandError(
                f"open {exc.filename}: {(exc.strerror or str(exc)).lower()}"
            ) from None


def _fetch_x509(socket_path: str, timeout: float, write: str, silent: bool, output: str) -> None:
    async def action(client: WorkloadApiClient) -> None:
        start = time.monotonic()
        ctx = await client.fetch_x509_context()
        elapsed = time.monotonic() - start
        if output == "json":
            print_messages(x509_response(ctx))
            return
        _verify(ctx)
        if not silent:
            named = {td.id_string(): b for td, b in ctx.federated_bundles().items()}
            print_x509_context(ctx, elapsed, named)
        if write:
            write_x509_context(ctx, write)

    _run(socket_path, timeout, action)


def x509_flags(func: _F) -> _F:
    func = output_option(func)
    func = _flag(
        "write",
        "write",
        default="",
        metavar="DIR",
        help="Write SVID data to the specified path (optional; only available for pretty "
        "output format)",
    )(func)
    func = _flag("silent", "silent", is_flag=True, help="Suppress stdout")(func)
    return common_flags(func)


# --- commands ------------------------------------------------------------------------------


@click.group()
def api() -> None:
    """Workload API commands (fetch, validate, watch)."""


@api.group(invoke_without_command=True)
@x509_flags
@click.pass_context
def fetch(
    ctx: click.Context, *, socket_path: str, timeout: float, write: str, silent: bool, output: str
) -> None:
    """Fetches X509 SVIDs from the Workload API (also: fetch x509, jwt, jwtbundle)."""
    if ctx.invoked_subcommand is None:
        _fetch_x509(socket_path, timeout, write, silent, output)


@fetch.command("x509")
@x509_flags
def fetch_x509(socket_path: str, timeout: float, write: str, silent: bool, output: str) -> None:
    """Fetches X509 SVIDs from the Workload API."""
    _fetch_x509(socket_path, timeout, write, silent, output)


def _split_audience(values: Sequence[str]) -> list[str]:
    return [a for v in values for a in v.split(",") if a]


def jwt_bundles_message(bundles: JwtBundles) -> pb.JWTBundlesResponse:
    """Bundles as the Workload API's message (JWKS per ``spiffe://`` trust domain)."""
    resp = pb.JWTBundlesResponse()
    for td, bundle in bundles.bundles.items():
        resp.bundles[td.id_string()] = bundle.marshal_jwks()
    return resp


def jwt_svids_message(svids: Sequence[HintedJwtSvid]) -> pb.JWTSVIDResponse:
    """JWT-SVIDs as the Workload API's message."""
    return pb.JWTSVIDResponse(
        svids=[
            pb.JWTSVID(spiffe_id=str(h.svid.spiffe_id), svid=h.svid.marshal(), hint=h.hint)
            for h in svids
        ]
    )


@fetch.command("jwt")
@common_flags
@_flag(
    "audience",
    "audience",
    multiple=True,
    metavar="AUD",
    help="comma separated list of audience values",
)
@_flag("spiffeID", "spiffe_id", default="", metavar="ID", help="SPIFFE ID subject (optional)")
@output_option
@_flag("format", "format_", default=None, hidden=True, help="deprecated; use -output")
def fetch_jwt(
    *,
    socket_path: str,
    timeout: float,
    audience: tuple[str, ...],
    spiffe_id: str,
    output: str,
    format_: str | None,
) -> None:
    """Fetches a JWT SVID from the Workload API."""
    audiences = _split_audience(audience)
    if not audiences:
        _fail("audience must be specified")
    fmt = format_ or output
    if fmt not in ("pretty", "json"):
        _fail(f'invalid value "{fmt}" for flag -format: unknown output format')

    async def action(client: WorkloadApiClient) -> None:
        bundles = await client.fetch_jwt_bundles()
        svids = await client.fetch_jwt_svids(*audiences, spiffe_id=spiffe_id or None)
        if fmt == "json":
            print_messages(jwt_svids_message(svids), jwt_bundles_message(bundles))
            return
        for h in svids:
            click.echo(f"token({h.svid.spiffe_id}):\n\t{h.svid.marshal()}")
            if h.hint:
                click.echo(f"hint({h.svid.spiffe_id}):\n\t{h.hint}")
        for td, bundle in bundles.bundles.items():
            click.echo(f"bundle({td.id_string()}):\n\t{bundle.marshal_jwks().decode()}")

    _run(socket_path, timeout, action)


@fetch.command("jwtbundle")
@common_flags
@_flag("write", "write", default="", metavar="DIR", help="Write each JWKS to DIR/<td>.jwks")
@output_option
def fetch_jwtbundle(socket_path: str, timeout: float, write: str, output: str) -> None:
    """Fetches the JWT bundles (JWKS per trust domain); a spiffed addition."""

    async def action(client: WorkloadApiClient) -> None:
        bundles = await client.fetch_jwt_bundles()
        if output == "json":
            print_messages(jwt_bundles_message(bundles))
        else:
            for td, bundle in bundles.bundles.items():
                click.echo(f"bundle({td.id_string()}):\n\t{bundle.marshal_jwks().decode()}")
        if write:
            for td, bundle in sorted(bundles.bundles.items(), key=lambda kv: kv[0].name):
                path = Path(write) / f"{td.name}.jwks"
                click.echo(f"Writing bundle for trust domain {td.id_string()} to file {path}.")
                try:
                    _write_public(path, bundle.marshal_jwks())
                except OSError as exc:
                    reason = (exc.strerror or str(exc)).lower()
                    raise CommandError(f"open {exc.filename}: {reason}") from None

    _run(socket_path, timeout, action)


@api.group("validate")
def validate_group() -> None:
    """Validates SVIDs with the Workload API."""


@validate_group.command("jwt")
@common_flags
@_flag("audience", "audience", default="", metavar="AUD", help="expected audience value")
@_flag("svid", "svid", default="", metavar="TOKEN", help="JWT SVID")
@output_option
def validate_jwt(socket_path: str, timeout: float, audience: str, svid: str, output: str) -> None:
    """Validates a JWT SVID."""
    if not audience:
        _fail("audience must be specified")
    if not svid:
        _fail("svid must be specified")

    async def action(client: WorkloadApiClient) -> None:
        try:
            result = await client.validate_jwt_svid(svid, audience)
        except InvalidResponseError:
            raise
        except WorkloadApiError as exc:
            if exc.status is Status.INVALID_ARGUMENT:
                raise CommandError(f"SVID is not valid: {exc.message}") from None
            raise CommandError(
                f"unable to validate JWT SVID: {describe_error(exc, socket_path)}"
            ) from None
        message = pb.ValidateJWTSVIDResponse(spiffe_id=str(result.spiffe_id))
        message.claims.update(dict(result.claims))
        if output == "json":
            print_messages(message)
            return
        click.echo("SVID is valid.")
        click.echo(f"SPIFFE ID : {result.spiffe_id}")
        click.echo(f"Claims    : {to_json(message_json(message.claims))}")

    _run(socket_path, timeout, action)


async def _watch(socket_path: str) -> None:
    """Print every X.509 context update; report stream errors and retry (as go-spiffe)."""
    backoff = 1.0
    last = time.monotonic()
    async with WorkloadApiClient(_socket_address(socket_path), timeout=None) as client:
        while True:
            try:
                async for ctx in client.watch_x509_context():
                    backoff = 1.0
                    named = {td.name: b for td, b in ctx.federated_bundles().items()}
                    print_x509_context(ctx, time.monotonic() - last, named)
                    last = time.monotonic()
            except WorkloadApiError as exc:
                click.echo(describe_error(exc, socket_path), err=True)
                if exc.status is Status.INVALID_ARGUMENT:
                    raise
            await asyncio.sleep(backoff)  # retry backoff, not a wait for a condition
            backoff = min(backoff * 2, 30.0)


def _run_until_interrupted(coro: Coroutine[Any, Any, None]) -> int:
    """Run ``coro`` until it ends or SIGINT/SIGTERM arrives; 0 when interrupted."""

    async def main() -> int:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            return 0
        except WorkloadApiError:
            return 1
        return 0

    return asyncio.run(main())


@api.command()
@socket_flag("Path to the SPIRE Agent API Unix domain socket")
def watch(socket_path: str) -> None:
    """Attaches to the Workload API and prints updates as they're received."""
    sys.exit(_run_until_interrupted(_watch(socket_path)))


# --- healthcheck ---------------------------------------------------------------------------


async def _check(socket_path: str, verbose: bool) -> str | None:
    """None when the agent is healthy, else why not (SPIRE's wording)."""
    channel = Channel(path=os.path.abspath(socket_path))
    try:
        reply = await asyncio.wait_for(
            HealthStub(channel).Check(HealthCheckRequest()), HEALTH_TIMEOUT
        )
    except (OSError, GRPCError, TimeoutError) as exc:
        if verbose:
            if isinstance(exc, GRPCError):
                detail = f"rpc error: code = {status_name(exc.status)} desc = {exc.message or ''}"
            elif isinstance(exc, OSError):
                detail = describe_error(_connection_error(exc), socket_path)
            else:
                detail = "rpc error: code = DeadlineExceeded desc = context deadline exceeded"
            click.echo(f"Failed to check health: {detail}", err=True)
        return "unable to determine health"
    finally:
        channel.close()
    if reply.status != HealthCheckResponse.SERVING:
        return f'agent returned status "{HealthCheckResponse.ServingStatus.Name(reply.status)}"'
    return None


def _connection_error(exc: OSError) -> WorkloadApiError:
    err = WorkloadApiError(Status.UNAVAILABLE, str(exc))
    err.__cause__ = exc
    return err


@click.command()
@socket_flag("Path to the SPIRE Agent API socket")
@_flag("shallow", "shallow", is_flag=True, help="Perform a less stringent health check")
@_flag("verbose", "verbose", is_flag=True, help="Print verbose information")
def healthcheck(socket_path: str, shallow: bool, verbose: bool) -> None:
    """Determines agent health status."""
    if verbose:
        click.echo("Checking agent health...")
    problem = asyncio.run(_check(socket_path, verbose))
    if problem is not None:
        _fail(f"Agent is unhealthy: {problem}")
    click.echo("Agent is healthy.")


def register(group: click.Group) -> None:
    """Add ``api`` and ``healthcheck`` to the ``spiffed-agent`` command group."""
    group.add_command(api)
    group.add_command(healthcheck)
