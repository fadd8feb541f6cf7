"""Every server API service the listener serves, built over one :class:`ServerContext`."""

from __future__ import annotations

from spiffed.server.api.agent import AgentService
from spiffed.server.api.bundle import BundleService
from spiffed.server.api.debug import DebugService
from spiffed.server.api.entry import EntryService
from spiffed.server.api.localauthority import LocalAuthorityService
from spiffed.server.api.logger import LoggerService
from spiffed.server.api.svid import SvidService
from spiffed.server.api.watch import WatchService
from spiffed.server.context import ServerContext

__all__ = ["build_services"]


def build_services(ctx: ServerContext) -> list[object]:
    """The agent, bundle, entry, SVID, local authority, debug, logger and watch services."""
    return [
        AgentService(ctx),
        BundleService(ctx),
        EntryService(ctx),
        SvidService(ctx),
        LocalAuthorityService(ctx),
        DebugService(ctx),
        LoggerService(),
        WatchService(ctx),
    ]
