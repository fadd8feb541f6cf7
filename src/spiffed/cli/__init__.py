"""Command-line entry points: ``spiffed``, ``spiffed-server`` and ``spiffed-agent``."""
