"""The code layout the project promises: domain subpackages import nothing from the engine and
nothing from the stages, and the engine names no stage.

Checked on the source (every import statement, also those inside functions), so a late import
cannot slip through.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

#: the domain subpackages of pipeline/ (formats, SfM, depth, geometry, scale, synthetic scenes,
#: evaluation): usable without the runner, the ledger or Ray
DOMAIN = ("formats", "sfm", "depth", "geometry", "scale", "synthetic", "evaluation")
#: the engine: shards, ledger, config, CLI, logging, Ray
ENGINE = ("runner", "ledger", "registry", "stage", "cli", "config", "settings", "summary", "log",
          "ray_utils", "ui", "pool", "__main__")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names]
    return out


def _domain_files() -> list[Path]:
    return sorted(p for d in DOMAIN for p in (ROOT / "pipeline" / d).rglob("*.py"))


def test_domain_subpackages_exist() -> None:
    for d in DOMAIN:
        assert (ROOT / "pipeline" / d / "__init__.py").is_file(), d
    assert len(_domain_files()) > len(DOMAIN)


@pytest.mark.parametrize("path", _domain_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_domain_code_imports_no_engine_and_no_stage(path: Path) -> None:
    bad = [m for m in _imports(path)
           if m.startswith("stages") or any(m == f"pipeline.{e}" or m.startswith(f"pipeline.{e}.")
                                            for e in ENGINE)]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("name", ENGINE)
def test_engine_names_no_stage(name: str) -> None:
    path = ROOT / "pipeline" / f"{name}.py"
    bad = [m for m in _imports(path) if m == "stages" or m.startswith("stages.")]
    assert not bad, f"pipeline/{name}.py imports {bad}"
    # nor by string (a stage module named in code): only the package name of the registry
    text = path.read_text(encoding="utf-8")
    for stage in sorted(p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__"):
        assert f"stages.{stage}" not in text, f"pipeline/{name}.py names stages.{stage}"


def _engine_graph() -> dict[str, set[str]]:
    """``pipeline/<name>.py`` -> the ``pipeline/*.py`` modules it imports (also inside
    functions: a late import still closes a circle, it only hides it until run time)."""
    mods = {p.stem for p in (ROOT / "pipeline").glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name in sorted(mods):
        deps = set()
        for m in _imports(ROOT / "pipeline" / f"{name}.py"):
            parts = m.split(".")
            if parts[0] == "pipeline" and len(parts) > 1 and parts[1] in mods:
                deps.add(parts[1])  # pipeline.x, pipeline.x.y, and "from pipeline import x"
        graph[name] = deps - {name}
    return graph


def _circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle as a path ``[a, b, ..., a]``, or ``[]``: depth-first search."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_circle_finder_finds_a_circle() -> None:
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_circle_among_pipeline_modules() -> None:
    graph = _engine_graph()
    assert graph["stage"] and graph["runner"]  # the scan sees imports at all
    circle = _circle(graph)
    assert not circle, "import circle: " + " -> ".join(f"pipeline/{m}.py" for m in circle)


def _stage_files() -> list[Path]:
    return sorted(p for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("path", _stage_files(), ids=lambda p: p.stem)
def test_stage_uses_no_private_name_of_another_stage(path: Path) -> None:
    """A helper two stages share belongs in ``pipeline/`` (or is public): a stage reaching into
    another's ``_private`` names breaks when that stage is refactored on its own."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "stages" and parts[1:] != [path.stem]:
                bad += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            base = node.value  # stages.x._name spelled out after "import stages.x"
            if isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name) \
                    and base.value.id == "stages" and base.attr != path.stem:
                bad.append(f"stages.{base.attr}.{node.attr}")
    assert not bad, f"stages/{path.name} uses {bad}"
