"""Helpers shared by the SPIRE-style admin commands: talking to the server's local socket."""

from __future__ import annotations

import asyncio

from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

__all__ = ["check_health"]


async def check_health(socket_path: str, *, verbose: bool = False) -> tuple[bool, str]:
    """Ask the server's Health service over ``socket_path``: (serving, detail for -verbose)."""
    channel = Channel(path=socket_path)
    try:
        reply = await asyncio.wait_for(HealthStub(channel).Check(HealthCheckRequest()), 10)
    except (OSError, GRPCError, TimeoutError) as exc:
        return False, f"Failed to check health: {exc}"
    finally:
        channel.close()
    if reply.status != HealthCheckResponse.SERVING:
        return (
            False,
            f"Server returned status {HealthCheckResponse.ServingStatus.Name(reply.status)}",
        )
    return True, ""
