"""Conversion between datastore records and SPIRE's API messages, with SPIRE's validation.

Also the helpers every service shares: turning errors into gRPC statuses (a stack trace never
reaches a client), per-item ``Status`` messages for batch RPCs, and output masks.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from google.protobuf.message import Message
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from spiffed._proto.spire.api.types import (
    agent_pb2,
    entry_pb2,
    selector_pb2,
    spiffeid_pb2,
    status_pb2,
)
from spiffed.server import datastore as ds
from spiffed.server.errors import ServerError
from spiffed.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

__all__ = [
    "HINT_MAX_LEN",
    "MAX_TTL",
    "IdKind",
    "dns_name_problem",
    "id_in_trust_domain",
    "is_reserved_path",
    "agent_to_proto",
    "apply_mask",
    "entry_from_proto",
    "entry_to_proto",
    "error_status",
    "ok_status",
    "rpc",
    "selector_from_proto",
    "spiffe_id_from_proto",
    "spiffe_id_to_proto",
    "status_of",
    "to_server_error",
]

log = logging.getLogger(__name__)

MAX_TTL = 2**31 - 1
"""The largest TTL SPIRE accepts (an int32 of seconds)."""

HINT_MAX_LEN = 1024
"""SPIRE's limit on an entry's hint."""

S = TypeVar("S")


def to_server_error(exc: BaseException, *, not_found: str | None = None) -> ServerError:
    """The :class:`ServerError` a client sees for ``exc``; unknown errors become INTERNAL
    with a short message (the details go to the server log only)."""
    if isinstance(exc, ServerError):
        return exc
    if isinstance(exc, ds.NotFoundError):
        return ServerError(Status.NOT_FOUND, not_found or str(exc))
    if isinstance(exc, ds.AlreadyExistsError):
        return ServerError(Status.ALREADY_EXISTS, str(exc))
    if isinstance(exc, ds.InvalidArgumentError):
        return ServerError(Status.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, ds.FailedPreconditionError):
        return ServerError(Status.FAILED_PRECONDITION, str(exc))
    log.error("server API handler failed", exc_info=exc)
    return ServerError(Status.INTERNAL, f"internal error: {type(exc).__name__}")


def rpc(
    handler: Callable[[S, Stream[Any, Any]], Coroutine[Any, Any, None]],
) -> Callable[[S, Stream[Any, Any]], Coroutine[Any, Any, None]]:
    """Wrap a grpclib handler: ServerError and datastore errors become their gRPC status,
    anything else INTERNAL; GRPCError passes through."""

    @functools.wraps(handler)
    async def wrapper(self: S, stream: Stream[Any, Any]) -> None:
        try:
            await handler(self, stream)
        except GRPCError:
            raise
        except Exception as exc:
            err = to_server_error(exc)
            raise GRPCError(err.status, err.message) from None

    return wrapper


def ok_status() -> status_pb2.Status:
    """The per-item status of a success."""
    return status_pb2.Status(code=Status.OK.value, message="OK")


def error_status(status: Status, message: str) -> status_pb2.Status:
    """A per-item status for a failure."""
    return status_pb2.Status(code=status.value, message=message)


def status_of(exc: BaseException, *, not_found: str | None = None) -> status_pb2.Status:
    """The per-item status for an exception (unknown ones are INTERNAL, logged)."""
    err = to_server_error(exc, not_found=not_found)
    return error_status(err.status, err.message)


def apply_mask(message: Message, mask: Message | None, *, keep: tuple[str, ...] = ()) -> None:
    """Clear every field of ``message`` whose flag in ``mask`` is false (SPIRE: no mask means
    every field). Fields in ``keep`` always stay (entry and agent IDs)."""
    if mask is None:
        return
    for fd in mask.DESCRIPTOR.fields:
        if fd.name in keep or getattr(mask, fd.name):
            continue
        if fd.name in message.DESCRIPTOR.fields_by_name:
            message.ClearField(fd.name)


# ----- SPIFFE IDs and selectors -------------------------------------------------------------


def spiffe_id_to_proto(spiffe_id: str | SpiffeId) -> spiffeid_pb2.SPIFFEID:
    """``spiffe://td/path`` as SPIRE's ``SPIFFEID{trust_domain, path}``."""
    sid = spiffe_id if isinstance(spiffe_id, SpiffeId) else SpiffeId.parse(spiffe_id)
    return spiffeid_pb2.SPIFFEID(trust_domain=sid.trust_domain.name, path=sid.path)


def spiffe_id_from_proto(msg: spiffeid_pb2.SPIFFEID) -> SpiffeId:
    """Parse SPIRE's ``SPIFFEID`` message; raises SpiffeIdError with the reason."""
    td = TrustDomain.parse(msg.trust_domain)
    if msg.path and not msg.path.startswith("/"):
        raise SpiffeIdError(f'path must have a leading slash: "{msg.path}"')
    return SpiffeId.parse(td.id_string() + msg.path)


def selector_from_proto(msg: selector_pb2.Selector) -> ds.Selector:
    """A datastore selector; InvalidArgument messages as SPIRE's ``api.SelectorFromProto``."""
    if not msg.type:
        raise ServerError(Status.INVALID_ARGUMENT, "missing selector type")
    if ":" in msg.type:
        raise ServerError(Status.INVALID_ARGUMENT, "selector type contains ':'")
    if not msg.value:
        raise ServerError(Status.INVALID_ARGUMENT, "missing selector value")
    return ds.Selector(msg.type, msg.value)


def selector_to_proto(sel: ds.Selector) -> selector_pb2.Selector:
    """A datastore selector as SPIRE's message."""
    return selector_pb2.Selector(type=sel.type, value=sel.value)


# ----- entries ------------------------------------------------------------------------------


class IdKind(enum.Enum):
    """Which of SPIRE's ID checks applies (``api.TrustDomain*IDFromProto``)."""

    MEMBER = "a member of"
    WORKLOAD = "a workload in"
    AGENT = "an agent in"


def is_reserved_path(path: str) -> bool:
    """SPIRE's reserved namespace: ``/spire`` and everything under it."""
    return path == "/spire" or path.startswith("/spire/")


def id_in_trust_domain(
    msg: spiffeid_pb2.SPIFFEID | None, td: TrustDomain, kind: IdKind = IdKind.MEMBER
) -> SpiffeId:
    """Parse ``msg`` and check it as SPIRE does; ValueError carries SPIRE's reason text.

    Every kind must be in ``td`` with a path; a workload's path may not be in ``/spire``; an
    agent's must be under ``/spire/agent/``.
    """
    if msg is None:
        raise ValueError("request must specify SPIFFE ID")
    sid = spiffe_id_from_proto(msg)
    if not sid.member_of(td):
        raise ValueError(f'"{sid}" is not a member of trust domain "{td}"')
    if sid.is_trust_domain_id:
        raise ValueError(f'"{sid}" is not {kind.value} trust domain "{td}"; path is empty')
    if kind is IdKind.WORKLOAD and is_reserved_path(sid.path):
        raise ValueError(
            f'"{sid}" is not a workload in trust domain "{td}"; path is in the reserved namespace'
        )
    if kind is IdKind.AGENT and not sid.path.startswith("/spire/agent/"):
        raise ValueError(
            f'"{sid}" is not an agent in trust domain "{td}"; path is not in the agent namespace'
        )
    return sid


def _checked_id(msg: Any, present: bool, td: TrustDomain, kind: IdKind, what: str) -> str:
    try:
        return str(id_in_trust_domain(msg if present else None, td, kind))
    except ValueError as exc:  # SpiffeIdError is a ValueError
        raise ServerError(Status.INVALID_ARGUMENT, f"invalid {what}: {exc}") from None


def entry_from_proto(
    msg: entry_pb2.Entry, td: TrustDomain, *, fields: frozenset[str] | None = None
) -> ds.RegistrationEntry:
    """Validate an API entry as SPIRE's ``api.ProtoToRegistrationEntryWithMask`` does.

    ``fields`` limits the checks to the fields an update mask names (None = all). Errors are
    ServerError(INVALID_ARGUMENT) with SPIRE's reasons (``invalid spiffe ID: ...``); the
    service prefixes them with ``failed to convert entry: ``. The parent ID is checked first.
    """

    def want(name: str) -> bool:
        return fields is None or name in fields

    spiffe_id = parent_id = ""
    if want("parent_id"):
        parent_id = _checked_id(
            msg.parent_id, msg.HasField("parent_id"), td, IdKind.MEMBER, "parent ID"
        )
    if want("spiffe_id"):
        spiffe_id = _checked_id(
            msg.spiffe_id, msg.HasField("spiffe_id"), td, IdKind.WORKLOAD, "spiffe ID"
        )
    selectors: tuple[ds.Selector, ...] = ()
    if want("selectors"):
        if not msg.selectors:
            raise ServerError(Status.INVALID_ARGUMENT, "selector list is empty")
        try:
            selectors = tuple(selector_from_proto(s) for s in msg.selectors)
        except ServerError as exc:
            raise ServerError(Status.INVALID_ARGUMENT, f"invalid selector: {exc.message}") from None
    for name, label in (("x509_svid_ttl", "X509SvidTtl"), ("jwt_svid_ttl", "JwtSvidTtl")):
        value = getattr(msg, name)
        if want(name) and value < 0:
            raise ServerError(
                Status.INVALID_ARGUMENT,
                f"invalid registration entry: {label} is not allowed to be negative",
            )
        if want(name) and value > MAX_TTL:
            raise ServerError(
                Status.INVALID_ARGUMENT, f"invalid registration entry: {label} exceeds {MAX_TTL}"
            )
    federates: list[str] = []
    if want("federates_with"):
        for name in msg.federates_with:
            try:
                federates.append(TrustDomain.parse(name).name)
            except SpiffeIdError as exc:
                raise ServerError(
                    Status.INVALID_ARGUMENT, f"invalid federated trust domain: {exc}"
                ) from None
    if want("expires_at") and msg.expires_at < 0:
        raise ServerError(
            Status.INVALID_ARGUMENT, "invalid registration entry: expiresAt is negative"
        )
    if want("dns_names"):
        for name in msg.dns_names:
            reason = dns_name_problem(name)
            if reason:
                raise ServerError(Status.INVALID_ARGUMENT, f"invalid DNS name: {reason}")
    if want("hint") and len(msg.hint) > HINT_MAX_LEN:
        raise ServerError(
            Status.INVALID_ARGUMENT,
            f"hint is too long, max length is {HINT_MAX_LEN} characters",
        )
    return ds.RegistrationEntry(
        id=msg.id,
        spiffe_id=spiffe_id,
        parent_id=parent_id,
        selectors=selectors,
        x509_svid_ttl=msg.x509_svid_ttl,
        jwt_svid_ttl=msg.jwt_svid_ttl,
        federates_with=tuple(federates),
        dns_names=tuple(msg.dns_names),
        admin=msg.admin,
        downstream=msg.downstream,
        expires_at=msg.expires_at,
        hint=msg.hint,
        store_svid=msg.store_svid,
    )


def dns_name_problem(name: str) -> str:
    """Why ``name`` is not a usable DNS SAN (empty when it is): RFC 1123 labels, an optional
    leading ``*.`` wildcard, at most 253 characters."""
    if not name:
        return "empty or only whitespace"
    if len(name) > 253:
        return "length exceeded"
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if not labels:
            return "wildcard not allowed on its own"
    for label in labels:
        if not label or len(label) > 63:
            return f"label {label!r} is empty or longer than 63 characters"
        if label.startswith("-") or label.endswith("-"):
            return f"label {label!r} starts or ends with a hyphen"
        if not all(c.isascii() and (c.isalnum() or c == "-") for c in label):
            return f"label {label!r} has characters other than letters, digits and hyphens"
    return ""


def entry_to_proto(
    entry: ds.RegistrationEntry, mask: entry_pb2.EntryMask | None = None
) -> entry_pb2.Entry:
    """A stored entry as SPIRE's message, fields limited by ``mask`` (the ID always stays)."""
    msg = entry_pb2.Entry(
        id=entry.id,
        spiffe_id=spiffe_id_to_proto(entry.spiffe_id),
        parent_id=spiffe_id_to_proto(entry.parent_id),
        selectors=[selector_to_proto(s) for s in entry.selectors],
        x509_svid_ttl=entry.x509_svid_ttl,
        jwt_svid_ttl=entry.jwt_svid_ttl,
        federates_with=list(entry.federates_with),
        dns_names=list(entry.dns_names),
        admin=entry.admin,
        downstream=entry.downstream,
        expires_at=entry.expires_at,
        hint=entry.hint,
        store_svid=entry.store_svid,
        revision_number=entry.revision_number,
        created_at=entry.created_at,
    )
    apply_mask(msg, mask, keep=("id",))
    return msg


# ----- agents -------------------------------------------------------------------------------


def agent_to_proto(
    node: ds.AttestedNode, mask: agent_pb2.AgentMask | None = None
) -> agent_pb2.Agent:
    """An attested node as SPIRE's ``Agent`` (``x509svid_*`` from the current certificate)."""
    msg = agent_pb2.Agent(
        id=spiffe_id_to_proto(node.spiffe_id),
        attestation_type=node.attestation_data_type,
        x509svid_serial_number=node.cert_serial_number,
        x509svid_expires_at=node.cert_not_after,
        selectors=[selector_to_proto(s) for s in node.selectors],
        banned=node.banned,
        can_reattest=node.can_reattest,
        agent_version=node.agent_version,
    )
    apply_mask(msg, mask, keep=("id",))
    return msg
