"""gRPC rich status details (``grpc-status-details-bin``) as SPIRE sends and reads them.

The trailer holds a serialized ``google.rpc.Status`` (code = 1, message = 2, repeated
``google.protobuf.Any`` details = 3). SPIRE puts a ``spire.api.types.PermissionDeniedDetails``
there when it refuses an agent (banned, not attested, SVID expired or not active, must
re-attest), and agents act on that reason. The message is encoded and decoded here by hand,
so no copy of ``google.rpc.Status`` has to be registered in the protobuf descriptor pool.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from grpclib.const import Status
from grpclib.encoding.base import StatusDetailsCodecBase

from spiffed._proto.spire.api.types import status_pb2

__all__ = ["SpireStatusDetailsCodec", "decode_status_details", "encode_status"]

_KNOWN: dict[str, type[Message]] = {
    status_pb2.PermissionDeniedDetails.DESCRIPTOR.full_name: status_pb2.PermissionDeniedDetails,
}


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int32 codes are sent as 10-byte varints, as protobuf does
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_status(code: int, message: str, details: Iterable[Message]) -> bytes:
    """A serialized ``google.rpc.Status`` carrying ``details`` packed as ``Any``."""
    out = bytearray()
    if code:
        out += _varint(1 << 3) + _varint(code)
    if message:
        out += _bytes_field(2, message.encode())
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        out += _bytes_field(3, packed.SerializeToString())
    return bytes(out)


def decode_status_details(data: bytes) -> list[any_pb2.Any]:
    """The ``details`` of a serialized ``google.rpc.Status``; ValueError when malformed."""
    out: list[any_pb2.Any] = []
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        wire = tag & 7
        if wire == 0:
            _, pos = _read_varint(data, pos)
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            if pos + size > len(data):
                raise ValueError("truncated field")
            chunk, pos = data[pos : pos + size], pos + size
            if tag >> 3 == 3:
                try:
                    out.append(any_pb2.Any.FromString(chunk))
                except DecodeError as exc:
                    raise ValueError(f"malformed detail: {exc}") from None
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return out


class SpireStatusDetailsCodec(StatusDetailsCodecBase):
    """grpclib's hook for status details: SPIRE's detail types are encoded and decoded;
    unknown detail types are kept as ``Any``; malformed trailers decode to no details."""

    def encode(self, status: Status, message: str | None, details: Any) -> bytes:
        return encode_status(status.value, message or "", details or ())

    def decode(self, status: Status, message: str | None, data: bytes) -> Any:
        try:
            items = decode_status_details(data)
        except ValueError:
            return []
        found: list[Message] = []
        for item in items:
            kind = _KNOWN.get(item.TypeName())
            if kind is None:
                found.append(item)
                continue
            try:
                found.append(kind.FromString(item.value))
            except DecodeError:
                continue
        return found
