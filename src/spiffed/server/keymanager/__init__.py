"""Server key managers: where the CA's private keys live (SPIRE's ``KeyManager`` plugins).

Key IDs follow SPIRE: ``x509-CA-A`` / ``x509-CA-B`` and ``JWT-Signer-A`` / ``JWT-Signer-B``.
"""

from __future__ import annotations

from typing import Protocol

from spiffed.keys import KeyType, PrivateKey

__all__ = ["KeyManager", "KeyManagerError", "create_key_manager"]


class KeyManagerError(Exception):
    """A key manager cannot store or load keys; the message names the key or file."""


class KeyManager(Protocol):
    """Holds private keys by ID. Generating a key under an existing ID replaces it."""

    async def generate_key(self, key_id: str, key_type: KeyType) -> PrivateKey:
        """Generate, keep and return a new key under ``key_id``."""
        ...

    async def get_key(self, key_id: str) -> PrivateKey | None:
        """The key with ``key_id``, or None."""
        ...


def create_key_manager(name: str, options: dict[str, object]) -> KeyManager:
    """Build the key manager named as in the ``KeyManager "<name>"`` config block."""
    from spiffed.server.keymanager.disk import DiskKeyManager
    from spiffed.server.keymanager.memory import MemoryKeyManager

    if name == "memory":
        if options:
            raise KeyManagerError(f'KeyManager "memory" takes no options, got {sorted(options)}')
        return MemoryKeyManager()
    if name == "disk":
        path = options.get("keys_path")
        if not isinstance(path, str) or not path:
            raise KeyManagerError('KeyManager "disk" needs keys_path')
        return DiskKeyManager(path)
    raise KeyManagerError(f'unknown KeyManager {name!r}; expected "memory" or "disk"')
