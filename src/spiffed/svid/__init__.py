"""SVIDs: X509-SVIDs (parse, verify, issue) and JWT-SVIDs (sign, validate)."""

from spiffed.svid.jwt import JwtSvid, JwtSvidError, sign_jwt_svid
from spiffed.svid.x509 import X509Svid, X509SvidError, check_leaf, verify_chain

__all__ = [
    "JwtSvid",
    "JwtSvidError",
    "X509Svid",
    "X509SvidError",
    "check_leaf",
    "sign_jwt_svid",
    "verify_chain",
]
