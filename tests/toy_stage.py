"""A toy stage pair, registered from its own module like every real stage: ``toy`` (sharded,
per clip ``value = num_frames * toy.factor``) and ``toy_total`` (global: the sum over every
done ``toy`` shard). Used by tests/test_engine.py to prove that a new stage needs no change
to the engine. ``toy.bad_clips`` fail as bad input; ``toy.buggy_clips`` raise an unexpected
error while a file ``<work_dir>/toy_bug`` exists (a bug that a later fix removes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import read_json, write_json_atomic, write_parquet_atomic
from pipeline.registry import register
from pipeline.settings import Range
from pipeline.stage import GLOBAL, ClipError, ShardResult, ShardTask, Stage, for_each_clip

SCHEMA = pa.schema([("clip_id", pa.string()), ("value", pa.int64())])


@dataclass
class ToySettings:
    factor: Annotated[int, Range(1)]
    bad_clips: list
    buggy_clips: list


class ToyStage(Stage):
    name = "toy"
    upstream = ("ingest",)
    in_all = False
    config_keys = ("toy",)
    settings = {"toy": ToySettings}

    def process_shard(self, task: ShardTask) -> ShardResult:
        tcfg = task.cfg["toy"]
        manifest = pq.read_table(task.inputs["ingest"]).to_pylist()
        bug = (Path(task.work_dir) / "toy_bug").exists()

        def one(clip_id: str, row: dict[str, Any]) -> dict[str, Any]:
            if clip_id in tcfg["bad_clips"]:
                raise ClipError(clip_id, f"toy: clip {clip_id} is bad")
            if bug and clip_id in tcfg["buggy_clips"]:
                raise RuntimeError(f"toy bug on {clip_id}")
            return {"clip_id": clip_id, "value": int(row["num_frames"]) * int(tcfg["factor"])}

        rows, failures = for_each_clip(((r["clip_id"], r) for r in manifest), one)
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=SCHEMA), task.output)
        return ShardResult(n_clips=len(manifest), n_ok=len(rows), failures=failures,
                           stats={"value_sum": sum(r["value"] for r in rows)})


class ToyTotal(Stage):
    name = "toy_total"
    kind = GLOBAL
    upstream = ("toy",)
    in_all = False
    config_keys = ("toy",)
    output_name = "total.json"

    def process_shard(self, task: ShardTask) -> ShardResult:
        files = task.inputs_all["toy"]
        total = sum(int(v) for f in files for v in pq.read_table(f).column("value").to_pylist())
        runs = 1
        if Path(task.output).exists() and not task.restart:
            runs = int(read_json(task.output).get("runs", 0)) + 1
        write_json_atomic({"total": total, "shards": len(files), "runs": runs}, task.output)
        return ShardResult(n_clips=0, n_ok=0, stats={"total": total})


STAGE = register(ToyStage())
TOTAL = register(ToyTotal())
