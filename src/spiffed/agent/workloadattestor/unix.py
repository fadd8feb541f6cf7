"""The ``unix`` workload attestor: user, groups and (optionally) binary of the caller.

Selectors as SPIRE's: ``unix:uid``, ``unix:user``, ``unix:gid``, ``unix:group``,
``unix:supplementary_gid``, ``unix:supplementary_group`` and, with
``discover_workload_path = true``, ``unix:path`` and ``unix:sha256`` (skipped when
``workload_size_limit`` is negative; refused for a binary larger than a positive limit).
Everything is read from ``/proc/<pid>``; the UID and GID are the effective ones.
"""

from __future__ import annotations

import asyncio
import grp
import hashlib
import os
import pwd
from collections.abc import Mapping
from pathlib import Path

from spiffed.agent.workloadattestor import WorkloadAttestationError
from spiffed.selector import Selector

__all__ = ["UnixAttestor"]

_KNOWN_OPTIONS = {"discover_workload_path", "workload_size_limit"}
_CHUNK = 1 << 20


def _status_fields(pid: int, proc: Path) -> dict[str, str]:
    try:
        text = (proc / str(pid) / "status").read_text()
    except FileNotFoundError:
        raise WorkloadAttestationError(f"process {pid} no longer exists") from None
    except OSError as exc:
        raise WorkloadAttestationError(f"cannot read the status of process {pid}: {exc}") from None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    return fields


def _effective(fields: dict[str, str], key: str, pid: int) -> str:
    values = fields.get(key, "").split()
    if not values:
        raise WorkloadAttestationError(f"no {key.upper()} for process {pid}")
    return values[1] if len(values) > 1 else values[0]


def _user_name(uid: str) -> str | None:
    try:
        return pwd.getpwuid(int(uid)).pw_name
    except (KeyError, ValueError):
        return None


def _group_name(gid: str) -> str | None:
    try:
        return grp.getgrgid(int(gid)).gr_name
    except (KeyError, ValueError):
        return None


class UnixAttestor:
    """The ``unix`` attestor with SPIRE's two options."""

    name = "unix"

    def __init__(
        self,
        *,
        discover_workload_path: bool = False,
        workload_size_limit: int = 0,
        proc_root: str | os.PathLike[str] = "/proc",
    ) -> None:
        self._discover = discover_workload_path
        self._limit = workload_size_limit
        self._proc = Path(proc_root)

    @classmethod
    def from_config(cls, options: Mapping[str, object]) -> UnixAttestor:
        """Build from ``plugin_data`` (``discover_workload_path``, ``workload_size_limit``)."""
        unknown = sorted(set(options) - _KNOWN_OPTIONS)
        if unknown:
            raise WorkloadAttestationError(
                f'WorkloadAttestor "unix": unknown option {unknown[0]!r}'
            )
        discover = options.get("discover_workload_path", False)
        limit = options.get("workload_size_limit", 0)
        if not isinstance(discover, bool):
            raise WorkloadAttestationError(
                'WorkloadAttestor "unix": discover_workload_path must be true or false'
            )
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise WorkloadAttestationError(
                'WorkloadAttestor "unix": workload_size_limit must be an integer'
            )
        return cls(discover_workload_path=discover, workload_size_limit=limit)

    async def attest(self, pid: int) -> list[Selector]:
        """Selectors for ``pid`` (file reads and hashing run off the event loop)."""
        return await asyncio.to_thread(self._attest, pid)

    def _attest(self, pid: int) -> list[Selector]:
        if pid <= 0:
            raise WorkloadAttestationError(f"invalid process ID {pid}")
        fields = _status_fields(pid, self._proc)
        values: list[str] = []
        uid = _effective(fields, "uid", pid)
        values.append(f"uid:{uid}")
        if (user := _user_name(uid)) is not None:
            values.append(f"user:{user}")
        gid = _effective(fields, "gid", pid)
        values.append(f"gid:{gid}")
        if (group := _group_name(gid)) is not None:
            values.append(f"group:{group}")
        for sgid in fields.get("groups", "").split():
            values.append(f"supplementary_gid:{sgid}")
            if (sgroup := _group_name(sgid)) is not None:
                values.append(f"supplementary_group:{sgroup}")
        if self._discover:
            exe = self._proc / str(pid) / "exe"
            try:
                path = os.readlink(exe)
            except OSError as exc:
                raise WorkloadAttestationError(f"path lookup for process {pid}: {exc}") from None
            values.append(f"path:{path}")
            if self._limit >= 0:
                values.append(f"sha256:{self._digest(exe, pid)}")
        return [Selector(self.name, v) for v in values]

    def _digest(self, exe: Path, pid: int) -> str:
        try:
            with open(exe, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if self._limit > 0 and size > self._limit:
                    raise WorkloadAttestationError(
                        f"workload binary of process {pid} is {size} bytes, over the "
                        f"workload_size_limit of {self._limit}"
                    )
                h = hashlib.sha256()
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except OSError as exc:
            raise WorkloadAttestationError(f"sha256 of process {pid}'s binary: {exc}") from None
        return h.hexdigest()
