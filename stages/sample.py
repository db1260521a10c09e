"""Stage ``sample``: DDIM generation from the latest train checkpoint to mp4 (dataset-wide).

``python -m pipeline run stage=sample`` uses a curated clip's first frame and metric
trajectory; ``train.sampling.image=PATH train.sampling.trajectory=PATH`` uses your own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.stage import ShardResult, ShardTask, Stage
from stages.train import default_device


class SampleStage(Stage):
    name = "sample"
    upstream = ("curate",)
    config_keys = ("train",)

    def process_shard(self, task: ShardTask) -> ShardResult:
        raise RuntimeError("stage 'sample' is dataset-wide: the runner calls run(ctx)")

    def run(self, ctx: Any) -> dict[str, Any]:
        from trainer.sampling import sample_to_mp4, scene_inputs

        tcfg = ctx.cfg["train"]
        out_dir = Path(ctx.work_dir) / tcfg["out_subdir"]
        files = [str(p) for p in ctx.done_outputs("curate")]
        out = sample_to_mp4(tcfg, out_dir, files, default_device(), **scene_inputs(ctx.cfg))
        ctx.log(f"[sample] {out['frames']} frames -> {out['mp4']}")
        return out


STAGE = SampleStage()
