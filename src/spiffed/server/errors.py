"""The error server layers raise when a request cannot be honoured.

It carries the gRPC status SPIRE returns for the same failure, so the API layer passes it
to the client unchanged, with a message a person can act on.
"""

from __future__ import annotations

from grpclib.const import Status

__all__ = ["ServerError"]


class ServerError(Exception):
    """A refused request: ``status`` is the gRPC code, ``message`` says what was wrong."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"{self.status.name}: {self.message}"
