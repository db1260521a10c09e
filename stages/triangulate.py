"""Triangulate stage: per shard, every clip's observations of triangulated points
(``pipeline.schema.OBSERVATIONS``) from the clip's given poses and intrinsics.

The method, its defaults and the output columns are described in ``pipeline/sfm/triangulation.py``
(``triangulate_clip``); this module reads the shard's manifest, runs it per clip (a bad clip is
recorded as failed with its reason) and writes the shard's table atomically.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa
import pycolmap

from pipeline import storage
from pipeline.formats import frames as frame_io
from pipeline.io import write_parquet_atomic
from pipeline.registry import register
from pipeline.schema import OBSERVATIONS
from pipeline.settings import Settings
from pipeline.sfm.triangulation import OBS_COLUMNS, triangulate_clip
from pipeline.stage import Reads, ShardResult, ShardTask, Stage, for_each_clip


# ------------------------------------------------------------------------------ stage
class TriangulateStage(Stage):
    name = "triangulate"
    reads = Reads(upstream=("ingest",), config=("triangulate",))

    def resources(self, cfg: dict[str, Any]) -> dict[str, Any]:
        return {"num_cpus": Settings(cfg).triangulate.num_cpus}

    def process_shard(self, task: ShardTask) -> ShardResult:
        settings = Settings(task.cfg).triangulate
        cfg = task.cfg["triangulate"]  # triangulate_clip takes the section as plain values
        # COLMAP's glog INFO lines (per image, per pass) would flood the driver through Ray
        pycolmap.logging.minloglevel = settings.log_level
        # clips of one source video in time order: its open reader decodes them in one pass
        manifest = sorted(storage.read_table(task.inputs["ingest"]).to_pylist(),
                          key=frame_io.decode_order)
        per_clip: dict[str, dict[str, Any]] = {}

        def run(clip_id: str, row: dict[str, Any]) -> pd.DataFrame:
            st: dict[str, Any] = {}
            per_clip[clip_id] = st
            return triangulate_clip(row, cfg, settings.scratch_dir, stats=st)

        frames, failures = for_each_clip(((r["clip_id"], r) for r in manifest), run)
        frames = [f for f in frames if len(f)]
        if frames:
            df = pd.concat(frames, ignore_index=True)
            table = pa.Table.from_pandas(df[OBS_COLUMNS], schema=OBSERVATIONS, preserve_index=False)
        else:
            table = OBSERVATIONS.empty_table()
        write_parquet_atomic(table, task.output)
        ok = [c for c in per_clip if c not in failures]
        stats = {
            "observations": int(table.num_rows),
            "points": int(sum(per_clip[c].get("points", 0) for c in ok)),
            "frames_without_obs": {c: per_clip[c]["frames_without_obs"] for c in ok
                                   if per_clip[c].get("frames_without_obs")},
            "seconds": {k: round(sum(per_clip[c].get(k, 0.0) for c in per_clip), 3)
                        for k in ("t_decode", "t_extract", "t_match", "t_triangulate")},
        }
        return ShardResult(n_clips=len(manifest), n_ok=len(manifest) - len(failures),
                           failures=failures, stats=stats)


STAGE = register(TriangulateStage())
