"""``spiffed-agent api``/``healthcheck`` and SPIRE's ``spire-agent`` (v1.15.3) side by side.

Both CLIs talk to the same in-process spiffed Workload API as the same workload (this
test's UID); their exit status, standard output and standard error must be the same, apart
from the measured response time and the order of JWT bundles (a Go map's order in SPIRE).
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from spiffed.spiffeid import SpiffeId
from tests.agent.endpoints.support import FED, MY_UID, NOBODY_UID, entry, running_agent
from tests.interop.spireserver.server import build_spire_agent

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]
OURS = (sys.executable, "-c", "from spiffed.cli.agent import main; main()")


@pytest.fixture(scope="module")
def spire_agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_spire_agent(tmp_path_factory.mktemp("spire-agent-bin"))


async def _run(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _normal(result: tuple[int, str, str]) -> tuple[int, str, str]:
    code, out, err = result
    return code, re.sub(r"after [0-9.]+(ns|µs|ms|s)\n", "after T\n", out), err


def _jwt_blocks(out: str) -> set[str]:
    """`fetch jwt` output as a set of `label:\\n\\tvalue` blocks (bundle order is random)."""
    lines = out.splitlines()
    return {"\n".join(lines[i : i + 2]) for i in range(0, len(lines), 2)}


async def same(spire: Path, *args: str) -> tuple[int, str, str]:
    theirs = _normal(await _run(str(spire), *args))
    ours = _normal(await _run(*OURS, *args))
    if args[:3] == ("api", "fetch", "jwt") and "-output" not in args:
        assert (ours[0], _jwt_blocks(ours[1]), ours[2]) == (
            theirs[0], _jwt_blocks(theirs[1]), theirs[2],
        )  # fmt: skip
    else:
        assert ours == theirs, args
    return ours


async def test_same_output_as_spire_agent(spire_agent: Path, tmp_path: Path) -> None:
    async with running_agent(tmp_path / "not-ready.sock", ready=False) as a:
        code, _, err = await same(spire_agent, "healthcheck", "-socketPath", str(a.socket_path))
        assert (code, err) == (1, 'Agent is unhealthy: agent returned status "NOT_SERVING"\n')

    async with running_agent(tmp_path / "api.sock") as a:
        sock = ("-socketPath", str(a.socket_path))
        assert (await same(spire_agent, "healthcheck", *sock))[0] == 0
        a.add(entry("c", "/theirs", NOBODY_UID))
        assert (await same(spire_agent, "api", "fetch", "x509", *sock))[0] == 1
        a.add(entry("a", "/web", MY_UID, hint="web", federates_with=[FED]))
        a.set_federation(a.fed.bundle())
        assert (await same(spire_agent, "api", "fetch", "x509", *sock))[0] == 0
        await same(spire_agent, "api", "fetch", "x509", *sock, "-output", "json")
        await same(spire_agent, "api", "fetch", "jwt", "-audience", "db", *sock)
        token = a.ca.jwt(SpiffeId.parse("spiffe://example.org/web"), ["db"])
        for extra in ((), ("-output", "json")):
            code, _, _ = await same(
                spire_agent, "api", "validate", "jwt", "-audience", "db", "-svid", token, *sock,
                *extra,
            )  # fmt: skip
            assert code == 0
        code, _, err = await same(
            spire_agent, "api", "validate", "jwt", "-audience", "other", "-svid", token, *sock
        )
        assert code == 1 and err.startswith("SVID is not valid: ")
        await same(spire_agent, "api", "fetch", "jwt", *sock)  # no audience

    gone = ("-socketPath", str(tmp_path / "gone.sock"))
    assert (await same(spire_agent, "api", "fetch", "x509", *gone))[0] == 1
    assert (await same(spire_agent, "healthcheck", *gone, "-verbose"))[0] == 1
