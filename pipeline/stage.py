"""The contract between the runner and a stage.

The runner owns shards, the ledger, Ray and resume; a stage only turns one shard of upstream
Parquet into one Parquet file. Every stage's shard ``i`` covers the same clips as ingest's shard
``i``, so a stage reads its upstream outputs for that shard by name from ``ShardTask.inputs``.
Per-clip problems are reported in ``ShardResult.failures`` and never fail the shard; an
exception escaping ``process_shard`` marks the whole shard failed (it is retried next run).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar


class ClipError(Exception):
    """An expected, per-clip problem (bad input, too few points...): message is the reason."""

    def __init__(self, clip_id: str, reason: str):
        super().__init__(f"clip {clip_id}: {reason}")
        self.clip_id = clip_id
        self.reason = reason


class StageNotImplemented(RuntimeError):
    """Raised for declared stages whose implementation has not landed yet."""


@dataclass
class ShardTask:
    stage: str
    shard_id: str
    clip_ids: list[str]
    inputs: dict[str, str]  # upstream stage name -> absolute Parquet path of this shard
    output: str  # absolute Parquet path this stage must write (atomically)
    cfg: dict[str, Any]  # the whole resolved config as plain containers
    work_dir: str  # absolute
    # dataset-wide values computed on the driver (e.g. curate cut-offs)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ShardResult:
    n_clips: int
    n_ok: int
    failures: dict[str, str] = field(default_factory=dict)  # clip_id -> reason
    stats: dict[str, Any] = field(default_factory=dict)  # small JSON-able figures


class Stage:
    """Base class; subclasses set ``name``/``upstream`` and implement ``process_shard``."""

    name: str = ""
    upstream: tuple[str, ...] = ()
    implemented: bool = True
    #: config sections (top-level keys) whose values fingerprint this stage's outputs
    config_keys: tuple[str, ...] = ()

    def resources(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """Ray options for one shard task (num_cpus, num_gpus, memory...)."""
        return {"num_cpus": 1}

    def process_shard(self, task: ShardTask) -> ShardResult:  # pragma: no cover - abstract
        raise StageNotImplemented(f"stage '{self.name}' is declared but not implemented yet")

    # Optional hooks -------------------------------------------------------------------------
    def make_executor(self, cfg: dict[str, Any]) -> Any | None:
        """Return an object with ``submit(task) -> ObjectRef`` and ``close()`` to replace plain
        Ray tasks (e.g. a GPU actor pool that loads a model once); ``None`` = Ray tasks."""
        return None

    def prepare(self, ctx: Any) -> dict[str, Any]:
        """Dataset-wide values computed on the driver before shards run (passed as
        ``ShardTask.extra`` and folded into the shard fingerprint)."""
        return {}

    def finalize(self, ctx: Any) -> None:
        """Driver-side work after all shards of the stage are done (metadata, reports)."""


T = TypeVar("T")


def for_each_clip(
    items: Iterable[tuple[str, T]], fn: Callable[[str, T], Any]
) -> tuple[list[Any], dict[str, str]]:
    """Run ``fn`` per clip, turning any exception into that clip's failure reason.

    One bad clip must never take down its shard: expected problems raise ``ClipError``
    (reason kept verbatim); anything else is recorded with its type and last frame.
    """
    results: list[Any] = []
    failures: dict[str, str] = {}
    for clip_id, item in items:
        try:
            out = fn(clip_id, item)
        except ClipError as exc:
            failures[clip_id] = exc.reason
        except Exception as exc:  # noqa: BLE001 - isolation is the point
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" (at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
            failures[clip_id] = f"{type(exc).__name__}: {exc}{where}"
        else:
            if out is not None:
                results.append(out)
    return results, failures
