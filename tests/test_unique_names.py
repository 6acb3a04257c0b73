"""No two modules of planner/ and runtime/ define a top-level function or class of the same name, except the
interfaces that mean the same thing everywhere (each subcommand module's `add_parser` / `run`, each CLI's
`build_parser` / `main`)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SAME_MEANING = {
    "add_parser": "runtime/commands/",  # a subcommand's arguments
    "run": "runtime/commands/",  # a subcommand's body
    "build_parser": "/cli.py",  # a CLI's parser
    "main": "/cli.py",  # a CLI's entry point
}


def defined_names(root: Path) -> dict[str, list[str]]:
    """Top-level def / class name -> the modules (paths relative to root) that define it."""
    found = defaultdict(list)
    for package in ("planner", "runtime"):
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    found[node.name].append(path.relative_to(root).as_posix())
    return found


def clashes(root: Path) -> dict[str, list[str]]:
    return {
        name: paths
        for name, paths in defined_names(root).items()
        if len(paths) > 1 and not (name in SAME_MEANING and all(SAME_MEANING[name] in p for p in paths))
    }


def test_no_two_modules_define_the_same_name():
    found = clashes(REPO_ROOT)
    assert not found, (
        "one name, several definitions (rename the ones that mean different things):\n"
        + "\n".join(f"{name}: {', '.join(paths)}" for name, paths in sorted(found.items()))
    )


def test_a_clash_is_found(tmp_path):
    for package, text in (("planner", "def summary(plan): ...\n"), ("runtime", "class summary: ...\n")):
        (tmp_path / package).mkdir()
        (tmp_path / package / "a.py").write_text(text)
    (tmp_path / "runtime" / "cli.py").write_text("def main(): ...\n")
    (tmp_path / "planner" / "cli.py").write_text("def main(): ...\n")
    assert clashes(tmp_path) == {"summary": ["planner/a.py", "runtime/a.py"]}
