"""The one list of stages: each stage module registers its instance here when imported.

Adding a stage = one module in ``stages/`` that ends with ``STAGE = register(MyStage())`` and,
if it has settings, one ``conf/<section>/default.yaml`` (picked up automatically by the config
loader). The data-flow order is derived from the declared ``reads.upstream`` links (ties by
name), so no other file lists stages.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TypeVar

from pipeline.stage import Stage

S = TypeVar("S", bound=Stage)

_STAGES: dict[str, Stage] = {}
_DISCOVERED: list[bool] = []  # non-empty once the stages package was imported
#: the package whose modules are imported to find stages (tests may add their own modules)
STAGE_PACKAGE = "stages"


class UnknownStage(ValueError):
    """A stage name that no module registered."""


def register(stage: S) -> S:
    """Add ``stage`` (called at import time by its module); returns it for ``STAGE = ...``."""
    if not stage.name:
        raise ValueError(f"{type(stage).__name__} has no name")
    _STAGES[stage.name] = stage
    return stage


def unregister(name: str) -> None:
    """Remove a stage (tests that register a toy stage clean up after themselves)."""
    _STAGES.pop(name, None)


def discover() -> None:
    """Import every module of the stages package once, so each registers itself."""
    pkg = importlib.import_module(STAGE_PACKAGE)
    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{STAGE_PACKAGE}.{mod.name}")
    _DISCOVERED.append(True)


def stages() -> dict[str, Stage]:
    if not _DISCOVERED:
        discover()
    return _STAGES


def names() -> list[str]:
    """Every stage in data-flow order: upstream before downstream, ties by name."""
    all_stages = stages()
    order: list[str] = []
    placed: set[str] = set()
    todo = sorted(all_stages)
    while todo:
        ready = [n for n in todo if all(u in placed or u not in all_stages
                                        for u in all_stages[n].reads.upstream)]
        if not ready:
            raise ValueError(f"stages {todo} have circular upstream links")
        order.append(ready[0])
        placed.add(ready[0])
        todo.remove(ready[0])
    return order


def get(name: str) -> Stage:
    all_stages = stages()
    if name not in all_stages:
        raise UnknownStage(name)
    return all_stages[name]


def default_chain() -> list[str]:
    """What ``stage=all`` runs."""
    return [n for n in names() if stages()[n].in_all]


def chain(target: str) -> list[str]:
    """``target`` and everything upstream of it, in data-flow order."""
    if target == "all":
        return default_chain()
    needed: set[str] = set()
    todo = [target]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        todo.extend(get(name).reads.upstream)
    return [n for n in names() if n in needed]


def source() -> Stage:
    """The stage that discovers clips (exactly one)."""
    found = [s for s in stages().values() if s.is_source]
    if len(found) != 1:
        raise ValueError(f"exactly one stage must declare is_source, found {len(found)}")
    return found[0]
