"""The project stands alone: every document the code cites ships with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CITING = ("src", "graphs", "tests")
# A page under docs/ as comments and docstrings cite it, e.g. "(docs/<page>.md)".
CITATION = re.compile(r"\bdocs/([a-z0-9_-]+\.md)")
# A relative Markdown link target: `](path)` or `](path#anchor)`.
LINK = re.compile(r"\]\((?!https?://|#)([^)#\s]+)(?:#[^)]*)?\)")


def _text_files(folder: Path) -> list[Path]:
    suffixes = {".py", ".yaml", ".yml", ".md", ".toml"}
    return [p for p in folder.rglob("*") if p.is_file() and p.suffix in suffixes]


def _cited_pages() -> dict[str, list[str]]:
    cited: dict[str, list[str]] = {}
    for top in CITING:
        for path in _text_files(ROOT / top):
            for page in CITATION.findall(path.read_text(encoding="utf-8")):
                cited.setdefault(page, []).append(str(path.relative_to(ROOT)))
    return cited


def test_the_code_cites_docs_pages() -> None:
    # Guards the test below against passing vacuously (a changed citation style).
    assert {"kv-routing.md", "mocker-timing.md", "disaggregation.md"} <= set(_cited_pages())


def test_every_cited_page_exists() -> None:
    missing = {
        page: sources
        for page, sources in _cited_pages().items()
        if not (ROOT / "docs" / page).is_file()
    }
    assert not missing, f"cited but absent from docs/: {missing}"


@pytest.mark.parametrize(
    "document",
    ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))],
)
def test_relative_links_resolve(document: str) -> None:
    path = ROOT / document
    broken = [
        target
        for target in LINK.findall(path.read_text(encoding="utf-8"))
        if not (path.parent / target).exists()
    ]
    assert not broken, f"{document} links to missing files: {broken}"


def test_docs_index_lists_every_page() -> None:
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert pages, "docs/ holds no pages"
    assert not {page for page in pages if f"]({page})" not in index}
