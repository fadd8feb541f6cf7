"""The Python snippet of docs/quickstart.md runs as written against ``spiffed dev``."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.examples.conftest import REPO, Dev


def test_quickstart_snippet_prints_the_workloads_id_and_expiry(dev: Dev) -> None:
    text = (REPO / "docs/quickstart.md").read_text(encoding="utf-8")
    snippet = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert snippet is not None and "X509Source" in snippet.group(1)
    done = subprocess.run(
        [sys.executable, "-c", snippet.group(1)],
        env=dev.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        r"spiffe://example\.org/examples/[\w-]+ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00\n",
        done.stdout,
    ), done.stdout
