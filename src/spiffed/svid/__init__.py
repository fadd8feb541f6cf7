"""SVIDs: X509-SVIDs (parse, verify, issue)."""

from spiffed.svid.x509 import X509Svid, X509SvidError, check_leaf, verify_chain

__all__ = ["X509Svid", "X509SvidError", "check_leaf", "verify_chain"]
