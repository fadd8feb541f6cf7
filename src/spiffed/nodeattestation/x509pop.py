"""The ``x509pop`` node attestation protocol, wire-compatible with SPIRE's.

The agent sends its certificate chain (JSON ``{"certificates": [<base64 DER>...]}``, leaf
first). The server checks the chain against its configured CAs and answers with a
challenge: a 32-byte nonce, as ``{"rsa_signature": {"nonce": ...}, "ecdsa_signature": null}``
or the ECDSA equivalent. The agent adds a nonce of its own and signs
``SHA-256(challenge nonce || response nonce)`` with the certificate's key (RSA-PSS with
SHA-256, or raw ECDSA over that digest, sent as big-endian ``r`` and ``s``). Byte strings
travel as standard base64, as Go's encoding/json writes them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from spiffed.spiffeid import SpiffeId, SpiffeIdError, TrustDomain

__all__ = [
    "NONCE_LENGTH",
    "PLUGIN_NAME",
    "AgentPathTemplate",
    "X509PopError",
    "calculate_response",
    "decode_attestation_data",
    "encode_attestation_data",
    "fingerprint",
    "generate_challenge",
    "serial_number_hex",
    "verify_response",
]

PLUGIN_NAME = "x509pop"
NONCE_LENGTH = 32
DEFAULT_TEMPLATE = "/{{ .PluginName }}/{{ .Fingerprint }}"


class X509PopError(ValueError):
    """An x509pop message is malformed or a proof does not verify; the message says which."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise X509PopError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise X509PopError(f"{what} is not valid base64") from None


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise X509PopError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise X509PopError(f"{what} must be a JSON object")
    return doc


def encode_attestation_data(chain: Sequence[x509.Certificate]) -> bytes:
    """The agent's first message: its certificate chain, leaf first."""
    ders = [_b64(c.public_bytes(serialization.Encoding.DER)) for c in chain]
    return json.dumps({"certificates": ders}).encode()


def decode_attestation_data(payload: bytes, *, max_certificates: int) -> list[bytes]:
    """The DER certificates of an attestation payload (not parsed), leaf first."""
    doc = _load_json(payload, "x509pop attestation data")
    certs = doc.get("certificates")
    if not isinstance(certs, list) or not certs:
        raise X509PopError("x509pop attestation data has no certificate to attest")
    if len(certs) > max_certificates:
        raise X509PopError(
            f"x509pop attestation data has {len(certs) - 1} intermediate certificates, "
            f"more than the {max_certificates - 1} allowed"
        )
    return [_unb64(c, f"certificate {i}") for i, c in enumerate(certs)]


def generate_challenge(leaf: x509.Certificate) -> bytes:
    """A fresh challenge for the key in ``leaf`` (which must allow digital signatures)."""
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.digital_signature:
            raise X509PopError("certificate not intended for digital signature use")
    except x509.ExtensionNotFound:
        raise X509PopError("certificate not intended for digital signature use") from None
    nonce = {"nonce": _b64(os.urandom(NONCE_LENGTH))}
    key = leaf.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        doc = {"rsa_signature": nonce, "ecdsa_signature": None}
    elif isinstance(key, ec.EllipticCurvePublicKey):
        doc = {"rsa_signature": None, "ecdsa_signature": nonce}
    else:
        raise X509PopError(f"unsupported public key type {type(key).__name__}")
    return json.dumps(doc).encode()


def _combined(challenge_nonce: bytes, response_nonce: bytes) -> bytes:
    if len(challenge_nonce) != NONCE_LENGTH:
        raise X509PopError("invalid challenge nonce")
    if len(response_nonce) != NONCE_LENGTH:
        raise X509PopError("invalid response nonce")
    return hashlib.sha256(challenge_nonce + response_nonce).digest()


def _challenge_nonce(challenge: Mapping[str, Any], kind: str) -> bytes:
    part = challenge.get(kind)
    if not isinstance(part, dict):
        label = "RSA" if kind == "rsa_signature" else "ECDSA"
        raise X509PopError(f"expecting {label} challenge")
    return _unb64(part.get("nonce"), "challenge nonce")


def calculate_response(
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, challenge: bytes
) -> bytes:
    """The agent's answer to ``challenge``, signed with the certificate's private key."""
    doc = _load_json(challenge, "x509pop challenge")
    mine = os.urandom(NONCE_LENGTH)
    out: dict[str, dict[str, str] | None]
    if isinstance(private_key, rsa.RSAPrivateKey):
        digest = _combined(_challenge_nonce(doc, "rsa_signature"), mine)
        sig = private_key.sign(
            digest,
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH),
            utils.Prehashed(hashes.SHA256()),
        )
        out = {
            "rsa_signature": {"nonce": _b64(mine), "signature": _b64(sig)},
            "ecdsa_signature": None,
        }
    else:
        digest = _combined(_challenge_nonce(doc, "ecdsa_signature"), mine)
        der = private_key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        r, s = utils.decode_dss_signature(der)
        out = {
            "rsa_signature": None,
            "ecdsa_signature": {
                "nonce": _b64(mine),
                "r": _b64(r.to_bytes((r.bit_length() + 7) // 8, "big")),
                "s": _b64(s.to_bytes((s.bit_length() + 7) // 8, "big")),
            },
        }
    return json.dumps(out).encode()


def verify_response(public_key: object, challenge: bytes, response: bytes) -> None:
    """Raise X509PopError unless ``response`` proves possession of ``public_key``'s key."""
    chal = _load_json(challenge, "x509pop challenge")
    resp = _load_json(response, "x509pop challenge response")
    if isinstance(public_key, rsa.RSAPublicKey):
        part = resp.get("rsa_signature")
        if not isinstance(part, dict):
            raise X509PopError("expecting RSA response")
        digest = _combined(
            _challenge_nonce(chal, "rsa_signature"), _unb64(part.get("nonce"), "response nonce")
        )
        try:
            public_key.verify(
                _unb64(part.get("signature"), "signature"),
                digest,
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO),
                utils.Prehashed(hashes.SHA256()),
            )
        except InvalidSignature:
            raise X509PopError("RSA signature verify failed") from None
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        part = resp.get("ecdsa_signature")
        if not isinstance(part, dict):
            raise X509PopError("expecting ECDSA response")
        digest = _combined(
            _challenge_nonce(chal, "ecdsa_signature"), _unb64(part.get("nonce"), "response nonce")
        )
        r = int.from_bytes(_unb64(part.get("r"), "r"), "big")
        s = int.from_bytes(_unb64(part.get("s"), "s"), "big")
        try:
            public_key.verify(
                utils.encode_dss_signature(r, s), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))
            )
        except InvalidSignature:
            raise X509PopError("ECDSA signature verify failed") from None
    else:
        raise X509PopError(f"unsupported public key type {type(public_key).__name__}")


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-1 of the certificate's DER, lowercase hex (SPIRE's x509pop fingerprint)."""
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest()  # noqa: S324


def serial_number_hex(cert: x509.Certificate) -> str:
    """The serial number as lowercase hex with an even number of digits."""
    text = format(cert.serial_number, "x")
    return "0" + text if len(text) % 2 else text


_FIELD = re.compile(r"\{\{-?\s*\.([A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\s*-?\}\}")
_SUPPORTED = {
    "PluginName",
    "Fingerprint",
    "TrustDomain",
    "SerialNumberHex",
    "SVIDPathTrimmed",
    "Subject.CommonName",
    "Subject.SerialNumber",
}


@dataclass(frozen=True, slots=True)
class AgentPathTemplate:
    """SPIRE's ``agent_path_template``: Go template field references such as
    ``/{{ .PluginName }}/{{ .Fingerprint }}`` or ``/cn/{{ .Subject.CommonName }}``.

    Only plain field references are supported (no pipelines or functions); anything else
    is refused when the configuration is read.
    """

    text: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        leftover = _FIELD.sub("", self.text)
        if "{{" in leftover or "}}" in leftover:
            raise X509PopError(
                f"agent_path_template {self.text!r}: only field references like "
                "{{ .Fingerprint }} are supported"
            )
        for m in _FIELD.finditer(self.text):
            name = m.group(1)
            if name not in _SUPPORTED and not name.startswith("URISanSelectors."):
                raise X509PopError(f"agent_path_template {self.text!r}: unknown field .{name}")

    def agent_id(
        self,
        trust_domain: TrustDomain,
        leaf: x509.Certificate,
        *,
        svid_path_trimmed: str = "",
        san_selectors: Mapping[str, str] | None = None,
    ) -> SpiffeId:
        """The agent's SPIFFE ID: ``spiffe://<td>/spire/agent<expanded template>``."""
        sans = san_selectors or {}

        def subject(oid: x509.ObjectIdentifier) -> str:
            attrs = leaf.subject.get_attributes_for_oid(oid)
            return str(attrs[0].value) if attrs else ""

        values = {
            "PluginName": PLUGIN_NAME,
            "Fingerprint": fingerprint(leaf),
            "TrustDomain": trust_domain.name,
            "SerialNumberHex": serial_number_hex(leaf),
            "SVIDPathTrimmed": svid_path_trimmed,
            "Subject.CommonName": subject(x509.NameOID.COMMON_NAME),
            "Subject.SerialNumber": subject(x509.NameOID.SERIAL_NUMBER),
        }

        def expand(m: re.Match[str]) -> str:
            name = m.group(1)
            if name.startswith("URISanSelectors."):
                return sans.get(name.removeprefix("URISanSelectors."), "")
            return values[name]

        path = _FIELD.sub(expand, self.text)
        try:
            return SpiffeId.from_path(trust_domain, "/spire/agent" + path)
        except SpiffeIdError as exc:
            raise X509PopError(f"invalid agent path {path!r}: {exc}") from None
