"""Docs that cannot drift: every `path:line` in docs/*.md and README.md points at a line that exists,
and, when a symbol follows the reference (`path:line` (`name`)), at the lines where that name is.

A failure names the document and its line, the reference, and where the symbol is now, so a
moved function is fixed by changing one number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
NEAR = 2  # a symbol may sit this many lines from the line cited: a decorator, a docstring's first line

# `webapp/web/pipeline.py:72`, `webapp/app.py:40-52`, `gunicorn.conf.py:12`; then, optionally, the
# symbol the reference names: (`handle`), (handle) or `handle`, right after it.
REFERENCE = re.compile(
    r"(?<![\w/.-])(?P<path>(?:[\w.-]+/)*[\w.-]+\.(?:py|md|sql|cfg|toml|json|ya?ml|conf|lua|sh|txt)):"
    r"(?P<start>\d+)(?:-(?P<end>\d+))?`?"
    r"(?:\s*(?:\(\s*`?(?P<paren>[A-Za-z_][\w.]*)`?\s*\)|`(?P<tick>[A-Za-z_][\w.]*)`))?"
)


@dataclass(frozen=True)
class Reference:
    document: Path
    doc_line: int
    text: str
    path: str
    start: int
    end: int
    symbol: str | None

    def __str__(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.doc_line}: {self.text}"


def references() -> list[Reference]:
    found = []
    for document in DOCUMENTS:
        for doc_line, line in enumerate(document.read_text().splitlines(), start=1):
            for match in REFERENCE.finditer(line):
                start = int(match["start"])
                found.append(Reference(
                    document, doc_line, match.group(0).strip(), match["path"], start,
                    int(match["end"] or start), match["paren"] or match["tick"],
                ))
    return found


def target(reference: Reference) -> Path | None:
    """The file a reference names: from the repository's root, else beside the document."""
    for base in (ROOT, reference.document.parent):
        if (base / reference.path).is_file():
            return base / reference.path
    return None


def where_now(lines: list[str], name: str) -> str:
    """Where name is defined in the file now (else every line that mentions it), for the failure message."""
    word = re.compile(rf"\b{re.escape(name)}\b")
    defined = re.compile(rf"^\s*(?:async\s+def|def|class)\s+{re.escape(name)}\b|^\s*{re.escape(name)}\s*[:=]")
    hits = [n for n, text in enumerate(lines, start=1) if defined.search(text)]
    imported = re.compile(r"^\s*(?:from\s+\S+\s+)?import\s")  # a name imported is not where it lives
    hits = hits or [n for n, text in enumerate(lines, start=1) if word.search(text) and not imported.search(text)]
    return ", ".join(f"line {n}" for n in hits[:5]) if hits else "nowhere in the file"


ALL = references()


def test_the_documents_have_references_to_check():
    # Guards the pattern itself: a regex that matches nothing would pass every document.
    assert any(r.document.name == "request-lifecycle.md" for r in ALL)
    assert any(r.symbol for r in ALL)


@pytest.mark.parametrize("reference", ALL, ids=str)
def test_a_path_line_reference_points_at_an_existing_line_holding_the_symbol_it_names(reference: Reference):
    path = target(reference)
    if path is None:
        pytest.fail(f"{reference}: {reference.path} does not exist")
    lines = path.read_text().splitlines()
    if not 1 <= reference.start <= reference.end <= len(lines):
        pytest.fail(f"{reference}: {reference.path} has {len(lines)} lines")
    if reference.symbol is None:
        return
    name = reference.symbol.rsplit(".", 1)[-1]  # `Transaction.close` is found by `close`
    window = lines[max(0, reference.start - 1 - NEAR): reference.end + NEAR]
    if not any(re.search(rf"\b{re.escape(name)}\b", text) for text in window):
        pytest.fail(f"{reference}: `{name}` is not at {reference.path}:{reference.start} (±{NEAR}); "
                    f"it is now at {where_now(lines, name)}")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: d.name)
def test_a_line_reference_names_its_file(document: Path):
    # `:131` alone (meaning "the file cited before") escapes the check above: write the path out.
    bare = [f"{document.name}:{n}: {m.group(0)}" for n, line in enumerate(document.read_text().splitlines(), start=1)
            for m in re.finditer(r"`:\d+(?:-\d+)?`", line)]
    assert bare == []


# A path the documents name in backticks: `webapp/web/errors.py`, `tests/unit/`, `bench/run.py`.
NAMED_PATH = re.compile(r"`(?P<path>(?:webapp|tests|bench|deploy|docs|sql)/[\w./-]*?)(?::\d+(?:-\d+)?)?`")
PLACEHOLDER = re.compile(r"NNNN|[*<]")  # `sql/NNNN_what.sql`: a file to create, not one that exists
INSTALLED_ONLY = {"webapp/sql"}  # sql/, mapped into the installed package by setup.cfg's package_dir


def exists(path: str) -> bool:
    """The file or folder exists; `sql/0004` (a numbered migration by its prefix) names sql/0004_*.sql."""
    target = ROOT / path.rstrip("/")
    return target.exists() or any(target.parent.glob(target.name + "_*"))


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: d.name)
def test_every_file_or_folder_a_document_names_exists(document: Path):
    missing = [
        f"{document.relative_to(ROOT)}:{n}: {m['path']}"
        for n, line in enumerate(document.read_text().splitlines(), start=1)
        for m in NAMED_PATH.finditer(line)
        if not (exists(m["path"]) or PLACEHOLDER.search(m["path"]) or m["path"] in INSTALLED_ONLY)
    ]
    assert missing == [], "moved or renamed: " + "; ".join(missing)
