"""The server's own X509-SVID, ``spiffe://<td>/spire/server``, for its TCP listener.

Signed by the server's CA with ``default_x509_svid_ttl`` and renewed once half of its life
has passed (SPIRE checks every 5 s). Listeners are told of every new SVID, so new TLS
handshakes present it without a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from cryptography import x509

from spiffed.keys import KeyType, PrivateKey
from spiffed.server.ca.manager import CaManager
from spiffed.spiffeid import SpiffeId

__all__ = ["ServerSvid", "server_id"]

Listener = Callable[[list[x509.Certificate], PrivateKey], None]


def server_id(ca: CaManager) -> SpiffeId:
    """The server's SPIFFE ID in its trust domain."""
    return SpiffeId.from_path(ca.settings.trust_domain, "/spire/server")


class ServerSvid:
    """Holds and renews the server's SVID."""

    def __init__(self, ca: CaManager, *, clock: Callable[[], datetime] | None = None) -> None:
        self._ca = ca
        self._clock = clock or (lambda: datetime.now(UTC))
        self._listeners: list[Listener] = []
        self._chain: list[x509.Certificate] = []
        self._key: PrivateKey | None = None

    def on_rotate(self, listener: Listener) -> None:
        """Call ``listener(chain, key)`` with every new SVID."""
        self._listeners.append(listener)

    @property
    def chain(self) -> list[x509.Certificate]:
        """The current SVID, leaf first."""
        if not self._chain:
            raise RuntimeError("the server SVID has not been issued yet")
        return self._chain

    @property
    def key(self) -> PrivateKey:
        """The current SVID's private key."""
        if self._key is None:
            raise RuntimeError("the server SVID has not been issued yet")
        return self._key

    def due(self) -> bool:
        """True when there is no SVID yet or half of its life has passed."""
        if not self._chain:
            return True
        leaf = self._chain[0]
        start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
        return self._clock() >= start + (end - start) / 2

    def rotate(self, *, force: bool = False) -> bool:
        """Issue a new SVID if one is due (or ``force``); True if it did."""
        if not (force or self.due()):
            return False
        key = KeyType.EC_P256.generate()
        chain = self._ca.sign_x509_svid(server_id(self._ca), key.public_key())
        self._chain, self._key = chain, key
        for listener in self._listeners:
            listener(chain, key)
        return True
