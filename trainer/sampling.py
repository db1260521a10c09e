"""DDIM sampling: a clip from one image and a metric camera trajectory, written as mp4.

The trajectory is a list of camera-to-world poses in metres relative to the first (condition)
frame, the same convention the dataset trains on, so a trajectory measured in the real world
(or taken from a curated clip) can be replayed at its true scale.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from diffusers import DDIMScheduler

from pipeline.io import atomic_path
from trainer import checkpoint as ckpt
from trainer.data import (
    CuratedVideoDataset,
    adjust_intrinsics,
    load_curated,
    resize_crop,
)
from trainer.loop import build_backbone, build_noise_scheduler
from trainer.plucker import plucker_embedding


@torch.no_grad()
def ddim_sample(
    model: torch.nn.Module,
    tcfg: dict[str, Any],
    cond_image: torch.Tensor,
    plucker: torch.Tensor,
    steps: int,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    seed: int = 0,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """(B, 3, H, W) image in [-1, 1] + (B, F, 6, H, W) Plücker -> (B, F, 3, H, W) in [-1, 1].

    Classifier-free guidance is on the image condition (the model was trained with it dropped
    at ``cond_dropout.image``); the camera stays on in both branches. ``on_step(i, n)`` is
    called after each of the ``n`` denoising steps (progress for a render that takes a while).
    """
    device = next(model.parameters()).device
    ddim = DDIMScheduler.from_config(build_noise_scheduler(tcfg).config)
    ddim.set_timesteps(int(steps), device=device)
    b, f = plucker.shape[:2]
    h, w = cond_image.shape[-2:]
    gen = torch.Generator().manual_seed(int(seed))
    cond_image = cond_image.to(device)
    plucker = plucker.to(device)
    cond = model.condition(cond_image, generator=gen)
    z = torch.randn((b, *model.latent_shape(f, h, w)), generator=gen).to(device)
    z = z * ddim.init_noise_sigma
    ones = torch.ones(b, device=device)
    n_steps = len(ddim.timesteps)
    for i, t in enumerate(ddim.timesteps):
        tt = model.model_timesteps(t.expand(b).to(device), ddim)
        pred = model(z, tt, cond, plucker, ones, ones)
        if guidance_scale != 1.0:
            unc = model(z, tt, cond, plucker, torch.zeros_like(ones), ones)
            pred = unc + guidance_scale * (pred - unc)
        z = ddim.step(pred, t, z, eta=eta, generator=gen if eta > 0 else None).prev_sample
        if on_step is not None:
            on_step(i, n_steps)
    return model.decode(z)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [-1, 1] -> (F, H, W, 3) uint8."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def write_mp4(frames: np.ndarray, path: str | Path, fps: float) -> Path:
    """RGB uint8 (F, H, W, 3) -> mp4 (mp4v), atomically (temp name then rename)."""
    path = Path(path)
    h, w = frames.shape[1:3]
    with atomic_path(path, suffix=".mp4") as tmp:  # the encoder picks the container by name
        vw = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
        if not vw.isOpened():
            raise OSError(f"cannot open a video writer for {tmp}")
        try:
            for fr in frames:
                vw.write(cv2.cvtColor(np.ascontiguousarray(fr), cv2.COLOR_RGB2BGR))
        finally:
            vw.release()
    return path


def load_trajectory(path: str | Path) -> np.ndarray:
    """Lines of 16 numbers (row-major c2w, metres) -> (N, 4, 4) relative to the first pose."""
    mats = np.loadtxt(path, dtype=np.float64, ndmin=2).reshape(-1, 4, 4)
    return np.linalg.inv(mats[0])[None] @ mats


def load_model(tcfg: dict[str, Any], checkpoint_path: str | Path, device: str) -> torch.nn.Module:
    model = build_backbone(tcfg)
    model.load_trainable_state_dict(ckpt.load(checkpoint_path)["model"])
    return model.to(device).eval()


def sample_to_mp4(
    tcfg: dict[str, Any],
    out_dir: str | Path,
    data_files: list[str | Path] | None,
    device: str = "cpu",
    checkpoint_path: str | Path | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Generate one clip with the latest checkpoint and write ``<out_dir>/samples/*.mp4``.

    Source: ``sampling.image`` + ``sampling.trajectory`` when given, otherwise the first frame
    and metric trajectory of a curated clip (the generated frames are written next to the real
    ones, left and right, for a visual check).
    """
    s = tcfg["sampling"]
    out_dir = Path(out_dir)
    checkpoint_path = checkpoint_path or ckpt.latest_checkpoint(out_dir / "checkpoints")
    if checkpoint_path is None:
        raise FileNotFoundError(f"no checkpoint under {out_dir / 'checkpoints'}: train first")
    model = load_model(tcfg, checkpoint_path, device)
    dcfg = tcfg["data"]
    hw = (int(dcfg["resolution"][0]), int(dcfg["resolution"][1]))
    n = int(dcfg["num_frames"])
    reference = None
    if s.get("image"):
        if not s.get("trajectory"):
            raise ValueError("sampling.image needs sampling.trajectory (c2w per line, metres)")
        bgr = cv2.imread(str(s["image"]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"cannot read image {s['image']}")
        h0, w0 = bgr.shape[:2]
        f = 0.5 * w0 / np.tan(np.deg2rad(float(s["fov_deg"])) / 2)
        K = adjust_intrinsics(np.array([[f, 0, w0 / 2], [0, f, h0 / 2], [0, 0, 1]]), w0, h0, hw)
        img = resize_crop(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), hw)
        cond = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 127.5 - 1
        c2w = load_trajectory(s["trajectory"])[:n]
        if len(c2w) < n:
            raise ValueError(f"trajectory has {len(c2w)} poses, the model needs {n}")
        plucker = plucker_embedding(torch.from_numpy(K).expand(n, 3, 3), torch.from_numpy(c2w),
                                    *hw).float()[None]
        name = Path(str(s["image"])).stem
    else:
        rows = load_curated(data_files or [], s["split"] or None)
        if not rows:  # fall back to any split: a tiny dataset may have no test clip
            rows = load_curated(data_files or [])
        if s.get("clip_id"):
            rows = [r for r in rows if r["clip_id"] == s["clip_id"]]
        ds = CuratedVideoDataset(rows, dcfg, train=False, seed=int(tcfg["seed"]))
        item = ds[0]
        cond = item["video"][:1]
        plucker = item["plucker"][None]
        reference = item["video"]
        name = ds.rows[0]["clip_id"]
    video = ddim_sample(
        model, tcfg, cond, plucker, int(s["steps"]), float(s["guidance_scale"]),
        float(s["eta"]), int(s["seed"]), on_step,
    )[0].cpu()
    frames = to_uint8(video)
    if reference is not None:
        frames = np.concatenate([frames, to_uint8(reference)], axis=2)
    path = write_mp4(frames, out_dir / "samples" / f"{name}.mp4", float(s["fps"]))
    return {"mp4": str(path), "frames": int(len(frames)), "checkpoint": str(checkpoint_path),
            "source": name}
