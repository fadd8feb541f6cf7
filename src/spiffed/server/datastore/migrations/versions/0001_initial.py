"""Initial schema: entries, selectors, DNS names, bundles, nodes, tokens, journals, events.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

from spiffed.server.datastore import schema

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The first revision creates exactly the tables of schema.py at the time it was written.
# Later revisions must spell out their changes with op.add_column etc., never via schema.py.
_TABLES = (
    schema.registered_entries,
    schema.selectors,
    schema.dns_names,
    schema.bundles,
    schema.federated_entries,
    schema.attested_nodes,
    schema.node_selectors,
    schema.join_tokens,
    schema.federated_trust_domains,
    schema.ca_journals,
    schema.events,
)


def upgrade() -> None:
    """Create every table."""
    bind = op.get_bind()
    for table in _TABLES:
        table.create(bind)


def downgrade() -> None:
    """Drop every table."""
    bind = op.get_bind()
    for table in reversed(_TABLES):
        table.drop(bind)
