"""Stage ``train``: dataset-wide, so the runner calls ``run(ctx)`` instead of shard tasks.

Trains on every curated shard that is done (``trainer.loop``, or Ray Train with
``train.distributed.backend=ray``), resumes from ``<work_dir>/train/checkpoints`` automatically,
and with ``train.sampling.after_train`` writes one DDIM sample as mp4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.io import write_json_atomic
from pipeline.stage import ShardResult, ShardTask, Stage


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def curated_files(ctx: Any) -> list[str]:
    files = [str(p) for p in ctx.done_outputs("curate")]
    if not files:
        raise RuntimeError("no curated shard is done: run stage=curate first (see `status`)")
    return sorted(files)


class TrainStage(Stage):
    name = "train"
    upstream = ("curate",)
    config_keys = ("train",)

    def process_shard(self, task: ShardTask) -> ShardResult:
        raise RuntimeError("stage 'train' is dataset-wide: the runner calls run(ctx)")

    def run(self, ctx: Any) -> dict[str, Any]:
        tcfg = ctx.cfg["train"]
        files = curated_files(ctx)
        out_dir = Path(ctx.work_dir) / tcfg["out_subdir"]
        backend = tcfg["distributed"]["backend"]
        progress = bool(ctx.cfg.get("progress", True)) and bool(tcfg["progress"])
        ctx.log(f"[train] {len(files)} curated shards, backend={backend} -> {out_dir}")
        if backend == "ray":
            from trainer.ray_train import fit

            summary = fit(tcfg, files, out_dir)
        elif backend == "local":
            from trainer.loop import DistInfo, train

            summary = train(tcfg, files, out_dir, DistInfo(device=default_device()),
                            progress=progress)
        else:
            raise ValueError(f"train.distributed.backend must be local or ray, got {backend}")
        for clip, why in sorted(summary.get("skipped_clips", {}).items()):
            ctx.log(f"[train] skipped clip {clip}: {why}")
        ctx.log(f"[train] step {summary['step']} loss {summary['loss']:.4f} "
                f"({summary['samples_per_s']:.2f} samples/s)")
        if tcfg["sampling"]["after_train"]:
            from trainer.sampling import sample_to_mp4, scene_inputs

            summary["sample"] = sample_to_mp4(tcfg, out_dir, files, default_device(),
                                              **scene_inputs(ctx.cfg))
            ctx.log(f"[train] sample written: {summary['sample']['mp4']}")
        write_json_atomic(summary, out_dir / "summary.json")
        return summary


STAGE = TrainStage()
