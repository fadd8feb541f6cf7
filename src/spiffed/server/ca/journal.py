"""The CA journal: the server's X.509 CA and JWT key slots, persisted in the datastore.

Each kind of authority has two slots, ``A`` and ``B`` (key manager IDs ``x509-CA-A`` /
``x509-CA-B`` and ``JWT-Signer-A`` / ``JWT-Signer-B``, as SPIRE's). A slot is PREPARED
(published in the bundle, not yet signing), ACTIVE (signing) or OLD (replaced, kept until
its last SVID expires). The journal is stored as versioned JSON so that a restart, or
another server sharing the database, can pick up exactly where the CA was.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["JournalError", "Journal", "JwtSlot", "SlotStatus", "X509Slot"]

FORMAT_VERSION = 1


class JournalError(ValueError):
    """A stored journal cannot be read; the message says which part is wrong."""


class SlotStatus(enum.Enum):
    """The life stage of one authority slot."""

    PREPARED = "prepared"
    ACTIVE = "active"
    OLD = "old"


def _ts(value: datetime) -> int:
    return int(value.timestamp())


def _dt(value: object, what: str) -> datetime:
    if not isinstance(value, int) or isinstance(value, bool):
        raise JournalError(f"{what} must be an integer timestamp")
    return datetime.fromtimestamp(value, UTC)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise JournalError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise JournalError(f"{what} is not valid base64") from None


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _cert(value: object, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(_unb64(value, what))
    except ValueError as exc:
        raise JournalError(f"{what} is not a DER certificate: {exc}") from None


def _slot_id(value: object) -> str:
    if value not in ("A", "B"):
        raise JournalError(f"slot must be 'A' or 'B', not {value!r}")
    return str(value)


def _status(value: object) -> SlotStatus:
    try:
        return SlotStatus(value)
    except ValueError:
        raise JournalError(f"unknown slot status {value!r}") from None


@dataclass(frozen=True, slots=True)
class X509Slot:
    """An X.509 CA: its certificate and, under an upstream authority, the chain above it."""

    slot: str
    status: SlotStatus
    certificate: x509.Certificate
    upstream_chain: tuple[x509.Certificate, ...] = ()

    @property
    def key_id(self) -> str:
        """The key manager ID of this slot's private key."""
        return f"x509-CA-{self.slot}"

    @property
    def authority_id(self) -> str:
        """SPIRE's authority ID: the CA certificate's subject key identifier, in hex."""
        try:
            ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            return ski.value.digest.hex()
        except x509.ExtensionNotFound:
            return x509.SubjectKeyIdentifier.from_public_key(
                self.certificate.public_key()
            ).digest.hex()

    @property
    def upstream_authority_id(self) -> str:
        """Subject key ID of the upstream certificate that signed this CA ("" if self-signed)."""
        if not self.upstream_chain:
            return ""
        try:
            aki = self.certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        except x509.ExtensionNotFound:
            return ""
        return aki.value.key_identifier.hex() if aki.value.key_identifier else ""

    @property
    def issued_at(self) -> datetime:
        """When the CA certificate starts to be valid."""
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        """When the CA certificate expires."""
        return self.certificate.not_valid_after_utc

    def to_json(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "status": self.status.value,
            "certificate": _b64(_der(self.certificate)),
            "upstream_chain": [_b64(_der(c)) for c in self.upstream_chain],
        }

    @classmethod
    def from_json(cls, doc: object) -> X509Slot:
        if not isinstance(doc, dict):
            raise JournalError("an X.509 slot must be an object")
        chain = doc.get("upstream_chain", [])
        if not isinstance(chain, list):
            raise JournalError("upstream_chain must be a list")
        return cls(
            slot=_slot_id(doc.get("slot")),
            status=_status(doc.get("status")),
            certificate=_cert(doc.get("certificate"), "X.509 slot certificate"),
            upstream_chain=tuple(_cert(c, "upstream chain certificate") for c in chain),
        )


@dataclass(frozen=True, slots=True)
class JwtSlot:
    """A JWT signing key: its key ID (the authority ID), public key and validity."""

    slot: str
    status: SlotStatus
    kid: str
    public_key_der: bytes
    issued_at: datetime
    not_after: datetime

    @property
    def key_id(self) -> str:
        """The key manager ID of this slot's private key."""
        return f"JWT-Signer-{self.slot}"

    @property
    def authority_id(self) -> str:
        """SPIRE's authority ID for a JWT key: its key ID."""
        return self.kid

    def to_json(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "status": self.status.value,
            "kid": self.kid,
            "public_key": _b64(self.public_key_der),
            "issued_at": _ts(self.issued_at),
            "not_after": _ts(self.not_after),
        }

    @classmethod
    def from_json(cls, doc: object) -> JwtSlot:
        if not isinstance(doc, dict):
            raise JournalError("a JWT slot must be an object")
        kid = doc.get("kid")
        if not isinstance(kid, str) or not kid:
            raise JournalError("a JWT slot needs a non-empty kid")
        return cls(
            slot=_slot_id(doc.get("slot")),
            status=_status(doc.get("status")),
            kid=kid,
            public_key_der=_unb64(doc.get("public_key"), "JWT public key"),
            issued_at=_dt(doc.get("issued_at"), "issued_at"),
            not_after=_dt(doc.get("not_after"), "not_after"),
        )


@dataclass(frozen=True, slots=True)
class Journal:
    """Both kinds of slots; at most one slot per slot ID and kind."""

    x509: tuple[X509Slot, ...] = field(default=())
    jwt: tuple[JwtSlot, ...] = field(default=())

    def __post_init__(self) -> None:
        for kind, slots in (("X.509", self.x509), ("JWT", self.jwt)):
            ids = [s.slot for s in slots]
            if len(ids) != len(set(ids)):
                raise JournalError(f"the journal has two {kind} slots with the same ID")
            if sum(s.status is SlotStatus.ACTIVE for s in slots) > 1:
                raise JournalError(f"the journal has two active {kind} slots")

    def with_x509(self, slot: X509Slot) -> Journal:
        """This journal with ``slot`` put in place of the slot with the same ID."""
        return replace(self, x509=(*[s for s in self.x509 if s.slot != slot.slot], slot))

    def with_jwt(self, slot: JwtSlot) -> Journal:
        """This journal with ``slot`` put in place of the slot with the same ID."""
        return replace(self, jwt=(*[s for s in self.jwt if s.slot != slot.slot], slot))

    def to_bytes(self) -> bytes:
        """Versioned JSON."""
        doc = {
            "version": FORMAT_VERSION,
            "x509": [s.to_json() for s in sorted(self.x509, key=lambda s: s.slot)],
            "jwt": [s.to_json() for s in sorted(self.jwt, key=lambda s: s.slot)],
        }
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Journal:
        """Parse what :meth:`to_bytes` wrote; JournalError for anything else."""
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise JournalError(f"CA journal is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            raise JournalError(f"CA journal is not a version {FORMAT_VERSION} journal")
        x509s, jwts = doc.get("x509", []), doc.get("jwt", [])
        if not isinstance(x509s, list) or not isinstance(jwts, list):
            raise JournalError("CA journal 'x509' and 'jwt' must be lists")
        return cls(
            x509=tuple(X509Slot.from_json(s) for s in x509s),
            jwt=tuple(JwtSlot.from_json(s) for s in jwts),
        )
