"""Reading a stored bundle: bundles are kept as serialized ``spire.api.types.Bundle``.

The CA's own store over the datastore is :class:`spiffed.server.run_store.DatastoreCaStore`.
"""

from __future__ import annotations

from typing import Any

from spiffed._proto.spire.api.types import bundle_pb2
from spiffed.server import datastore as ds

__all__ = ["load_bundle"]


async def load_bundle(datastore: Any, trust_domain: str) -> bundle_pb2.Bundle | None:
    """The stored bundle of ``trust_domain`` as a message, or None when there is none."""
    try:
        stored = await datastore.get_bundle(trust_domain)
    except ds.NotFoundError:
        return None
    msg = bundle_pb2.Bundle()
    msg.ParseFromString(stored.data)
    return msg
