"""Dataset over the curated shards: 16-frame samples with metric poses relative to a condition
frame, resized/cropped frames with exactly adjusted intrinsics, and Plücker maps.

Determinism is by *global sample index*: sample ``g`` is a pure function of ``(seed, g)`` (which
clip, stride, start, condition frame). A sampler hands out indices, so DataLoader workers never
duplicate samples (each index goes to exactly one worker), Ray ranks take disjoint residues of
``g``, and resuming at step ``s`` just restarts the index stream at ``s * batch``: the resumed run
sees the very samples the uninterrupted one would have.

Translations: the curated ``w2c`` are in the clip's relative (SLAM) scale and every frame has its
own metric factor. As in RealCam-I2V, a sample's poses are made relative to its condition frame
and their translations multiplied by *that frame's* factor (``t_metric = t_rel * factor``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline import storage
from pipeline.formats.frames import iter_frames
from pipeline.geometry.poses import metric_relative_c2w, pixel_K
from trainer.plucker import plucker_embedding

#: ``train.camera`` values: which poses the model sees (see ``CuratedVideoDataset``)
CAMERA_MODES = ("metric", "relative", "none")

_ROW_KEYS = (
    "clip_id", "split", "source_type", "video_path", "frame_paths", "num_frames", "width",
    "height", "intrinsics", "w2c", "frame_scale",
)


def load_curated(paths: Sequence[str | Path], split: str | None = None) -> list[dict[str, Any]]:
    """Rows of the curated Parquet files (sorted by clip id for a stable order), one split."""
    rows: list[dict[str, Any]] = []
    for p in sorted(str(x) for x in paths):
        table = storage.read_table(p)
        cols = [c for c in _ROW_KEYS if c in table.column_names]
        rows.extend(table.select(cols).to_pylist())
    if split:
        rows = [r for r in rows if r.get("split") == split]
    return sorted(rows, key=lambda r: r["clip_id"])


def select_frames(
    n_frames: int, length: int, stride: int, start_frac: float
) -> tuple[list[int], int]:
    """Indices of ``length`` frames at ``stride`` (clamped to the largest that fits) starting at
    ``start_frac`` of the free range; returns (indices, stride used)."""
    fit = (n_frames - 1) // max(length - 1, 1)
    if fit < 1:
        raise ValueError(f"clip has {n_frames} frames, needs at least {length}")
    s = max(1, min(int(stride), fit))
    free = n_frames - 1 - (length - 1) * s
    start = min(int(start_frac * (free + 1)), free)
    return [start + i * s for i in range(length)], s


def relative_metric_c2w(
    w2c_rel: np.ndarray, frame_scale: np.ndarray, indices: Sequence[int], cond: int
) -> np.ndarray:
    """(F, 4, 4) camera-to-world poses relative to frame ``indices[cond]``, in metres.

    ``w2c_rel`` is (N, 12) row-major 3x4 in the clip's relative scale; the translation of every
    relative pose is scaled by the condition frame's own factor.
    """
    w2c = np.asarray(w2c_rel, dtype=np.float64).reshape(-1, 12)[list(indices)]
    return metric_relative_c2w(w2c, float(frame_scale[indices[cond]]), ref=cond)


def resize_crop_geometry(
    width: int, height: int, out_hw: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Short-side resize then centre crop: ((resized W, H), (crop x0, y0))."""
    th, tw = out_hw
    s = max(tw / width, th / height)
    rw, rh = max(tw, round(width * s)), max(th, round(height * s))
    return (rw, rh), ((rw - tw) // 2, (rh - th) // 2)


def adjust_intrinsics(
    K: np.ndarray, width: int, height: int, out_hw: tuple[int, int]
) -> np.ndarray:
    """Pixel-unit K after ``resize_crop_geometry``: a resize scales continuous image coordinates
    (pixel edges at integers, centres at +0.5, as cv2's resize samples) by (W'/W, H'/H) exactly,
    and a crop shifts the principal point."""
    (rw, rh), (x0, y0) = resize_crop_geometry(width, height, out_hw)
    sx, sy = rw / width, rh / height
    K2 = np.array(K, dtype=np.float64)
    K2[0, 0] *= sx
    K2[0, 2] = K2[0, 2] * sx - x0
    K2[1, 1] *= sy
    K2[1, 2] = K2[1, 2] * sy - y0
    return K2


def resize_crop(img: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    h, w = img.shape[:2]
    (rw, rh), (x0, y0) = resize_crop_geometry(w, h, out_hw)
    interp = cv2.INTER_AREA if rw < w else cv2.INTER_LINEAR
    img = cv2.resize(img, (rw, rh), interpolation=interp) if (rw, rh) != (w, h) else img
    return img[y0 : y0 + out_hw[0], x0 : x0 + out_hw[1]]


def pixel_intrinsics(intr: Sequence[float], width: int, height: int) -> np.ndarray:
    return pixel_K(intr, width, height)


class CuratedVideoDataset(Dataset):
    """Map-style dataset indexed by global sample index ``g`` (any non-negative int).

    Training: clip order is a fresh seeded permutation per epoch, stride uniform in
    ``1..stride_max`` (clamped to what fits), random start and condition frame. Evaluation:
    clip ``g % n``, stride ``eval_stride`` (clamped), first frames, condition frame 0.
    Clips shorter than ``num_frames`` are left out and listed in ``skipped``.

    ``camera`` (``train.camera``): ``metric`` scales translations by the condition frame's
    curated factor; ``relative`` keeps the clip's own (SLAM, unknown-scale) translations, the
    baseline that metric alignment is measured against; ``none`` is treated as ``metric`` here
    (the trainer zeroes the Plücker input, see ``trainer.loop.camera_input``), so the three
    ablation arms read identical samples.
    """

    def __init__(self, rows: list[dict[str, Any]], cfg: dict[str, Any], train: bool, seed: int,
                 camera: str = "metric"):
        if camera not in CAMERA_MODES:
            raise ValueError(f"camera must be one of {CAMERA_MODES}, got {camera!r}")
        self.relative_poses = camera == "relative"
        self.length = int(cfg["num_frames"])
        self.stride_max = int(cfg["stride_max"])
        self.eval_stride = int(cfg["eval_stride"])
        self.out_hw = (int(cfg["resolution"][0]), int(cfg["resolution"][1]))
        self.train = train
        self.seed = int(seed)
        self.skipped = {
            r["clip_id"]: f"{r['num_frames']} frames < {self.length}"
            for r in rows
            if int(r["num_frames"]) < self.length
        }
        self.rows = [r for r in rows if int(r["num_frames"]) >= self.length]
        if not self.rows:
            raise ValueError(
                f"no clip with >= {self.length} frames among {len(rows)} curated clips"
            )

    def __len__(self) -> int:
        return len(self.rows)

    def plan(self, g: int) -> dict[str, Any]:
        """Which clip, frames and condition frame sample ``g`` uses (pure function of seed, g)."""
        n = len(self.rows)
        if self.train:
            epoch, pos = divmod(int(g), n)
            clip = int(np.random.default_rng([self.seed, epoch]).permutation(n)[pos])
            rng = np.random.default_rng([self.seed, 1, int(g)])
            stride = int(rng.integers(1, self.stride_max + 1))
            start_frac = float(rng.random())
            cond = int(rng.integers(0, self.length))
        else:
            clip, stride, start_frac, cond = int(g) % n, self.eval_stride, 0.0, 0
        row = self.rows[clip]
        idx, used = select_frames(int(row["num_frames"]), self.length, stride, start_frac)
        return {"clip": clip, "indices": idx, "stride": used, "cond": cond}

    def __getitem__(self, g: int) -> dict[str, Any]:
        p = self.plan(g)
        row = self.rows[p["clip"]]
        frames = dict(iter_frames(row, p["indices"]))
        h0, w0 = frames[p["indices"][0]].shape[:2]
        imgs = np.stack([resize_crop(frames[i], self.out_hw) for i in p["indices"]])
        video = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        K = adjust_intrinsics(pixel_intrinsics(row["intrinsics"], w0, h0), w0, h0, self.out_hw)
        scale = np.asarray(row["frame_scale"], dtype=np.float64)
        if self.relative_poses:
            scale = np.ones_like(scale)
        c2w = relative_metric_c2w(row["w2c"], scale, p["indices"], p["cond"])
        Kt = torch.from_numpy(K)
        c2w_t = torch.from_numpy(c2w)
        plucker = plucker_embedding(Kt.expand(len(c2w), 3, 3), c2w_t, *self.out_hw)
        return {
            "video": video,
            "plucker": plucker.float(),
            "c2w": c2w_t.float(),
            "K": Kt.float(),
            "cond_index": torch.tensor(p["cond"]),
            "frame_indices": torch.tensor(p["indices"]),
            "stride": torch.tensor(p["stride"]),
            "sample_index": torch.tensor(int(g)),
            "clip_index": torch.tensor(p["clip"]),
        }


class GlobalIndexSampler(Sampler[int]):
    """Global sample indices ``start + rank, start + rank + world, ...`` (``count`` of them,
    or endless): disjoint across Ray ranks, each handed to exactly one DataLoader worker."""

    def __init__(self, start: int, rank: int = 0, world: int = 1, count: int | None = None):
        self.start, self.rank, self.world, self.count = int(start), rank, world, count

    def __iter__(self) -> Iterator[int]:
        k = 0
        while self.count is None or k < self.count:
            yield self.start + self.rank + k * self.world
            k += 1

    def __len__(self) -> int:
        if self.count is None:
            raise TypeError("endless sampler has no length")
        return self.count


def _seed_worker(worker_id: int) -> None:
    """Samples do not use global RNGs, but seed them anyway so user transforms stay repeatable."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


def make_loader(
    dataset: CuratedVideoDataset,
    batch_size: int,
    start: int,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 0,
    count: int | None = None,
    seed: int = 0,
) -> DataLoader:
    gen = torch.Generator()
    gen.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=GlobalIndexSampler(start, rank, world, count),
        num_workers=num_workers,
        worker_init_fn=_seed_worker,
        generator=gen,
        persistent_workers=False,
        drop_last=False,
    )
