"""``spire.api.server.svid.v1.SVID``: SVIDs for admins (MintX509SVID, MintJWTSVID) and for
agents (BatchNewX509SVID, NewJWTSVID).

An agent may only have SVIDs signed for entries it is authorized for (the server cache's
authorized entries for the caller's ID). The SVID carries the entry's SPIFFE ID and DNS names,
never what the CSR asks for: the CSR only contributes its (self-signed) public key.

Every signing RPC holds a slot of the server's global signing limiter while it signs; when
no slot frees up in time the call is refused with RESOURCE_EXHAUSTED. A batch is signed by
one coroutine that yields to the event loop every :data:`YIELD_EVERY` SVIDs.

BatchNewX509SVID (one token per CSR, shared with RenewAgent) and NewJWTSVID are also limited
per caller IP (:mod:`spiffed.server.api.limits`, SPIRE's ``SignLimitPerIP``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from spiffed._proto.spire.api.server.svid.v1 import svid_grpc, svid_pb2
from spiffed._proto.spire.api.types import jwtsvid_pb2, spiffeid_pb2, x509svid_pb2
from spiffed.server.api import caller_spiffe_id, current_caller
from spiffed.server.api.convert import (
    MAX_TTL,
    IdKind,
    dns_name_problem,
    error_status,
    id_in_trust_domain,
    ok_status,
    rpc,
    spiffe_id_to_proto,
    status_of,
)
from spiffed.server.api.limits import SIGN_LIMIT_PER_IP, take
from spiffed.server.ca.leafsigner import csr_signature_valid
from spiffed.server.context import ServerContext
from spiffed.server.datastore.records import RegistrationEntry
from spiffed.server.errors import ServerError
from spiffed.server.signing import SigningBusyError
from spiffed.spiffeid import SpiffeId
from spiffed.svid.jwt import JwtSvidError, sign_jwt_svid

__all__ = ["MAX_BATCH", "YIELD_EVERY", "SvidService", "wildcard_overlap"]

MAX_BATCH = SIGN_LIMIT_PER_IP
"""The most CSRs one BatchNewX509SVID may carry: SPIRE's per-IP signing burst
(``limits.SignLimitPerIP``); a larger batch is refused with RESOURCE_EXHAUSTED, as SPIRE's
rate limiter does (``rate (n) exceeds burst size (500)``), even with signing rate limits
off (one batch must not hold the event loop for long)."""

YIELD_EVERY = 50
"""A batch gives the event loop a turn after this many signatures."""

_OK = ok_status()
_EntryId = tuple[SpiffeId, spiffeid_pb2.SPIFFEID] | str

_X509_BUSY = "rejecting request due to certificate signing rate limiting"
_JWT_BUSY = "rejecting request due to JWT signing request rate limiting"


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


def _csr_public_key(der: bytes) -> CertificatePublicKeyTypes:
    """The public key of a DER CSR after checking the CSR's signature with it.

    Raises ServerError INVALID_ARGUMENT ``malformed CSR: ...`` or ``invalid CSR signature:
    ...`` (SPIRE's messages). ECDSA and RSA signatures are checked directly with the
    algorithm the CSR names (one verify, no more); other algorithms go through the library.
    """
    try:
        csr = x509.load_der_x509_csr(der)
        key = csr.public_key()
    except Exception as exc:  # cryptography raises several types for what it cannot read
        raise ServerError(Status.INVALID_ARGUMENT, f"malformed CSR: {exc}") from None
    try:
        valid = csr_signature_valid(csr, key)
    except Exception as exc:
        raise ServerError(Status.INVALID_ARGUMENT, f"invalid CSR signature: {exc}") from None
    if not valid:
        raise ServerError(
            Status.INVALID_ARGUMENT, "invalid CSR signature: signature does not match its key"
        )
    return key


class SvidService(svid_grpc.SVIDBase):
    """Mints X.509- and JWT-SVIDs for admins with the server's CA."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        self._chain_memo: tuple[object, list[bytes]] | None = None

    def _chain_der(self) -> list[bytes]:
        """The DER of what follows a leaf signed now (recomputed when the CA rotates)."""
        ca = self._ctx.ca
        current = ca.current_x509
        if self._chain_memo is None or self._chain_memo[0] is not current:
            chain = [c.public_bytes(Encoding.DER) for c in ca.x509_ca_chain()]
            self._chain_memo = (current, chain)
        return self._chain_memo[1]

    def _authorized(self, agent: SpiffeId, wanted: Iterable[str]) -> dict[str, RegistrationEntry]:
        """Of the entry IDs ``wanted``, those the agent is authorized for, by ID."""
        cache = self._ctx.cache
        if cache is None:
            raise ServerError(
                Status.INTERNAL, "failed to fetch registration entries: no entry cache"
            )
        ids = set(wanted)
        try:
            entries = cache.authorized_entries(agent)
        except Exception as exc:
            raise ServerError(
                Status.INTERNAL, f"failed to fetch registration entries: {exc}"
            ) from None
        return {e.id: e for e in entries if e.id in ids}

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
        ttl = _ttl(req.ttl)
        try:
            async with self._ctx.signing.slot():
                chain = self._ctx.ca.sign_x509_svid(sid, csr, ttl=ttl, dns_names=dns)
        except SigningBusyError as exc:
            raise ServerError(Status.RESOURCE_EXHAUSTED, f"{_X509_BUSY}: {exc}") from None
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
        svid = await self._sign_jwt(sid, audience, _ttl(req.ttl))
        await stream.send_message(svid_pb2.MintJWTSVIDResponse(svid=svid))

    async def _sign_jwt(
        self, sid: SpiffeId, audience: list[str], ttl: timedelta | None
    ) -> jwtsvid_pb2.JWTSVID:
        """A JWT-SVID for ``sid``: ``ttl`` or the default, capped at the key's expiry."""
        settings = self._ctx.ca.settings
        lifetime = ttl or settings.jwt_svid_ttl
        try:
            async with self._ctx.signing.slot():
                kid, key, key_not_after = self._ctx.ca.jwt_signing_key()
                now = datetime.now(UTC)
                expires = min(now + lifetime, key_not_after)
                token = sign_jwt_svid(
                    sid, audience, key, kid, expires, issued_at=now, issuer=settings.jwt_issuer
                )
        except SigningBusyError as exc:
            raise ServerError(Status.RESOURCE_EXHAUSTED, f"{_JWT_BUSY}: {exc}") from None
        except (JwtSvidError, ServerError) as exc:
            raise ServerError(Status.INTERNAL, f"failed to sign JWT-SVID: {exc}") from None
        return jwtsvid_pb2.JWTSVID(
            token=token,
            id=spiffe_id_to_proto(sid),
            expires_at=int(expires.timestamp()),
            issued_at=int(now.timestamp()),
        )

    async def MintWITSVID(self, stream: Stream[Any, Any]) -> None:
        """Not served here: answers UNIMPLEMENTED."""
        raise GRPCError(Status.UNIMPLEMENTED, "WIT-SVID functionality is not yet implemented")

    @rpc
    async def BatchNewX509SVID(self, stream: Stream[Any, Any]) -> None:
        """Sign one X509-SVID per param for entries the calling agent is authorized for.

        Each param gets its own status: INVALID_ARGUMENT for a missing entry ID or CSR, or a
        CSR that does not parse or whose signature does not match its key; NOT_FOUND when
        the entry does not exist or is not the agent's. The same entry may appear more than
        once (each gets its own SVID), as in SPIRE.
        """
        req = await stream.recv_message()
        assert req is not None
        params = list(req.params)
        if not params:
            raise ServerError(Status.INVALID_ARGUMENT, "missing parameters")
        # SPIRE's per-IP signing limit: each CSR costs one (shared with RenewAgent).
        take(
            self._ctx.rate_limits.x509_signing,
            current_caller().address,
            "certificate signing",
            len(params),
        )
        if len(params) > MAX_BATCH:
            raise ServerError(
                Status.RESOURCE_EXHAUSTED,
                f"{_X509_BUSY}: rate ({len(params)}) exceeds burst size ({MAX_BATCH})",
            )
        agent = caller_spiffe_id()
        try:
            async with self._ctx.signing.slot(len(params)):
                entries = self._authorized(agent, (p.entry_id for p in params))
                ids: dict[str, _EntryId] = {}
                R = svid_pb2.BatchNewX509SVIDResponse.Result
                results = []
                for i, param in enumerate(params):
                    try:
                        result = self._new_x509(param, entries, ids)
                    except Exception as exc:  # one param's failure never fails the batch
                        result = R(status=status_of(exc))
                    results.append(result)
                    if i % YIELD_EVERY == YIELD_EVERY - 1:
                        await asyncio.sleep(0)
        except SigningBusyError as exc:
            raise ServerError(Status.RESOURCE_EXHAUSTED, f"{_X509_BUSY}: {exc}") from None
        await stream.send_message(svid_pb2.BatchNewX509SVIDResponse(results=results))

    def _entry_id(self, entry: RegistrationEntry) -> _EntryId:
        """The entry's SPIFFE ID (and as a message), or why it is not one of ours."""
        try:
            sid = SpiffeId.parse(entry.spiffe_id)
            if not sid.member_of(self._ctx.trust_domain):
                raise ValueError(f"{sid} is not a member of trust domain {self._ctx.trust_domain}")
        except ValueError as exc:
            return str(exc)
        return sid, spiffe_id_to_proto(sid)

    def _new_x509(
        self, param: Any, entries: dict[str, RegistrationEntry], ids: dict[str, _EntryId]
    ) -> svid_pb2.BatchNewX509SVIDResponse.Result:
        """One param's result; ``ids`` remembers the entries' parsed IDs within a batch."""
        R = svid_pb2.BatchNewX509SVIDResponse.Result
        if not param.entry_id:
            return R(status=error_status(Status.INVALID_ARGUMENT, "missing entry ID"))
        if not param.csr:
            return R(status=error_status(Status.INVALID_ARGUMENT, "missing CSR"))
        entry = entries.get(param.entry_id)
        if entry is None:
            return R(status=error_status(Status.NOT_FOUND, "entry not found or not authorized"))
        try:
            key = _csr_public_key(param.csr)
        except ServerError as exc:
            return R(status=error_status(exc.status, exc.message))
        entry_id = ids.get(entry.id)
        if entry_id is None:
            entry_id = ids[entry.id] = self._entry_id(entry)
        if isinstance(entry_id, str):
            return R(
                status=error_status(Status.INTERNAL, f"entry has malformed SPIFFE ID: {entry_id}")
            )
        sid, sid_proto = entry_id
        ttl = timedelta(seconds=entry.x509_svid_ttl) if entry.x509_svid_ttl > 0 else None
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            return R(
                status=error_status(
                    Status.INTERNAL,
                    f"failed to sign X509-SVID: unsupported public key type {type(key).__name__}",
                )
            )
        try:
            leaf = self._ctx.ca.sign_x509_svid_der(sid, key, ttl=ttl, dns_names=entry.dns_names)
            chain = self._chain_der()
            not_after = x509.load_der_x509_certificate(leaf).not_valid_after_utc
        except Exception as exc:
            detail = exc.message if isinstance(exc, ServerError) else str(exc)
            return R(status=error_status(Status.INTERNAL, f"failed to sign X509-SVID: {detail}"))
        return R(
            status=_OK,
            svid=x509svid_pb2.X509SVID(
                id=sid_proto,
                cert_chain=[leaf, *chain],
                expires_at=int(not_after.timestamp()),
            ),
        )

    @rpc
    async def NewJWTSVID(self, stream: Stream[Any, Any]) -> None:
        """A JWT-SVID for an entry the calling agent is authorized for, for ``audience``."""
        req = await stream.recv_message()
        assert req is not None
        take(
            self._ctx.rate_limits.jwt_signing,
            current_caller().address,
            "JWT signing request",
        )
        agent = caller_spiffe_id()
        entry = self._authorized(agent, [req.entry_id]).get(req.entry_id)
        if entry is None:
            raise ServerError(Status.NOT_FOUND, "entry not found or not authorized")
        try:
            sid = SpiffeId.parse(entry.spiffe_id)
            id_in_trust_domain(spiffe_id_to_proto(sid), self._ctx.trust_domain, IdKind.WORKLOAD)
        except ValueError as exc:
            raise ServerError(Status.INVALID_ARGUMENT, f"invalid SPIFFE ID: {exc}") from None
        audience = list(req.audience)
        if not audience or any(not a for a in audience):
            raise ServerError(Status.INVALID_ARGUMENT, "at least one audience is required")
        ttl = timedelta(seconds=entry.jwt_svid_ttl) if entry.jwt_svid_ttl > 0 else None
        svid = await self._sign_jwt(sid, audience, ttl)
        await stream.send_message(svid_pb2.NewJWTSVIDResponse(svid=svid))

    async def BatchNewWITSVID(self, stream: Stream[Any, Any]) -> None:
        """Not served here: answers UNIMPLEMENTED."""
        raise GRPCError(Status.UNIMPLEMENTED, "WIT-SVID functionality is not yet implemented")

    async def NewDownstreamX509CA(self, stream: Stream[Any, Any]) -> None:
        """Not served here: answers UNIMPLEMENTED."""
        raise GRPCError(
            Status.UNIMPLEMENTED,
            "NewDownstreamX509CA is not implemented yet: downstream servers are not supported",
        )
