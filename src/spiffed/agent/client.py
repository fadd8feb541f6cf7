"""The agent's gRPC channel to its server, and conversions of the server API's messages.

The agent talks to SPIRE's server API (``spire.api.server.*.v1``) over TLS. The server must
present an X509-SVID for ``spiffe://<td>/spire/server`` that chains to the trust domain's
bundle; the check runs right after the handshake, before any RPC is sent. Before attestation
the agent has no SVID and connects without a client certificate; it trusts the server
through a bootstrap bundle (``trust_bundle_path``) or, with ``insecure_bootstrap``, not at
all for that one connection (as SPIRE). After attestation every connection is mTLS with the
agent's SVID.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpclib.client import Channel
from grpclib.protocol import EventsProcessor, H2Protocol
from h2.errors import ErrorCodes
from h2.events import StreamReset

from spiffed._proto.spire.api.types import bundle_pb2 as types_bundle
from spiffed._proto.spire.api.types import status_pb2 as types_status
from spiffed._proto.spire.api.types import x509svid_pb2 as types_x509svid
from spiffed.bundle import SpiffeBundle, X509Bundle
from spiffed.bundle.errors import BundleError
from spiffed.bundle.jwt import JwtAuthority
from spiffed.grpcstatus import SpireStatusDetailsCodec
from spiffed.keys import PrivateKey
from spiffed.spiffeid import SpiffeId, TrustDomain
from spiffed.svid.x509 import X509Svid, X509SvidError, check_leaf
from spiffed.tls import add_trust_anchors, client_context

__all__ = [
    "ServerChannel",
    "ServerClientError",
    "bundle_from_proto",
    "denied_reason",
    "fetch_bootstrap_bundle",
    "load_bootstrap_bundle",
    "make_csr",
    "svid_from_proto",
    "server_id",
]


class ServerClientError(Exception):
    """The server cannot be reached or trusted, or its answer is unusable."""


def server_id(trust_domain: TrustDomain) -> SpiffeId:
    """The SPIFFE ID every server of ``trust_domain`` presents: ``spiffe://<td>/spire/server``."""
    return SpiffeId.parse(f"spiffe://{trust_domain}/spire/server")


def load_bootstrap_bundle(path: Path, fmt: str, trust_domain: TrustDomain) -> X509Bundle:
    """Read ``trust_bundle_path`` in ``pem`` or ``spiffe`` (JWKS) format."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ServerClientError(f"cannot read trust bundle {str(path)!r}: {exc}") from None
    return parse_bootstrap_bundle(data, fmt, trust_domain, str(path))


MAX_BUNDLE_BYTES = 1 << 20
"""Largest bootstrap bundle read from ``trust_bundle_url``."""


def fetch_bootstrap_bundle(
    url: str,
    fmt: str,
    trust_domain: TrustDomain,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> X509Bundle:
    """HTTPS GET ``trust_bundle_url`` (server verified against the system's roots unless
    ``ssl_context`` says otherwise) and parse it as ``pem`` or ``spiffe``. Blocking."""
    import urllib.error
    import urllib.request

    if not url.startswith("https://"):
        raise ServerClientError(f"trust bundle URL {url!r} must start with https://")
    ctx = ssl_context if ssl_context is not None else ssl.create_default_context()
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:  # noqa: S310
            if resp.status != 200:
                raise ServerClientError(
                    f"error downloading trust bundle from {url!r}: HTTP status {resp.status}"
                )
            data = resp.read(MAX_BUNDLE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise ServerClientError(
            f"error downloading trust bundle from {url!r}: HTTP status {exc.code}"
        ) from None
    except (OSError, ValueError) as exc:
        raise ServerClientError(f"error downloading trust bundle from {url!r}: {exc}") from None
    if len(data) > MAX_BUNDLE_BYTES:
        raise ServerClientError(f"trust bundle at {url!r} is larger than {MAX_BUNDLE_BYTES} bytes")
    return parse_bootstrap_bundle(data, fmt, trust_domain, url)


def parse_bootstrap_bundle(
    data: bytes, fmt: str, trust_domain: TrustDomain, source: str
) -> X509Bundle:
    """A bootstrap bundle's bytes in ``pem`` or ``spiffe`` format; ``source`` names it."""
    path = source
    try:
        if fmt == "pem":
            bundle = X509Bundle.parse_pem(trust_domain, data)
        elif fmt == "spiffe":
            bundle = SpiffeBundle.parse(trust_domain, data).x509_bundle()
        else:
            raise ServerClientError(f"unknown trust bundle format {fmt!r} (pem or spiffe)")
    except BundleError as exc:
        raise ServerClientError(f"trust bundle {str(path)!r}: {exc}") from None
    if not bundle.authorities:
        raise ServerClientError(f"trust bundle {str(path)!r} holds no certificates")
    return bundle


def bundle_from_proto(msg: types_bundle.Bundle) -> SpiffeBundle:
    """A ``spire.api.types.Bundle`` as a :class:`SpiffeBundle` (X.509 and JWT authorities)."""
    try:
        td = TrustDomain.parse(msg.trust_domain)
        certs = tuple(x509.load_der_x509_certificate(a.asn1) for a in msg.x509_authorities)
        jwt: dict[str, JwtAuthority] = {}
        for key in msg.jwt_authorities:
            public = serialization.load_der_public_key(key.public_key)
            if isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
                jwt[key.key_id] = public
        return SpiffeBundle(
            td,
            certs,
            jwt,
            sequence=msg.sequence_number or None,
            refresh_hint=msg.refresh_hint or None,
        )
    except (ValueError, BundleError) as exc:
        raise ServerClientError(f"server sent an unusable bundle: {exc}") from None


def denied_reason(details: Any) -> str | None:
    """The ``PermissionDeniedDetails`` reason name (``AGENT_BANNED``...) in a
    :class:`~grpclib.exceptions.GRPCError`'s details, or None."""
    for item in details or ():
        if isinstance(item, types_status.PermissionDeniedDetails):
            return str(types_status.PermissionDeniedDetails.Reason.Name(item.reason))
    return None


class _CompleteResponseTolerantEvents(EventsProcessor):
    """grpclib's event processor, except for a reset after a complete response.

    A Go gRPC server ends a bidirectional stream whose client has not half-closed yet (as
    after ``AttestAgent``'s result) with trailers and then ``RST_STREAM(NO_ERROR)``, which
    RFC 9113 §8.1 allows. grpclib would turn that reset into ``StreamTerminatedError`` and
    drop the response it has already received; here a ``NO_ERROR`` reset after the trailers
    is ignored, any other reset is handled as grpclib does.
    """

    def process_stream_reset(self, event: StreamReset) -> None:
        stream = self.streams.get(event.stream_id) if event.stream_id is not None else None
        if (
            stream is not None
            and event.remote_reset
            and event.error_code == ErrorCodes.NO_ERROR
            and stream.trailers is not None
        ):
            return
        super().process_stream_reset(event)


class ServerChannel(Channel):
    """A grpclib channel that checks the server's SPIFFE ID after each TLS handshake.

    ``roots`` None means insecure bootstrap: the chain is not verified (attestation only).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        trust_domain: TrustDomain,
        roots: Sequence[x509.Certificate] | None,
        chain: Sequence[x509.Certificate] = (),
        key: PrivateKey | None = None,
    ) -> None:
        if roots is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            if chain and key is not None:
                raise ServerClientError("an mTLS channel needs the trust domain's bundle")
        else:
            if not roots:
                raise ServerClientError(f"no X.509 authorities to trust {trust_domain}'s server")
            ctx = client_context(roots, chain, key)
        super().__init__(host, port, ssl=ctx, status_details_codec=SpireStatusDetailsCodec())
        self.trust_domain = trust_domain
        self.expected_id = server_id(trust_domain)
        self._roots = None if roots is None else tuple(roots)
        self._ctx = ctx

    def add_roots(self, roots: Sequence[x509.Certificate]) -> None:
        """Trust new authorities on later handshakes (after a bundle update)."""
        if self._roots is None:
            return
        add_trust_anchors(self._ctx, roots)
        self._roots = tuple(dict.fromkeys((*self._roots, *roots)))

    async def _create_connection(self) -> H2Protocol:
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.create_connection(
                self._protocol_factory, self._host, self._port, ssl=self._ctx
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionError(
                f"cannot connect to the server at {self._host}:{self._port}: {exc}"
            ) from exc
        protocol.processor = _CompleteResponseTolerantEvents(protocol.handler, protocol.connection)
        if self._roots is not None:
            try:
                self._check_peer(transport.get_extra_info("ssl_object"))
            except ServerClientError:
                transport.close()
                raise
        return protocol

    def _check_peer(self, ssl_object: Any) -> None:
        """OpenSSL has verified the chain against the roots; check the leaf's SPIFFE ID."""
        leaf_der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not leaf_der:
            raise ServerClientError("the server presented no certificate")
        try:
            found = check_leaf(x509.load_der_x509_certificate(leaf_der))
        except (ValueError, X509SvidError) as exc:
            raise ServerClientError(f"the server's certificate is not an SVID: {exc}") from None
        if found != self.expected_id:
            raise ServerClientError(f"the server presented {found}, expected {self.expected_id}")


def svid_from_proto(msg: types_x509svid.X509SVID, key: PrivateKey) -> X509Svid:
    """A ``spire.api.types.X509SVID`` (DER chain, leaf first) with our key as an X509Svid."""
    try:
        chain = [x509.load_der_x509_certificate(der) for der in msg.cert_chain]
        return X509Svid.from_certificates(chain, key)
    except (ValueError, X509SvidError) as exc:
        raise ServerClientError(f"server sent an unusable X509-SVID: {exc}") from None


def make_csr(key: PrivateKey) -> bytes:
    """A DER CSR with an empty subject: the server takes the identity from the entry or node."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
