"""Multi-worker training through Ray Train (V2) ``TorchTrainer`` on the pipeline's cluster.

Each worker runs ``trainer.loop.train`` with its rank: the sampler gives it a disjoint residue of
the global sample indices, ``ray.train.torch.prepare_model`` wraps the model in DDP (gloo on
CPU, NCCL on GPU). Checkpoints go through Ray's storage: every rank calls ``ray.train.report``
at a checkpoint step and rank 0 attaches the state file. Ray Train V2 refuses
``resume_from_checkpoint``; a second ``fit()`` with the same ``RunConfig(name, storage_path)``
starts from the latest checkpoint, which the loop reads through ``ray.train.get_checkpoint()``.
After the fit, the final state is copied to ``<out_dir>/checkpoints`` so sampling finds it
wherever training ran.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from trainer import checkpoint as ckpt

STATE_FILE = "state.pt"


class RayCheckpoints:
    """The ``trainer.loop`` checkpoint interface over ``ray.train`` report/get_checkpoint."""

    def latest(self) -> dict[str, Any] | None:
        import ray.train

        found = ray.train.get_checkpoint()
        if found is None:
            return None
        with found.as_directory() as d:
            return ckpt.load(Path(d) / STATE_FILE)

    def save(self, step: int, state: dict[str, Any] | None, metrics: dict[str, Any]) -> None:
        import ray.train

        if state is None:  # not rank 0: report metrics only, in lock-step with rank 0
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            ckpt.save_atomic(state, Path(d) / STATE_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from trainer.loop import DistInfo, train

    tcfg = dict(config["tcfg"])
    threads = max(1, int(float(tcfg["distributed"]["cpus_per_worker"])))
    tcfg["cpu_threads"] = threads  # a worker owns exactly the CPUs Ray reserved for it
    torch.set_num_threads(threads)
    ctx = ray.train.get_context()
    dist = DistInfo(
        rank=ctx.get_world_rank(), world=ctx.get_world_size(),
        device=str(ray.train.torch.get_device()),
    )
    train(
        tcfg, config["files"], config["out_dir"], dist, checkpoints=RayCheckpoints(),
        wrap_model=ray.train.torch.prepare_model if dist.world > 1 else None, progress=False,
    )


def fit(tcfg: dict[str, Any], files: list[str], out_dir: str | Path) -> dict[str, Any]:
    """Run (or resume) training with ``train.distributed.num_workers`` Ray Train workers."""
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    d = tcfg["distributed"]
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(d["health_check_interval_s"])
    n = int(d["num_workers"])
    use_gpu = d["use_gpu"]
    if use_gpu == "auto":
        use_gpu = ray.cluster_resources().get("GPU", 0) >= n
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"tcfg": tcfg, "files": [str(f) for f in files],
                           "out_dir": str(out_dir)},
        scaling_config=ScalingConfig(
            num_workers=n, use_gpu=bool(use_gpu),
            resources_per_worker={"CPU": float(d["cpus_per_worker"])},
        ),
        run_config=RunConfig(
            name=str(d["run_name"]), storage_path=str(out_dir / "ray"),
            checkpoint_config=CheckpointConfig(num_to_keep=int(tcfg["keep_checkpoints"])),
        ),
    )
    result = trainer.fit()
    summary: dict[str, Any] = dict(result.metrics or {})
    summary.update(workers=n, use_gpu=bool(use_gpu))
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as cdir:
            state = ckpt.load(Path(cdir) / STATE_FILE)
        step = int(state["step"])
        path = ckpt.save_atomic(state, ckpt.checkpoint_path(out_dir / "checkpoints", step))
        ckpt.prune(out_dir / "checkpoints", int(tcfg["keep_checkpoints"]))
        summary.update(step=step, checkpoint=str(path))
    summary.setdefault("step", 0)
    summary.setdefault("loss", float("nan"))
    summary.setdefault("samples_per_s", 0.0)
    return summary
