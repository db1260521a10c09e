"""Small synthetic inputs for engine tests: RealEstate10K pose files with tiny frames."""

from __future__ import annotations

from pathlib import Path

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
