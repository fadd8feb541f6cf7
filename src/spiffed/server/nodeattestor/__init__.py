"""Server halves of node attestors (SPIRE's ``NodeAttestor`` plugins).

An attestor checks what an agent sends (payload, then answers to challenges) and says which
agent SPIFFE ID and which node selectors the node gets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from grpclib.const import Status

from spiffed.selector import Selector
from spiffed.spiffeid import SpiffeId

__all__ = ["AttestResult", "AttestationError", "Challenger", "NodeAttestor"]

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


class NodeAttestor(Protocol):
    """The server half of a node attestor."""

    @property
    def name(self) -> str:
        """The attestor's name, as in ``NodeAttestor "<name>"`` and the selector type."""
        ...

    async def attest(self, payload: bytes, challenge: Challenger) -> AttestResult:
        """Attest a node from its payload, challenging it as often as the method needs."""
        ...
