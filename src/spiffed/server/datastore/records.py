"""The records the datastore stores and the filters it understands."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = [
    "AttestedNode",
    "Bundle",
    "BundleDeleteMode",
    "CAJournal",
    "Event",
    "EventKind",
    "FederationRelationship",
    "JoinToken",
    "MatchBehavior",
    "Page",
    "RegistrationEntry",
    "Selector",
    "SelectorFilter",
    "TrustDomainFilter",
]


@dataclass(frozen=True, slots=True, order=True)
class Selector:
    """One ``type:value`` selector."""

    type: str
    value: str

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"


class MatchBehavior(enum.Enum):
    """How a set given in a filter is compared with a record's set (SPIRE's match modes)."""

    EXACT = "exact"  # the record's set equals the given set
    SUBSET = "subset"  # the record's set is a subset of the given set
    SUPERSET = "superset"  # the record's set contains the given set
    ANY = "any"  # the sets share at least one member


@dataclass(frozen=True, slots=True)
class SelectorFilter:
    """Filter records by their selectors."""

    selectors: tuple[Selector, ...]
    match: MatchBehavior = MatchBehavior.EXACT


@dataclass(frozen=True, slots=True)
class TrustDomainFilter:
    """Filter entries by the trust domains they federate with."""

    trust_domains: tuple[str, ...]
    match: MatchBehavior = MatchBehavior.EXACT


@dataclass(frozen=True, slots=True)
class RegistrationEntry:
    """A registration entry. ``selectors`` is sorted and free of duplicates once stored.

    ``expires_at`` and ``created_at`` are epoch seconds (0 = no expiry); a TTL of 0 means the
    server's default. ``id`` empty on create means "generate a UUID".
    """

    spiffe_id: str
    parent_id: str
    selectors: tuple[Selector, ...]
    id: str = ""
    x509_svid_ttl: int = 0
    jwt_svid_ttl: int = 0
    federates_with: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    admin: bool = False
    downstream: bool = False
    expires_at: int = 0
    hint: str = ""
    store_svid: bool = False
    revision_number: int = 0
    created_at: int = 0


@dataclass(frozen=True, slots=True)
class AttestedNode:
    """An attested agent. An empty ``cert_serial_number`` means the node is banned."""

    spiffe_id: str
    attestation_data_type: str = ""
    cert_serial_number: str = ""
    cert_not_after: int = 0
    new_cert_serial_number: str = ""
    new_cert_not_after: int = 0
    can_reattest: bool = False
    agent_version: str = ""
    selectors: tuple[Selector, ...] = ()

    @property
    def banned(self) -> bool:
        """True when both serial numbers are blank (SPIRE's definition of a ban)."""
        return self.cert_serial_number == "" and self.new_cert_serial_number == ""


@dataclass(frozen=True, slots=True)
class JoinToken:
    """A one-time join token and its expiry (epoch seconds)."""

    token: str
    expiry: int


@dataclass(frozen=True, slots=True)
class Bundle:
    """A trust domain's bundle as opaque bytes (the bundle layer owns the format)."""

    trust_domain: str
    data: bytes


class BundleDeleteMode(enum.Enum):
    """What happens to entries federating with a deleted bundle (SPIRE's modes)."""

    RESTRICT = "restrict"  # refuse while entries federate with it
    DISSOCIATE = "dissociate"  # remove the trust domain from those entries
    DELETE = "delete"  # delete those entries


@dataclass(frozen=True, slots=True)
class FederationRelationship:
    """A federation relationship with a foreign trust domain.

    ``profile`` is ``https_web`` or ``https_spiffe`` (which needs ``endpoint_spiffe_id``).
    ``trust_domain_bundle``, when given on create/update, is stored as that trust domain's
    bundle; on reads it is the stored bundle, if any.
    """

    trust_domain: str
    bundle_endpoint_url: str
    profile: str
    endpoint_spiffe_id: str = ""
    trust_domain_bundle: bytes | None = None


@dataclass(frozen=True, slots=True)
class CAJournal:
    """An opaque CA journal. ``id`` 0 on set means "create a new one".

    ``expires_at`` is when the last authority in it expires; pruning uses it.
    """

    active_x509_authority_id: str
    data: bytes
    expires_at: int = 0
    id: int = 0


class EventKind(enum.Enum):
    """What kind of record an event is about."""

    ENTRY = "entry"
    NODE = "node"


@dataclass(frozen=True, slots=True)
class Event:
    """One change: record ``record_id`` (entry ID or node SPIFFE ID) of ``kind`` changed."""

    id: int
    kind: EventKind
    record_id: str
    created_at: int


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list: ``next_token`` is empty when there is nothing more."""

    items: tuple[T, ...] = field(default_factory=tuple)
    next_token: str = ""
