"""google.rpc.Status details as SPIRE sends them: encoded by us, read by protobuf and by us."""

from __future__ import annotations

import contextlib

from google.protobuf import any_pb2, struct_pb2
from grpclib.const import Status
from hypothesis import given
from hypothesis import strategies as st

from spiffed._proto.spire.api.types import status_pb2
from spiffed.grpcstatus import SpireStatusDetailsCodec, decode_status_details, encode_status

_Reason = status_pb2.PermissionDeniedDetails.Reason


def test_permission_denied_details_round_trip() -> None:
    codec = SpireStatusDetailsCodec()
    detail = status_pb2.PermissionDeniedDetails(reason=_Reason.AGENT_BANNED)
    data = codec.encode(Status.PERMISSION_DENIED, "agent is banned", [detail])
    assert codec.decode(Status.PERMISSION_DENIED, "agent is banned", data) == [detail]


def test_wire_layout_is_google_rpc_status() -> None:
    """Fields 1 (code), 2 (message) and 3 (Any details), readable by a generic parser."""
    detail = status_pb2.PermissionDeniedDetails(reason=_Reason.AGENT_NOT_ATTESTED)
    data = encode_status(7, "no", [detail])
    assert data.startswith(b"\x08\x07\x12\x02no\x1a")
    (packed,) = decode_status_details(data)
    assert packed.type_url == "type.googleapis.com/spire.api.types.PermissionDeniedDetails"
    assert packed.Unpack(status_pb2.PermissionDeniedDetails())


def test_unknown_details_are_kept_as_any_and_garbage_is_no_details() -> None:
    codec = SpireStatusDetailsCodec()
    other = struct_pb2.Value(string_value="x")
    (kept,) = codec.decode(Status.INTERNAL, "", encode_status(13, "", [other]))
    assert isinstance(kept, any_pb2.Any) and kept.Is(struct_pb2.Value.DESCRIPTOR)
    for garbage in (b"\xff\xff\xff", b"\x1a\x05ab", b"\x0f"):
        assert codec.decode(Status.INTERNAL, "", garbage) == []


@given(st.binary(max_size=64))
def test_decoding_never_raises_anything_but_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        decode_status_details(data)
    assert isinstance(SpireStatusDetailsCodec().decode(Status.INTERNAL, "", data), list)
