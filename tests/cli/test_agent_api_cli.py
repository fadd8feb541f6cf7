"""``spiffed-agent api ...`` and ``healthcheck`` against the in-process Workload API.

Most commands run in a worker thread of this process (so the caller the agent attests is
this test process, whose UID the entries select); ``watch`` and the process-level checks
run as a real subprocess of the same UID.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest

from spiffed.cli.agent import cli
from spiffed.cli.agent_api import format_duration, go_time, parse_duration
from spiffed.spiffeid import SpiffeId
from spiffed.svid.jwt import JwtSvid
from tests.agent.endpoints.support import (
    DEADLINE,
    FED,
    MY_UID,
    NOBODY_UID,
    Agent,
    Authority,
    entry,
    running_agent,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    async with running_agent(tmp_path / "agent.sock") as a:
        yield a


async def run(*args: str) -> tuple[int, str, str]:
    """Run the CLI in a thread (its own event loop) while the test's loop serves the API."""
    result = await asyncio.to_thread(CliRunner().invoke, cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def sock(agent: Agent) -> list[str]:
    return ["-socketPath", str(agent.socket_path)]


# --- fetch x509 ----------------------------------------------------------------------------


async def test_fetch_x509_pretty_output(agent: Agent) -> None:
    svids = agent.add(
        entry("a", "/db", MY_UID, hint="database"),
        entry("b", "/web", MY_UID, federates_with=[FED]),
        entry("c", "/theirs", NOBODY_UID),
    )
    agent.set_federation(agent.fed.bundle())
    code, out, err = await run("api", "fetch", "x509", *sock(agent))
    assert (code, err) == (0, "")
    lines = out.split("\n")
    assert lines[0].startswith("Received 2 svids after ")
    assert lines[0].endswith("s")
    leaf = svids["a"].leaf
    ca = agent.ca.ca_cert
    assert lines[1:9] == [
        "",
        "SPIFFE ID:\t\tspiffe://example.org/db",
        "Hint:\t\t\tdatabase",
        f"SVID Valid After:\t{go_time(leaf.not_valid_before_utc)}",
        f"SVID Valid Until:\t{go_time(leaf.not_valid_after_utc)}",
        f"CA #1 Valid After:\t{go_time(ca.not_valid_before_utc)}",
        f"CA #1 Valid Until:\t{go_time(ca.not_valid_after_utc)}",
        "[spiffe://federated.org] CA #1 Valid After:\t"
        f"{go_time(agent.fed.ca_cert.not_valid_before_utc)}",
    ]
    assert "SPIFFE ID:\t\tspiffe://example.org/web" in lines
    assert "spiffe://example.org/theirs" not in out
    assert out.endswith("\n\n")
    # `api fetch` alone is `api fetch x509`, as in SPIRE.
    code, out, _ = await run("api", "fetch", *sock(agent), "-silent")
    assert (code, out) == (0, "")


async def test_fetch_x509_write_files_verify_with_openssl(agent: Agent, tmp_path: Path) -> None:
    agent.add(entry("a", "/db", MY_UID, federates_with=[FED]))
    agent.set_federation(agent.fed.bundle())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = await run("api", "fetch", "x509", *sock(agent), "-write", str(out_dir),
                               "-silent")  # fmt: skip
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"Writing SVID #0 to file {out_dir}/svid.0.pem.",
        f"Writing key #0 to file {out_dir}/svid.0.key.",
        f"Writing bundle #0 to file {out_dir}/bundle.0.pem.",
        "Writing federated bundle #0 for trust domain spiffe://federated.org to file "
        f"{out_dir}/federated_bundle.0.0.pem.",
    ]
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", "bundle.0.pem", "svid.0.pem"],
        cwd=out_dir, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.strip() == "svid.0.pem: OK"
    # The key matches the certificate and is readable by its owner only.
    key_pub = subprocess.run(
        ["openssl", "pkey", "-in", "svid.0.key", "-pubout"],
        cwd=out_dir, capture_output=True, check=True,
    ).stdout  # fmt: skip
    cert_pub = subprocess.run(
        ["openssl", "x509", "-in", "svid.0.pem", "-noout", "-pubkey"],
        cwd=out_dir, capture_output=True, check=True,
    ).stdout  # fmt: skip
    assert key_pub == cert_pub
    assert (out_dir / "svid.0.key").stat().st_mode & 0o777 == 0o600
    fed = x509.load_pem_x509_certificates((out_dir / "federated_bundle.0.0.pem").read_bytes())
    assert fed == [agent.fed.ca_cert]


async def test_fetch_x509_json_output(agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID, hint="h"))
    code, out, _ = await run("api", "fetch", "x509", *sock(agent), "-output", "json")
    assert code == 0
    doc = json.loads(out)
    assert [s["spiffe_id"] for s in doc["svids"]] == ["spiffe://example.org/db"]
    assert doc["svids"][0]["hint"] == "h"
    assert doc["federated_bundles"] == {}
    assert {"x509_svid", "x509_svid_key", "bundle"} <= set(doc["svids"][0])


async def test_permission_denied_when_no_identity(agent: Agent) -> None:
    agent.add(entry("c", "/theirs", NOBODY_UID))
    code, out, err = await run("api", "fetch", "x509", *sock(agent))
    assert (code, out) == (1, "")
    assert err == "rpc error: code = PermissionDenied desc = no identity issued\n"
    code, _, err = await run("api", "fetch", "jwt", *sock(agent), "-audience", "a")
    assert code == 1
    assert err == "rpc error: code = PermissionDenied desc = no identity issued\n"


async def test_missing_socket(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.sock"
    for args in (
        ("api", "fetch", "x509"),
        ("api", "fetch", "jwt", "-audience", "a"),
        ("api", "validate", "jwt", "-audience", "a", "-svid", "x.y.z"),
    ):
        code, out, err = await run(*args, "-socketPath", str(path))
        assert (code, out) == (1, ""), args
        assert "code = Unavailable" in err, args
        assert f"dial unix {path}: connect: no such file or directory" in err, args


async def test_timeout_flag(agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID), sign=False)  # no SVID yet: nothing is sent
    code, _, err = await run("api", "fetch", "x509", *sock(agent), "-timeout", "200ms")
    assert code == 1
    assert err == "rpc error: code = DeadlineExceeded desc = context deadline exceeded\n"
    code, _, err = await run("api", "fetch", "x509", *sock(agent), "-timeout", "soon")
    assert code == 2
    assert 'invalid value "soon" for flag -timeout' in err


# --- JWT -----------------------------------------------------------------------------------


async def test_fetch_jwt_pretty_and_json(agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID, hint="db"), entry("b", "/web", MY_UID))
    code, out, err = await run("api", "fetch", "jwt", *sock(agent), "-audience", "x,y")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "token(spiffe://example.org/db):"
    token = lines[1].removeprefix("\t")
    svid = JwtSvid.parse_insecure(token)
    assert svid.audience == ("x", "y")
    assert lines[2:4] == ["hint(spiffe://example.org/db):", "\tdb"]
    assert lines[4] == "token(spiffe://example.org/web):"
    assert lines[6] == "bundle(spiffe://example.org):"
    jwks = json.loads(lines[7])
    assert [k["kid"] for k in jwks["keys"]] == [agent.ca.jwt_kid]

    web = "spiffe://example.org/web"
    code, out, _ = await run("api", "fetch", "jwt", *sock(agent), "-audience", "x",
                             "-spiffeID", web, "-output", "json")  # fmt: skip
    assert code == 0
    svids_doc, bundles_doc = json.loads(out)
    assert [s["spiffe_id"] for s in svids_doc["svids"]] == ["spiffe://example.org/web"]
    assert list(bundles_doc["bundles"]) == ["spiffe://example.org"]


async def test_fetch_jwt_requires_audience(agent: Agent) -> None:
    code, out, err = await run("api", "fetch", "jwt", *sock(agent))
    assert (code, out, err) == (1, "", "audience must be specified\n")


async def test_fetch_jwtbundle_and_write(agent: Agent, tmp_path: Path) -> None:
    agent.add(entry("a", "/db", MY_UID))
    code, out, _ = await run("api", "fetch", "jwtbundle", *sock(agent), "-write", str(tmp_path))
    assert code == 0
    assert out.splitlines()[0] == "bundle(spiffe://example.org):"
    written = json.loads((tmp_path / "example.org.jwks").read_text())
    assert [k["kid"] for k in written["keys"]] == [agent.ca.jwt_kid]


async def test_validate_jwt(agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID))
    token = agent.ca.jwt(SpiffeId.parse("spiffe://example.org/db"), ["svc"])
    code, out, err = await run("api", "validate", "jwt", *sock(agent), "-audience", "svc",
                               "-svid", token)  # fmt: skip
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:2] == ["SVID is valid.", "SPIFFE ID : spiffe://example.org/db"]
    claims = json.loads(lines[2].removeprefix("Claims    : "))
    assert claims["sub"] == "spiffe://example.org/db"
    assert claims["aud"] == ["svc"]
    assert isinstance(claims["exp"], int)

    code, out, _ = await run("api", "validate", "jwt", *sock(agent), "-audience", "svc",
                             "-svid", token, "-output", "json")  # fmt: skip
    assert code == 0
    assert json.loads(out)["spiffe_id"] == "spiffe://example.org/db"


async def test_validate_jwt_rejects_bad_tokens(agent: Agent) -> None:
    agent.add(entry("a", "/db", MY_UID))
    me = SpiffeId.parse("spiffe://example.org/db")
    good = agent.ca.jwt(me, ["svc"])
    forged = Authority(agent.ca.trust_domain).jwt(me, ["svc"])  # untrusted key, same kid
    for token, audience in ((good, "other"), (forged, "svc"), ("not-a-jwt", "svc")):
        code, out, err = await run("api", "validate", "jwt", *sock(agent), "-audience", audience,
                                   "-svid", token)  # fmt: skip
        assert (code, out) == (1, "")
        assert err.startswith("SVID is not valid: invalid JWT-SVID"), err
    code, _, err = await run("api", "validate", "jwt", *sock(agent), "-audience", "svc")
    assert (code, err) == (1, "svid must be specified\n")
    code, _, err = await run("api", "validate", "jwt", *sock(agent), "-svid", good)
    assert (code, err) == (1, "audience must be specified\n")


# --- healthcheck ---------------------------------------------------------------------------


async def test_healthcheck_ready_agent_without_identity_is_healthy(agent: Agent) -> None:
    code, out, err = await run("healthcheck", *sock(agent))
    assert (code, out, err) == (0, "Agent is healthy.\n", "")
    code, out, _ = await run("healthcheck", *sock(agent), "-verbose", "-shallow")
    assert (code, out) == (0, "Checking agent health...\nAgent is healthy.\n")


async def test_healthcheck_not_ready_agent_is_unhealthy(tmp_path: Path) -> None:
    async with running_agent(tmp_path / "a.sock", ready=False) as agent:
        code, out, err = await run("healthcheck", *sock(agent))
    assert (code, out) == (1, "")
    assert err == 'Agent is unhealthy: agent returned status "NOT_SERVING"\n'


async def test_healthcheck_missing_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "none.sock")
    code, out, err = await run("healthcheck", "-socketPath", path)
    assert (code, out, err) == (1, "", "Agent is unhealthy: unable to determine health\n")
    code, out, err = await run("healthcheck", "-socketPath", path, "-verbose")
    assert out == "Checking agent health...\n"
    assert err.startswith("Failed to check health: rpc error: code = Unavailable")
    assert err.endswith("Agent is unhealthy: unable to determine health\n")


async def test_health_service_refuses_per_service_checks(agent: Agent) -> None:
    channel = Channel(path=str(agent.socket_path))
    try:
        with pytest.raises(GRPCError) as err:
            await HealthStub(channel).Check(HealthCheckRequest(service="SpiffeWorkloadAPI"))
    finally:
        channel.close()
    assert err.value.status is Status.INVALID_ARGUMENT
    assert err.value.message == "per-service health is not supported"


# --- watch ---------------------------------------------------------------------------------


async def test_watch_prints_each_update_until_interrupted(agent: Agent) -> None:
    e = entry("a", "/db", MY_UID)
    agent.add(e)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from spiffed.cli.agent import main; main()",
        "api", "watch", *sock(agent),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None

    async def next_update() -> list[str]:
        """Lines up to the blank line that ends one update."""
        lines: list[str] = []
        while True:
            raw = await proc.stdout.readline()  # type: ignore[union-attr]
            assert raw, "watch ended"
            line = raw.decode().rstrip("\n")
            if line.startswith("Received"):
                lines = [line]
            elif lines and line == "" and len(lines) > 1:
                return lines
            elif lines:
                lines.append(line)

    try:
        async with asyncio.timeout(DEADLINE):
            first = await next_update()
            assert first[0].startswith("Received 1 svid after ")
            assert "SPIFFE ID:\t\tspiffe://example.org/db" in first
            agent.rotate(e)
            second = await next_update()
            assert second[0].startswith("Received 1 svid after ")
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_wa_28_watch_reports_permission_denied_and_retries(agent: Agent) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from spiffed.cli.agent import main; main()",
        "api", "watch", *sock(agent),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(DEADLINE):
            err = await proc.stderr.readline()
            assert err.decode() == (
                "rpc error: code = PermissionDenied desc = no identity issued\n"
            )
            agent.add(entry("a", "/db", MY_UID))  # the retry (after backoff) gets it
            while not (line := await proc.stdout.readline()).startswith(b"Received"):
                assert line, "watch ended"
            assert line.startswith(b"Received 1 svid after ")
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- formatting ----------------------------------------------------------------------------


def test_go_durations() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(0.0012345) == "1.2345ms"
    assert format_duration(0.000012) == "12µs"
    assert format_duration(2.5) == "2.5s"
    assert format_duration(90) == "1m30s"
    assert parse_duration("1m30s") == 90
    assert parse_duration("500ms") == 0.5
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("5")
