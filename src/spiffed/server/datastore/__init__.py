"""The server's SQL datastore (SQLAlchemy Core; SQLite in ``data_dir`` or PostgreSQL).

Entries, attested nodes, join tokens, bundles, federation relationships, CA journals, and a
change-event log every entry and node write appends to in the same transaction. See
``docs/datastore.md``.
"""

from ._bundles import FEDERATION_FIELDS
from ._entries import ENTRY_FIELDS, EntryFilter, EntryResult
from ._nodes import NODE_FIELDS, NodeFilter
from .errors import (
    AlreadyExistsError,
    DataStoreError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    SchemaVersionError,
)
from .records import (
    AttestedNode,
    Bundle,
    BundleDeleteMode,
    CAJournal,
    Event,
    EventKind,
    FederationRelationship,
    JoinToken,
    MatchBehavior,
    Page,
    RegistrationEntry,
    Selector,
    SelectorFilter,
    TrustDomainFilter,
)
from .store import DEFAULT_SQLITE_NAME, DataStore, open_datastore, postgres_url

__all__ = [
    "DEFAULT_SQLITE_NAME",
    "ENTRY_FIELDS",
    "FEDERATION_FIELDS",
    "NODE_FIELDS",
    "AlreadyExistsError",
    "AttestedNode",
    "Bundle",
    "BundleDeleteMode",
    "CAJournal",
    "DataStore",
    "DataStoreError",
    "EntryFilter",
    "EntryResult",
    "Event",
    "EventKind",
    "FailedPreconditionError",
    "FederationRelationship",
    "InvalidArgumentError",
    "JoinToken",
    "MatchBehavior",
    "NodeFilter",
    "NotFoundError",
    "Page",
    "RegistrationEntry",
    "SchemaVersionError",
    "Selector",
    "SelectorFilter",
    "TrustDomainFilter",
    "open_datastore",
    "postgres_url",
]
