"""Trust bundles: X.509 authorities, JWT authorities, SPIFFE bundles (JWKS) and bundle maps."""

from spiffed.bundle.errors import BundleError
from spiffed.bundle.jwk import public_key_from_jwk, public_key_to_jwk
from spiffed.bundle.jwt import JwtAuthority, JwtBundle, JwtBundleSource
from spiffed.bundle.set import BundleSet, marshal_bundle_map, parse_bundle_map
from spiffed.bundle.spiffe import USE_JWT_SVID, USE_WIT_SVID, USE_X509_SVID, SpiffeBundle
from spiffed.bundle.x509 import X509Bundle, X509BundleSource, split_der_certificates

__all__ = [
    "BundleError",
    "BundleSet",
    "JwtAuthority",
    "JwtBundle",
    "JwtBundleSource",
    "SpiffeBundle",
    "USE_JWT_SVID",
    "USE_WIT_SVID",
    "USE_X509_SVID",
    "X509Bundle",
    "X509BundleSource",
    "marshal_bundle_map",
    "parse_bundle_map",
    "public_key_from_jwk",
    "public_key_to_jwk",
    "split_der_certificates",
]
