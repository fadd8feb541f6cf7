"""``spiffed.api.server.watch.v1.Watch``: change notifications for agents (spiffed's own).

An agent keeps one WatchAuthorizedEntries stream open; it gets a revision at once and then
whenever its authorized entries or the bundle may have changed (from
:meth:`spiffed.server.cache.ServerCache.watch`), and then syncs with the standard RPCs. A
notification carries no entries, so it reveals nothing an agent could not learn by polling.
The stream ends cleanly when the server's cache stops (shutdown), and with PERMISSION_DENIED
once the agent is banned or evicted, once the SVID the stream was opened with is no longer the
node's current one (the agent re-attested or switched to a renewed SVID: it opens a new stream
with its new SVID), or when that SVID expires. An agent may hold at most
:data:`MAX_STREAMS_PER_AGENT` streams at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from grpclib.const import Status
from grpclib.server import Stream

from spiffed._proto.spiffed.api.server.watch.v1 import watch_grpc, watch_pb2
from spiffed.server.api import caller_spiffe_id, current_caller
from spiffed.server.api.convert import rpc
from spiffed.server.cache import ServerCache
from spiffed.server.context import ServerContext
from spiffed.server.errors import ServerError
from spiffed.spiffeid import SpiffeId

__all__ = ["MAX_STREAMS_PER_AGENT", "WatchService"]

MAX_STREAMS_PER_AGENT = 4
"""Watch streams one agent may hold open at once (one is enough; a few allow for a stream
the server has not yet noticed is gone); more are refused with RESOURCE_EXHAUSTED."""


class WatchService(watch_grpc.WatchBase):
    """Tells attested agents when to sync."""

    def __init__(
        self,
        ctx: ServerContext,
        *,
        max_streams_per_agent: int = MAX_STREAMS_PER_AGENT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ctx = ctx
        self._max_streams = max_streams_per_agent
        self._clock = clock
        self._streams: dict[str, int] = {}

    def streams(self, agent_id: SpiffeId) -> int:
        """How many watch streams the agent holds open now."""
        return self._streams.get(str(agent_id), 0)

    @rpc
    async def WatchAuthorizedEntries(self, stream: Stream[Any, Any]) -> None:
        """A revision now, then one after each change that may concern the caller."""
        req = await stream.recv_message()
        assert req is not None
        caller = current_caller()
        agent_id = caller_spiffe_id()
        cache = self._ctx.cache
        if cache is None:
            raise ServerError(Status.UNAVAILABLE, "change notifications are not available")
        key = str(agent_id)
        if self._streams.get(key, 0) >= self._max_streams:
            raise ServerError(
                Status.RESOURCE_EXHAUSTED,
                f'too many watch streams for agent "{key}" (at most {self._max_streams})',
            )
        self._streams[key] = self._streams.get(key, 0) + 1
        try:
            remaining = None if caller.not_after is None else caller.not_after - self._clock()
            try:
                async with asyncio.timeout(remaining):
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError
                    await self._notify(stream, cache, agent_id, caller.serial)
            except TimeoutError:
                raise ServerError(
                    Status.PERMISSION_DENIED, f'agent "{key}" SVID is expired'
                ) from None
        finally:
            self._streams[key] -= 1
            if not self._streams[key]:
                del self._streams[key]

    async def _notify(
        self, stream: Stream[Any, Any], cache: ServerCache, agent_id: SpiffeId, serial: str | None
    ) -> None:
        who = f'"{agent_id}"'
        Response = watch_pb2.WatchAuthorizedEntriesResponse
        async with contextlib.aclosing(cache.watch(agent_id)) as revisions:  # type: ignore[type-var]
            async for revision in revisions:
                node = cache.cached_node(agent_id)
                if node is not None and serial is not None and node.cert_serial_number != serial:
                    # Maybe the cache has not caught up with a promotion yet: look again.
                    await cache.refresh()
                    node = cache.cached_node(agent_id)
                if node is not None and not node.cert_serial_number:
                    raise ServerError(Status.PERMISSION_DENIED, f"agent {who} is banned")
                if node is None and await cache.node(agent_id) is None:
                    raise ServerError(Status.PERMISSION_DENIED, f"agent {who} is not attested")
                if node is not None and serial is not None and node.cert_serial_number != serial:
                    raise ServerError(
                        Status.PERMISSION_DENIED,
                        f"agent {who} SVID is no longer active: serial number "
                        f'"{node.cert_serial_number}" is current; the stream has "{serial}"',
                    )
                await stream.send_message(Response(revision=revision))
