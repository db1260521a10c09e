"""The training loop, shared by the single-process path and every Ray Train worker.

Exact resume: model, optimizer, lr scheduler, grad scaler and RNG states are checkpointed, the
data stream restarts at the global sample index of the resumed step (``trainer.data``), and the
noise, timesteps and dropout masks of step ``s`` come from a generator seeded by
``(seed, s, micro-batch, rank)``. A resumed run therefore reproduces the uninterrupted run's
loss sequence bit for bit on CPU.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler

from pipeline import storage
from pipeline.io import write_bytes_atomic
from pipeline.log import progress as progress_bar
from trainer import checkpoint as ckpt
from trainer.data import CuratedVideoDataset, load_curated, make_loader


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    device: str = "cpu"


def build_backbone(tcfg: dict[str, Any]) -> torch.nn.Module:
    kind = tcfg["backbone"]
    if kind == "builtin":
        from trainer.model import BuiltinBackbone

        model = BuiltinBackbone(tcfg["builtin"])
    elif kind == "svd":
        from trainer.svd_backbone import SVDBackbone

        model = SVDBackbone.from_pretrained(tcfg["svd"])
    else:
        raise ValueError(f"train.backbone must be 'builtin' or 'svd', got '{kind}'")
    if getattr(model, "residual", False) and tcfg["prediction_type"] != "sample":
        raise ValueError("builtin.residual_to_condition predicts the clean video: it needs "
                         f"prediction_type sample, got {tcfg['prediction_type']}")
    if tcfg["prediction_type"] not in model.supported_predictions:
        raise ValueError(
            f"backbone {kind} supports prediction_type {model.supported_predictions}, "
            f"got {tcfg['prediction_type']}"
        )
    return model


def build_noise_scheduler(tcfg: dict[str, Any]) -> DDPMScheduler:
    n = tcfg["noise"]
    return DDPMScheduler(
        num_train_timesteps=int(n["num_train_timesteps"]),
        beta_schedule=n["beta_schedule"],
        beta_start=float(n["beta_start"]),
        beta_end=float(n["beta_end"]),
        prediction_type=tcfg["prediction_type"],
        rescale_betas_zero_snr=bool(n["rescale_betas_zero_snr"]),
        timestep_spacing=n["timestep_spacing"],
        clip_sample=bool(n["clip_sample"]),
        clip_sample_range=float(n["clip_sample_range"]),
    )


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(1)[0]))
    return g


def camera_input(plucker: torch.Tensor, tcfg: dict[str, Any]) -> torch.Tensor:
    """The Plücker input the model gets: zeros for ``train.camera: none`` (the no-camera arm of
    the ablation, at training and sampling alike), else unchanged. Zeros rather than skipping
    the branch keep every arm's parameters, data and random draws identical."""
    if tcfg.get("camera", "metric") == "none":
        return torch.zeros_like(plucker)
    return plucker


def diffusion_loss(
    model: torch.nn.Module,
    scheduler: DDPMScheduler,
    batch: dict[str, torch.Tensor],
    gen: torch.Generator,
    tcfg: dict[str, Any],
    device: torch.device,
) -> torch.Tensor:
    """``||target - f_theta(z_t, c_img, c_cam, t)||^2`` with ``z_t = a_t z_0 + s_t eps`` and the
    target ``eps``, ``v`` or ``z_0`` (``sample``) by config. Random draws are made on the CPU
    generator ``gen`` so they do not depend on the device."""
    core = model.module if hasattr(model, "module") else model
    video = batch["video"].to(device)
    plucker = camera_input(batch["plucker"], tcfg).to(device)
    b = video.shape[0]
    cond_img = video[torch.arange(b, device=device), batch["cond_index"].to(device)]
    with torch.no_grad():
        z0 = core.encode_video(video, generator=gen)
        cond = core.condition(cond_img, generator=gen)
    noise = torch.randn(z0.shape, generator=gen).to(device, z0.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=gen).to(device)
    drop = tcfg["cond_dropout"]
    keep_image = (torch.rand(b, generator=gen) >= float(drop["image"])).float().to(device)
    keep_camera = (torch.rand(b, generator=gen) >= float(drop["camera"])).float().to(device)
    z_t = scheduler.add_noise(z0, noise, t)
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    elif scheduler.config.prediction_type == "sample":
        target = z0
    else:
        target = scheduler.get_velocity(z0, noise, t)
    pred = model(z_t, core.model_timesteps(t, scheduler), cond, plucker, keep_image, keep_camera)
    loss = F.mse_loss(pred.float(), target.float())
    # a backbone's own extra term (the warp prior's reprojection loss on its depth head)
    aux = core.auxiliary_loss(video) if hasattr(core, "auxiliary_loss") else None
    return loss if aux is None else loss + aux.float()


class LocalCheckpoints:
    """Checkpoints in ``<out_dir>/checkpoints/step-XXXXXXXX.pt`` (rank 0 writes)."""

    def __init__(self, out_dir: str | Path, keep: int):
        self.dir = storage.path(out_dir) / "checkpoints"
        self.keep = keep

    def latest(self) -> dict[str, Any] | None:
        found = ckpt.load_latest(self.dir)
        return found[1] if found is not None else None

    def save(self, step: int, state: dict[str, Any] | None, metrics: dict[str, Any]) -> None:
        if state is None:
            return
        ckpt.save_atomic(state, ckpt.checkpoint_path(self.dir, step))
        ckpt.prune(self.dir, self.keep)


def _autocast(device: torch.device, mixed: str):
    if device.type == "cuda" and mixed in ("bf16", "fp16"):
        dtype = torch.bfloat16 if mixed == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop lines of steps after the checkpoint (they will be logged again)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
    write_bytes_atomic("".join(ln + "\n" for ln in keep).encode(), path)


class _MetricsLog:
    """``metrics.jsonl`` lines: appended at once on disk; on object storage (no append) kept
    and written with each checkpoint, so a bucket sees one upload per checkpoint, not per step
    (a resume drops the lines after its checkpoint either way)."""

    def __init__(self, path: Any):
        self.path = path
        self.pending: list[str] = []

    def append(self, line: str) -> None:
        if storage.is_uri(self.path):
            self.pending.append(line)
            return
        with self.path.open("a") as fh:
            fh.write(line)

    def flush(self) -> None:
        if not self.pending:
            return
        try:
            old = self.path.read_bytes()
        except FileNotFoundError:
            old = b""
        write_bytes_atomic(old + "".join(self.pending).encode(), self.path)
        self.pending.clear()


def _seed_process(tcfg: dict[str, Any], device: torch.device) -> int:
    """Thread count and the global seeds, before anything draws a random number."""
    if device.type == "cpu" and int(tcfg["cpu_threads"]) > 0:
        # intra-op threads beyond the free cores spin at barriers: on 2 shared cores with a
        # loader worker, 2 threads measured 10x slower per step than 1
        torch.set_num_threads(int(tcfg["cpu_threads"]))
    seed = int(tcfg["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return seed


@dataclass
class _Training:
    """The model and everything an optimizer step updates or a checkpoint holds."""

    model: torch.nn.Module
    scheduler: DDPMScheduler
    params: Any
    optimizer: torch.optim.Optimizer
    lr_sched: Any
    scaler: torch.amp.GradScaler
    mixed: str

    @classmethod
    def build(cls, tcfg: dict[str, Any], device: torch.device) -> _Training:
        """Backbone, noise scheduler, AdamW, lr schedule and grad scaler from the config."""
        model = build_backbone(tcfg).to(device)
        scheduler = build_noise_scheduler(tcfg)
        params = model.trainable_parameters()
        a = tcfg["adam"]
        optimizer = torch.optim.AdamW(
            params, lr=float(tcfg["lr"]), betas=(float(a["beta1"]), float(a["beta2"])),
            eps=float(a["eps"]), weight_decay=float(a["weight_decay"]),
        )
        lr_sched = get_scheduler(
            tcfg["lr_scheduler"], optimizer, num_warmup_steps=int(tcfg["warmup_steps"]),
            num_training_steps=int(tcfg["max_steps"]),
        )
        mixed = str(tcfg["mixed_precision"])
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and mixed == "fp16")
        return cls(model, scheduler, params, optimizer, lr_sched, scaler, mixed)

    def resume(self, state: dict[str, Any] | None) -> int:
        """Load a checkpoint's states (RNG included); returns its step (0 without one)."""
        if state is None:
            return 0
        self.model.load_trainable_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_sched.load_state_dict(state["lr_scheduler"])
        self.scaler.load_state_dict(state["grad_scaler"])
        ckpt.set_rng_state(state["rng"])
        return int(state["step"])

    def state(self, step: int, backbone: str) -> dict[str, Any]:
        """What a checkpoint holds for an exact resume at ``step``."""
        return {
            "model": self.model.trainable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_sched.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "step": step,
            "backbone": backbone,
        }


@dataclass
class _Loop:
    """One run's step loop: optimizer steps over the batch stream, metrics and checkpoints."""

    tcfg: dict[str, Any]
    dist: DistInfo
    device: torch.device
    seed: int
    tr: _Training
    net: torch.nn.Module
    metrics_log: _MetricsLog
    checkpoints: Any
    bar: Any
    end: int
    per_step: int

    def optimizer_step(self, batches: Any, step: int) -> tuple[float, float, float]:
        """One step over ``grad_accum`` micro-batches: (mean loss, grad norm, lr used)."""
        tr, accum = self.tr, int(self.tcfg["grad_accum"])
        tr.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(accum):
            batch = next(batches)
            gen = step_generator(self.seed, step, micro, self.dist.rank)
            with _autocast(self.device, tr.mixed):
                loss = diffusion_loss(self.net, tr.scheduler, batch, gen, self.tcfg, self.device)
            tr.scaler.scale(loss / accum).backward()
            total += float(loss.detach()) / accum
        tr.scaler.unscale_(tr.optimizer)
        gnorm = torch.nn.utils.clip_grad_norm_(tr.params, float(self.tcfg["max_grad_norm"]))
        # a non-finite gradient would turn every weight into NaN for good: the step is skipped
        # (logged with its NaN/inf grad_norm); an enabled grad scaler skips it by itself
        if bool(torch.isfinite(gnorm)) or tr.scaler.is_enabled():
            tr.scaler.step(tr.optimizer)
        tr.scaler.update()
        lr = tr.optimizer.param_groups[0]["lr"]
        tr.lr_sched.step()
        return total, float(gnorm), lr

    def run(self, batches: Any, step: int) -> tuple[int, dict[str, Any]]:
        """Steps until ``end``, logging each and checkpointing every ``checkpoint_every`` and
        at the end; returns the last step and its metrics."""
        ckpt_every = int(self.tcfg["checkpoint_every"])
        last: dict[str, Any] = {}
        while step < self.end:
            t0 = time.perf_counter()
            total, gnorm, lr = self.optimizer_step(batches, step)
            step += 1
            dt = time.perf_counter() - t0
            last = {
                "step": step, "loss": total, "lr": lr, "grad_norm": gnorm,
                "samples_per_s": self.per_step / dt, "step_s": dt,
            }
            if self.dist.rank == 0:
                self.metrics_log.append(json.dumps(last) + "\n")
            self.bar.set_postfix(loss=f"{total:.4f}")
            self.bar.update(1)
            if step % ckpt_every == 0 or step == self.end:
                state = (self.tr.state(step, self.tcfg["backbone"]) if self.dist.rank == 0
                         else None)
                self.metrics_log.flush()  # with the checkpoint: a resume truncates to it anyway
                self.checkpoints.save(step, state, last)
        return step, last


def _dataset(tcfg: dict[str, Any], data_files: Sequence[str | Path],
             seed: int) -> CuratedVideoDataset:
    """The training clips of the curated tables (``train.data.split``; empty: every split)."""
    dcfg = tcfg["data"]
    rows = load_curated(data_files, dcfg["split"] or None)
    return CuratedVideoDataset(rows, dcfg, train=True, seed=seed,
                               camera=str(tcfg.get("camera", "metric")))


def train(
    tcfg: dict[str, Any],
    data_files: Sequence[str | Path],
    out_dir: str | Path,
    dist: DistInfo | None = None,
    stop_at: int | None = None,
    checkpoints: Any | None = None,
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    progress: bool = True,
    progress_every_s: float | None = None,
) -> dict[str, Any]:
    """Train until ``tcfg['max_steps']`` (or ``stop_at``, checkpointing there), resuming from
    the latest checkpoint. Returns a summary (steps, final loss, checkpoint, timings).

    Progress (rank 0): a bar on a terminal; otherwise a plain line every ``progress_every_s``
    seconds (the run's ``log.progress_every_s``: minutes of training must not be silent in a
    redirected log), or only the last line when it is None."""
    dist = dist or DistInfo()
    device = torch.device(dist.device)
    out_dir = storage.path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = checkpoints or LocalCheckpoints(out_dir, int(tcfg["keep_checkpoints"]))
    seed = _seed_process(tcfg, device)
    dataset = _dataset(tcfg, data_files, seed)
    tr = _Training.build(tcfg, device)
    step = tr.resume(checkpoints.latest())
    metrics_path = out_dir / "metrics.jsonl"
    if dist.rank == 0:
        _truncate_metrics(metrics_path, step)
    net = wrap_model(tr.model) if wrap_model is not None else tr.model
    net.train()
    bsz, accum = int(tcfg["batch_size"]), int(tcfg["grad_accum"])
    max_steps = int(tcfg["max_steps"])
    end = max_steps if stop_at is None else min(max_steps, int(stop_at))
    per_step = bsz * accum * dist.world
    loader = make_loader(
        dataset, bsz, start=step * per_step, rank=dist.rank, world=dist.world,
        num_workers=int(tcfg["data"]["num_workers"]), count=max(0, end - step) * bsz * accum,
        seed=seed,
    )
    batches = iter(loader)
    bar = progress_bar(end, "train", "steps", progress and dist.rank == 0,
                       math.inf if progress_every_s is None else float(progress_every_s),
                       initial=step)
    loop = _Loop(tcfg, dist, device, seed, tr, net, _MetricsLog(metrics_path), checkpoints,
                 bar, end, per_step)
    t_start, start_step = time.perf_counter(), step
    step, last = loop.run(batches, step)
    loop.metrics_log.flush()
    bar.close()
    wall, done = time.perf_counter() - t_start, step - start_step
    return {
        "step": step,
        "steps_run": done,
        "loss": last.get("loss", math.nan),
        "wall_s": wall,
        "samples_per_s": done * per_step / wall if wall > 0 and done else 0.0,
        "skipped_clips": dataset.skipped,
        "n_clips": len(dataset),
    }
