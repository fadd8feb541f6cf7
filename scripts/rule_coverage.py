"""List the SPIFFE conformance rule IDs of given sections and the tests that name them.

    python scripts/rule_coverage.py            # sections 1-6 (the core library's)
    python scripts/rule_coverage.py 7 8        # other sections

A test names a rule as ``test_x5_22_...`` (lower case, underscore); rules without a test are
printed last. Reads ../shared/spec/SPIFFE-CONFORMANCE.md beside the repository.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT.parent / "shared" / "spec" / "SPIFFE-CONFORMANCE.md"


def rules_in_sections(text: str, sections: set[str]) -> list[str]:
    """Rule IDs defined (``- **ID-05**``) in the numbered sections asked for."""
    found: list[str] = []
    current = None
    for line in text.splitlines():
        heading = re.match(r"^## (\d+)\.", line)
        if heading:
            current = heading.group(1)
        m = re.match(r"^- \*\*([A-Z0-9]+-\d+)\*\*", line)
        if m and current in sections and m.group(1) not in found:
            found.append(m.group(1))
    return found


def main(argv: list[str]) -> int:
    """Print coverage; exit 1 when a rule has no test."""
    sections = set(argv) or {"1", "2", "3", "4", "5", "6"}
    rules = rules_in_sections(SPEC.read_text(), sections)
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    names = re.findall(r"def (test\w+)", tests)
    # "test_x5_01_to_x5_08_..." names every rule in the range.
    ranged: list[str] = []
    for name in names:
        for area, low, high in re.findall(r"([a-z0-9]+)_(\d+)_to_\1_(\d+)", name):
            ranged += [f"{area}_{n:02d}" for n in range(int(low), int(high) + 1)]
    missing = []
    for rule in rules:
        token = rule.lower().replace("-", "_")
        count = sum(bool(re.search(rf"{token}(?!\d)", n)) for n in names) + ranged.count(token)
        if count == 0:
            missing.append(rule)
        print(f"{rule:8s} {count:3d} test(s)")
    print(f"\n{len(rules) - len(missing)}/{len(rules)} rules have a test naming them")
    if missing:
        print("without a test:", " ".join(missing))
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
