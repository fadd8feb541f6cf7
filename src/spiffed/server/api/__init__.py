"""The server API (SPIRE's ``spire.api.server.*.v1``): who may call what, and who is calling.

Every RPC has a policy taken from SPIRE's defaults: *any* (no identity needed), *local*
(a caller on the Unix socket), *admin* (an SVID whose ID is in ``admin_ids`` or has an
``admin`` entry), *agent* (an attested, not banned agent presenting its current SVID) and
*downstream*. The listener works out the :class:`Caller` for each request, checks the
policy before any handler runs (PermissionDenied otherwise), and makes the caller
available to the handler through :func:`current_caller`.
"""

from __future__ import annotations

import enum
from contextvars import ContextVar
from dataclasses import dataclass

from grpclib.const import Status

from spiffed.grpcutil import PeerCredentials
from spiffed.spiffeid import SpiffeId

__all__ = ["POLICY", "Caller", "Role", "caller_context", "caller_spiffe_id", "current_caller"]


class Role(enum.Enum):
    """A property of a caller that a policy may require."""

    ANY = "any"
    LOCAL = "local"
    ADMIN = "admin"
    AGENT = "agent"
    DOWNSTREAM = "downstream"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: a local process (Unix socket) or a TLS peer with an optional SVID."""

    local: PeerCredentials | None = None
    address: str | None = None
    spiffe_id: SpiffeId | None = None
    roles: frozenset[Role] = frozenset({Role.ANY})
    serial: str | None = None
    """The serial number (decimal) of the client certificate (SVID) the call came with."""
    not_after: float | None = None
    """When that certificate expires (POSIX seconds)."""

    def has(self, role: Role) -> bool:
        """True if the caller has ``role``."""
        return role in self.roles


caller_context: ContextVar[Caller] = ContextVar("spiffed_server_caller")


def current_caller() -> Caller:
    """The caller of the RPC being handled (set by the listener before the handler runs)."""
    try:
        return caller_context.get()
    except LookupError:
        raise RuntimeError(
            "no caller: the RPC did not pass through the server's policy check"
        ) from None


def caller_spiffe_id() -> SpiffeId:
    """The SPIFFE ID of the caller of the RPC being handled (an agent, admin or downstream
    server presenting an SVID); INTERNAL when the listener did not record one."""
    from spiffed.server.errors import ServerError

    spiffe_id = current_caller().spiffe_id
    if spiffe_id is None:
        raise ServerError(Status.INTERNAL, "caller ID missing from request context")
    return spiffe_id


_A, _L, _AD, _AG, _D = Role.ANY, Role.LOCAL, Role.ADMIN, Role.AGENT, Role.DOWNSTREAM
_ADMIN_OR_LOCAL = frozenset({_AD, _L})


def _service(prefix: str, roles: frozenset[Role], *methods: str) -> dict[str, frozenset[Role]]:
    return {f"/spire.api.server.{prefix}/{m}": roles for m in methods}


# SPIRE's default authorization policy (pkg/server/authpolicy/policy_data.json).
POLICY: dict[str, frozenset[Role]] = {
    **_service("svid.v1.SVID", _ADMIN_OR_LOCAL, "MintX509SVID", "MintJWTSVID", "MintWITSVID"),
    **_service(
        "svid.v1.SVID", frozenset({_AG}), "BatchNewX509SVID", "NewJWTSVID", "BatchNewWITSVID"
    ),
    **_service("svid.v1.SVID", frozenset({_D}), "NewDownstreamX509CA"),
    **_service("bundle.v1.Bundle", frozenset({_A}), "GetBundle"),
    **_service(
        "bundle.v1.Bundle",
        _ADMIN_OR_LOCAL,
        "AppendBundle",
        "CountBundles",
        "ListFederatedBundles",
        "BatchCreateFederatedBundle",
        "BatchUpdateFederatedBundle",
        "BatchSetFederatedBundle",
        "BatchDeleteFederatedBundle",
    ),
    **_service("bundle.v1.Bundle", frozenset({_D}), "PublishJWTAuthority", "PublishWITAuthority"),
    **_service("bundle.v1.Bundle", frozenset({_AD, _L, _AG}), "GetFederatedBundle"),
    **_service("debug.v1.Debug", frozenset({_L}), "GetInfo"),
    **_service(
        "entry.v1.Entry",
        _ADMIN_OR_LOCAL,
        "CountEntries",
        "ListEntries",
        "GetEntry",
        "BatchCreateEntry",
        "BatchUpdateEntry",
        "BatchDeleteEntry",
    ),
    **_service("entry.v1.Entry", frozenset({_AG}), "GetAuthorizedEntries", "SyncAuthorizedEntries"),
    **_service("logger.v1.Logger", frozenset({_L}), "GetLogger", "SetLogLevel", "ResetLogLevel"),
    **_service(
        "agent.v1.Agent",
        _ADMIN_OR_LOCAL,
        "CountAgents",
        "ListAgents",
        "GetAgent",
        "DeleteAgent",
        "BanAgent",
        "CreateJoinToken",
    ),
    **_service("agent.v1.Agent", frozenset({_A}), "AttestAgent"),
    **_service("agent.v1.Agent", frozenset({_AG}), "RenewAgent", "PostStatus"),
    # spiffed's own extension (proto/spiffed/_proto/spiffed/api/server/watch/v1/watch.proto).
    "/spiffed.api.server.watch.v1.Watch/WatchAuthorizedEntries": frozenset({_AG}),
    **{f"/grpc.health.v1.Health/{m}": frozenset({_L}) for m in ("Check", "List", "Watch")},
    **_service(
        "trustdomain.v1.TrustDomain",
        _ADMIN_OR_LOCAL,
        "ListFederationRelationships",
        "GetFederationRelationship",
        "BatchCreateFederationRelationship",
        "BatchUpdateFederationRelationship",
        "BatchDeleteFederationRelationship",
        "RefreshBundle",
    ),
    **_service(
        "localauthority.v1.LocalAuthority",
        _ADMIN_OR_LOCAL,
        *(
            f"{verb}{kind}Authority"
            for kind in ("JWT", "X509", "WIT")
            for verb in ("Prepare", "Activate", "Taint", "Revoke")
        ),
        "GetJWTAuthorityState",
        "GetX509AuthorityState",
        "GetWITAuthorityState",
        "TaintX509UpstreamAuthority",
        "RevokeX509UpstreamAuthority",
    ),
}


def allowed(method: str, caller: Caller) -> bool:
    """True if ``caller`` may call ``method``; unknown methods are refused."""
    roles = POLICY.get(method)
    if roles is None:
        return False
    return Role.ANY in roles or bool(roles & caller.roles)
