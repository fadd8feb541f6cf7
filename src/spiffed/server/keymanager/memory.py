"""The ``memory`` key manager: keys live only as long as the process."""

from __future__ import annotations

from spiffed.keys import KeyType, PrivateKey


class MemoryKeyManager:
    """Keys in a dict; a restarted server starts with none and prepares new ones."""

    def __init__(self) -> None:
        self._keys: dict[str, PrivateKey] = {}

    async def generate_key(self, key_id: str, key_type: KeyType) -> PrivateKey:
        """Generate, keep and return a new key under ``key_id``."""
        key = key_type.generate()
        self._keys[key_id] = key
        return key

    async def get_key(self, key_id: str) -> PrivateKey | None:
        """The key with ``key_id``, or None."""
        return self._keys.get(key_id)
