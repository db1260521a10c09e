"""Small synthetic inputs for tests (and benchmarks): RealEstate10K pose files with tiny frames,
randomly initialised Depth Anything checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.config import load_config


def rot_y(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def pose_lines(n: int, t0: int = 1_000_000, step: int = 33_366) -> list[str]:
    lines = []
    for i in range(n):
        R = rot_y(2.0 * i)
        t = np.array([0.05 * i, 0.0, 0.1 * i])
        vals = [t0 + i * step, 0.5, 0.8, 0.5, 0.5, 0, 0]
        for r in range(3):
            vals += [*R[r].tolist(), float(t[r])]
        lines.append(" ".join(f"{v:.9f}" if isinstance(v, float) else str(v) for v in vals))
    return lines


def write_clip(
    root: Path,
    clip_id: str,
    n: int = 4,
    split: str = "test",
    frames: str | None = "images",
    lines: list[str] | None = None,
    size: tuple[int, int] = (32, 24),
) -> Path:
    """A pose file plus frames ("images": folder of <timestamp>.png, "video": one mp4)."""
    lines = pose_lines(n) if lines is None else lines
    pose = root / split / f"{clip_id}.txt"
    pose.parent.mkdir(parents=True, exist_ok=True)
    pose.write_text("\n".join([f"https://example.invalid/{clip_id}", *lines]) + "\n")
    rng = np.random.default_rng(abs(hash(clip_id)) % 2**32)
    stamps = [int(line.split()[0]) for line in lines if line.split()]
    if frames == "images":
        d = root / "frames" / split / clip_id
        d.mkdir(parents=True, exist_ok=True)
        for ts in stamps:
            img = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            cv2.imwrite(str(d / f"{ts}.png"), img)
    elif frames == "video":
        d = root / "video_clips" / split / "vid0"
        d.mkdir(parents=True, exist_ok=True)
        vw = cv2.VideoWriter(str(d / f"{clip_id}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30, size)
        for _ in stamps:
            vw.write(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        vw.release()
    return pose


def cfg_for(root: Path, work: Path, *extra: str) -> dict:
    return load_config(
        ["dataset=re10k", f"dataset.root={root}", f"paths.work_dir={work}", "progress=false",
         *extra]
    )


def shard_of(work: Path, clip_id: str) -> str:
    """The shard a clip landed in, from the run's plan (shard names are hashes)."""
    from pipeline.io import read_json

    shards = read_json(Path(work) / "plan.json")["shards"]
    return next(s for s, clips in shards.items() if clip_id in clips)


def noise_videos(base: Path, names: list[str], n: int = 4, size: int = 32) -> tuple[Path, Path]:
    """Random-noise mp4s with a trajectory each: SfM registers nothing in them (quickly)."""
    from pipeline.evaluation.camera_eval import write_trajectory
    from trainer.sampling import write_mp4

    vids, trajs = base / "videos", base / "trajectories"
    rng = np.random.default_rng(0)
    for name in names:
        write_mp4(rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
                  vids / f"{name}.mp4", fps=8)
        c2w = np.tile(np.eye(4), (n, 1, 1))
        c2w[:, 2, 3] = np.linspace(0.0, 0.3, n)
        write_trajectory(c2w, trajs / f"{name}.txt")
    return vids, trajs


# ---------------------------------------------------------------------- offline depth checkpoints
#: Depth Anything V2 architecture shapes (backbone width/depth/heads, DPT neck), as published.
ARCHS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden": 32, "layers": 4, "heads": 2, "out": [1, 2, 3, 4],
             "neck": [8, 16, 32, 32], "fusion": 16, "head_hidden": 8},
    "vits": {"hidden": 384, "layers": 12, "heads": 6, "out": [3, 6, 9, 12],
             "neck": [48, 96, 192, 384], "fusion": 64, "head_hidden": 32},
    "vitb": {"hidden": 768, "layers": 12, "heads": 12, "out": [3, 6, 9, 12],
             "neck": [96, 192, 384, 768], "fusion": 128, "head_hidden": 32},
    "vitl": {"hidden": 1024, "layers": 24, "heads": 16, "out": [5, 12, 18, 24],
             "neck": [256, 512, 1024, 1024], "fusion": 256, "head_hidden": 32},
}


def save_random_checkpoint(
    out_dir: str,
    arch: str = "tiny",
    depth_type: str = "metric",
    max_depth: int = 20,
    input_size: int = 518,
    seed: int = 0,
) -> str:
    """A randomly initialised Depth Anything checkpoint + image processor saved like the hub's.

    For tests and benchmarks without network access (``bench/`` imports it from here): it is
    loaded through exactly the same ``pipeline.depth.model.load_depth_model`` path as a real
    checkpoint. The processor config mirrors the released
    ones (keep aspect ratio, multiple of 14, bicubic, ImageNet mean/std).
    """
    import torch
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessorPil,
    )

    a = ARCHS[arch]
    backbone = Dinov2Config(
        hidden_size=a["hidden"], num_hidden_layers=a["layers"], num_attention_heads=a["heads"],
        intermediate_size=4 * a["hidden"], patch_size=14, image_size=518,
        out_indices=a["out"], reshape_hidden_states=False,
    )
    cfg = DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=a["hidden"],
        neck_hidden_sizes=a["neck"], fusion_hidden_size=a["fusion"],
        head_hidden_size=a["head_hidden"], depth_estimation_type=depth_type,
        max_depth=max_depth,
    )
    torch.manual_seed(seed)
    model = DepthAnythingForDepthEstimation(cfg).eval()
    # transformers' init (std 0.02) makes the untrained head output a constant ~max_depth/2;
    # He-initialised convolutions give a map that varies over the image, so tests can see
    # a wrong pixel mapping.
    with torch.no_grad():
        for mod in [*model.neck.modules(), *model.head.modules()]:
            if isinstance(mod, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                torch.nn.init.kaiming_normal_(mod.weight)
        model.head.conv3.weight.mul_(0.02)  # keep the sigmoid away from saturation
        model.head.conv3.bias.zero_()
    model.save_pretrained(out_dir)
    proc = DPTImageProcessorPil(
        size={"height": input_size, "width": input_size}, keep_aspect_ratio=True,
        ensure_multiple_of=14, resample=3, do_pad=False,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )
    proc.save_pretrained(out_dir)
    # The hub's files name the class "DPTImageProcessor"; keep that so the Auto mapping (which
    # falls back to the PIL backend without torchvision) is exercised as with real checkpoints.
    path = Path(out_dir) / "preprocessor_config.json"
    meta = json.loads(path.read_text())
    meta["image_processor_type"] = "DPTImageProcessor"
    path.write_text(json.dumps(meta, indent=2))
    return out_dir


def scales_through_layouts(tmp_path: Path, common: list[str], runs: dict[str, list[str]],
                           rel: float) -> dict[str, float]:
    """Run ingest .. align once per dataset layout (``runs``: dataset name -> its overrides) on
    the same one-clip capture and return each layout's clip scale; every layout must record
    the known truth ``1 / rel`` and keep its single clip."""
    import pandas as pd
    import pytest

    from pipeline.runner import Runner

    scales = {}
    for name, extra in runs.items():
        work = tmp_path / f"work-{name}"
        Runner(load_config([f"dataset={name}", f"paths.work_dir={work}", *common, *extra])
               ).run("align")
        manifest = pd.read_parquet(work / "ingest")
        assert len(manifest) == 1 and manifest["true_scale"].iloc[0] == pytest.approx(1 / rel)
        aligned = pd.read_parquet(work / "align")
        assert len(aligned) == 1, name
        scales[name] = float(aligned["scale_median"].iloc[0])
    print(f"clip scale: {scales} (true {1 / rel:.4f})")
    return scales


def traj(rots: list[np.ndarray], ts: list[list[float]]) -> np.ndarray:
    """(F, 4, 4) poses from per-frame rotations and translations (known-answer metric tests)."""
    out = np.tile(np.eye(4), (len(ts), 1, 1))
    for i, (R, t) in enumerate(zip(rots, ts, strict=True)):
        out[i, :3, :3] = R
        out[i, :3, 3] = t
    return out
