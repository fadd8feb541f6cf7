"""Alembic environment: runs on the connection the datastore hands over (never a URL)."""

from __future__ import annotations

from alembic import context

_connection = context.config.attributes["connection"]
context.configure(connection=_connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
