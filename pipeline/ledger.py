"""Per-stage, per-shard ledger: the single source of truth for resume and for ``status``.

One small JSON file per (stage, shard), written atomically by the driver only, so concurrent
shards never contend for a file and a killed driver leaves every entry either old or new.
``shard_state`` is the one freshness rule: ``run`` uses it to decide what to compute, ``status``
to report what ``run`` would do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pipeline import storage
from pipeline.io import read_json, write_json_atomic
from pipeline.stage import ERROR

DONE, FAILED, RUNNING, BLOCKED = "done", "failed", "running", "blocked"


@dataclass
class Entry:
    stage: str
    shard_id: str
    status: str
    clip_ids: list[str]
    fingerprint: str
    output: str  # relative to the work dir, so a work dir can be moved or copied whole
    output_digest: str | None = None
    n_clips: int = 0
    n_ok: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    #: clip -> "input" | "error" (missing: input)
    failure_kinds: dict[str, str] = field(default_factory=dict)
    filtered: dict[str, str] = field(default_factory=dict)
    inputs_digest: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)  # the stage's metrics
    error: str | None = None  # why the whole shard failed (crash, lost worker, blocked)
    #: attempts with the current fingerprint (reset when it changes or with force)
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None
    cpu_s: float | None = None
    peak_rss_mb: float | None = None
    node: str | None = None

    @property
    def errors(self) -> dict[str, str]:
        """Clip failures of kind ``error`` (unexpected: the shard retries)."""
        return {c: r for c, r in self.failures.items() if self.failure_kinds.get(c) == ERROR}


_FIELDS = {f.name for f in fields(Entry)}


@dataclass(frozen=True)
class ShardState:
    """What ``run`` does with a shard: ``todo`` (compute it) and a label for ``status``:
    ``done``, ``errors`` (done, some clips hit unexpected errors), ``failed``, ``pending``."""

    todo: bool
    label: str
    why: str = ""


def shard_state(
    entry: Entry | None,
    clip_ids: list[str],
    output_exists: bool,
    max_attempts: int,
    fingerprint: str | None = None,
    output_problem: str | None = None,
) -> ShardState:
    """The one freshness rule. ``fingerprint=None`` (``status`` without a full config) skips the
    fingerprint comparison; everything else is decided exactly as ``run`` decides it.
    ``output_problem``: why a done output on disk can no longer be used (``Stage.output_problem``);
    the shard is then redone with the same fingerprint (a global stage resumes its state)."""
    if entry is None:
        return ShardState(True, "pending", "never run")
    if entry.status == RUNNING:
        return ShardState(True, "pending", "interrupted while running")
    if entry.status == BLOCKED:
        return ShardState(True, "pending", _last_line(entry.error) or "blocked by upstream")
    if list(entry.clip_ids) != list(clip_ids):
        return ShardState(True, "pending", "stale: its clips differ from the current plan (re-run)")
    if fingerprint is not None and entry.fingerprint != fingerprint:
        return ShardState(True, "pending", "stale: inputs or settings changed")
    retry = entry.attempts < max_attempts
    if entry.status == FAILED:
        why = _last_line(entry.error)
        if retry:
            return ShardState(True, "failed", f"crashed, retried on the next run: {why}")
        return ShardState(False, "failed",
                          f"crashed {entry.attempts} times, not retried (force=true retries): "
                          f"{why}")
    if not output_exists:
        return ShardState(True, "pending", "stale: output missing")
    if output_problem and entry.status == DONE:
        return ShardState(True, "pending", f"stale: {output_problem}")
    errors = entry.errors
    if errors:
        if retry:
            return ShardState(True, "errors",
                              f"{len(errors)} clip(s) hit unexpected errors, retried on the "
                              "next run")
        return ShardState(False, "errors",
                          f"{len(errors)} clip(s) hit unexpected errors {entry.attempts} times, "
                          "not retried (force=true retries)")
    return ShardState(False, "done")


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""


class Ledger:
    def __init__(self, work_dir: Any, stage: str):
        self.stage = stage
        self.work_dir = storage.path(work_dir)  # a local Path or an object-storage prefix
        self.dir = self.work_dir / "ledger" / stage

    def output_path(self, entry: Entry) -> Any:
        return self.work_dir / entry.output

    def done_path(self, entry: Entry | None) -> Any:
        """The output of an entry that is done and still on disk, else ``None``."""
        if entry is None or entry.status != DONE:
            return None
        out = self.output_path(entry)
        return out if out.exists() else None

    def done_output(self, shard_id: str) -> Any:
        return self.done_path(self.get(shard_id))

    def path(self, shard_id: str) -> Any:
        return self.dir / f"{shard_id}.json"

    def get(self, shard_id: str) -> Entry | None:
        p = self.path(shard_id)
        try:
            data = read_json(p)  # no exists() first: one request per entry on object storage
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # unreadable entry: treat as never run (it is rewritten on completion)
        try:
            entry = Entry(**{k: v for k, v in data.items() if k in _FIELDS})
        except (ValueError, TypeError):
            return None  # unreadable entry: treat as never run (it is rewritten on completion)
        # entries written before typed results kept these in stats under magic keys
        stats = entry.stats
        if entry.inputs_digest is None and "inputs_digest" in stats:
            entry.inputs_digest = stats["inputs_digest"]
        if not entry.filtered and isinstance(stats.get("filtered"), dict):
            entry.filtered = stats["filtered"]
        for key in ("cpu_s", "peak_rss_mb", "node"):
            if getattr(entry, key) is None and f"_{key}" in stats:
                setattr(entry, key, stats[f"_{key}"])
        return entry

    def put(self, entry: Entry) -> None:
        write_json_atomic(asdict(entry), self.path(entry.shard_id))

    def entries(self, shard_ids: list[str]) -> dict[str, Entry | None]:
        return {s: self.get(s) for s in shard_ids}

    def state(
        self, entry: Entry | None, clip_ids: list[str], max_attempts: int,
        fingerprint: str | None = None, check: Callable[[Any], str | None] | None = None,
    ) -> ShardState:
        """``shard_state`` of an entry; ``check(output path)`` (``Stage.output_problem``) is
        asked only about a done output that exists."""
        out = entry is not None and self.output_path(entry).exists()
        problem = None
        if check is not None and out and entry is not None and entry.status == DONE:
            problem = check(self.output_path(entry))
        return shard_state(entry, clip_ids, out, max_attempts, fingerprint, problem)

    def is_fresh(self, entry: Entry | None, fingerprint: str) -> bool:
        """Done with this fingerprint, output on disk, no retry owed (``max_attempts`` 1)."""
        if entry is None:
            return False
        return not self.state(entry, list(entry.clip_ids), 1, fingerprint).todo

    def mark_running(self, entry: Entry) -> None:
        entry.status = RUNNING
        entry.started_at = time.time()
        entry.attempts += 1
        self.put(entry)
