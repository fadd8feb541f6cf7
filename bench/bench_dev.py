"""``spiffed dev`` time to ready: a new trust domain, a resumed one, and ``--ephemeral``.

Each run spawns the ``spiffed dev`` console script and times, from the spawn:

- ``export``: until it prints the ``export SPIFFE_ENDPOINT_SOCKET=...`` line (it prints it
  once the registered SVID is in the agent's cache);
- ``fetch``: until a Workload API fetch (this process's client) returns that SVID, first
  tried right after the export line.

``new`` runs start on an empty data directory (datastore created and migrated, CA keys
generated, agent attested with a join token); ``resumed`` runs restart on the directory of
a new run (schema current, keys and agent SVID reused); ``ephemeral`` runs keep everything
in memory. Target: ready in under 3 s. Several runs each; p50 and max are printed.

``BENCH_DEV_RUNS`` sets the number of runs per kind (default 5).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spiffed.workloadapi.client import WorkloadApiClient, WorkloadApiError

BIN = Path(sys.executable).parent / "spiffed"
RUNS = int(os.environ.get("BENCH_DEV_RUNS", "5"))
DEADLINE = 30.0
TARGET = 3.0


async def _fetch_until(address: str, deadline: float) -> None:
    while True:
        try:
            async with WorkloadApiClient(address, timeout=5) as client:
                ctx = await client.fetch_x509_context()
            if ctx.svids:
                return
        except WorkloadApiError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"no SVID from {address} in {DEADLINE} s")
        await asyncio.sleep(0.01)


def one_run(args: list[str]) -> tuple[float, float, float]:
    """(export line, SVID fetched, reported ready) seconds from the spawn."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(BIN), "dev", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        reported = 0.0
        address = ""
        for line in proc.stdout:
            if " ready in " in line:
                reported = float(line.rsplit(" ready in ", 1)[1].split()[0])
            if line.startswith("export SPIFFE_ENDPOINT_SOCKET="):
                address = line.strip().split("=", 1)[1].strip("'")
                break
        if not address:
            err = proc.stderr.read() if proc.stderr else ""
            raise SystemExit(f"spiffed dev ended before ready (exit {proc.wait()}):\n{err}")
        t_export = time.monotonic() - t0
        asyncio.run(_fetch_until(address, t0 + DEADLINE))
        t_fetch = time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise SystemExit("spiffed dev did not stop within 30 s of SIGTERM") from None
    if rc != 0:
        raise SystemExit(f"spiffed dev exited {rc} after SIGTERM")
    return t_export, t_fetch, reported


def summary(kind: str, runs: list[tuple[float, float, float]]) -> None:
    exports = [r[0] for r in runs]
    fetches = [r[1] for r in runs]
    reported = [r[2] for r in runs]
    worst = max(fetches)
    print(
        f"{kind:9} runs={len(runs)}  export p50 {statistics.median(exports):.2f} s "
        f"max {max(exports):.2f} s | fetch p50 {statistics.median(fetches):.2f} s "
        f"max {worst:.2f} s | self-reported p50 {statistics.median(reported):.2f} s  "
        f"{'OK' if worst < TARGET else 'OVER'} (target < {TARGET:.0f} s)"
    )


def main() -> None:
    """Print time-to-ready figures for new, resumed and ephemeral runs."""
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f} runs={RUNS}")
    root = Path(tempfile.mkdtemp(prefix="bdev-", dir="/tmp"))
    try:
        new, resumed, ephemeral = [], [], []
        for i in range(RUNS):
            data = root / f"d{i}"
            new.append(one_run(["--data-dir", str(data)]))
            resumed.append(one_run(["--data-dir", str(data)]))
            ephemeral.append(one_run(["--ephemeral"]))
        summary("new", new)
        summary("resumed", resumed)
        summary("ephemeral", ephemeral)
        start = time.monotonic()
        subprocess.run(
            [sys.executable, "-c", "import spiffed.server.run, spiffed.agent.run"], check=True
        )
        print(f"imports alone (server + agent run modules): {time.monotonic() - start:.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
