"""Trust bundles: X.509 authorities, JWT authorities, SPIFFE bundles (JWKS) and bundle maps."""

from spiffed.bundle.errors import BundleError
from spiffed.bundle.jwt import JwtAuthority, JwtBundle, JwtBundleSource
from spiffed.bundle.x509 import X509Bundle, X509BundleSource

__all__ = [
    "BundleError",
    "JwtAuthority",
    "JwtBundle",
    "JwtBundleSource",
    "X509Bundle",
    "X509BundleSource",
]
