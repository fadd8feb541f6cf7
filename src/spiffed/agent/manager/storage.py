"""What the agent keeps in ``data_dir`` across restarts: its SVID, the SVID's key, the bundle.

Files (each replaced atomically: written to a temporary file in the same directory, synced,
then renamed over the old one):

- ``agent_svid.der``: the agent's X509-SVID chain, concatenated DER, leaf first (SPIRE's name);
- ``agent_svid.key``: its private key, PKCS#8 PEM, mode 0600 (in the ``disk`` KeyManager's
  ``directory`` when that differs from ``data_dir``);
- ``bundle.spiffe.json``: the trust domain's bundle as a SPIFFE bundle document.

The key is written before the chain, so a crash between the two leaves a chain that does not
match its key; :func:`load_state` then reports no usable state and the agent attests again.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from spiffed.bundle import SpiffeBundle
from spiffed.bundle.errors import BundleError
from spiffed.bundle.x509 import split_der_certificates
from spiffed.spiffeid import TrustDomain
from spiffed.svid.x509 import X509Svid, X509SvidError

__all__ = [
    "AgentState",
    "StateError",
    "delete_state",
    "BUNDLE_FILE",
    "KEY_FILE",
    "SVID_FILE",
    "load_state",
    "save_bundle",
    "save_state",
    "write_atomic",
]

SVID_FILE = "agent_svid.der"
KEY_FILE = "agent_svid.key"
BUNDLE_FILE = "bundle.spiffe.json"


class StateError(Exception):
    """Stored state exists but cannot be used (the message says which file and why)."""


@dataclass(frozen=True, slots=True)
class AgentState:
    """The agent's SVID (with key) and its trust domain's bundle."""

    svid: X509Svid
    bundle: SpiffeBundle


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically; the file never exists with another mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_state(data_dir: Path, state: AgentState, key_dir: Path | None = None) -> None:
    """Store the SVID, its key (0600, in ``key_dir`` or ``data_dir``) and the bundle."""
    _, key = state.svid.marshal_pem()
    der = b"".join(c.public_bytes(serialization.Encoding.DER) for c in state.svid.cert_chain)
    write_atomic((key_dir or data_dir) / KEY_FILE, key, 0o600)
    write_atomic(data_dir / SVID_FILE, der)
    save_bundle(data_dir, state.bundle)


def save_bundle(data_dir: Path, bundle: SpiffeBundle) -> None:
    """Store the trust domain's bundle."""
    write_atomic(data_dir / BUNDLE_FILE, bundle.marshal(indent=2))


def delete_state(data_dir: Path, key_dir: Path | None = None) -> None:
    """Remove the stored SVID and its key (the bundle stays): the next start attests."""
    (data_dir / SVID_FILE).unlink(missing_ok=True)
    ((key_dir or data_dir) / KEY_FILE).unlink(missing_ok=True)


def load_state(
    data_dir: Path, trust_domain: TrustDomain, key_dir: Path | None = None
) -> AgentState | None:
    """The stored state, or None when nothing was stored yet.

    Raises :class:`StateError` when the files exist but do not fit together (a chain that does
    not match its key, another trust domain, unparsable files).
    """
    svid_path, key_path, bundle_path = (
        data_dir / SVID_FILE,
        (key_dir or data_dir) / KEY_FILE,
        data_dir / BUNDLE_FILE,
    )
    if not svid_path.exists() and not key_path.exists():
        return None
    try:
        chain = split_der_certificates(svid_path.read_bytes(), what=str(svid_path))
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        svid = X509Svid.from_certificates(chain, key)  # type: ignore[arg-type]
        bundle = SpiffeBundle.parse(trust_domain, bundle_path.read_bytes())
    except (OSError, ValueError, TypeError, BundleError, X509SvidError) as exc:
        raise StateError(f"stored agent state in {str(data_dir)!r} is unusable: {exc}") from None
    if svid.spiffe_id.trust_domain != trust_domain:
        raise StateError(
            f"stored agent SVID {svid.spiffe_id} is not in trust domain {trust_domain}"
        )
    return AgentState(svid, bundle)
