"""A receive-size limit for grpclib, which has none of its own.

grpclib reads a message's 5-byte prefix and then buffers however many bytes the prefix
announces, so any caller (the agent's Workload API socket is open to every local user) could
make a process buffer gigabytes. This module replaces grpclib's message reader with one that
refuses a message larger than :data:`MAX_RECEIVE_MESSAGE_LENGTH` (gRPC's usual 4 MiB) with
RESOURCE_EXHAUSTED before reading it. Importing :mod:`spiffed.grpcutil` installs it.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import grpclib.client
import grpclib.server
import grpclib.stream
from grpclib.const import Status
from grpclib.exceptions import GRPCError

if TYPE_CHECKING:
    from grpclib.encoding.base import CodecBase

__all__ = ["MAX_RECEIVE_MESSAGE_LENGTH", "install"]

MAX_RECEIVE_MESSAGE_LENGTH = 4 * 1024 * 1024


async def _bounded_recv_message(stream: Any, codec: CodecBase, message_type: Any) -> Any:
    meta = await stream.recv_data(5)
    if not meta:
        return None
    if struct.unpack("?", meta[:1])[0]:
        raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
    length = struct.unpack(">I", meta[1:])[0]
    if length > MAX_RECEIVE_MESSAGE_LENGTH:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"message of {length} bytes is larger than the limit of {MAX_RECEIVE_MESSAGE_LENGTH}",
        )
    data = await stream.recv_data(length)
    if len(data) != length:
        raise GRPCError(Status.INTERNAL, "message ended before its announced length")
    return codec.decode(data, message_type)


def install() -> None:
    """Make grpclib's servers and clients in this process use the bounded reader."""
    for module in (grpclib.stream, grpclib.server, grpclib.client):
        module.recv_message = _bounded_recv_message  # type: ignore[attr-defined]


install()
