"""The README and docs/ hold together: every relative link leads to a file that exists and, with
an anchor, to a heading of that file (GitHub's anchors)."""

from __future__ import annotations

import re
from pathlib import Path

from dusk.settings import PROJECT_DIR

LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    found = set()
    for line in path.read_text().splitlines():
        heading = re.match(r"^#{1,6} (.+)$", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading[1].strip().lower())
            found.add(text.replace(" ", "-"))
    return found


def test_every_relative_link_of_the_docs_resolves() -> None:
    pages = [PROJECT_DIR / "README.md", *sorted((PROJECT_DIR / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []
    assert len(pages) >= 7
