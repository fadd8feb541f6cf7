"""Guards workload attestation against a caller that exits, and a PID that is reused.

The kernel tells the agent the caller's PID (SO_PEERCRED), but attestation then reads
``/proc/<pid>``: if the caller exited and another process got its PID in between, the agent
would attest the wrong process. So, before attesting:

1. a pidfd is opened on the PID; it keeps referring to that very process, whatever happens
   to the PID number later;
2. the process's start time (``/proc/<pid>/stat``, boot-time clock ticks) must not be later
   than the moment the call arrived: a process born after the call cannot be the caller;

and after attesting, the pidfd must still show the process alive, so that every read of
``/proc/<pid>`` in between was about the same process (a PID is not reused while its process
lives). Start times have clock-tick (10 ms) resolution; the pidfd check covers the rest.

The Workload API pins the caller once, when it accepts the connection (as SPIRE's peer
tracker does in its ``Accept``), and keeps the pin for the connection's life: every call on
the connection is attested as that process, and refused once it has exited
(:meth:`TrackedPeer.verify`), whoever holds the connection or the PID by then.
"""

from __future__ import annotations

import os
import select
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PeerGoneError", "TrackedPeer", "boot_time_now", "track_peer"]

_CLK_TCK = os.sysconf("SC_CLK_TCK")


class PeerGoneError(Exception):
    """The calling process exited, or its PID now belongs to another process."""


def boot_time_now() -> float:
    """Seconds since boot on the clock that ``/proc/<pid>/stat`` start times use."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _start_time(pid: int, proc: Path) -> float:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        raise PeerGoneError(f"process {pid} no longer exists") from None
    # The command name is in parentheses and may contain spaces or parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19]) / _CLK_TCK  # field 22 overall; 20th after "pid (comm)"


@dataclass(slots=True)
class TrackedPeer:
    """A caller pinned by a pidfd; call :meth:`check` after attesting it."""

    pid: int
    pidfd: int
    start_time: float = 0.0  #: the process's start, seconds since boot (clock ticks)
    proc_root: str = "/proc"

    def alive(self) -> bool:
        """True while the pinned process has not exited (a zombie counts as exited)."""
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return not poller.poll(0)

    def check(self) -> None:
        """Raise PeerGoneError if the process exited since it was pinned."""
        if not self.alive():
            raise PeerGoneError(f"process {self.pid} exited during attestation")

    def verify(self) -> None:
        """Raise PeerGoneError unless the pinned process is alive and ``/proc/<pid>`` is
        still that process (same start time)."""
        if not self.alive():
            raise PeerGoneError(f"process {self.pid} exited before it could be attested")
        if _start_time(self.pid, Path(self.proc_root)) != self.start_time:
            raise PeerGoneError(f"process {self.pid} is not the caller any more: PID reused")

    def close(self) -> None:
        """Release the pidfd."""
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def __enter__(self) -> TrackedPeer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def track_peer(pid: int, call_arrived_at: float, *, proc_root: str = "/proc") -> TrackedPeer:
    """Pin the caller ``pid`` that made a call at ``call_arrived_at`` (:func:`boot_time_now`)."""
    if pid <= 0:
        raise PeerGoneError(f"invalid caller process ID {pid}")
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise PeerGoneError(f"process {pid} exited before it could be attested") from None
    peer = TrackedPeer(pid, pidfd, proc_root=proc_root)
    try:
        started = _start_time(pid, Path(proc_root))
        peer.start_time = started
        if started > call_arrived_at:
            raise PeerGoneError(
                f"process {pid} started after the call arrived: the caller exited and its "
                "PID was reused"
            )
        if not peer.alive():
            raise PeerGoneError(f"process {pid} exited before it could be attested")
    except BaseException:
        peer.close()
        raise
    return peer
