"""The agent's manager: attestation state, persistence, renewal and sync into the cache."""

from spiffed.agent.manager.manager import Manager, ManagerError, SyncResult
from spiffed.agent.manager.storage import AgentState, StateError

__all__ = ["AgentState", "Manager", "ManagerError", "StateError", "SyncResult"]
