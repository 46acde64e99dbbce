"""No function in the product packages (controller/, exporter/) is longer than LIMIT lines.

A function that long does several jobs; split it into named steps that read well (see
CONTRIBUTING.md). Counted from the ``def`` line to its last line, as ``ruff format`` lays it
out, nested functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("controller", "exporter")
LIMIT = 80
# Functions being split in a change not landed yet, as "path:Class.function" (remove each name
# when its change lands; the test below fails on one left behind).
IN_FLIGHT: Set[str] = set()


def long_functions(root: Path, limit: int) -> List[Tuple[str, int]]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            found += [(f"{rel}:{name}", n) for name, n in _lengths(path) if n > limit]
    return found


def _lengths(path: Path) -> List[Tuple[str, int]]:
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                out.append((name, (child.end_lineno or child.lineno) - child.lineno + 1))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), "")
    return out


def test_no_function_in_the_product_is_over_the_limit():
    over = [(name, n) for name, n in long_functions(REPO, LIMIT) if name not in IN_FLIGHT]
    assert not over, "\n".join(f"{name}: {n} lines (limit {LIMIT})" for name, n in over)


def test_the_in_flight_exceptions_are_still_needed():
    # An exception left behind once its function was split would hide the next regression.
    names = {name for name, _ in long_functions(REPO, LIMIT)}
    stale = sorted(IN_FLIGHT - names)
    assert not stale, f"no longer over {LIMIT} lines: remove from IN_FLIGHT: {stale}"


@pytest.mark.parametrize("lines,over", [(LIMIT, False), (LIMIT + 1, True)])
def test_the_count_catches_a_long_function(tmp_path, lines, over):
    body = "".join(f"    x{i} = {i}\n" for i in range(lines - 1))
    nested = "class C:\n    def m(self):\n" + "".join(f"        y = {i}\n" for i in range(3))
    (tmp_path / "controller").mkdir()
    (tmp_path / "exporter").mkdir()
    (tmp_path / "controller" / "m.py").write_text(f"def f():\n{body}\n{nested}")
    found = long_functions(tmp_path, LIMIT)
    assert found == ([("controller/m.py:f", LIMIT + 1)] if over else [])
