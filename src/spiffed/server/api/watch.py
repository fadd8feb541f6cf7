"""``spiffed.api.server.watch.v1.Watch``: change notifications for agents (spiffed's own).

An agent keeps one WatchAuthorizedEntries stream open; it gets a revision at once and then
whenever its authorized entries or the bundle may have changed (from
:meth:`spiffed.server.cache.ServerCache.watch`), and then syncs with the standard RPCs. A
notification carries no entries, so it reveals nothing an agent could not learn by polling.
The stream ends cleanly when the server's cache stops (shutdown), and with PERMISSION_DENIED
once the agent is banned or evicted.
"""

from __future__ import annotations

import contextlib
from typing import Any

from grpclib.const import Status
from grpclib.server import Stream

from spiffed._proto.spiffed.api.server.watch.v1 import watch_grpc, watch_pb2
from spiffed.server.api import current_caller
from spiffed.server.api.convert import rpc
from spiffed.server.context import ServerContext
from spiffed.server.errors import ServerError

__all__ = ["WatchService"]


class WatchService(watch_grpc.WatchBase):
    """Tells attested agents when to sync."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx

    @rpc
    async def WatchAuthorizedEntries(self, stream: Stream[Any, Any]) -> None:
        """A revision now, then one after each change that may concern the caller."""
        req = await stream.recv_message()
        assert req is not None
        agent_id = current_caller().spiffe_id
        if agent_id is None:
            raise ServerError(Status.INTERNAL, "caller ID missing from request context")
        cache = self._ctx.cache
        if cache is None:
            raise ServerError(Status.UNAVAILABLE, "change notifications are not available")
        who = repr(str(agent_id))
        Response = watch_pb2.WatchAuthorizedEntriesResponse
        async with contextlib.aclosing(cache.watch(agent_id)) as revisions:  # type: ignore[type-var]
            async for revision in revisions:
                node = cache.cached_node(agent_id)
                if node is not None and not node.cert_serial_number:
                    raise ServerError(Status.PERMISSION_DENIED, f"agent {who} is banned")
                if node is None and await cache.node(agent_id) is None:
                    raise ServerError(Status.PERMISSION_DENIED, f"agent {who} is not attested")
                await stream.send_message(Response(revision=revision))
