"""PERMISSION_DENIED from the server: SPIRE's PermissionDeniedDetails reason is decoded from
``grpc-status-details-bin``, and the agent tells a ban from an eviction."""

from __future__ import annotations

from google.protobuf import any_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from spiffed._proto.spire.api.types import status_pb2
from spiffed.agent.client import denied_reason
from spiffed.agent.manager.manager import AgentDeniedError, _server_error
from spiffed.grpcstatus import SpireStatusDetailsCodec


def _field(number: int, wire: int, payload: bytes) -> bytes:
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    tag = varint(number << 3 | wire)
    return tag + (varint(len(payload)) + payload if wire == 2 else payload)


def rpc_status(reason: int, message: str = "agent is banned") -> bytes:
    """A google.rpc.Status with one PermissionDeniedDetails, encoded by hand."""
    detail = any_pb2.Any()
    detail.Pack(status_pb2.PermissionDeniedDetails(reason=reason))  # type: ignore[arg-type]
    return (
        _field(1, 0, bytes([7]))
        + _field(2, 2, message.encode())
        + _field(3, 2, detail.SerializeToString())
    )


def test_permission_denied_details_reason_is_decoded() -> None:
    codec = SpireStatusDetailsCodec()
    banned = codec.decode(Status.PERMISSION_DENIED, "x", rpc_status(4))
    assert denied_reason(banned) == "AGENT_BANNED"
    evicted = codec.decode(Status.PERMISSION_DENIED, "x", rpc_status(2))
    assert denied_reason(evicted) == "AGENT_NOT_ATTESTED"


def test_garbage_status_details_are_ignored() -> None:
    codec = SpireStatusDetailsCodec()
    assert codec.decode(Status.PERMISSION_DENIED, "x", b"\xff\xff\xff") == []
    assert codec.decode(Status.PERMISSION_DENIED, "x", b"") == []
    assert denied_reason(None) is None


def test_ban_and_eviction_are_told_apart() -> None:
    codec = SpireStatusDetailsCodec()
    banned = _server_error(
        "sync",
        GRPCError(Status.PERMISSION_DENIED, "no", codec.decode(Status.OK, "", rpc_status(4))),
    )
    assert isinstance(banned, AgentDeniedError) and banned.banned
    evicted = _server_error(
        "sync",
        GRPCError(Status.PERMISSION_DENIED, "no", codec.decode(Status.OK, "", rpc_status(2))),
    )
    assert isinstance(evicted, AgentDeniedError) and not evicted.banned
    # without details (spiffed-server today), the message decides
    assert AgentDeniedError("agent x is banned", None).banned
    assert not isinstance(
        _server_error("sync", GRPCError(Status.UNAVAILABLE, "down")), AgentDeniedError
    )
