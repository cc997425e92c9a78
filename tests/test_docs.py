"""The docs' links: every relative link in README.md and docs/*.md names a file that is in the
repository (a figure's report JSON, a recipe, another page), and every #anchor names a heading
of its page, so moving or renaming a report cannot leave a figure pointing at nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchor for each heading: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    return [m for m in LINK.findall(text) if not re.match(r"[a-z]+:", m)]  # http:, mailto: ...


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for link in links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link} (no heading #{anchor} in {target.name})")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_the_checker_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# Title\n[ok](p.md#title) [gone](results/x.json) [bad](#nope)\n```\n[code](skip.json)\n```\n")
    found = links(page)
    assert found == ["p.md#title", "results/x.json", "#nope"]
    assert "title" in anchors(page) and "nope" not in anchors(page)


REPORT = re.compile(r"(?<![\w/*-])((?:docs/)?results/[\w.\-]+\.(?:json|md|html))(?![\w*])")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_reports_exist(page: Path) -> None:
    """A report named in the text (not only in a link, and outside globs) is committed."""
    missing = []
    for name in sorted(set(REPORT.findall(page.read_text()))):
        rel = name if name.startswith("docs/") else f"docs/{name}"
        if not (ROOT / rel).exists():
            missing.append(name)
    assert not missing, f"{page.name} names reports that are not in docs/results/: {missing}"
