"""Message builders shared by the API tests."""

from __future__ import annotations

from spiffed._proto.spire.api.types import entry_pb2, selector_pb2, spiffeid_pb2


def sid(td: str, path: str) -> spiffeid_pb2.SPIFFEID:
    return spiffeid_pb2.SPIFFEID(trust_domain=td, path=path)


def sel(text: str) -> selector_pb2.Selector:
    t, v = text.split(":", 1)
    return selector_pb2.Selector(type=t, value=v)


def entry(
    path: str = "/workload",
    parent: str = "/spire/agent/x",
    selectors: tuple[str, ...] = ("unix:uid:1000",),
    td: str = "example.org",
    **kw: object,
) -> entry_pb2.Entry:
    return entry_pb2.Entry(
        spiffe_id=sid(td, path),
        parent_id=sid("example.org", parent),
        selectors=[sel(s) for s in selectors],
        **kw,  # type: ignore[arg-type]
    )
