"""The committed generated protobuf code matches proto/ (regenerate with `make proto`)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "genproto.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workload_api_paths_are_the_standards() -> None:
    """WE-16/§12: the service is served as /SpiffeWorkloadAPI/<Method>, with no package."""
    from spiffed._proto.workload import workload_grpc

    class Probe(workload_grpc.SpiffeWorkloadAPIBase):
        FetchX509SVID = FetchX509Bundles = FetchJWTSVID = FetchJWTBundles = None  # type: ignore[assignment]
        ValidateJWTSVID = FetchWITSVID = FetchWITBundles = None  # type: ignore[assignment]

    paths = set(Probe.__mapping__(Probe()))  # type: ignore[abstract]
    assert paths == {
        f"/SpiffeWorkloadAPI/{m}"
        for m in (
            "FetchX509SVID",
            "FetchX509Bundles",
            "FetchJWTSVID",
            "FetchJWTBundles",
            "ValidateJWTSVID",
            "FetchWITSVID",
            "FetchWITBundles",
        )
    }
