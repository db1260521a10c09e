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
          "ray_utils", "ui", "__main__")


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
