"""No function in the domain code, the stages or the trainer runs over MAX_LINES lines.

A verb made of short, well-named steps can be read, tested and changed one step at a time; a
150-line function cannot. Counted on the source with `ast`, from the `def` line to the function's
last line (docstring and nested functions included), for every function and method, nested ones
too. The bench scripts are outside the rule: they are one-off measurement drivers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

#: the longest a function may be, `def` line to last line
MAX_LINES = 60
#: the packages the rule covers
PACKAGES = ("pipeline", "stages", "trainer")

#: offenders that stay for now, keyed "path::qualified name", each with its reason
ALLOWED: dict[str, str] = {}


def _functions(node: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    """Every function under `node` with its dotted name (Class.method, outer.inner)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                yield name, child
            yield from _functions(child, f"{name}.")
        else:
            yield from _functions(child, prefix)


def _source_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                  if "bench" not in p.relative_to(ROOT).parts)


def _long_functions() -> dict[str, str]:
    """'path::name' -> 'path:line name (N lines)' for every function over MAX_LINES."""
    out = {}
    for path in _source_files():
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        for name, fn in _functions(tree):
            length = fn.end_lineno - fn.lineno + 1
            if length > MAX_LINES:
                out[f"{rel}::{name}"] = f"{rel}:{fn.lineno} {name} ({length} lines)"
    return out


def test_the_rule_sees_the_packages() -> None:
    """Guard against a vacuous pass: the scan finds the code and measures real functions."""
    files = _source_files()
    assert len(files) > 20, files
    names = {name for p in files for name, _ in _functions(ast.parse(p.read_text("utf-8")))}
    assert "CurateStage.finalize" in names and "frame_factors" in names


def test_no_function_over_the_limit() -> None:
    offenders = _long_functions()
    new = sorted(v for k, v in offenders.items() if k not in ALLOWED)
    assert not new, (f"{len(new)} function(s) over {MAX_LINES} lines, split them into short, "
                     "well-named steps:\n" + "\n".join(new)
                     + "\n\nall offenders, allowed ones included:\n"
                     + "\n".join(sorted(offenders.values())))


def test_allow_list_is_current() -> None:
    """An allowed function that got short (or was renamed) leaves the list, so it cannot regrow."""
    offenders = _long_functions()
    stale = sorted(k for k in ALLOWED if k not in offenders)
    assert not stale, f"no longer over {MAX_LINES} lines, remove from ALLOWED: {stale}"
