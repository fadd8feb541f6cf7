"""``spire.api.server.agent.v1.Agent``: the admin RPCs over attested agents and join tokens.

AttestAgent, RenewAgent and PostStatus (agent-facing) answer UNIMPLEMENTED until node
attestation over the API lands.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

from google.protobuf import empty_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from spiffed._proto.spire.api.server.agent.v1 import agent_grpc, agent_pb2
from spiffed._proto.spire.api.types import jointoken_pb2, spiffeid_pb2
from spiffed.server import datastore as ds
from spiffed.server.api.convert import (
    IdKind,
    agent_to_proto,
    id_in_trust_domain,
    rpc,
    selector_from_proto,
)
from spiffed.server.api.entry import MATCH_BEHAVIOR
from spiffed.server.context import ServerContext
from spiffed.server.errors import ServerError
from spiffed.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

__all__ = ["AgentService", "agent_id_from_proto", "join_token_agent_id"]


def join_token_agent_id(td: TrustDomain, token: str) -> SpiffeId:
    """The agent ID a join token attests as: ``spiffe://<td>/spire/agent/join_token/<token>``."""
    return SpiffeId.parse(f"{td.id_string()}/spire/agent/join_token/{token}")


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


class AgentService(agent_grpc.AgentBase):
    """Attested agents and join tokens over the datastore."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx

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

    async def AttestAgent(self, stream: Stream[Any, Any]) -> None:
        """Not served here: answers UNIMPLEMENTED."""
        raise GRPCError(
            Status.UNIMPLEMENTED,
            "AttestAgent is not implemented yet: node attestation over the API is the next issue",
        )

    async def RenewAgent(self, stream: Stream[Any, Any]) -> None:
        """Not served here: answers UNIMPLEMENTED."""
        raise GRPCError(
            Status.UNIMPLEMENTED,
            "RenewAgent is not implemented yet: node attestation over the API is the next issue",
        )

    async def PostStatus(self, stream: Stream[Any, Any]) -> None:
        """Not served here: answers UNIMPLEMENTED."""
        raise GRPCError(
            Status.UNIMPLEMENTED,
            "PostStatus is not implemented yet: node attestation over the API is the next issue",
        )
