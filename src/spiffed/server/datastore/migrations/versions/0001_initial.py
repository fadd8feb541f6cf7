"""Initial schema: entries, selectors, DNS names, bundles, nodes, tokens, journals, events.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The tables as they were at this revision (a frozen copy: never import schema.py here).
METADATA = sa.MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

registered_entries = sa.Table(
    "registered_entries",
    METADATA,
    sa.Column("id", PK, primary_key=True, autoincrement=True),
    sa.Column("entry_id", sa.String(255), nullable=False, unique=True),
    sa.Column("spiffe_id", sa.Text, nullable=False, index=True),
    sa.Column("parent_id", sa.Text, nullable=False, index=True),
    sa.Column("similarity_key", sa.String(64), nullable=False, unique=True),
    sa.Column("x509_svid_ttl", sa.Integer, nullable=False),
    sa.Column("jwt_svid_ttl", sa.Integer, nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("downstream", sa.Boolean, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("hint", sa.Text, nullable=False, index=True),
    sa.Column("store_svid", sa.Boolean, nullable=False),
    sa.Column("revision_number", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

selectors = sa.Table(
    "selectors",
    METADATA,
    sa.Column("id", PK, primary_key=True, autoincrement=True),
    sa.Column(
        "registered_entry_id",
        PK,
        sa.ForeignKey("registered_entries.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("type", sa.String(255), nullable=False),
    sa.Column("value", sa.Text, nullable=False),
    sa.UniqueConstraint("registered_entry_id", "type", "value"),
    sa.Index("ix_selectors_type_value", "type", "value"),
)

dns_names = sa.Table(
    "dns_names",
    METADATA,
    sa.Column("id", PK, primary_key=True, autoincrement=True),
    sa.Column(
        "registered_entry_id",
        PK,
        sa.ForeignKey("registered_entries.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("value", sa.String(255), nullable=False),
)

bundles = sa.Table(
    "bundles",
    METADATA,
    sa.Column("id", PK, primary_key=True, autoincrement=True),
    sa.Column("trust_domain", sa.String(255), nullable=False, unique=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

federated_entries = sa.Table(
    "federated_registration_entries",
    METADATA,
    sa.Column("bundle_id", PK, sa.ForeignKey("bundles.id", ondelete="CASCADE"), primary_key=True),
    sa.Column(
        "registered_entry_id",
        PK,
        sa.ForeignKey("registered_entries.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
)

attested_nodes = sa.Table(
    "attested_node_entries",
    METADATA,
    sa.Column("id", PK, primary_key=True, autoincrement=True),
    sa.Column("spiffe_id", sa.Text, nullable=False, unique=True),
    sa.Column("data_type", sa.String(255), nullable=False, index=True),
    sa.Column("serial_number", sa.String(255), nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("new_serial_number", sa.String(255), nullable=False),
    sa.Column("new_expires_at", sa.BigInteger, nullable=False),
    sa.Column("can_reattest", sa.Boolean, nullable=False),
    sa.Column("agent_version", sa.String(255), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

node_selectors = sa.Table(
    "node_resolver_map_entries",
    METADATA,
    sa.Column("id", PK, primary_key=True, autoincrement=True),
    sa.Column("spiffe_id", sa.Text, nullable=False),
    sa.Column("type", sa.String(255), nullable=False),
    sa.Column("value", sa.Text, nullable=False),
    sa.UniqueConstraint("spiffe_id", "type", "value"),
    sa.Index("ix_node_selectors_type_value", "type", "value"),
)

join_tokens = sa.Table(
    "join_tokens",
    METADATA,
    sa.Column("token", sa.String(255), primary_key=True),
    sa.Column("expiry", sa.BigInteger, nullable=False, index=True),
)

federated_trust_domains = sa.Table(
    "federated_trust_domains",
    METADATA,
    sa.Column("id", PK, primary_key=True, autoincrement=True),
    sa.Column("trust_domain", sa.String(255), nullable=False, unique=True),
    sa.Column("bundle_endpoint_url", sa.Text, nullable=False),
    sa.Column("bundle_endpoint_profile", sa.String(32), nullable=False),
    sa.Column("endpoint_spiffe_id", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

ca_journals = sa.Table(
    "ca_journals",
    METADATA,
    sa.Column("id", PK, primary_key=True, autoincrement=True),
    sa.Column("active_x509_authority_id", sa.String(255), nullable=False, index=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

events = sa.Table(
    "events",
    METADATA,
    sa.Column("id", PK, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("record_id", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False, index=True),
    sqlite_autoincrement=True,  # never reuse an ID after pruning
)


def upgrade() -> None:
    """Create every table."""
    METADATA.create_all(op.get_bind())


def downgrade() -> None:
    """Drop every table."""
    METADATA.drop_all(op.get_bind())
