"""Server half of ``x509pop``: proof of possession of a certificate from a configured PKI.

Mode ``external_pki`` (the default): the chain must lead to one of the configured CA
certificates. Agent ID ``spiffe://<td>/spire/agent/x509pop/<sha1 fingerprint>`` unless
``agent_path_template`` says otherwise; selectors as SPIRE's (``x509pop:subject:cn:...``,
``x509pop:ca:fingerprint:...``, ``x509pop:serialnumber:...``, ``x509pop:san:<k>:<v>``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import verification
from grpclib.const import Status

from spiffed.nodeattestation import x509pop as proto
from spiffed.selector import Selector
from spiffed.server.nodeattestor import AttestationError, AttestResult, Challenger
from spiffed.spiffeid import TrustDomain

__all__ = ["X509PopAttestor"]

DEFAULT_MAX_INTERMEDIATES = 4
DEFAULT_MAX_RSA_KEY_SIZE = 8192
_KNOWN_OPTIONS = {
    "mode",
    "ca_bundle_path",
    "ca_bundle_paths",
    "agent_path_template",
    "max_intermediates",
    "max_rsa_key_size",
    "verify_client_ip",
    "svid_prefix",
    "spiffe_prefix",
}


def _config_error(message: str) -> AttestationError:
    return AttestationError(Status.INVALID_ARGUMENT, f'NodeAttestor "x509pop": {message}')


def _load_pem_bundle(path: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise _config_error(f"unable to load trust bundle {path!r}: {exc}") from None
    return certs


class X509PopAttestor:
    """Server-side x509pop attestor configured from ``plugin_data``."""

    name = proto.PLUGIN_NAME

    def __init__(
        self,
        trust_domain: TrustDomain,
        roots: Sequence[x509.Certificate],
        *,
        template: proto.AgentPathTemplate | None = None,
        max_intermediates: int = DEFAULT_MAX_INTERMEDIATES,
        max_rsa_key_size: int = DEFAULT_MAX_RSA_KEY_SIZE,
    ) -> None:
        if not roots:
            raise _config_error("no CA certificates to verify agents against")
        self._td = trust_domain
        self._store = verification.Store(list(roots))
        self._template = template or proto.AgentPathTemplate()
        self._max_intermediates = max_intermediates
        self._max_rsa_key_size = max_rsa_key_size

    @classmethod
    def from_config(
        cls, trust_domain: TrustDomain, options: Mapping[str, object]
    ) -> X509PopAttestor:
        """Build from the ``plugin_data`` keys SPIRE's x509pop accepts."""
        unknown = sorted(set(options) - _KNOWN_OPTIONS)
        if unknown:
            raise _config_error(f"unknown option {unknown[0]!r}")
        mode = options.get("mode", "external_pki")
        if mode == "spiffe":
            raise _config_error('mode "spiffe" is not supported yet; use "external_pki"')
        if mode != "external_pki":
            raise _config_error("mode can only be either spiffe or external_pki")
        if options.get("verify_client_ip"):
            raise _config_error("verify_client_ip is not supported yet")
        one, many = options.get("ca_bundle_path"), options.get("ca_bundle_paths")
        if one and many:
            raise _config_error(
                "only one of ca_bundle_path or ca_bundle_paths can be configured, not both"
            )
        if one:
            if not isinstance(one, str):
                raise _config_error("ca_bundle_path must be a string")
            paths = [one]
        elif many:
            if not isinstance(many, list) or not all(isinstance(p, str) for p in many):
                raise _config_error("ca_bundle_paths must be a list of strings")
            paths = list(many)
        else:
            raise _config_error("one of ca_bundle_path or ca_bundle_paths must be configured")
        roots = [cert for p in paths for cert in _load_pem_bundle(p)]
        template_text = options.get("agent_path_template", proto.DEFAULT_TEMPLATE)
        if not isinstance(template_text, str):
            raise _config_error("agent_path_template must be a string")
        try:
            template = proto.AgentPathTemplate(template_text)
        except proto.X509PopError as exc:
            raise _config_error(str(exc)) from None
        limits = {}
        for key, default in (
            ("max_intermediates", DEFAULT_MAX_INTERMEDIATES),
            ("max_rsa_key_size", DEFAULT_MAX_RSA_KEY_SIZE),
        ):
            value = options.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise _config_error(f"{key} must be greater than 0")
            limits[key] = value
        return cls(
            trust_domain,
            roots,
            template=template,
            max_intermediates=limits["max_intermediates"],
            max_rsa_key_size=limits["max_rsa_key_size"],
        )

    def _parse(self, der: bytes, what: str) -> x509.Certificate:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise AttestationError(
                Status.INVALID_ARGUMENT, f"unable to parse {what}: {exc}"
            ) from None
        key = cert.public_key()
        if isinstance(key, rsa.RSAPublicKey) and key.key_size > self._max_rsa_key_size:
            raise AttestationError(Status.INVALID_ARGUMENT, f"{what} key size too large")
        return cert

    def _verify(
        self, leaf: x509.Certificate, intermediates: list[x509.Certificate], now: datetime
    ) -> list[x509.Certificate]:
        ca_policy = verification.ExtensionPolicy.permit_all().require_present(
            x509.BasicConstraints, verification.Criticality.AGNOSTIC, None
        )
        verifier = (
            verification.PolicyBuilder()
            .store(self._store)
            .time(now)
            .max_chain_depth(self._max_intermediates + 1)
            .extension_policies(
                ca_policy=ca_policy, ee_policy=verification.ExtensionPolicy.permit_all()
            )
            .build_client_verifier()
        )
        try:
            return list(verifier.verify(leaf, intermediates).chain)
        except verification.VerificationError as exc:
            raise AttestationError(
                Status.PERMISSION_DENIED, f"certificate verification failed: {exc}"
            ) from None

    def _san_selectors(self, leaf: x509.Certificate) -> dict[str, str]:
        prefix = f"x509pop://{self._td.name}/"
        out: dict[str, str] = {}
        try:
            sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return out
        for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(prefix):
                key, sep, value = uri[len(prefix) :].strip("/").partition("/")
                if sep and key and value:
                    out[key] = value
        return out

    async def attest(self, payload: bytes, challenge: Challenger) -> AttestResult:
        """Verify the chain, challenge the key, and derive the agent ID and selectors."""
        try:
            ders = proto.decode_attestation_data(
                payload, max_certificates=self._max_intermediates + 1
            )
        except proto.X509PopError as exc:
            raise AttestationError(Status.INVALID_ARGUMENT, str(exc)) from None
        leaf = self._parse(ders[0], "leaf certificate")
        intermediates = [
            self._parse(d, f"intermediate certificate {i}") for i, d in enumerate(ders[1:])
        ]
        chain = self._verify(leaf, intermediates, datetime.now(UTC))
        try:
            challenge_bytes = proto.generate_challenge(leaf)
        except proto.X509PopError as exc:
            raise AttestationError(
                Status.INTERNAL, f"unable to generate challenge: {exc}"
            ) from None
        answer = await challenge(challenge_bytes)
        try:
            proto.verify_response(leaf.public_key(), challenge_bytes, answer)
        except proto.X509PopError as exc:
            raise AttestationError(
                Status.PERMISSION_DENIED, f"challenge response verification failed: {exc}"
            ) from None
        sans = self._san_selectors(leaf)
        try:
            agent_id = self._template.agent_id(self._td, leaf, san_selectors=sans)
        except proto.X509PopError as exc:
            raise AttestationError(Status.INTERNAL, f"failed to make spiffe id: {exc}") from None
        values: list[str] = []
        cns = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        if cns and cns[0].value:
            values.append(f"subject:cn:{cns[0].value!s}")
        seen: set[str] = set()
        for cert in chain[1:]:
            fp = proto.fingerprint(cert)
            if fp not in seen:
                seen.add(fp)
                values.append(f"ca:fingerprint:{fp}")
        values.append(f"serialnumber:{proto.serial_number_hex(leaf)}")
        values.extend(f"san:{k}:{v}" for k, v in sorted(sans.items()))
        return AttestResult(
            agent_id=agent_id,
            selectors=tuple(Selector(self.name, v) for v in values),
            can_reattest=True,
        )
