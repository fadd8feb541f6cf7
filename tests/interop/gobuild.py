"""Build the small Go interop programs under tests/interop/ (each with its own go.mod)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build_go_program(name: str, out_dir: Path) -> Path:
    """Build ``tests/interop/<name>`` into ``out_dir`` and return the binary's path.

    Fails (never skips) when Go is missing: the interop tests are part of the suite.
    """
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if go is None:
        raise AssertionError("the Go toolchain is needed for the interop tests; install Go")
    out = out_dir / name
    env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    result = subprocess.run(
        [go, "build", "-o", str(out), "."],
        cwd=HERE / name,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if result.returncode != 0:
        raise AssertionError(f"go build of tests/interop/{name} failed:\n{result.stderr}")
    return out
