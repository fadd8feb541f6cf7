"""TLS contexts for SPIFFE mTLS, built from in-memory SVIDs and bundles.

Private keys never touch a disk: the PEM key and chain are handed to OpenSSL through an
anonymous in-memory file (``memfd_create``) that is closed as soon as it is loaded.

Host names are not checked (SPIFFE IDs are URI SANs): OpenSSL checks the chain against the
trust anchors, and the caller then authorizes the peer's SPIFFE ID before any request is
served. Roots can be added to a live context (new CA keys appear in the bundle before they
sign anything); removing a root needs the application-level check, which uses the current
bundle every time.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from spiffed.keys import PrivateKey

__all__ = [
    "TlsError",
    "add_trust_anchors",
    "client_context",
    "load_identity",
    "peer_certificate",
    "server_context",
]


class TlsError(Exception):
    """A TLS context cannot be built from the given certificates or key."""


def _pem_certs(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def load_identity(ctx: ssl.SSLContext, chain: Sequence[x509.Certificate], key: PrivateKey) -> None:
    """Make ``ctx`` present ``chain`` (leaf first) and ``key`` on new connections.

    Calling it again on a live context replaces the identity for later handshakes, which is
    how a rotated SVID is picked up without restarting a listener.
    """
    if not chain:
        raise TlsError("an identity needs at least one certificate")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.memfd_create("spiffed-identity", os.MFD_CLOEXEC)
    try:
        os.write(fd, key_pem + _pem_certs(chain))
        ctx.load_cert_chain(certfile=f"/proc/self/fd/{fd}")
    except ssl.SSLError as exc:
        raise TlsError(f"cannot load the certificate chain and key: {exc}") from None
    finally:
        os.close(fd)


def add_trust_anchors(ctx: ssl.SSLContext, roots: Iterable[x509.Certificate]) -> None:
    """Add trust anchors to ``ctx``; handshakes after the call accept chains to them."""
    data = _pem_certs(roots)
    if data:
        ctx.load_verify_locations(cadata=data.decode())


def _base(protocol: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    return ctx


def server_context(
    chain: Sequence[x509.Certificate],
    key: PrivateKey,
    roots: Iterable[x509.Certificate],
    *,
    require_client_certificate: bool,
) -> ssl.SSLContext:
    """A server context presenting ``chain``/``key``.

    Client certificates are requested, and verified against ``roots`` when sent; with
    ``require_client_certificate`` a client without one is refused during the handshake.
    Otherwise (as SPIRE's server port, where attestation happens before an agent has an
    SVID) it may connect and the caller decides per RPC. Session tickets are off, so a
    resumed session never skips the check of the current bundle.
    """
    ctx = _base(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    ctx.options |= ssl.OP_NO_TICKET
    load_identity(ctx, chain, key)
    add_trust_anchors(ctx, roots)
    return ctx


def client_context(
    roots: Iterable[x509.Certificate],
    chain: Sequence[x509.Certificate] = (),
    key: PrivateKey | None = None,
) -> ssl.SSLContext:
    """A client context that verifies the server against ``roots``.

    With ``chain`` and ``key`` it also presents a client certificate (mTLS).
    """
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    add_trust_anchors(ctx, roots)
    if chain or key is not None:
        if key is None or not chain:
            raise TlsError("a client identity needs both a certificate chain and a key")
        load_identity(ctx, chain, key)
    return ctx


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> x509.Certificate | None:
    """The peer's leaf certificate after a handshake, or None when it sent none."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None
