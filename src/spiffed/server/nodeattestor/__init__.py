"""Server halves of node attestors (SPIRE's ``NodeAttestor`` plugins).

An attestor checks what an agent sends (payload, then answers to challenges) and says which
agent SPIFFE ID and which node selectors the node gets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from grpclib.const import Status

from spiffed.selector import Selector
from spiffed.spiffeid import SpiffeId, TrustDomain

__all__ = [
    "AttestResult",
    "AttestationError",
    "Challenger",
    "NodeAttestor",
    "build_node_attestors",
]

# Sends a challenge to the agent and returns its answer.
Challenger = Callable[[bytes], Awaitable[bytes]]


class AttestationError(Exception):
    """Attestation failed; ``status`` is the gRPC code SPIRE returns for the same failure."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class AttestResult:
    """What a successful attestation establishes about a node."""

    agent_id: SpiffeId
    selectors: tuple[Selector, ...]
    can_reattest: bool
    undo: Callable[[], Awaitable[None]] | None = field(default=None, compare=False)
    """Gives back what the attestation used up (a join token), when the server refuses the
    node afterwards, so the datastore is left as it was and the agent may try again."""


class NodeAttestor(Protocol):
    """The server half of a node attestor."""

    @property
    def name(self) -> str:
        """The attestor's name, as in ``NodeAttestor "<name>"`` and the selector type."""
        ...

    async def attest(self, payload: bytes, challenge: Challenger) -> AttestResult:
        """Attest a node from its payload, challenging it as often as the method needs."""
        ...


def build_node_attestors(
    trust_domain: TrustDomain, plugins: Iterable[Any], datastore: Any
) -> Mapping[str, NodeAttestor]:
    """The attestors named by the server's ``NodeAttestor`` blocks (objects with ``name`` and
    ``options``), by name. ``join_token`` is always present: as in SPIRE, it is built into the
    server whether or not it is configured. Configuration errors raise AttestationError."""
    from spiffed.server.nodeattestor.join_token import JoinTokenAttestor
    from spiffed.server.nodeattestor.x509pop import X509PopAttestor

    out: dict[str, NodeAttestor] = {"join_token": JoinTokenAttestor(trust_domain, datastore)}
    for plugin in plugins:
        name = plugin.name
        if name == "join_token":
            continue
        if name == "x509pop":
            out[name] = X509PopAttestor.from_config(trust_domain, plugin.options)
        else:
            raise AttestationError(
                Status.FAILED_PRECONDITION, f'NodeAttestor "{name}" is not supported'
            )
    return out
