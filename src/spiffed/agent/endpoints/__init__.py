"""The agent's endpoints: the SPIFFE Workload API on a Unix socket (:mod:`.workload`,
started by :mod:`.server`)."""

from spiffed.agent.endpoints.server import start_workload_api, stop_workload_api
from spiffed.agent.endpoints.workload import JwtMinter, WorkloadApiService

__all__ = ["JwtMinter", "WorkloadApiService", "start_workload_api", "stop_workload_api"]
