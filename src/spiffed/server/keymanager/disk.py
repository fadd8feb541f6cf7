"""The ``disk`` key manager: keys kept in one JSON file (``keys_path``), mode 0600.

The file is replaced atomically (write to a temporary file in the same directory, fsync,
rename, fsync the directory), so a crash leaves either the old or the new set of keys.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from spiffed.keys import KeyType, PrivateKey, UnsupportedKeyError, load_private_key_der
from spiffed.server.keymanager import KeyManagerError

FORMAT_VERSION = 1


class DiskKeyManager:
    """Keys persisted in ``keys_path`` and loaded again on start."""

    def __init__(self, keys_path: str | os.PathLike[str]) -> None:
        self._path = Path(keys_path)
        self._keys = self._load()

    def _load(self) -> dict[str, PrivateKey]:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise KeyManagerError(f"cannot read keys file {self._path}: {exc}") from None
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
                raise KeyManagerError(
                    f"keys file {self._path} is not a version {FORMAT_VERSION} spiffed keys file"
                )
            entries = doc["keys"]
            if not isinstance(entries, dict):
                raise KeyManagerError(f"keys file {self._path}: 'keys' must be an object")
            return {
                str(kid): load_private_key_der(base64.b64decode(der, validate=True))
                for kid, der in entries.items()
            }
        except KeyManagerError:
            raise
        except (ValueError, KeyError, TypeError, binascii.Error, UnsupportedKeyError) as exc:
            raise KeyManagerError(f"keys file {self._path} is corrupt: {exc}") from None

    def _store(self) -> None:
        doc = {
            "version": FORMAT_VERSION,
            "keys": {
                kid: base64.b64encode(
                    key.private_bytes(
                        serialization.Encoding.DER,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                ).decode()
                for kid, key in sorted(self._keys.items())
            },
        }
        directory = self._path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=directory)
            try:
                os.fchmod(fd, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump(doc, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise KeyManagerError(f"cannot write keys file {self._path}: {exc}") from None

    async def generate_key(self, key_id: str, key_type: KeyType) -> PrivateKey:
        """Generate a new key under ``key_id`` and persist the whole set before returning."""
        key = key_type.generate()
        previous = self._keys.get(key_id)
        self._keys[key_id] = key
        try:
            self._store()
        except KeyManagerError:
            if previous is None:
                del self._keys[key_id]
            else:
                self._keys[key_id] = previous
            raise
        return key

    async def get_key(self, key_id: str) -> PrivateKey | None:
        """The key with ``key_id``, or None."""
        return self._keys.get(key_id)
