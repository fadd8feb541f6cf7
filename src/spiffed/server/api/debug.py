"""``spire.api.server.debug.v1.Debug``: GetInfo (uptime, counts, the server's SVID chain)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from grpclib.server import Stream

from spiffed._proto.spire.api.server.debug.v1 import debug_grpc, debug_pb2
from spiffed.server.api.convert import rpc, spiffe_id_to_proto
from spiffed.server.context import ServerContext
from spiffed.spiffeid import SpiffeId, SpiffeIdError

__all__ = ["DebugService"]


def _cert(cert: x509.Certificate) -> debug_pb2.GetInfoResponse.Cert:
    out = debug_pb2.GetInfoResponse.Cert(
        subject=cert.subject.rfc4514_string(),
        expires_at=int(cert.not_valid_after_utc.timestamp()),
    )
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if uris:
        with contextlib.suppress(SpiffeIdError):
            out.id.CopyFrom(spiffe_id_to_proto(SpiffeId.parse(uris[0])))
    return out


class DebugService(debug_grpc.DebugBase):
    """Reports what the server is doing (local callers only, by policy)."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx

    @rpc
    async def GetInfo(self, stream: Stream[Any, Any]) -> None:
        """Uptime, agent/entry/federated bundle counts and the server SVID chain."""
        await stream.recv_message()
        store = self._ctx.datastore
        bundles = int(await store.count_bundles())
        try:
            chain = list(self._ctx.server_svid.chain)
        except RuntimeError:
            chain = []
        await stream.send_message(
            debug_pb2.GetInfoResponse(
                uptime=int((datetime.now(UTC) - self._ctx.started_at).total_seconds()),
                agents_count=int(await store.count_nodes()),
                entries_count=int(await store.count_entries()),
                federated_bundles_count=max(0, bundles - 1),
                svid_chain=[_cert(c) for c in chain],
            )
        )
