"""Stage ``train``: a global stage (one task for the whole dataset, on the driver).

Trains on every curated shard that is done (``trainer.loop``, or Ray Train with
``train.distributed.backend=ray``) and with ``train.sampling.after_train`` writes one DDIM sample
as mp4. Its fingerprint chains the digests of the curated shards and the ``train`` settings
except ``train.sampling`` (sampling never changes the model; the after-train sample is a
byproduct, ``stage=sample`` fingerprints those settings): the same data and settings resume
from ``<work_dir>/<train.out_subdir>/checkpoints`` after a crash; changed curated data, changed
settings or ``force=true`` start a new run (the earlier run's checkpoints and metrics are
removed first, never silently continued), but only once it is clear that a new run can train.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pipeline import storage
from pipeline.device import choose_device
from pipeline.io import write_json_atomic
from pipeline.log import log, progress
from pipeline.registry import register
from pipeline.settings import Settings
from pipeline.stage import GLOBAL, Reads, ShardResult, ShardTask, Stage

#: what a run leaves under out_dir that a later run would resume from
RESUMABLE = ("checkpoints", "ray", "metrics.jsonl", "summary.json")
#: ``train.sampling`` keys that name a file to sample from
SAMPLING_FILES = ("image", "trajectory", "depth")
#: ``train.sampling.intrinsics`` of an external image, normalised by its size
PINHOLE_INTRINSICS = ("fx/W", "fy/H", "cx/W", "cy/H")


def default_device() -> str:
    return choose_device("auto")


def curated_files(task: ShardTask) -> list[str]:
    files = sorted(task.inputs_all.get("curate", []))
    if not files:
        raise RuntimeError("no curated shard is done: run stage=curate first (see `status`)")
    return files


def trainable_clips(tcfg: dict[str, Any], files: list[str]) -> int:
    """How many curated clips a training run would use; raises ``RuntimeError`` naming why none
    qualifies. Checked before an earlier run's model is removed: a run that cannot train must
    leave the model it would replace alone."""
    from trainer.data import CuratedVideoDataset, load_curated

    dcfg = tcfg["data"]
    rows = load_curated(files, dcfg["split"] or None)
    try:
        return len(CuratedVideoDataset(rows, dcfg, train=True, seed=int(tcfg["seed"])).rows)
    except ValueError as exc:
        split = f" in split '{dcfg['split']}' (train.data.split)" if dcfg["split"] else ""
        raise RuntimeError(f"no curated clip to train on{split}: {exc} "
                           "(train.data.num_frames); nothing was removed") from None


def check_sampling(cfg: dict[str, Any]) -> None:
    """``train.sampling`` settings, and the image and trajectory files they name, that would
    fail only after training or model loading: one ``ConfigError`` line naming the key, before
    any stage runs."""
    from pipeline.errors import ConfigError
    from trainer.inference.trajectory import PRESETS

    s = Settings(cfg).train.sampling
    preset = s.trajectory_preset
    if preset and preset not in PRESETS:
        raise ConfigError(f"train.sampling.trajectory_preset must be one of {', '.join(PRESETS)} "
                          f"(or empty), got '{preset}'")
    if s.image and not (s.trajectory or preset):
        raise ConfigError("train.sampling.image needs train.sampling.trajectory (a trajectory "
                          "file) or train.sampling.trajectory_preset")
    for key in SAMPLING_FILES:
        value = getattr(s, key)
        if value and not storage.is_uri(value) and not Path(str(value)).expanduser().is_file():
            raise ConfigError(f"train.sampling.{key}: no such file {value}")
    intr = s.intrinsics
    if len(intr) not in (0, len(PINHOLE_INTRINSICS)):
        raise ConfigError(f"train.sampling.intrinsics must be [] or "
                          f"[{', '.join(PINHOLE_INTRINSICS)}], got {list(intr)}")
    from trainer.sampling import check_sampling_inputs

    check_sampling_inputs(cfg["train"])  # the files' contents: a readable image, a valid path


def train_out_dir(cfg: dict[str, Any]) -> str:
    return Settings(cfg).train.out_subdir


def sample_progress(cfg: dict[str, Any], desc: str) -> Any:
    """A DDIM progress callback: a bar on a terminal, periodic lines otherwise."""
    s = Settings(cfg)
    bar = progress(s.train.sampling.steps, desc, "steps", s.progress,
                   float(s.log.progress_every_s))

    def on_step(i: int, n: int) -> None:
        bar.update(1)
        if i + 1 >= n:
            bar.close()

    return on_step


class TrainStage(Stage):
    name = "train"
    kind = GLOBAL
    in_all = False
    #: ``train.sampling`` never changes the model: the after-train sample is a byproduct
    reads = Reads(upstream=("curate",), config=("train",), config_exclude=("train.sampling",))
    output_name = "summary.json"

    def out_dir_name(self, cfg: dict[str, Any]) -> str:
        return train_out_dir(cfg)

    def output_problem(self, output: Any) -> str | None:
        """A finished training whose checkpoints are gone or whose newest one is damaged is not
        done: the next run resumes from the last readable checkpoint (or starts over)."""
        from trainer import checkpoint as ckpt

        ckpt_dir = storage.path(output).parent / "checkpoints"
        found = ckpt.checkpoints(ckpt_dir)
        if not found:
            return f"no checkpoint under {ckpt_dir}"
        why = ckpt.unreadable(found[0])
        return None if why is None else f"latest checkpoint {found[0].name} is unreadable ({why})"

    def check_ready(self, cfg: dict[str, Any]) -> None:
        """The SVD backbone's weights must be loadable before the data stages run, and the
        after-train sample's settings, own image and trajectory valid before training."""
        s = Settings(cfg)
        tcfg = s.train
        if tcfg.sampling.after_train:  # the sample it writes: settings, image, trajectory
            check_sampling(cfg)
        if tcfg.distributed.backend == "ray" and storage.is_uri(s.paths.work_dir):
            from pipeline.errors import ConfigError

            raise ConfigError("train.distributed.backend=ray keeps its checkpoints on a shared "
                              "filesystem: use a local/shared paths.work_dir with it, or "
                              "train.distributed.backend=local with an s3:// work dir")
        if tcfg.backbone != "svd":
            return
        from pipeline.depth.model import model_source_problem

        svd = tcfg.svd
        problem = model_source_problem(svd.pretrained, None, svd.local_files_only,
                                       float(s.models.hub_timeout_s), marker="model_index.json")
        if problem:
            from pipeline.errors import ConfigError

            raise ConfigError(
                f"train.svd.pretrained: {problem}; download it on a connected machine "
                f"(huggingface-cli download {svd.pretrained} --local-dir DIR) and pass "
                "train.svd.pretrained=DIR"
            )

    def process_shard(self, task: ShardTask) -> ShardResult:
        cfg = task.cfg
        tcfg = cfg["train"]  # the trainer takes the section as plain values
        s = Settings(cfg)
        files = curated_files(task)
        out_dir = storage.path(task.output).parent
        trainable_clips(tcfg, files)  # before anything is removed
        if task.restart:
            for name in RESUMABLE:
                p = out_dir / name
                if p.is_dir():
                    p.rmtree() if storage.is_uri(p) else shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        backend = s.train.distributed.backend
        show = s.progress and s.train.progress
        log.info(f"[train] {len(files)} curated shards, backend={backend} -> {out_dir}"
                 + ("" if task.restart else " (resuming)"))
        if backend == "ray":
            from trainer.ray_train import fit

            summary = fit(tcfg, files, out_dir)
        else:
            from trainer.loop import DistInfo, train

            summary = train(tcfg, files, out_dir, DistInfo(device=default_device()),
                            progress=show,
                            progress_every_s=float(s.log.progress_every_s))
        for clip, why in sorted(summary.get("skipped_clips", {}).items()):
            log.info(f"[train] skipped clip {clip}: {why}")
        if summary.get("steps_run", 1):
            log.info(f"[train] step {summary['step']} loss {summary['loss']:.4f} "
                     f"({summary['samples_per_s']:.2f} samples/s)")
        else:
            log.info(f"[train] already at step {summary['step']}: nothing left to train")
        if s.train.sampling.after_train:
            from trainer.sampling import sample_to_mp4, scene_inputs

            summary["sample"] = sample_to_mp4(tcfg, out_dir, files, default_device(),
                                              on_step=sample_progress(cfg, "sample"),
                                              **scene_inputs(cfg))
            log.info(f"[train] sample written: {summary['sample']['mp4']}")
        write_json_atomic(summary, task.output)
        return ShardResult(
            n_clips=int(summary.get("n_clips", 0)), n_ok=int(summary.get("n_clips", 0)),
            stats={k: v for k, v in summary.items()
                   if k in ("step", "steps_run", "loss", "samples_per_s", "wall_s")},
        )


STAGE = register(TrainStage())
