"""``spire.api.server.agent.v1.Agent``: attested agents and join tokens.

The admin RPCs (list, get, delete, ban, join tokens) and the agent-facing ones: AttestAgent
(node attestation over a bidirectional stream: parameters, then as many challenge rounds as
the attestor needs, then the agent X509-SVID), RenewAgent (a new agent SVID, recorded as the
node's "new" certificate until the agent first uses it) and PostStatus (the agent's version).
Status codes and messages follow SPIRE 1.15's agent service.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from google.protobuf import empty_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from spiffed._proto.spire.api.server.agent.v1 import agent_grpc, agent_pb2
from spiffed._proto.spire.api.types import jointoken_pb2, spiffeid_pb2, status_pb2, x509svid_pb2
from spiffed.server import datastore as ds
from spiffed.server.api import caller_spiffe_id, current_caller
from spiffed.server.api.convert import (
    IdKind,
    agent_to_proto,
    id_in_trust_domain,
    rpc,
    selector_from_proto,
    spiffe_id_to_proto,
)
from spiffed.server.api.entry import MATCH_BEHAVIOR
from spiffed.server.api.limits import (
    ATTEST_LIMIT_PER_IP,
    POST_STATUS_LIMIT_PER_IP,
    SIGN_LIMIT_PER_IP,
    take,
)
from spiffed.server.context import ServerContext
from spiffed.server.errors import ServerError
from spiffed.server.nodeattestor import (
    AttestationError,
    AttestResult,
    NodeAttestor,
    build_node_attestors,
)
from spiffed.server.nodeattestor.join_token import join_token_agent_id
from spiffed.server.signing import SigningBusyError
from spiffed.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

__all__ = [
    "ATTEST_LIMIT_PER_IP",
    "POST_STATUS_LIMIT_PER_IP",
    "SIGN_LIMIT_PER_IP",
    "AgentService",
    "agent_id_from_proto",
    "join_token_agent_id",
]

log = structlog.get_logger(__name__)

AGENT_VERSION_MAX_LEN = 255
CHALLENGE_TIMEOUT = 20.0
"""How long the server waits for the answer to one attestation challenge (within the
overall :data:`ATTEST_DEADLINE`)."""
ATTEST_DEADLINE = 30.0
"""How long an AttestAgent caller has, in all, to send its parameters and answer every
challenge (an unauthenticated client must not hold a server task for long). SPIRE's agent
sends its parameters at once and answers each challenge as soon as it gets it, so a real
attestation takes a few round trips; 30 s leaves room for slow links and slow attestors."""
MAX_ATTESTATIONS_IN_PROGRESS = 64
"""The most AttestAgent calls the server works on at once; more are refused with
RESOURCE_EXHAUSTED (the per-IP limit alone does not bound callers from many addresses)."""
_SERVER_ID_PATH = "/spire/server"

_Reason = status_pb2.PermissionDeniedDetails.Reason


def _permission_denied(reason: int, message: str) -> GRPCError:
    """PERMISSION_DENIED with SPIRE's ``PermissionDeniedDetails`` (sent when the server has a
    status-details codec)."""
    return GRPCError(
        Status.PERMISSION_DENIED,
        message,
        [status_pb2.PermissionDeniedDetails(reason=reason)],  # type: ignore[arg-type]
    )


def _check_csr(der: bytes) -> x509.CertificateSigningRequest:
    """Parse the agent's CSR and check what the CA will need, before anything is consumed or
    stored: its self-signature and a key type SPIRE signs (EC P-256/P-384, RSA 2048/4096)."""
    try:
        csr = x509.load_der_x509_csr(der)
        key = csr.public_key()
    except ValueError as exc:
        raise ServerError(Status.INVALID_ARGUMENT, f"failed to parse CSR: {exc}") from None
    try:
        valid = csr.is_signature_valid
    except Exception:  # any failure to check is a bad signature
        valid = False
    if not valid:
        raise ServerError(Status.INVALID_ARGUMENT, "failed to verify CSR signature")
    if isinstance(key, ec.EllipticCurvePublicKey):
        ok = key.curve.name in ("secp256r1", "secp384r1")
    elif isinstance(key, rsa.RSAPublicKey):
        ok = key.key_size in (2048, 4096)
    else:
        ok = False
    if not ok:
        raise ServerError(
            Status.INVALID_ARGUMENT,
            f"failed to parse CSR: unsupported public key {type(key).__name__}",
        )
    return csr


def _attest_params_problem(req: Any) -> str | None:
    """SPIRE's ``validateAttestAgentParams``, in its order."""
    if req is None or not req.HasField("params"):
        return "missing params"
    params = req.params
    if not params.HasField("data"):
        return "missing attestation data"
    if not params.HasField("params"):
        return "missing X509-SVID parameters"
    if not params.params.csr:
        return "missing CSR"
    if not params.data.type:
        return "missing attestation data type"
    if not params.data.payload:
        return "missing attestation data payload"
    return None


def _dedupe(selectors: Any) -> tuple[ds.Selector, ...]:
    seen: dict[tuple[str, str], ds.Selector] = {}
    for s in selectors:
        seen.setdefault((s.type, s.value), ds.Selector(s.type, s.value))
    return tuple(seen.values())


def _x509_svid(sid: SpiffeId, chain: list[x509.Certificate]) -> x509svid_pb2.X509SVID:
    return x509svid_pb2.X509SVID(
        id=spiffe_id_to_proto(sid),
        cert_chain=[c.public_bytes(Encoding.DER) for c in chain],
        expires_at=int(chain[0].not_valid_after_utc.timestamp()),
    )


def agent_id_from_proto(msg: spiffeid_pb2.SPIFFEID, td: TrustDomain) -> SpiffeId:
    """An agent ID of our trust domain (SPIRE's ``TrustDomainAgentIDFromProto``)."""
    try:
        return id_in_trust_domain(msg, td, IdKind.AGENT)
    except ValueError as exc:
        raise ServerError(Status.INVALID_ARGUMENT, f"invalid agent ID: {exc}") from None


def _expires_before(text: str) -> int:
    """SPIRE's ``2006-01-02 15:04:05 -0700 -07`` (what ``spire-server agent list`` sends); the
    trailing zone abbreviation is optional here, and RFC 3339 is accepted too."""
    parts = text.split(" ")
    candidates = [text, " ".join(parts[:3])] if len(parts) == 4 else [text]
    for candidate in candidates:
        for fmt in ("%Y-%m-%d %H:%M:%S %z", "%Y-%m-%dT%H:%M:%S%z"):
            try:
                when = datetime.strptime(candidate.replace("Z", "+0000"), fmt)
            except ValueError:
                continue
            return int(when.timestamp())
    raise ServerError(
        Status.INVALID_ARGUMENT,
        f'failed to build ListAgents filter: invalid by_expires_before "{text}"',
    )


def _filter(flt: Any) -> ds.NodeFilter:
    out: dict[str, Any] = {}
    if flt.by_attestation_type:
        out["by_attestation_type"] = flt.by_attestation_type
    if flt.HasField("by_banned"):
        out["by_banned"] = flt.by_banned.value
    if flt.HasField("by_can_reattest"):
        out["by_can_reattest"] = flt.by_can_reattest.value
    if flt.by_expires_before:
        out["by_expires_before"] = _expires_before(flt.by_expires_before)
    if flt.HasField("by_selector_match"):
        m = flt.by_selector_match
        try:
            sels = tuple(selector_from_proto(s) for s in m.selectors)
        except ServerError as exc:
            raise ServerError(
                Status.INVALID_ARGUMENT, f"failed to parse selectors: {exc.message}"
            ) from None
        if not sels:
            raise ServerError(
                Status.INVALID_ARGUMENT, "failed to parse selectors: empty selector set"
            )
        if m.match not in MATCH_BEHAVIOR:
            raise ServerError(
                Status.INVALID_ARGUMENT,
                f"failed to parse selectors: unknown match behavior {m.match}",
            )
        out["by_selectors"] = ds.SelectorFilter(sels, MATCH_BEHAVIOR[m.match])
    return ds.NodeFilter(**out)


class _Progress:
    """How far an admission got: ``writing`` once the node is being stored."""

    __slots__ = ("writing",)

    def __init__(self) -> None:
        self.writing = False


class AgentService(agent_grpc.AgentBase):
    """Attested agents and join tokens over the datastore."""

    def __init__(
        self,
        ctx: ServerContext,
        *,
        attestors: Mapping[str, NodeAttestor] | None = None,
        attest_deadline: float = ATTEST_DEADLINE,
        max_attestations: int = MAX_ATTESTATIONS_IN_PROGRESS,
    ) -> None:
        """``attestors`` defaults to those of ``ctx.config.node_attestors`` (join_token only
        without a config). The per-IP rate limits are ``ctx.rate_limits`` (shared with the
        SVID service: RenewAgent and BatchNewX509SVID draw on one X.509 signing budget).
        ``attest_deadline`` and ``max_attestations`` bound slow or numerous AttestAgent
        callers (:data:`ATTEST_DEADLINE`, :data:`MAX_ATTESTATIONS_IN_PROGRESS`)."""
        if attest_deadline <= 0 or max_attestations < 1:
            raise ValueError("attest_deadline must be > 0 and max_attestations >= 1")
        self._ctx = ctx
        self._attest_deadline = attest_deadline
        self._max_attestations = max_attestations
        self.attestations_in_progress = 0
        """AttestAgent calls being worked on now."""
        config = ctx.config
        if attestors is None:
            plugins = config.node_attestors if config is not None else ()
            attestors = build_node_attestors(ctx.trust_domain, plugins, ctx.datastore)
        self._attestors = dict(attestors)

    @property
    def _agent_ttl(self) -> timedelta | None:
        config = self._ctx.config
        return config.agent_ttl if config is not None else None

    def _sign(self, agent_id: SpiffeId, csr: x509.CertificateSigningRequest) -> Any:
        # The CSR was checked before (INVALID_ARGUMENT then): as SPIRE, any failure to sign
        # now (e.g. "the signing CA has expired") is the server's, INTERNAL.
        try:
            return self._ctx.ca.sign_x509_svid(agent_id, csr, ttl=self._agent_ttl)
        except ServerError as exc:
            raise ServerError(Status.INTERNAL, f"failed to sign X509 SVID: {exc.message}") from None

    @property
    def _ds(self) -> Any:
        return self._ctx.datastore

    @rpc
    async def CountAgents(self, stream: Stream[Any, Any]) -> None:
        """How many attested agents match the filter."""
        req = await stream.recv_message()
        assert req is not None
        count = await self._ds.count_nodes(_filter(req.filter))
        await stream.send_message(agent_pb2.CountAgentsResponse(count=count))

    @rpc
    async def ListAgents(self, stream: Stream[Any, Any]) -> None:
        """One page of the attested agents matching the filter."""
        req = await stream.recv_message()
        assert req is not None
        if req.page_size < 0:
            raise ServerError(Status.INVALID_ARGUMENT, "page size cannot be negative")
        flt = _filter(req.filter)
        try:
            page = await self._ds.list_nodes(
                flt, page_size=req.page_size, page_token=req.page_token
            )
        except ds.InvalidArgumentError as exc:
            raise ServerError(Status.INVALID_ARGUMENT, f"failed to list agents: {exc}") from None
        mask = req.output_mask if req.HasField("output_mask") else None
        await stream.send_message(
            agent_pb2.ListAgentsResponse(
                agents=[agent_to_proto(n, mask) for n in page.items],
                next_page_token=page.next_token,
            )
        )

    async def _node(self, msg: spiffeid_pb2.SPIFFEID) -> ds.AttestedNode:
        sid = agent_id_from_proto(msg, self._ctx.trust_domain)
        try:
            node: ds.AttestedNode = await self._ds.get_node(str(sid))
        except ds.NotFoundError:
            raise ServerError(Status.NOT_FOUND, "agent not found") from None
        return node

    @rpc
    async def GetAgent(self, stream: Stream[Any, Any]) -> None:
        """One attested agent by ID."""
        req = await stream.recv_message()
        assert req is not None
        node = await self._node(req.id)
        mask = req.output_mask if req.HasField("output_mask") else None
        await stream.send_message(agent_to_proto(node, mask))

    @rpc
    async def DeleteAgent(self, stream: Stream[Any, Any]) -> None:
        """Evict an agent: its record goes; it may attest again."""
        req = await stream.recv_message()
        assert req is not None
        sid = agent_id_from_proto(req.id, self._ctx.trust_domain)
        try:
            await self._ds.delete_node(str(sid))
        except ds.NotFoundError:
            raise ServerError(Status.NOT_FOUND, "agent not found") from None
        await stream.send_message(empty_pb2.Empty())

    @rpc
    async def BanAgent(self, stream: Stream[Any, Any]) -> None:
        """Ban an agent: its certificate serials are blanked; it cannot renew or re-attest."""
        req = await stream.recv_message()
        assert req is not None
        sid = agent_id_from_proto(req.id, self._ctx.trust_domain)
        try:
            await self._ds.ban_node(str(sid))
        except ds.NotFoundError:
            raise ServerError(Status.NOT_FOUND, "agent not found") from None
        await stream.send_message(empty_pb2.Empty())

    @rpc
    async def CreateJoinToken(self, stream: Stream[Any, Any]) -> None:
        """A one-time join token; with ``agent_id``, also an alias entry for its agent."""
        req = await stream.recv_message()
        assert req is not None
        td = self._ctx.trust_domain
        if req.ttl < 1:
            raise ServerError(Status.INVALID_ARGUMENT, "ttl is required, you must provide one")
        alias: SpiffeId | None = None
        if req.HasField("agent_id"):
            try:
                alias = id_in_trust_domain(req.agent_id, td, IdKind.WORKLOAD)
            except ValueError as exc:
                raise ServerError(Status.INVALID_ARGUMENT, f"invalid agent ID: {exc}") from None
        token = req.token or str(uuid.uuid4())
        try:
            token_agent = join_token_agent_id(td, token)
        except SpiffeIdError as exc:
            raise ServerError(Status.INVALID_ARGUMENT, f"invalid token: {exc}") from None
        expiry = int(time.time()) + req.ttl
        try:
            await self._ds.create_join_token(ds.JoinToken(token, expiry))
        except ds.AlreadyExistsError as exc:
            # SPIRE answers INTERNAL here too (its datastore error is not mapped).
            raise ServerError(Status.INTERNAL, f"failed to create token: {exc}") from None
        if alias is not None:
            entry = ds.RegistrationEntry(
                spiffe_id=str(alias),
                parent_id=str(token_agent),
                selectors=(ds.Selector("spiffe_id", str(token_agent)),),
            )
            try:
                await self._ds.create_entry(entry)
            except ds.DataStoreError as exc:
                raise ServerError(
                    Status.INTERNAL, f"failed to create join token registration entry: {exc}"
                ) from None
        await stream.send_message(jointoken_pb2.JoinToken(value=token, expires_at=expiry))

    @rpc
    async def AttestAgent(self, stream: Stream[Any, Any]) -> None:
        """Attest a node: check its attestation data (and answers to challenges), then sign
        its agent SVID and create or update its attested-node record."""
        take(
            self._ctx.rate_limits.attestation,
            current_caller().address,
            "attest agent",
        )
        if self.attestations_in_progress >= self._max_attestations:
            raise ServerError(
                Status.RESOURCE_EXHAUSTED,
                "rejecting request due to too many attestations in progress "
                f"(at most {self._max_attestations})",
            )
        self.attestations_in_progress += 1
        try:
            try:
                async with asyncio.timeout(self._attest_deadline):
                    kind, csr, result = await self._attest(stream)
            except TimeoutError:
                raise ServerError(
                    Status.DEADLINE_EXCEEDED,
                    f"attestation did not complete within {self._attest_deadline:g}s",
                ) from None
            progress = _Progress()
            try:
                response = await self._admit(kind, result, csr, progress)
            except ServerError:
                # An explicit refusal before anything was stored (banned, signing busy, CSR
                # the CA will not sign): the agent may retry with the same data (its join
                # token). Not after a write began, nor on cancellation or an unexpected
                # error: then the node may have been stored with this very token.
                if not progress.writing and result.undo is not None:
                    try:
                        await result.undo()
                    except Exception as exc:  # the refusal below matters more
                        log.warning("could not give back attestation data", error=str(exc))
                raise
            await stream.send_message(response)
        finally:
            self.attestations_in_progress -= 1

    async def _attest(
        self, stream: Stream[Any, Any]
    ) -> tuple[str, x509.CertificateSigningRequest, AttestResult]:
        """Receive the parameters and run the attestor (with its challenges): the attestation
        type, the checked CSR and the attestor's result."""
        req = await stream.recv_message()
        problem = _attest_params_problem(req)
        if problem is not None:
            raise ServerError(Status.INVALID_ARGUMENT, f"malformed param: {problem}")
        assert req is not None
        params = req.params
        kind = params.data.type
        csr = _check_csr(params.params.csr)
        attestor = self._attestors.get(kind)
        if attestor is None:
            raise ServerError(
                Status.FAILED_PRECONDITION,
                f'error getting node attestor: could not find node attestor type "{kind}"',
            )

        async def challenge(data: bytes) -> bytes:
            await stream.send_message(agent_pb2.AttestAgentResponse(challenge=data))
            try:
                async with asyncio.timeout(CHALLENGE_TIMEOUT):
                    answer = await stream.recv_message()
            except TimeoutError:
                raise ServerError(
                    Status.INTERNAL,
                    "failed to receive challenge from agent: "
                    f"no answer within {CHALLENGE_TIMEOUT:g}s",
                ) from None
            if answer is None:
                raise ServerError(
                    Status.INTERNAL, "failed to receive challenge from agent: stream ended"
                )
            return bytes(answer.challenge_response)

        try:
            result: AttestResult = await attestor.attest(bytes(params.data.payload), challenge)
        except AttestationError as exc:
            message = exc.message if kind == "join_token" else f"nodeattestor({kind}): {exc}"
            raise ServerError(exc.status, message) from None
        return kind, csr, result

    async def _admit(
        self,
        kind: str,
        result: AttestResult,
        csr: x509.CertificateSigningRequest,
        progress: _Progress,
    ) -> agent_pb2.AttestAgentResponse:
        """After a successful attestation: check the node, sign and store it; the answer.
        ``progress.writing`` is set while the node is being stored."""
        agent_id = result.agent_id
        if agent_id.path == _SERVER_ID_PATH:
            raise ServerError(Status.INTERNAL, "agent ID cannot collide with the server ID")
        if not agent_id.member_of(self._ctx.trust_domain):
            raise ServerError(
                Status.INTERNAL,
                f'invalid agent ID: "{agent_id}" is not a member of trust domain '
                f'"{self._ctx.trust_domain}"',
            )
        try:
            existing: ds.AttestedNode | None = await self._ds.get_node(str(agent_id))
        except ds.NotFoundError:
            existing = None
        if existing is not None and existing.banned:
            raise ServerError(Status.PERMISSION_DENIED, "failed to attest: agent is banned")
        try:
            async with self._ctx.signing.slot():
                chain = self._sign(agent_id, csr)
        except SigningBusyError as exc:
            raise ServerError(Status.RESOURCE_EXHAUSTED, str(exc)) from None
        leaf = chain[0]
        serial = str(leaf.serial_number)
        not_after = int(leaf.not_valid_after_utc.timestamp())
        selectors = _dedupe(result.selectors)
        if existing is None:
            node = ds.AttestedNode(
                spiffe_id=str(agent_id),
                attestation_data_type=kind,
                cert_serial_number=serial,
                cert_not_after=not_after,
                can_reattest=result.can_reattest,
                selectors=selectors,
            )
            progress.writing = True
            try:
                await self._ds.create_node(node)
            except ds.DataStoreError as exc:
                raise ServerError(
                    Status.INTERNAL, f"failed to create attested agent: {exc}"
                ) from None
        else:
            # SPIRE's UpdateAttestedNodeCertificateMask: the new serial becomes current and
            # any pending "new" one is dropped; the attestation type stays as first recorded.
            update = ds.AttestedNode(
                spiffe_id=str(agent_id),
                cert_serial_number=serial,
                cert_not_after=not_after,
                new_cert_serial_number="",
                new_cert_not_after=0,
                can_reattest=result.can_reattest,
                selectors=selectors,
            )
            # The ban check above ran before the wait for a signing slot: the write checks
            # it again on the stored row, in its own transaction, so a ban made meanwhile
            # is not undone by this re-attestation.
            progress.writing = True
            try:
                await self._ds.update_node(
                    update,
                    (
                        "cert_serial_number",
                        "cert_not_after",
                        "new_cert_serial_number",
                        "new_cert_not_after",
                        "can_reattest",
                        "selectors",
                    ),
                    expect_not_banned=True,
                )
            except ds.FailedPreconditionError:
                progress.writing = False  # refused in the transaction: nothing was written
                raise ServerError(
                    Status.PERMISSION_DENIED, "failed to attest: agent is banned"
                ) from None
            except ds.DataStoreError as exc:
                raise ServerError(
                    Status.INTERNAL, f"failed to update attested agent: {exc}"
                ) from None
        log.info(
            "agent attestation request completed",
            agent_id=str(agent_id),
            node_attestor_type=kind,
            address=current_caller().address,
        )
        return agent_pb2.AttestAgentResponse(
            result=agent_pb2.AttestAgentResponse.Result(
                svid=_x509_svid(agent_id, chain), reattestable=result.can_reattest
            )
        )

    @rpc
    async def RenewAgent(self, stream: Stream[Any, Any]) -> None:
        """A new agent SVID for the calling agent, recorded as its node's new certificate."""
        req = await stream.recv_message()
        assert req is not None
        take(
            self._ctx.rate_limits.x509_signing,
            current_caller().address,
            "renew agent",
        )
        caller = caller_spiffe_id()
        try:
            node: ds.AttestedNode = await self._ds.get_node(str(caller))
        except ds.NotFoundError:
            raise ServerError(Status.NOT_FOUND, "agent not found") from None
        if node.banned:
            raise _permission_denied(_Reason.AGENT_BANNED, f'agent "{caller}" is banned')
        if node.can_reattest:
            raise _permission_denied(
                _Reason.AGENT_MUST_REATTEST, "agent must reattest instead of renew"
            )
        if not req.HasField("params"):
            raise ServerError(Status.INVALID_ARGUMENT, "params cannot be nil")
        if not req.params.csr:
            raise ServerError(Status.INVALID_ARGUMENT, "missing CSR")
        csr = _check_csr(req.params.csr)
        try:
            async with self._ctx.signing.slot():
                chain = self._sign(caller, csr)
        except SigningBusyError as exc:
            raise ServerError(Status.RESOURCE_EXHAUSTED, str(exc)) from None
        leaf = chain[0]
        update = ds.AttestedNode(
            spiffe_id=str(caller),
            new_cert_serial_number=str(leaf.serial_number),
            new_cert_not_after=int(leaf.not_valid_after_utc.timestamp()),
        )
        try:
            await self._ds.update_node(update, ("new_cert_serial_number", "new_cert_not_after"))
        except ds.NotFoundError:
            raise ServerError(Status.NOT_FOUND, "agent not found") from None
        except ds.DataStoreError as exc:
            raise ServerError(Status.INTERNAL, f"failed to update agent: {exc}") from None
        await stream.send_message(agent_pb2.RenewAgentResponse(svid=_x509_svid(caller, chain)))

    @rpc
    async def PostStatus(self, stream: Stream[Any, Any]) -> None:
        """Record the calling agent's version (when it sends one)."""
        req = await stream.recv_message()
        assert req is not None
        take(
            self._ctx.rate_limits.post_status,
            current_caller().address,
            "post status",
        )
        caller = caller_spiffe_id()
        version = req.agent_version
        if version:
            if len(version.encode()) > AGENT_VERSION_MAX_LEN:  # bytes, as SPIRE counts
                raise ServerError(
                    Status.INVALID_ARGUMENT,
                    f"agent version is too long (max {AGENT_VERSION_MAX_LEN} characters)",
                )
            try:
                await self._ds.update_node(
                    ds.AttestedNode(spiffe_id=str(caller), agent_version=version),
                    ("agent_version",),
                )
            except ds.NotFoundError:
                raise ServerError(Status.NOT_FOUND, "agent not found") from None
            except ds.DataStoreError as exc:
                raise ServerError(Status.INTERNAL, f"failed to update agent: {exc}") from None
        await stream.send_message(agent_pb2.PostStatusResponse())
