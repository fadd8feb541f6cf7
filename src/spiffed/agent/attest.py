"""Node attestation: prove the node to the server and receive the agent's X509-SVID.

SPIRE's ``agent.v1.Agent/AttestAgent`` is a bidirectional stream. The agent sends
``params {data {type, payload}, params {csr}}``; the server answers with challenges (the
agent replies with ``challenge_response``) until it sends ``result {svid}``. The key behind
the CSR is new for every attestation. Afterwards the trust domain's bundle is read with
``bundle.v1.Bundle/GetBundle`` on the same connection, and the SVID must verify against it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from grpclib.client import Channel
from grpclib.exceptions import GRPCError, ProtocolError
from h2.exceptions import StreamClosedError

from spiffed._proto.spire.api.server.agent.v1 import agent_grpc, agent_pb2
from spiffed._proto.spire.api.server.bundle.v1 import bundle_grpc, bundle_pb2
from spiffed._proto.spire.api.types import attestation_pb2
from spiffed.agent.client import (
    ServerClientError,
    bundle_from_proto,
    make_csr,
    svid_from_proto,
)
from spiffed.agent.nodeattestor import AgentAttestationError, AgentNodeAttestor
from spiffed.bundle import SpiffeBundle
from spiffed.keys import KeyType
from spiffed.spiffeid import TrustDomain
from spiffed.svid.x509 import X509Svid, X509SvidError, verify_chain

__all__ = [
    "AttestationError",
    "AttestationResult",
    "JoinTokenAttestor",
    "attest",
    "attestor_from_config",
    "fetch_bundle",
]

_MAX_CHALLENGES = 16


class AttestationError(Exception):
    """Attestation failed; ``status`` is the server's gRPC status when it refused.

    ``local`` is True when the agent's own attestor failed (no join token, unreadable
    node key): retrying cannot help."""

    def __init__(
        self, message: str, status: GRPCError | None = None, *, local: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.local = local


class JoinTokenAttestor:
    """Agent half of ``join_token``: the payload is the token; there are no challenges."""

    name = "join_token"

    def __init__(self, token: str | None) -> None:
        self._token = token or ""

    def payload(self) -> bytes:
        """The token itself. Without one the agent cannot attest (it may still restart
        with a stored SVID, which is why a missing token is only an error here)."""
        if not self._token:
            raise AgentAttestationError(
                'NodeAttestor "join_token" needs join_token or join_token_file '
                "(or -joinToken) to attest"
            )
        return self._token.encode()

    def respond(self, challenge: bytes) -> bytes:
        """join_token has no challenges; one from the server is an error."""
        raise AgentAttestationError("join_token: the server sent an unexpected challenge")


def attestor_from_config(
    name: str, options: Mapping[str, object], join_token: str | None
) -> AgentNodeAttestor:
    """The node attestor named by the agent's ``NodeAttestor "<name>"`` block."""
    if name == "join_token":
        return JoinTokenAttestor(join_token)
    if name == "x509pop":
        from spiffed.agent.nodeattestor.x509pop import X509PopAgentAttestor

        return X509PopAgentAttestor.from_config(options)
    raise AgentAttestationError(f'NodeAttestor "{name}" is not supported by spiffed-agent')


@dataclass(frozen=True, slots=True)
class AttestationResult:
    """The agent's SVID (with its new key), the trust domain's bundle, and reattestability."""

    svid: X509Svid
    bundle: SpiffeBundle
    reattestable: bool


async def fetch_bundle(channel: Channel, trust_domain: TrustDomain) -> SpiffeBundle:
    """The trust domain's bundle from ``bundle.v1.Bundle/GetBundle``."""
    try:
        msg = await bundle_grpc.BundleStub(channel).GetBundle(bundle_pb2.GetBundleRequest())
    except GRPCError as exc:
        raise ServerClientError(f"GetBundle failed: {exc.status.name}: {exc.message}") from None
    bundle = bundle_from_proto(msg)
    if bundle.trust_domain != trust_domain:
        raise ServerClientError(
            f"server sent the bundle of {bundle.trust_domain}, expected {trust_domain}"
        )
    return bundle


async def _raise_refusal(stream: Any) -> None:
    """The server ended ``AttestAgent`` without a result: raise its status from the trailers.

    A refusal after a challenge round (a wrong proof, a banned agent) comes as trailers after
    the challenge message, so ``recv_message`` just returns None; without reading them the
    refusal would look like a dropped connection and be retried forever."""
    try:
        await stream.end()
    except StreamClosedError:
        # The server closed the stream: our side needs no END_STREAM any more, but grpclib
        # only reads trailers once it believes we ended it, and has no public way to say so.
        stream._end_done = True
    await stream.recv_trailing_metadata()  # raises GRPCError for a non-OK status


async def attest(
    channel: Channel,
    attestor: AgentNodeAttestor,
    trust_domain: TrustDomain,
    *,
    key_type: KeyType = KeyType.EC_P256,
    timeout: float = 60.0,
) -> AttestationResult:
    """Run ``AttestAgent`` on ``channel`` and return the verified agent SVID and bundle."""
    key = key_type.generate()
    try:
        payload = attestor.payload()
    except AgentAttestationError as exc:
        raise AttestationError(str(exc), local=True) from None
    first = agent_pb2.AttestAgentRequest(
        params=agent_pb2.AttestAgentRequest.Params(
            data=attestation_pb2.AttestationData(type=attestor.name, payload=payload),
            params=agent_pb2.AgentX509SVIDParams(csr=make_csr(key)),
        )
    )
    stub = agent_grpc.AgentStub(channel)
    result: agent_pb2.AttestAgentResponse.Result | None = None
    try:
        async with stub.AttestAgent.open(timeout=timeout) as stream:
            await stream.send_message(first)
            for _ in range(_MAX_CHALLENGES + 1):
                resp = await stream.recv_message()
                if resp is None:
                    await _raise_refusal(stream)
                    raise AttestationError("server closed the attestation stream without a result")
                if resp.WhichOneof("step") == "result":
                    result = resp.result
                    break
                try:
                    answer = attestor.respond(resp.challenge)
                except AgentAttestationError as exc:
                    raise AttestationError(str(exc), local=True) from None
                await stream.send_message(agent_pb2.AttestAgentRequest(challenge_response=answer))
            else:
                raise AttestationError(f"server sent more than {_MAX_CHALLENGES} challenges")
            # A Go server may already have reset the stream after its result (NO_ERROR).
            with contextlib.suppress(StreamClosedError):
                await stream.end()
    except GRPCError as exc:
        raise AttestationError(
            f"attestation refused: {exc.status.name}: {exc.message}", exc
        ) from None
    except ProtocolError:
        if result is None:  # only the closing of a finished stream may fail
            raise
    if result is None:
        raise AttestationError("server closed the attestation stream without a result")
    svid = svid_from_proto(result.svid, key)
    bundle = await fetch_bundle(channel, trust_domain)
    try:
        verify_chain(svid.cert_chain, bundle)
    except X509SvidError as exc:
        raise AttestationError(
            f"the agent SVID does not verify against the bundle: {exc}"
        ) from None
    agent_prefix = f"spiffe://{trust_domain}/spire/agent/"
    if not str(svid.spiffe_id).startswith(agent_prefix):
        raise AttestationError(f"server issued {svid.spiffe_id}, not an agent ID")
    return AttestationResult(svid, bundle, bool(result.reattestable))
