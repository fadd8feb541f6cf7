"""A whole server API in-process: real SQLite datastore, CA over it, every service."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpclib.testing import ChannelFor

from spiffed._proto.spire.api.server.agent.v1 import agent_grpc
from spiffed._proto.spire.api.server.bundle.v1 import bundle_grpc
from spiffed._proto.spire.api.server.debug.v1 import debug_grpc
from spiffed._proto.spire.api.server.entry.v1 import entry_grpc
from spiffed._proto.spire.api.server.localauthority.v1 import localauthority_grpc
from spiffed._proto.spire.api.server.logger.v1 import logger_grpc
from spiffed._proto.spire.api.server.svid.v1 import svid_grpc
from spiffed.server.api import Caller, Role, caller_context
from spiffed.server.api.services import build_services
from spiffed.server.ca.manager import CaManager, CaSettings
from spiffed.server.cache import ServerCache
from spiffed.server.context import ServerContext
from spiffed.server.datastore import open_datastore
from spiffed.server.keymanager.memory import MemoryKeyManager
from spiffed.server.run_store import DatastoreCaStore
from spiffed.server.svid import ServerSvid
from spiffed.spiffeid import TrustDomain

TD = TrustDomain("example.org")


@dataclass
class Api:
    """Stubs for every service plus the server behind them."""

    ctx: ServerContext
    entry: entry_grpc.EntryStub
    bundle: bundle_grpc.BundleStub
    agent: agent_grpc.AgentStub
    svid: svid_grpc.SVIDStub
    la: localauthority_grpc.LocalAuthorityStub
    debug: debug_grpc.DebugStub
    logger: logger_grpc.LoggerStub

    @property
    def ds(self):
        return self.ctx.datastore


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    store = await open_datastore("sqlite3", str(tmp_path / "ds.sqlite3"))
    settings = CaSettings(trust_domain=TD, ca_ttl=dt.timedelta(hours=2))
    ca = CaManager(settings, MemoryKeyManager(), DatastoreCaStore(store, TD.name))
    await ca.start()
    svid = ServerSvid(ca)
    svid.rotate(force=True)
    cache = ServerCache(store, TD)
    await cache.start()
    ctx = ServerContext(trust_domain=TD, datastore=store, ca=ca, server_svid=svid, cache=cache)
    token = caller_context.set(Caller(roles=frozenset({Role.ANY, Role.LOCAL})))
    try:
        async with ChannelFor(build_services(ctx)) as channel:
            yield Api(
                ctx,
                entry_grpc.EntryStub(channel),
                bundle_grpc.BundleStub(channel),
                agent_grpc.AgentStub(channel),
                svid_grpc.SVIDStub(channel),
                localauthority_grpc.LocalAuthorityStub(channel),
                debug_grpc.DebugStub(channel),
                logger_grpc.LoggerStub(channel),
            )
    finally:
        caller_context.reset(token)
        await cache.stop()
        await store.close()
