"""Workload attestors: turn a calling process into selectors (SPIRE's ``WorkloadAttestor``).

Each attestor is one module with a class that satisfies :class:`WorkloadAttestor`; the agent
runs every configured attestor for a caller and unions their selectors. A ``k8s`` or
``docker`` attestor plugs in the same way.
"""

from __future__ import annotations

from typing import Protocol

from spiffed.selector import Selector

__all__ = ["WorkloadAttestationError", "WorkloadAttestor"]


class WorkloadAttestationError(Exception):
    """A workload could not be attested; the message says which process and why."""


class WorkloadAttestor(Protocol):
    """Finds selectors for a process identified by the kernel."""

    @property
    def name(self) -> str:
        """The attestor's name, as in ``WorkloadAttestor "<name>"`` and the selector type."""
        ...

    async def attest(self, pid: int) -> list[Selector]:
        """Selectors describing process ``pid``."""
        ...
