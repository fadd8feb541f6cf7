"""``spire.api.server.logger.v1.Logger``: read and change the server's log level at runtime.

SPIRE's levels map onto Python's: PANIC and FATAL are CRITICAL, WARN is WARNING and TRACE is
level 5 (below DEBUG).
"""

from __future__ import annotations

import logging
from typing import Any

from grpclib.const import Status
from grpclib.server import Stream

from spiffed._proto.spire.api.server.logger.v1 import logger_grpc
from spiffed._proto.spire.api.types import logger_pb2
from spiffed.server.api.convert import rpc
from spiffed.server.errors import ServerError

__all__ = ["TRACE", "LoggerService", "from_python_level", "to_python_level"]

TRACE = 5
"""Python level used for SPIRE's TRACE."""

_TO_PY: dict[int, int] = {
    logger_pb2.PANIC: logging.CRITICAL,
    logger_pb2.FATAL: logging.CRITICAL,
    logger_pb2.ERROR: logging.ERROR,
    logger_pb2.WARN: logging.WARNING,
    logger_pb2.INFO: logging.INFO,
    logger_pb2.DEBUG: logging.DEBUG,
    logger_pb2.TRACE: TRACE,
}


def to_python_level(level: int) -> int:
    """The Python level for a SPIRE ``LogLevel``; ServerError for UNSPECIFIED or unknown."""
    if level == logger_pb2.UNSPECIFIED:
        raise ServerError(Status.INVALID_ARGUMENT, "newLevel value cannot be LogLevel_UNSPECIFIED")
    if level not in _TO_PY:
        raise ServerError(Status.INVALID_ARGUMENT, f"unsupported log level {level}")
    return _TO_PY[level]


def from_python_level(level: int) -> logger_pb2.LogLevel.ValueType:
    """The SPIRE ``LogLevel`` a Python level shows as."""
    if level <= TRACE:
        return logger_pb2.TRACE
    if level <= logging.DEBUG:
        return logger_pb2.DEBUG
    if level <= logging.INFO:
        return logger_pb2.INFO
    if level <= logging.WARNING:
        return logger_pb2.WARN
    if level <= logging.ERROR:
        return logger_pb2.ERROR
    return logger_pb2.FATAL


class LoggerService(logger_grpc.LoggerBase):
    """Controls the level of one Python logger (the root logger by default)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        logging.addLevelName(TRACE, "TRACE")
        self._logger = logger or logging.getLogger()
        self._launch = self._logger.getEffectiveLevel()

    def _state(self) -> logger_pb2.Logger:
        return logger_pb2.Logger(
            current_level=from_python_level(self._logger.getEffectiveLevel()),
            launch_level=from_python_level(self._launch),
        )

    @rpc
    async def GetLogger(self, stream: Stream[Any, Any]) -> None:
        """The current and launch levels."""
        await stream.recv_message()
        await stream.send_message(self._state())

    @rpc
    async def SetLogLevel(self, stream: Stream[Any, Any]) -> None:
        """Set the level; UNSPECIFIED is InvalidArgument."""
        req = await stream.recv_message()
        assert req is not None
        self._logger.setLevel(to_python_level(req.new_level))
        await stream.send_message(self._state())

    @rpc
    async def ResetLogLevel(self, stream: Stream[Any, Any]) -> None:
        """Go back to the level the server was launched with."""
        await stream.recv_message()
        self._logger.setLevel(self._launch)
        await stream.send_message(self._state())
