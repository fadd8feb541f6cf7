"""``spire.api.server.localauthority.v1.LocalAuthority``: forced rotation and revocation.

The X.509 and JWT RPCs drive the :class:`~spiffed.server.ca.manager.CaManager`; the WIT ones
answer UNIMPLEMENTED, as SPIRE does.
"""

from __future__ import annotations

from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from spiffed._proto.spire.api.server.localauthority.v1 import (
    localauthority_grpc,
)
from spiffed._proto.spire.api.server.localauthority.v1 import (
    localauthority_pb2 as la,
)
from spiffed.server.api.convert import rpc
from spiffed.server.ca.manager import AuthorityState
from spiffed.server.context import ServerContext
from spiffed.server.errors import ServerError

__all__ = ["LocalAuthorityService", "state_to_proto"]


def state_to_proto(state: AuthorityState | None) -> la.AuthorityState | None:
    """An authority's state as SPIRE's message (None stays None: the field is left unset)."""
    if state is None:
        return None
    return la.AuthorityState(
        authority_id=state.authority_id,
        expires_at=int(state.expires_at.timestamp()),
        upstream_authority_subject_key_id=state.upstream_authority_subject_key_id,
    )


_WIT = "WIT-SVID functionality is not yet implemented"


class LocalAuthorityService(localauthority_grpc.LocalAuthorityBase):
    """Prepare, activate, taint and revoke the server's X.509 and JWT authorities."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx

    async def _recv(self, stream: Stream[Any, Any]) -> Any:
        req = await stream.recv_message()
        assert req is not None
        return req

    @rpc
    async def GetJWTAuthorityState(self, stream: Stream[Any, Any]) -> None:
        """The active, prepared and old JWT authorities."""
        await self._recv(stream)
        s = self._ctx.ca.jwt_states()
        await stream.send_message(
            la.GetJWTAuthorityStateResponse(
                active=state_to_proto(s.get("active")),
                prepared=state_to_proto(s.get("prepared")),
                old=state_to_proto(s.get("old")),
            )
        )

    @rpc
    async def PrepareJWTAuthority(self, stream: Stream[Any, Any]) -> None:
        """Prepare a new JWT authority now."""
        await self._recv(stream)
        state = await self._ctx.ca.prepare_jwt_authority()
        await stream.send_message(
            la.PrepareJWTAuthorityResponse(prepared_authority=state_to_proto(state))
        )

    @rpc
    async def ActivateJWTAuthority(self, stream: Stream[Any, Any]) -> None:
        """Activate the prepared JWT authority."""
        req = await self._recv(stream)
        state = await self._ctx.ca.activate_jwt_authority(req.authority_id)
        await stream.send_message(
            la.ActivateJWTAuthorityResponse(activated_authority=state_to_proto(state))
        )

    @rpc
    async def TaintJWTAuthority(self, stream: Stream[Any, Any]) -> None:
        """Taint the old JWT authority."""
        req = await self._recv(stream)
        state = await self._ctx.ca.taint_jwt_authority(req.authority_id)
        await stream.send_message(
            la.TaintJWTAuthorityResponse(tainted_authority=state_to_proto(state))
        )

    @rpc
    async def RevokeJWTAuthority(self, stream: Stream[Any, Any]) -> None:
        """Remove a tainted JWT authority from the bundle."""
        req = await self._recv(stream)
        state = await self._ctx.ca.revoke_jwt_authority(req.authority_id)
        await stream.send_message(
            la.RevokeJWTAuthorityResponse(revoked_authority=state_to_proto(state))
        )

    @rpc
    async def GetX509AuthorityState(self, stream: Stream[Any, Any]) -> None:
        """The active, prepared and old X.509 authorities."""
        await self._recv(stream)
        s = self._ctx.ca.x509_states()
        await stream.send_message(
            la.GetX509AuthorityStateResponse(
                active=state_to_proto(s.get("active")),
                prepared=state_to_proto(s.get("prepared")),
                old=state_to_proto(s.get("old")),
            )
        )

    @rpc
    async def PrepareX509Authority(self, stream: Stream[Any, Any]) -> None:
        """Prepare a new X.509 authority now."""
        await self._recv(stream)
        state = await self._ctx.ca.prepare_x509_authority()
        await stream.send_message(
            la.PrepareX509AuthorityResponse(prepared_authority=state_to_proto(state))
        )

    @rpc
    async def ActivateX509Authority(self, stream: Stream[Any, Any]) -> None:
        """Activate the prepared X.509 authority."""
        req = await self._recv(stream)
        state = await self._ctx.ca.activate_x509_authority(req.authority_id)
        await stream.send_message(
            la.ActivateX509AuthorityResponse(activated_authority=state_to_proto(state))
        )

    @rpc
    async def TaintX509Authority(self, stream: Stream[Any, Any]) -> None:
        """Taint the old X.509 authority (FailedPrecondition with an upstream authority)."""
        req = await self._recv(stream)
        state = await self._ctx.ca.taint_x509_authority(req.authority_id)
        await stream.send_message(
            la.TaintX509AuthorityResponse(tainted_authority=state_to_proto(state))
        )

    @rpc
    async def RevokeX509Authority(self, stream: Stream[Any, Any]) -> None:
        """Remove the tainted old X.509 authority from the bundle."""
        req = await self._recv(stream)
        state = await self._ctx.ca.revoke_x509_authority(req.authority_id)
        await stream.send_message(
            la.RevokeX509AuthorityResponse(revoked_authority=state_to_proto(state))
        )

    def _upstream_op(self, req: Any, verb: str) -> str:
        if not self._ctx.ca.has_upstream:
            raise ServerError(Status.FAILED_PRECONDITION, "upstream authority is not configured")
        if not req.subject_key_id:
            what = (
                "provided subject key id is not valid"
                if verb == "tainting"
                else ("invalid subject key ID")
            )
            raise ServerError(Status.INVALID_ARGUMENT, f"{what}: no subject key ID provided")
        raise ServerError(
            Status.UNIMPLEMENTED,
            f"{verb} an upstream authority is not supported yet by this server's CA",
        )

    @rpc
    async def TaintX509UpstreamAuthority(self, stream: Stream[Any, Any]) -> None:
        """Taint an upstream root by subject key ID (FailedPrecondition without upstream)."""
        self._upstream_op(await self._recv(stream), "tainting")

    @rpc
    async def RevokeX509UpstreamAuthority(self, stream: Stream[Any, Any]) -> None:
        """Revoke an upstream root by subject key ID (FailedPrecondition without upstream)."""
        self._upstream_op(await self._recv(stream), "revoking")

    async def GetWITAuthorityState(self, stream: Stream[Any, Any]) -> None:
        """Not served here: answers UNIMPLEMENTED."""
        raise GRPCError(Status.UNIMPLEMENTED, _WIT)

    async def PrepareWITAuthority(self, stream: Stream[Any, Any]) -> None:
        """Not served here: answers UNIMPLEMENTED."""
        raise GRPCError(Status.UNIMPLEMENTED, _WIT)

    async def ActivateWITAuthority(self, stream: Stream[Any, Any]) -> None:
        """Not served here: answers UNIMPLEMENTED."""
        raise GRPCError(Status.UNIMPLEMENTED, _WIT)

    async def TaintWITAuthority(self, stream: Stream[Any, Any]) -> None:
        """Not served here: answers UNIMPLEMENTED."""
        raise GRPCError(Status.UNIMPLEMENTED, _WIT)

    async def RevokeWITAuthority(self, stream: Stream[Any, Any]) -> None:
        """Not served here: answers UNIMPLEMENTED."""
        raise GRPCError(Status.UNIMPLEMENTED, _WIT)
