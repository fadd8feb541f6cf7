"""Agent half of ``x509pop``: sends the node's certificate chain and proves it holds the key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from spiffed.agent.nodeattestor import AgentAttestationError
from spiffed.nodeattestation import x509pop as proto

__all__ = ["X509PopAgentAttestor"]

_KNOWN_OPTIONS = {"private_key_path", "certificate_path", "intermediates_path"}


class X509PopAgentAttestor:
    """Holds the node's key and chain (leaf first)."""

    name = proto.PLUGIN_NAME

    def __init__(
        self,
        private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
        chain: Sequence[x509.Certificate],
    ) -> None:
        if not chain:
            raise AgentAttestationError("x509pop: no certificate to attest with")
        if private_key.public_key() != chain[0].public_key():
            raise AgentAttestationError("x509pop: the private key does not match the certificate")
        self._key = private_key
        self._chain = tuple(chain)

    @classmethod
    def from_config(cls, options: Mapping[str, object]) -> X509PopAgentAttestor:
        """Load the key and certificates named by SPIRE's agent x509pop ``plugin_data``."""
        unknown = sorted(set(options) - _KNOWN_OPTIONS)
        if unknown:
            raise AgentAttestationError(f'NodeAttestor "x509pop": unknown option {unknown[0]!r}')
        paths: dict[str, str] = {}
        for key in ("private_key_path", "certificate_path"):
            value = options.get(key)
            if not isinstance(value, str) or not value:
                raise AgentAttestationError(f'NodeAttestor "x509pop": {key} is required')
            paths[key] = value
        try:
            key_obj = serialization.load_pem_private_key(
                Path(paths["private_key_path"]).read_bytes(), password=None
            )
            chain = x509.load_pem_x509_certificates(Path(paths["certificate_path"]).read_bytes())
            inter = options.get("intermediates_path")
            if isinstance(inter, str) and inter:
                chain += x509.load_pem_x509_certificates(Path(inter).read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            raise AgentAttestationError(f'NodeAttestor "x509pop": {exc}') from None
        if not isinstance(key_obj, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise AgentAttestationError('NodeAttestor "x509pop": unsupported private key type')
        return cls(key_obj, chain)

    def payload(self) -> bytes:
        """The certificate chain, as SPIRE's x509pop attestation data."""
        return proto.encode_attestation_data(self._chain)

    def respond(self, challenge: bytes) -> bytes:
        """Sign the server's nonce combined with one of our own."""
        try:
            return proto.calculate_response(self._key, challenge)
        except proto.X509PopError as exc:
            raise AgentAttestationError(f"x509pop: {exc}") from None
