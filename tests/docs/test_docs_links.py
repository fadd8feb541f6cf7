"""docs/: index.md lists every page, and relative links in the docs lead to files that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # code blocks hold no links
    return [m.group(1) for m in LINK.finditer(text) if "://" not in m.group(1)]


def test_index_lists_every_page() -> None:
    linked = {(DOCS / link).resolve() for link in _links(DOCS / "index.md")}
    missing = sorted(p.name for p in DOCS.glob("*.md") if p.name != "index.md" and p not in linked)
    assert not missing, f"docs/index.md does not link {missing}"


def test_relative_links_resolve() -> None:
    broken = [
        f"{page.relative_to(REPO)}: {link}"
        for page in [*DOCS.glob("*.md"), REPO / "examples/README.md"]
        for link in _links(page)
        if not (page.parent / link).exists()
    ]
    assert not broken, broken
