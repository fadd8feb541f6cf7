"""Upstream authorities: a CA above the server's own (SPIRE's ``UpstreamAuthority`` plugins).

With one configured, the server's X.509 CA is an intermediate minted by it, SVIDs carry
that intermediate (and any upstream intermediates), and the bundle holds the upstream roots.
"""

from __future__ import annotations

__all__ = ["UpstreamAuthorityError"]


class UpstreamAuthorityError(Exception):
    """The upstream authority cannot be loaded or cannot mint; the message says why."""
