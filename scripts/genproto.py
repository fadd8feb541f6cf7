"""Regenerate src/spiffed/_proto from the .proto sources under proto/.

Usage:
    python scripts/genproto.py           # write the generated code into src/
    python scripts/genproto.py --check   # exit 1 if the committed code is stale

The generated code is committed; tests/test_proto_fresh.py runs --check.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
GENERATED = Path("spiffed") / "_proto"
BIN = Path(sys.executable).parent

# The standard Workload API has no proto package, so its method paths are
# "/SpiffeWorkloadAPI/<Method>". Our copy has a package (see workload.proto);
# the generated grpclib paths are rewritten to the standard's.
PATH_REWRITES = {
    "workload/workload_grpc.py": ("'/spiffed.workload.SpiffeWorkloadAPI/", "'/SpiffeWorkloadAPI/"),
}


def generate(out_root: Path) -> None:
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-grpclib_python={BIN / 'protoc-gen-grpclib_python'}",
        f"--python_out={out_root}",
        f"--mypy_out=quiet:{out_root}",
        f"--grpclib_python_out={out_root}",
        *sources,
    ]
    subprocess.run(cmd, check=True, cwd=PROTO_ROOT)
    gen = out_root / GENERATED
    for rel, (old, new) in PATH_REWRITES.items():
        path = gen / rel
        text = path.read_text()
        if old not in text:
            raise SystemExit(f"genproto: expected {old!r} in {path}")
        path.write_text(text.replace(old, new))
    for directory in [gen, *(p for p in gen.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()


def tree(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if src/ is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        fresh = tree(out / GENERATED)
        target_dir = ROOT / "src" / GENERATED
        current = tree(target_dir) if target_dir.exists() else {}
        stale = sorted(
            name
            for name in fresh.keys() | current.keys()
            if name not in fresh
            or name not in current
            or not filecmp.cmp(fresh[name], current[name], shallow=False)
        )
        if args.check:
            if stale:
                print("generated code is stale; run `make proto`:", *stale, sep="\n  ")
                return 1
            return 0
        if target_dir.exists():
            shutil.rmtree(target_dir)
        shutil.copytree(out / GENERATED, target_dir)
        print(f"generated {len(fresh)} files into {target_dir.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
