"""Alembic migrations of the datastore schema, applied by :mod:`spiffed.server.datastore`."""
