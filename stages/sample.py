"""Stage ``sample``: DDIM generation from the latest train checkpoint to mp4 (a global stage).

``python -m pipeline run stage=sample`` uses a curated clip's first frame and metric
trajectory; ``train.sampling.image=PATH train.sampling.trajectory=PATH`` uses your own. It runs
after ``train`` and chains its output, so a new training run makes the sample stale, and so
does editing the image, trajectory or depth file it names (size and modification time).
"""

from __future__ import annotations

from pipeline import storage
from pipeline.io import write_json_atomic
from pipeline.log import log
from pipeline.registry import register
from pipeline.stage import GLOBAL, Reads, ShardResult, ShardTask, Stage
from stages.train import (
    SAMPLING_FILES,
    check_sampling,
    default_device,
    sample_progress,
    train_out_dir,
)


class SampleStage(Stage):
    name = "sample"
    kind = GLOBAL
    in_all = False
    #: the user's files a sample is made from: editing one makes the sample stale
    reads = Reads(upstream=("curate", "train"), config=("train",),
                  files=tuple(f"train.sampling.{k}" for k in SAMPLING_FILES))
    output_name = "sample.json"

    def out_dir_name(self, cfg: dict) -> str:
        return f"{train_out_dir(cfg)}/samples"

    def check_ready(self, cfg: dict) -> None:
        """Sampling settings, the own image and the trajectory file fail here, in one line,
        not after the upstream stages ran."""
        check_sampling(cfg)

    def process_shard(self, task: ShardTask) -> ShardResult:
        from trainer.sampling import sample_to_mp4, scene_inputs

        tcfg = task.cfg["train"]
        out_dir = storage.path(task.output).parent.parent
        files = sorted(task.inputs_all.get("curate", []))
        out = sample_to_mp4(tcfg, out_dir, files, default_device(),
                            on_step=sample_progress(task.cfg, "sample"),
                            **scene_inputs(task.cfg))
        log.info(f"[sample] {out['frames']} frames -> {out['mp4']}")
        write_json_atomic(out, task.output, allow_nan=False)
        return ShardResult(n_clips=1, n_ok=1, stats={"frames": out["frames"]})


STAGE = register(SampleStage())
