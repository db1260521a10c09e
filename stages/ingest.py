"""Ingest stage: discover clips, validate every one strictly, write manifest shards.

Discovery runs on the driver (``pipeline.formats.dataset``: file listings only); the per-shard
work (parsing, decoding frames to check them) runs on Ray. Every problem becomes a per-clip
failure with a reason that names the clip and the file, so one bad clip never hides the others.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.formats.dataset import (
    check_dataset,
    colmap_row,
    discover_colmap,
    discover_nerfstudio,
    discover_re10k,
    discover_rgbd,
    nerfstudio_row,
    re10k_row,
    render_synthetic,
    rgbd_row,
)
from pipeline.io import stable_hash, write_parquet_atomic
from pipeline.log import progress_callback
from pipeline.registry import register
from pipeline.schema import MANIFEST
from pipeline.settings import Settings
from pipeline.stage import ClipError, Reads, ShardResult, ShardTask, Stage, for_each_clip


class IngestStage(Stage):
    name = "ingest"
    is_source = True
    reads = Reads(config=("dataset", "ingest"))

    def check_inputs(self, cfg: dict[str, Any]) -> None:
        """A wrong ``dataset.root`` is one line at start-up (see ``check_dataset``)."""
        check_dataset(cfg)

    def discover(self, cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Clip id -> JSON-able description of its inputs (also fingerprints the shard)."""
        s = Settings(cfg)
        ds = s.dataset
        if ds.definition:  # a synthetic dataset (sample, stress): render on first use
            from pipeline.synthetic.sample_data import generate_sample

            on_progress = progress_callback(
                f"render {ds.name}", "frames", s.progress, float(s.log.progress_every_s),
                start=f"[ingest] rendering the {ds.name} dataset into {ds.root} on first "
                      "use (a few minutes)")
            render_synthetic(Path(ds.definition), ds.root,
                             functools.partial(generate_sample, on_progress=on_progress))
        if ds.layout == "rgbd":
            return discover_rgbd(cfg)
        if ds.layout == "nerfstudio":
            return discover_nerfstudio(cfg)
        if ds.layout == "colmap":
            return discover_colmap(cfg)
        return discover_re10k(cfg)

    def shard_extra(self, ctx: Any, shard_id: str, clip_ids: list[str]) -> dict[str, Any]:
        """Each clip's discovered inputs (paths, sizes, mtimes): they fingerprint the shard."""
        return {"sources": {c: ctx.sources[c] for c in clip_ids}}

    def process_shard(self, task: ShardTask) -> ShardResult:
        sources = task.extra["sources"]
        pattern = re.compile(Settings(task.cfg).ingest.clip_id_pattern)

        def one(clip_id: str, src: dict[str, Any]) -> dict[str, Any]:
            if not pattern.match(clip_id) or ".." in clip_id:
                raise ClipError(clip_id, f"clip id {clip_id!r} is not a safe file name")
            if src.get("problem"):
                raise ClipError(clip_id, src["problem"])
            if src["layout"] == "rgbd":
                return rgbd_row(clip_id, src, task.cfg)
            if src["layout"] == "nerfstudio":
                return nerfstudio_row(clip_id, src, task.cfg)
            if src["layout"] == "colmap":
                return colmap_row(clip_id, src, task.cfg)
            return re10k_row(clip_id, src, task.cfg)

        rows, failures = for_each_clip(((c, sources[c]) for c in task.clip_ids), one)
        table = pa.Table.from_pylist(rows, schema=MANIFEST)
        write_parquet_atomic(table, task.output)
        return ShardResult(
            n_clips=len(task.clip_ids),
            n_ok=len(rows),
            failures=failures,
            stats={"frames": int(sum(r["num_frames"] for r in rows))},
            # frame/depth files are referenced by path in the manifest: their size/mtime
            # must reach downstream fingerprints
            inputs_digest=stable_hash({c: sources[c] for c in task.clip_ids}),
        )


STAGE = register(IngestStage())
