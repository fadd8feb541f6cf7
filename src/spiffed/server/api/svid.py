"""``spire.api.server.svid.v1.SVID``: the admin minting RPCs (MintX509SVID, MintJWTSVID).

The agent- and downstream-facing RPCs answer UNIMPLEMENTED until the agent API lands.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from spiffed._proto.spire.api.server.svid.v1 import svid_grpc, svid_pb2
from spiffed._proto.spire.api.types import jwtsvid_pb2, x509svid_pb2
from spiffed.server.api.convert import (
    MAX_TTL,
    IdKind,
    dns_name_problem,
    id_in_trust_domain,
    rpc,
    spiffe_id_to_proto,
)
from spiffed.server.context import ServerContext
from spiffed.server.errors import ServerError
from spiffed.spiffeid import SpiffeId
from spiffed.svid.jwt import JwtSvidError, sign_jwt_svid

__all__ = ["SvidService", "wildcard_overlap"]


def wildcard_overlap(names: list[str]) -> bool:
    """True when a ``*.x`` name covers another name given (``a.x``), as SPIRE refuses."""
    given = set(names)
    for name in names:
        if name.startswith("*."):
            suffix = name[1:]
            if any(
                o != name and o.endswith(suffix) and "." not in o[: -len(suffix)] for o in given
            ):
                return True
    return False


def _ttl(ttl: int) -> timedelta | None:
    if ttl < 0:
        raise ServerError(Status.INVALID_ARGUMENT, "ttl must not be negative")
    if ttl > MAX_TTL:
        raise ServerError(Status.INVALID_ARGUMENT, f"ttl exceeds the maximum of {MAX_TTL}")
    return timedelta(seconds=ttl) if ttl else None


class SvidService(svid_grpc.SVIDBase):
    """Mints X.509- and JWT-SVIDs for admins with the server's CA."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx

    @rpc
    async def MintX509SVID(self, stream: Stream[Any, Any]) -> None:
        """Sign the CSR: its one URI SAN must be a SPIFFE ID of our trust domain."""
        req = await stream.recv_message()
        assert req is not None
        td = self._ctx.trust_domain
        if not req.csr:
            raise ServerError(Status.INVALID_ARGUMENT, "missing CSR")
        try:
            csr = x509.load_der_x509_csr(req.csr)
        except ValueError as exc:
            raise ServerError(Status.INVALID_ARGUMENT, f"malformed CSR: {exc}") from None
        try:
            sig_ok = csr.is_signature_valid
        except Exception:
            sig_ok = False
        if not sig_ok:
            raise ServerError(Status.INVALID_ARGUMENT, "failed to verify CSR signature")
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = x509.SubjectAlternativeName([])
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if not uris:
            raise ServerError(Status.INVALID_ARGUMENT, "CSR URI SAN is required")
        if len(uris) > 1:
            raise ServerError(Status.INVALID_ARGUMENT, "only one URI SAN is expected")
        try:
            sid = SpiffeId.parse(uris[0])
            id_in_trust_domain(spiffe_id_to_proto(sid), td, IdKind.WORKLOAD)
        except ValueError as exc:
            raise ServerError(Status.INVALID_ARGUMENT, f"CSR URI SAN is invalid: {exc}") from None
        dns = san.get_values_for_type(x509.DNSName)
        for name in dns:
            reason = dns_name_problem(name)
            if reason:
                raise ServerError(Status.INVALID_ARGUMENT, f"CSR DNS name is invalid: {reason}")
        if wildcard_overlap(dns):
            raise ServerError(
                Status.INVALID_ARGUMENT,
                "CSR DNS name contains a wildcard that covers another non-wildcard name",
            )
        try:
            chain = self._ctx.ca.sign_x509_svid(sid, csr, ttl=_ttl(req.ttl), dns_names=dns)
        except ServerError as exc:
            if exc.status is Status.INVALID_ARGUMENT:
                raise
            raise ServerError(Status.INTERNAL, f"failed to sign X509-SVID: {exc.message}") from None
        await stream.send_message(
            svid_pb2.MintX509SVIDResponse(
                svid=x509svid_pb2.X509SVID(
                    id=spiffe_id_to_proto(sid),
                    cert_chain=[c.public_bytes(Encoding.DER) for c in chain],
                    expires_at=int(chain[0].not_valid_after_utc.timestamp()),
                )
            )
        )

    @rpc
    async def MintJWTSVID(self, stream: Stream[Any, Any]) -> None:
        """Sign a JWT-SVID for ``id`` (our trust domain) and ``audience`` (at least one)."""
        req = await stream.recv_message()
        assert req is not None
        td = self._ctx.trust_domain
        try:
            sid = id_in_trust_domain(req.id if req.HasField("id") else None, td, IdKind.WORKLOAD)
        except ValueError as exc:
            raise ServerError(Status.INVALID_ARGUMENT, f"invalid SPIFFE ID: {exc}") from None
        audience = list(req.audience)
        if not audience or any(not a for a in audience):
            raise ServerError(Status.INVALID_ARGUMENT, "at least one audience is required")
        settings = self._ctx.ca.settings
        ttl = _ttl(req.ttl) or settings.jwt_svid_ttl
        kid, key, key_not_after = self._ctx.ca.jwt_signing_key()
        now = datetime.now(UTC)
        expires = min(now + ttl, key_not_after)
        try:
            token = sign_jwt_svid(
                sid, audience, key, kid, expires, issued_at=now, issuer=settings.jwt_issuer
            )
        except JwtSvidError as exc:
            raise ServerError(Status.INTERNAL, f"failed to sign JWT-SVID: {exc}") from None
        await stream.send_message(
            svid_pb2.MintJWTSVIDResponse(
                svid=jwtsvid_pb2.JWTSVID(
                    token=token,
                    id=spiffe_id_to_proto(sid),
                    expires_at=int(expires.timestamp()),
                    issued_at=int(now.timestamp()),
                )
            )
        )

    async def MintWITSVID(self, stream: Stream[Any, Any]) -> None:
        """Not served here: answers UNIMPLEMENTED."""
        raise GRPCError(Status.UNIMPLEMENTED, "WIT-SVID functionality is not yet implemented")

    async def BatchNewX509SVID(self, stream: Stream[Any, Any]) -> None:
        """Not served here: answers UNIMPLEMENTED."""
        raise GRPCError(
            Status.UNIMPLEMENTED,
            "BatchNewX509SVID is not implemented yet: the agent-facing SVID API is pending",
        )

    async def NewJWTSVID(self, stream: Stream[Any, Any]) -> None:
        """Not served here: answers UNIMPLEMENTED."""
        raise GRPCError(
            Status.UNIMPLEMENTED,
            "NewJWTSVID is not implemented yet: the agent-facing SVID API is pending",
        )

    async def BatchNewWITSVID(self, stream: Stream[Any, Any]) -> None:
        """Not served here: answers UNIMPLEMENTED."""
        raise GRPCError(Status.UNIMPLEMENTED, "WIT-SVID functionality is not yet implemented")

    async def NewDownstreamX509CA(self, stream: Stream[Any, Any]) -> None:
        """Not served here: answers UNIMPLEMENTED."""
        raise GRPCError(
            Status.UNIMPLEMENTED,
            "NewDownstreamX509CA is not implemented yet: downstream servers are not supported",
        )
