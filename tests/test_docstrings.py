"""Module docstrings stay short (purpose and invariants; the long form lives in docs/) and nothing in the
code or docs points at files outside the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_DOCSTRING_SHARE = 0.06  # module docstring lines / code lines (non-blank, outside module docstrings)
OUTSIDE = re.compile(r"\.\./shared|(?<![\w.])\.\./[\w-]+/|/work/")


def docstring_span(source: str) -> range:
    """The line numbers of the module docstring (empty when there is none)."""
    body = ast.parse(source).body
    first = body[0] if body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return range(first.lineno, first.end_lineno + 1)
    return range(0)


def docstring_share(root: Path) -> tuple[float, int, int]:
    docs = code = 0
    for package in ("planner", "runtime"):
        for path in (root / package).rglob("*.py"):
            source = path.read_text()
            span = docstring_span(source)
            docs += len(span)
            code += sum(1 for n, line in enumerate(source.splitlines(), 1) if line.strip() and n not in span)
    return docs / max(code, 1), docs, code


def test_module_docstrings_are_at_most_six_percent_of_the_code():
    share, docs, code = docstring_share(REPO_ROOT)
    assert share <= MAX_DOCSTRING_SHARE, (
        f"module docstrings are {docs} lines for {code} lines of code ({share:.1%} > "
        f"{MAX_DOCSTRING_SHARE:.0%}): say purpose and invariants in a few lines, the rest in docs/design.md"
    )


def test_the_share_counts_docstring_lines_against_code_lines(tmp_path):
    (tmp_path / "planner").mkdir()
    (tmp_path / "runtime").mkdir()
    (tmp_path / "planner" / "a.py").write_text('"""One.\n\nTwo.\n"""\n\nx = 1\n\ny = 2\n')
    (tmp_path / "runtime" / "b.py").write_text("# no docstring\nz = 3\n")
    assert docstring_share(tmp_path) == (4 / 4, 4, 4)  # a.py: 4 docstring lines, 2 code; b.py: 2 code


def test_nothing_points_outside_the_repository():
    paths = [*REPO_ROOT.glob("planner/**/*.py"), *REPO_ROOT.glob("runtime/**/*.py")]
    paths += [*REPO_ROOT.glob("docs/*.md"), REPO_ROOT / "README.md"]
    found = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()[:80]}"
        for path in paths
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not found, "references to files outside the repository:\n" + "\n".join(found)


def test_every_pointer_into_the_design_document_names_a_module_it_covers():
    design = (REPO_ROOT / "docs" / "design.md").read_text()
    pointer = re.compile(r"docs/design\.md, `([\w/.]+)`")
    paths = [*REPO_ROOT.glob("planner/**/*.py"), *REPO_ROOT.glob("runtime/**/*.py")]
    dangling = sorted(
        f"{path.relative_to(REPO_ROOT)} -> {target}"
        for path in paths
        for target in pointer.findall(path.read_text())
        if target not in design
    )
    assert not dangling, "docs/design.md does not cover:\n" + "\n".join(dangling)
