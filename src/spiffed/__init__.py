"""spiffed: a SPIFFE workload-identity runtime (server, agent and library), compatible with SPIRE.

Implements the SPIFFE standards at spiffe/spiffe commit 665a28f3253ecdce59f26f3ef29c0d6408b37c3d.
"""

__version__ = "0.1.0.dev0"

SPIFFE_SPEC_COMMIT = "665a28f3253ecdce59f26f3ef29c0d6408b37c3d"
