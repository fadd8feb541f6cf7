"""Agent halves of node attestors (SPIRE's agent ``NodeAttestor`` plugins)."""

from __future__ import annotations

from typing import Protocol

__all__ = ["AgentNodeAttestor", "AgentAttestationError"]


class AgentAttestationError(Exception):
    """The agent cannot produce its attestation data or answer a challenge."""


class AgentNodeAttestor(Protocol):
    """Produces the attestation payload and answers the server's challenges."""

    @property
    def name(self) -> str:
        """The attestor's name, as in ``NodeAttestor "<name>"``."""
        ...

    def payload(self) -> bytes:
        """The first message sent to the server."""
        ...

    def respond(self, challenge: bytes) -> bytes:
        """The answer to one challenge from the server."""
        ...
