"""Errors the datastore raises: one base type, one subclass per kind of failure."""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
    "DataStoreError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "SchemaVersionError",
]


class DataStoreError(Exception):
    """Base of every datastore error; the message names the record and the field."""


class NotFoundError(DataStoreError):
    """The record asked for does not exist."""


class AlreadyExistsError(DataStoreError):
    """A record with the same identity exists already; ``existing`` is it, when known."""

    def __init__(self, message: str, existing: object | None = None) -> None:
        super().__init__(message)
        self.existing = existing


class InvalidArgumentError(DataStoreError):
    """The input is malformed; nothing was written."""


class FailedPreconditionError(DataStoreError):
    """The operation is refused in the current state (e.g. a bundle still in use)."""


class SchemaVersionError(DataStoreError):
    """The database schema is newer than this program, or older while migration is off."""
