"""go-spiffe's ``workloadapi`` client talks to spiffed's Workload API unmodified, and a
process of another UID gets only its own identities, whatever metadata it sends.

The Go program (tests/interop/gospiffe) is built static into a world-readable temporary
directory, so that it can also run as ``nobody`` (the venv lives under /root, which nobody
cannot read); the socket lives in another world-readable directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.events import RecvRequest, listen

from tests.agent.endpoints.support import (
    DEADLINE,
    FED,
    MY_UID,
    NOBODY_UID,
    Agent,
    entry,
    running_agent,
)
from tests.interop.gobuild import build_go_program

pytestmark = pytest.mark.interop

NOBODY = 65534


def _public_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def gospiffe() -> Iterator[Path]:
    out = _public_dir("spiffed-gospiffe-bin-")
    try:
        binary = build_go_program("gospiffe", out)
        binary.chmod(0o755)
        yield binary
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    sock_dir = _public_dir("spiffed-wl-sock-")
    try:
        async with running_agent(sock_dir / "agent.sock") as a:
            yield a
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def _env(agent: Agent, fake_metadata: bool) -> dict[str, str]:
    env = {"SPIFFE_ENDPOINT_SOCKET": f"unix://{agent.socket_path}", "PATH": "/usr/bin:/bin"}
    if fake_metadata:
        env["FAKE_METADATA"] = "1"
    return env


def _as(uid: int | None) -> dict[str, Any]:
    if uid is None:
        return {}
    if os.geteuid() != 0:
        pytest.skip("running a client as another UID needs root")
    return {"user": uid, "group": uid, "extra_groups": []}


async def run(
    binary: Path, agent: Agent, *args: str, uid: int | None = None, fake: bool = False
) -> tuple[int, dict[str, Any]]:
    """Run the Go client to completion; its exit code and last JSON line."""
    proc = await asyncio.create_subprocess_exec(
        str(binary),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(agent, fake),
        cwd="/",
        **_as(uid),
    )
    out, err = await asyncio.wait_for(proc.communicate(), DEADLINE * 3)
    lines = out.decode().strip().splitlines()
    assert lines, f"no output; stderr: {err.decode()}"
    return proc.returncode or 0, json.loads(lines[-1])


async def test_go_fetches_the_x509_context(gospiffe: Path, agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID, federates_with=[FED]), entry("b", "/web", MY_UID))
    agent.set_federation(agent.fed.bundle())
    code, out = await run(gospiffe, agent, "x509")
    assert code == 0, out
    assert out["svids"] == ["spiffe://example.org/db", "spiffe://example.org/web"]
    assert out["serial"] == str(agent.cache.svid("a").leaf.serial_number)
    assert out["bundles"] == ["spiffe://example.org", "spiffe://federated.org"]


async def test_go_watch_sees_a_rotation_on_its_open_stream(gospiffe: Path, agent: Agent) -> None:
    e = entry("a", "/db", MY_UID)
    first = agent.add(e)["a"]
    proc = await asyncio.create_subprocess_exec(
        str(gospiffe),
        "watch",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(agent, False),
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), DEADLINE)
        assert json.loads(line)["serial"] == str(first.leaf.serial_number)
        rotated = agent.rotate(e)
        seen = []
        async with asyncio.timeout(DEADLINE):
            while (line := await proc.stdout.readline()) and "rotated" not in json.loads(line):
                seen.append(json.loads(line))
        assert seen[-1]["serial"] == str(rotated.leaf.serial_number)
        assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_go_fetches_and_validates_a_jwt_svid(gospiffe: Path, agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID))
    code, out = await run(gospiffe, agent, "jwt", "my-audience")
    assert code == 0, out
    assert out["spiffe_id"] == out["validated_id"] == out["local_id"] == "spiffe://example.org/db"
    assert sorted(out["audience"]) == ["extra", "my-audience"]
    assert sorted(out["validated_aud"]) == ["extra", "my-audience"]
    assert out["wrong_aud"] == "InvalidArgument"  # AMB-14


# --- the attacker's side: another UID, lying metadata -------------------------------------


def record_metadata(agent: Agent) -> list[dict[str, str]]:
    """Every request's metadata as the server received it."""
    seen: list[dict[str, str]] = []

    async def on_request(event: RecvRequest) -> None:
        seen.append(dict(event.metadata))

    listen(agent.server, RecvRequest, on_request)
    return seen


def check_lies_arrived(seen: list[dict[str, str]], fake: bool) -> None:
    assert seen
    lies = {"uid": "0", "pid": "1", "selectors": "unix:uid:0"}
    for md in seen:
        assert md["workload.spiffe.io"] == "true"
        assert (lies.items() <= md.items()) is fake, md


@pytest.mark.parametrize("fake", [False, True], ids=["plain", "fake-metadata"])
async def test_another_uid_without_entries_is_denied(gospiffe: Path, agent: Agent, fake) -> None:
    agent.add(entry("a", "/root-only", MY_UID))
    seen = record_metadata(agent)
    code, out = await run(gospiffe, agent, "x509", uid=NOBODY, fake=fake)
    assert (code, out["code"]) == (1, "PermissionDenied"), out
    code, out = await run(gospiffe, agent, "jwt", "aud", uid=NOBODY, fake=fake)
    assert (code, out["code"]) == (1, "PermissionDenied"), out
    check_lies_arrived(seen, fake)


@pytest.mark.parametrize("fake", [False, True], ids=["plain", "fake-metadata"])
async def test_another_uid_gets_only_its_own_identity(gospiffe: Path, agent: Agent, fake) -> None:
    agent.add(entry("a", "/root-only", MY_UID), entry("n", "/nobody", NOBODY_UID))
    seen = record_metadata(agent)
    code, out = await run(gospiffe, agent, "x509", uid=NOBODY, fake=fake)
    assert code == 0, out
    assert out["svids"] == ["spiffe://example.org/nobody"]
    code, out = await run(gospiffe, agent, "jwt", "aud", uid=NOBODY, fake=fake)
    assert code == 0, out
    assert out["spiffe_id"] == out["validated_id"] == "spiffe://example.org/nobody"
    assert [c[0].path for c in agent.minter.calls] == ["/nobody"]
    check_lies_arrived(seen, fake)
