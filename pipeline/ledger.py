"""Per-stage, per-shard ledger: the single source of truth for resume and for ``status``.

One small JSON file per (stage, shard), written atomically by the driver only, so concurrent
shards never contend for a file and a killed driver leaves every entry either old or new.
A shard is reusable only when its entry says ``done``, its fingerprint (upstream output digests
+ stage config) matches the current one, and its output file still exists.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.io import read_json, write_json_atomic

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
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # why the whole shard failed (crash, lost worker, blocked)
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None


class Ledger:
    def __init__(self, work_dir: Path, stage: str):
        self.stage = stage
        self.work_dir = Path(work_dir)
        self.dir = self.work_dir / "ledger" / stage

    def output_path(self, entry: Entry) -> Path:
        return self.work_dir / entry.output

    def done_path(self, entry: Entry | None) -> Path | None:
        """The output of an entry that is done and still on disk, else ``None``."""
        if entry is None or entry.status != DONE:
            return None
        out = self.output_path(entry)
        return out if out.exists() else None

    def done_output(self, shard_id: str) -> Path | None:
        return self.done_path(self.get(shard_id))

    def path(self, shard_id: str) -> Path:
        return self.dir / f"{shard_id}.json"

    def get(self, shard_id: str) -> Entry | None:
        p = self.path(shard_id)
        if not p.exists():
            return None
        try:
            return Entry(**read_json(p))
        except (ValueError, TypeError):
            return None  # unreadable entry: treat as never run (it is rewritten on completion)

    def put(self, entry: Entry) -> None:
        write_json_atomic(asdict(entry), self.path(entry.shard_id))

    def entries(self, shard_ids: list[str]) -> dict[str, Entry | None]:
        return {s: self.get(s) for s in shard_ids}

    def is_fresh(self, entry: Entry | None, fingerprint: str) -> bool:
        return (
            entry is not None
            and entry.fingerprint == fingerprint
            and self.done_path(entry) is not None
        )

    def mark_running(self, entry: Entry) -> None:
        entry.status = RUNNING
        entry.started_at = time.time()
        entry.attempts += 1
        self.put(entry)
