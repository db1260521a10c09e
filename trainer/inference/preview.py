"""Glue between a sampling source and the preview: where the condition image's depth and
intrinsics come from, the trajectory to use, rendering at the model's and the clip's
resolution, and the QA numbers against real frames.

Depth (in this order): an explicit depth file (``sampling.depth``, ``.npy`` in metres or a
16-bit PNG in millimetres); else Depth Anything V2 metric on the sampling device when the depth
backend is ``da2_metric`` (or ``sampling.depth_model`` names a checkpoint); else, for a curated
clip, the dataset's own per-frame depth (``sensor`` backend: the bundled sample's exact depth,
RGB-D captures).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from pipeline import storage
from pipeline.log import log
from trainer.inference.render import (
    Render,
    coverage,
    masked_psnr,
    render_points,
    usable_mask,
)
from trainer.inference.scene import PointCloud, intrinsics_from_fov, intrinsics_from_normalised
from trainer.inference.trajectory import (
    Trajectory,
    TrajectoryError,
    load_trajectory,
    preset_trajectory,
    scene_depth,
)

EXIF_FOCAL_35MM = 0xA405  # FocalLengthIn35mmFilm (EXIF sub-IFD)
EXIF_SUB_IFD = 0x8769
FULL_FRAME_WIDTH_MM = 36.0  # the 35 mm-equivalent focal is relative to a 36 mm wide frame


class DepthUnavailable(RuntimeError):
    """No depth for the condition image (the message says what to configure)."""


class ImageError(ValueError):
    """A condition image that cannot be used (the message names the file and the problem)."""


# ------------------------------------------------------------------------------- image
def read_condition_image(
    path: str | Path, min_side: int, max_side: int, what: str = "image"
) -> tuple[np.ndarray, tuple[int, int]]:
    """An own condition image as RGB uint8 at its working size, and the file's own (W, H).

    Below ``min_side`` pixels on a side it is rejected (nothing to condition on); above
    ``max_side`` on the long side it is downscaled (area) before depth, the point cloud and the
    preview ever see it, since their memory grows with its pixels (a 64-megapixel photo would
    make the preview a tensor of tens of GB for detail the model's resolution drops anyway).
    Intrinsics taken after this (normalised, EXIF or field of view) hold at the working size.
    """
    p = Path(str(path))
    if not p.is_file():
        raise ImageError(f"{what} not found: {p}")
    bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f"cannot read {what} {p}: not an image OpenCV can decode")
    h, w = bgr.shape[:2]
    if min(h, w) < int(min_side):
        raise ImageError(f"{what} {p} is {w}x{h} pixels: too small to condition on (at least "
                         f"{int(min_side)} on each side, train.sampling.min_image_side)")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    f = int(max_side) / max(h, w)
    if f < 1:
        size = (max(1, round(w * f)), max(1, round(h * f)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        log.info(f"{what} {p.name} is {w}x{h}: downscaled to {size[0]}x{size[1]} for depth and "
                 f"the preview (train.sampling.max_image_side={int(max_side)})")
    return rgb, (w, h)


# ------------------------------------------------------------------------------- intrinsics
def exif_focal_35mm(path: str | Path) -> float | None:
    """35 mm-equivalent focal length from the image's EXIF, or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            exif = im.getexif()
            val = exif.get_ifd(EXIF_SUB_IFD).get(EXIF_FOCAL_35MM) or exif.get(EXIF_FOCAL_35MM)
    except (OSError, ValueError):
        return None
    try:
        f = float(val) if val else 0.0
    except (TypeError, ValueError):
        return None
    return f if f > 0 else None


def image_intrinsics(
    path: str | Path, width: int, height: int, normalised: Sequence[float] | None, fov_deg: float
) -> tuple[np.ndarray, str]:
    """Pixel K for an external image and where it came from: explicit normalised intrinsics,
    else the EXIF 35 mm-equivalent focal length, else the configured horizontal field of view
    (principal point at the centre for the last two)."""
    if normalised:
        if len(normalised) != 4 or min(float(x) for x in normalised) <= 0:
            raise ValueError(f"sampling.intrinsics must be 4 positive numbers [fx/W, fy/H, cx/W,"
                             f" cy/H], got {list(normalised)}")
        return intrinsics_from_normalised(np.asarray(normalised, float), width, height), "config"
    f35 = exif_focal_35mm(path)
    if f35 is not None:
        fov = float(np.rad2deg(2 * np.arctan(FULL_FRAME_WIDTH_MM / 2 / f35)))
        return intrinsics_from_fov(width, height, fov), f"exif focal {f35:g} mm (35 mm eq.)"
    return intrinsics_from_fov(width, height, float(fov_deg)), f"fov_deg {float(fov_deg):g}"


# ------------------------------------------------------------------------------- depth
def read_depth_file(path: str | Path) -> np.ndarray:
    """``.npy`` (metres) or a 16-bit PNG (millimetres) -> float32 metres (0 = missing)."""
    p = storage.path(path)
    try:
        data = p.read_bytes()  # a local file or an object
    except OSError as exc:
        raise DepthUnavailable(f"cannot read depth {p}: {exc}") from None
    if p.suffix.lower() == ".npy":
        try:
            d = np.load(io.BytesIO(data), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DepthUnavailable(f"cannot read depth {p}: {exc}") from None
        return np.asarray(d, dtype=np.float32)
    d = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if d is None or d.ndim != 2:
        raise DepthUnavailable(f"cannot read depth {p} (a .npy in metres or 16-bit PNG in mm)")
    return d.astype(np.float32) / np.float32(1000.0)


def dataset_depth_path(row: dict[str, Any], frame_idx: int, depth_root: str | None) -> Path | None:
    """The dataset's depth file of a curated clip's frame (``<depth_root>/[<split>/]<clip_id>/
    <frame stem>.npy|png``, the layout ingest reads), or None."""
    paths = row.get("frame_paths") or []
    if not depth_root or not paths:
        return None
    stem = Path(paths[frame_idx]).stem
    for folder in (storage.path(depth_root) / str(row.get("split", "")) / row["clip_id"],
                   storage.path(depth_root) / row["clip_id"]):
        for ext in (".npy", ".png"):
            if (folder / f"{stem}{ext}").is_file():
                return folder / f"{stem}{ext}"
    return None


def depth_from_model(rgb: np.ndarray, depth_cfg: dict[str, Any], device: str) -> np.ndarray:
    """Depth Anything V2 metric on one RGB uint8 image -> (H, W) float32 metres, through the
    depth stage's own loader and predictor (metric-head checks, preprocessing, upsampling)."""
    from pipeline.depth.model import DepthPredictor, Item, load_depth_model

    model, proc = load_depth_model(
        str(depth_cfg["model"]), float(depth_cfg["max_depth"]), depth_cfg.get("revision"),
        bool(depth_cfg.get("local_files_only", False)),
    )
    dtype = str(depth_cfg["dtype"] if device.startswith("cuda") else depth_cfg["cpu_dtype"])
    pred = DepthPredictor(model, proc, device, dtype, float(depth_cfg["max_depth"]), 1,
                          str(depth_cfg.get("preprocess", "processor")))
    h, w = rgb.shape[:2]
    empty = np.zeros(0, np.float32)
    item = Item(("sample", 0), pred.preprocess(rgb), (h, w), empty, empty, want_map=True)
    _, full = pred.run([item])[0]
    return np.asarray(full, dtype=np.float32)


def condition_depth(
    rgb: np.ndarray,
    depth_file: str | None,
    dataset_file: Path | None,
    depth_cfg: dict[str, Any] | None,
    device: str,
    full_wh: tuple[int, int] | None = None,
) -> tuple[np.ndarray, str]:
    """The condition image's metric depth and where it came from (see the module docstring).

    ``full_wh``: the image file's own size when ``rgb`` was downscaled to its working size
    (``read_condition_image``); a depth map of that size is downscaled with it (nearest: a
    blend of two surfaces' depths would be a point floating between them)."""
    if depth_file:
        d, src = read_depth_file(depth_file), f"file {Path(depth_file).name}"
    elif depth_cfg is not None and depth_cfg.get("backend") == "da2_metric":
        d, src = depth_from_model(rgb, depth_cfg, device), f"da2_metric {depth_cfg['model']}"
    elif dataset_file is not None:
        d, src = read_depth_file(dataset_file), f"dataset {dataset_file.name}"
    else:
        raise DepthUnavailable(
            "no depth for the condition image: give train.sampling.depth=FILE (.npy metres) or "
            "train.sampling.depth_model=HUB_ID_OR_DIR (Depth Anything V2 metric)"
        )
    h, w = rgb.shape[:2]
    if full_wh is not None and d.shape == (full_wh[1], full_wh[0]) and d.shape != (h, w):
        d = cv2.resize(d, (w, h), interpolation=cv2.INTER_NEAREST)
    if d.shape != (h, w):
        size = f"{w}x{h}"
        if full_wh is not None and tuple(full_wh) != (w, h):
            size = f"{full_wh[0]}x{full_wh[1]} (working size {w}x{h})"
        raise DepthUnavailable(f"depth ({src}) is {d.shape[1]}x{d.shape[0]}, the image {size}")
    return d, src


# ------------------------------------------------------------------------------- trajectory
def choose_trajectory(
    s: dict[str, Any], depth: np.ndarray | None, num_frames: int,
    curated_scale: dict[str, float] | None = None,
) -> Trajectory | None:
    """``sampling.trajectory`` (file) or ``sampling.trajectory_preset`` (sized from the depth),
    or None when neither is set; a file with another frame count than ``num_frames`` is
    resampled along its whole path (``Trajectory.fit``). A RealEstate10K pose file takes
    ``trajectory_scale`` or, when 0, the curated ``frame_scale`` of its first frame (the clip id
    is the file name)."""
    if s.get("trajectory"):
        scale = float(s.get("trajectory_scale") or 0.0)
        stem = Path(str(s["trajectory"])).stem
        if scale <= 0 and curated_scale and stem in curated_scale:
            scale = curated_scale[stem]
        return load_trajectory(s["trajectory"], re10k_scale=scale or None).fit(num_frames)
    if s.get("trajectory_preset"):
        if depth is None:
            raise TrajectoryError(
                f"trajectory_preset={s['trajectory_preset']} is sized from the scene depth, "
                "and no depth is available (train.sampling.depth or depth=da2_metric)"
            )
        return preset_trajectory(str(s["trajectory_preset"]), num_frames, scene_depth(depth),
                                 dict(s["preset"]))
    return None


# ------------------------------------------------------------------------------- preview
@dataclass
class Preview:
    """A render at one resolution plus its usable mask (F, H, W)."""

    render: Render
    usable: torch.Tensor
    K: np.ndarray  # (F, 3, 3) intrinsics it was rendered with


def render_preview(
    cloud: PointCloud, traj: Trajectory, K: np.ndarray, height: int, width: int,
    splat_size: int, edge_k: int, chunk_frames: int = 0, depth_tol: float = 0.0,
) -> Preview:
    """Render ``cloud`` along ``traj`` with the condition camera's ``K`` (pixels, at this
    resolution; scaled per frame by the trajectory's focal_scale) and apply the edge rule."""
    Ks = traj.intrinsics(K)
    dev = cloud.xyz.device
    r = render_points(cloud, torch.from_numpy(traj.c2w).to(dev), torch.from_numpy(Ks).to(dev),
                      height, width, splat_size, chunk_frames, depth_tol)
    return Preview(r, usable_mask(r.visible, edge_k), Ks)


def qa_against_real(preview: Preview, real: np.ndarray, first: int) -> dict[str, Any]:
    """Per-frame PSNR (dB, on the usable mask) and mask coverage against real frames
    (F, H, W, 3) uint8 at the preview's resolution; means over the first ``first`` frames
    (frame 0 is the condition image itself, so its PSNR is left out of the mean)."""
    dev = preview.render.image.device
    tgt = torch.from_numpy(real).to(dev).permute(0, 3, 1, 2).float() / 255.0
    psnr = masked_psnr(preview.render.image.float(), tgt, preview.usable).cpu()
    cov = coverage(preview.usable).cpu()
    n = min(int(first), len(psnr))
    head = psnr[1:n][torch.isfinite(psnr[1:n])]
    return {
        "psnr_db": [None if not np.isfinite(x) else round(float(x), 3) for x in psnr.tolist()],
        "coverage": [round(float(x), 4) for x in cov.tolist()],
        "first_frames": n,
        "mean_psnr_db_first": round(float(head.mean()), 3) if len(head) else None,
        "mean_coverage_first": round(float(cov[:n].mean()), 4),
    }


def to_uint8_frames(img: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [0, 1] -> (F, H, W, 3) uint8."""
    return (img.float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def mask_frames(mask: torch.Tensor) -> np.ndarray:
    """(F, H, W) bool -> (F, H, W, 3) uint8 white where usable."""
    m = mask.cpu().numpy().astype(np.uint8) * 255
    return np.repeat(m[..., None], 3, axis=-1)
