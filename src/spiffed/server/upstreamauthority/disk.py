"""The ``disk`` upstream authority: a CA certificate and key in PEM files.

As SPIRE's: without ``bundle_file_path`` the certificate must be a single self-signed
root, which is also the bundle; with it, ``cert_file_path`` holds the upstream CA and the
intermediates up to the roots in ``bundle_file_path``. The files are read again on every
mint, so a rotated upstream CA is picked up without a restart; if they cannot be read, the
last good copy is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification

from spiffed.keys import PrivateKey, PublicKey
from spiffed.server.upstreamauthority import UpstreamAuthorityError
from spiffed.spiffeid import TrustDomain
from spiffed.svid.x509_issue import X509IssueError, create_intermediate_ca

__all__ = ["DiskUpstreamAuthority"]

_KNOWN_OPTIONS = {"cert_file_path", "key_file_path", "bundle_file_path"}


def _err(message: str) -> UpstreamAuthorityError:
    return UpstreamAuthorityError(f'UpstreamAuthority "disk": {message}')


class _Loaded:
    def __init__(
        self,
        key: PrivateKey,
        chain: list[x509.Certificate],
        roots: list[x509.Certificate],
    ) -> None:
        self.key = key
        self.chain = chain  # upstream CA first, then intermediates (not the roots)
        self.roots = roots


class DiskUpstreamAuthority:
    """Mints the server's intermediate CAs with a CA kept on disk."""

    def __init__(self, cert_file: str, key_file: str, bundle_file: str | None = None) -> None:
        self._cert_file = Path(cert_file)
        self._key_file = Path(key_file)
        self._bundle_file = Path(bundle_file) if bundle_file else None
        self._loaded = self._load()

    @classmethod
    def from_config(cls, options: Mapping[str, object]) -> DiskUpstreamAuthority:
        """Build from the ``plugin_data`` of ``UpstreamAuthority "disk"``."""
        unknown = sorted(set(options) - _KNOWN_OPTIONS)
        if unknown:
            raise _err(f"unknown option {unknown[0]!r}")
        cert, key = options.get("cert_file_path"), options.get("key_file_path")
        bundle = options.get("bundle_file_path")
        if not isinstance(cert, str) or not cert:
            raise _err("cert_file_path is required")
        if not isinstance(key, str) or not key:
            raise _err("key_file_path is required")
        if bundle is not None and not isinstance(bundle, str):
            raise _err("bundle_file_path must be a string")
        return cls(cert, key, bundle or None)

    def _load(self) -> _Loaded:
        try:
            key = serialization.load_pem_private_key(self._key_file.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise _err(f"unable to load upstream CA key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise _err("unable to load upstream CA key: unsupported key type")
        try:
            certs = x509.load_pem_x509_certificates(self._cert_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise _err(f"unable to load upstream CA cert: {exc}") from None
        if self._bundle_file is None:
            if len(certs) != 1:
                raise _err("with no bundle_file_path configured only self-signed CAs are supported")
            roots, chain = list(certs), []
        else:
            try:
                roots = x509.load_pem_x509_certificates(self._bundle_file.read_bytes())
            except (OSError, ValueError) as exc:
                raise _err(f"unable to load upstream CA bundle: {exc}") from None
            chain = list(certs)
        if key.public_key() != certs[0].public_key():
            raise _err("unable to load upstream CA: certificate and private key do not match")
        if not self._validates(certs[0], chain[1:], roots):
            raise _err(
                "unable to load upstream CA: certificate cannot be validated with the provided "
                "bundle or is not self-signed"
            )
        return _Loaded(key, chain, roots)

    @staticmethod
    def _validates(
        ca: x509.Certificate, intermediates: list[x509.Certificate], roots: list[x509.Certificate]
    ) -> bool:
        if ca in roots:
            return True
        policy = verification.ExtensionPolicy.permit_all().require_present(
            x509.BasicConstraints, verification.Criticality.AGNOSTIC, None
        )
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(roots))
            .extension_policies(
                ca_policy=policy, ee_policy=verification.ExtensionPolicy.permit_all()
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(ca, intermediates)
        except verification.VerificationError:
            return False
        return True

    def _current(self) -> _Loaded:
        # Unreadable files: keep using the last good credentials (as SPIRE does).
        with contextlib.suppress(UpstreamAuthorityError):
            self._loaded = self._load()
        return self._loaded

    def mint_x509_ca(
        self, trust_domain: TrustDomain, public_key: PublicKey, ttl: timedelta, now: datetime
    ) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
        """An intermediate CA for the server's key, and the upstream chain above it."""
        loaded = self._current()
        try:
            cert = create_intermediate_ca(
                trust_domain,
                public_key,
                signer_cert=loaded.chain[0] if loaded.chain else loaded.roots[0],
                signer_key=loaded.key,
                ttl=ttl,
                now=now,
            )
        except X509IssueError as exc:
            raise _err(f"unable to sign the server CA: {exc}") from None
        return cert, tuple(loaded.chain)

    def roots(self) -> Sequence[x509.Certificate]:
        """The upstream roots, for the trust domain's bundle."""
        return list(self._loaded.roots)
