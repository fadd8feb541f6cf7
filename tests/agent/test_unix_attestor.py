"""The unix workload attestor and the caller pinning around it, on real processes."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import subprocess
import sys

import pytest

from spiffed.agent.peertracker import PeerGoneError, boot_time_now, track_peer
from spiffed.agent.workloadattestor import WorkloadAttestationError
from spiffed.agent.workloadattestor.unix import UnixAttestor
from spiffed.selector import Selector


def values(selectors: list[Selector]) -> set[str]:
    assert all(s.type == "unix" for s in selectors)
    return {s.value for s in selectors}


async def test_uid_gid_and_names_of_the_caller() -> None:
    got = values(await UnixAttestor().attest(os.getpid()))
    uid, gid = os.geteuid(), os.getegid()
    assert f"uid:{uid}" in got
    assert f"user:{pwd.getpwuid(uid).pw_name}" in got
    assert f"gid:{gid}" in got
    assert f"group:{grp.getgrgid(gid).gr_name}" in got
    for sgid in os.getgroups():
        assert f"supplementary_gid:{sgid}" in got
    assert not any(v.startswith(("path:", "sha256:")) for v in got)


async def test_another_users_process_gets_that_users_selectors() -> None:
    """Attest a child running as nobody (the tests run as root here)."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root to start a process as another user")
    nobody = pwd.getpwnam("nobody")
    # /bin/cat, not this Python: the interpreter lives under /root, which nobody cannot read.
    child = subprocess.Popen(
        ["/bin/cat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        cwd="/",
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        extra_groups=[],
    )
    try:
        got = values(await UnixAttestor().attest(child.pid))
    finally:
        child.communicate(b"", timeout=30)
    assert f"uid:{nobody.pw_uid}" in got
    assert "user:nobody" in got
    assert f"gid:{nobody.pw_gid}" in got
    assert "uid:0" not in got


async def test_discover_workload_path_adds_path_and_sha256() -> None:
    got = values(await UnixAttestor(discover_workload_path=True).attest(os.getpid()))
    exe = os.readlink(f"/proc/{os.getpid()}/exe")
    with open(exe, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert f"path:{exe}" in got
    assert f"sha256:{digest}" in got


async def test_negative_size_limit_skips_the_hash_and_small_limit_refuses() -> None:
    got = values(
        await UnixAttestor(discover_workload_path=True, workload_size_limit=-1).attest(os.getpid())
    )
    assert not any(v.startswith("sha256:") for v in got)
    with pytest.raises(WorkloadAttestationError, match="over the workload_size_limit of 10"):
        await UnixAttestor(discover_workload_path=True, workload_size_limit=10).attest(os.getpid())


async def test_exited_process_is_an_error_not_selectors() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    with pytest.raises(WorkloadAttestationError, match=f"process {child.pid} no longer exists"):
        await UnixAttestor().attest(child.pid)


def test_config_options_are_checked() -> None:
    assert UnixAttestor.from_config({"discover_workload_path": True}).name == "unix"
    with pytest.raises(WorkloadAttestationError, match="unknown option 'discover_path'"):
        UnixAttestor.from_config({"discover_path": True})
    with pytest.raises(WorkloadAttestationError, match="must be true or false"):
        UnixAttestor.from_config({"discover_workload_path": "yes"})


def test_live_caller_is_pinned_and_checked() -> None:
    with track_peer(os.getpid(), boot_time_now()) as peer:
        peer.check()


def test_caller_that_exits_during_attestation_is_detected() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    with track_peer(child.pid, boot_time_now()) as peer:
        peer.check()
        child.communicate(b"", timeout=30)  # the caller goes away mid-attestation
        with pytest.raises(PeerGoneError, match="exited during attestation"):
            peer.check()


def test_process_born_after_the_call_is_not_the_caller() -> None:
    """A PID reused by a newer process: its start time is after the call arrived."""
    call_arrived = boot_time_now() - 5.0
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        with pytest.raises(PeerGoneError, match="started after the call arrived"):
            track_peer(child.pid, call_arrived)
    finally:
        child.communicate(b"", timeout=30)


def test_reaped_caller_cannot_be_pinned() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    with pytest.raises(PeerGoneError):
        track_peer(child.pid, boot_time_now())
