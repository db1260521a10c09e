"""A metric 3D scene from one image: ``p_c = D(u, v) K^-1 [u, v, 1]^T`` for every pixel.

``D`` is camera-space z-depth in metres (what Depth Anything V2 metric and the sample's exact
depth give); pixel (col, row) is the continuous point (col + 0.5, row + 0.5), the convention of
``pipeline.schema`` and of the synthetic renderer, so a known depth re-projects exactly.

Point clouds are saved as binary little-endian PLY through ``plyfile`` (x, y, z as float32,
red/green/blue as uint8): the format every point-cloud viewer and three.js' ``PLYLoader`` read,
which is what a UI showing the scene needs; Parquet would need custom code on that side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import storage
from pipeline.io import atomic_path


@dataclass
class PointCloud:
    """Points in the condition camera's frame (OpenCV axes, metres) with their colours."""

    xyz: torch.Tensor  # (P, 3) float32
    rgb: torch.Tensor  # (P, 3) float32 in [0, 1]

    def __len__(self) -> int:
        return int(self.xyz.shape[0])

    def to(self, device: str | torch.device) -> PointCloud:
        return PointCloud(self.xyz.to(device), self.rgb.to(device))


def intrinsics_from_fov(width: int, height: int, fov_deg: float) -> np.ndarray:
    """Pinhole ``K`` (pixels) with horizontal field of view ``fov_deg``, square pixels and the
    principal point at the image centre (for an image without calibration metadata)."""
    if not 0 < fov_deg < 180:
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
    f = 0.5 * width / np.tan(np.deg2rad(fov_deg) / 2)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def intrinsics_from_normalised(intr: np.ndarray, width: int, height: int) -> np.ndarray:
    """RealEstate10K-normalised ``[fx/W, fy/H, cx/W, cy/H]`` -> pixel ``K``."""
    fx, fy, cx, cy = (float(x) for x in intr)
    return np.array([[fx * width, 0, cx * width], [0, fy * height, cy * height], [0, 0, 1.0]])


def unproject(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """(H, W) z-depth + (3, 3) pixel K -> (H, W, 3) camera-space points at pixel centres."""
    h, w = depth.shape
    dtype = depth.dtype
    v, u = torch.meshgrid(torch.arange(h, dtype=dtype, device=depth.device) + 0.5,
                          torch.arange(w, dtype=dtype, device=depth.device) + 0.5, indexing="ij")
    K = K.to(dtype=dtype, device=depth.device)
    x = (u - K[0, 2] - K[0, 1] * (v - K[1, 2]) / K[1, 1]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    return torch.stack([x * depth, y * depth, depth], dim=-1)


def point_cloud(image: np.ndarray | torch.Tensor, depth: np.ndarray | torch.Tensor,
                K: np.ndarray | torch.Tensor) -> PointCloud:
    """RGB uint8 (H, W, 3) + z-depth (H, W) in metres + pixel K -> the image's point cloud.

    Pixels with a non-finite or non-positive depth (holes of a sensor, sky) carry no point.
    """
    img = torch.as_tensor(np.asarray(image))
    d = torch.as_tensor(np.asarray(depth, dtype=np.float32))
    if img.shape[:2] != d.shape:
        raise ValueError(f"image {tuple(img.shape[:2])} and depth {tuple(d.shape)} differ in size")
    pts = unproject(d, torch.as_tensor(np.asarray(K, dtype=np.float64)).float())
    valid = torch.isfinite(d) & (d > 0)
    rgb = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
    return PointCloud(pts[valid].contiguous(), rgb[valid].contiguous())


def save_ply(cloud: PointCloud, path: str | Path) -> Path:
    """Binary PLY (x, y, z float32; red, green, blue uint8), written atomically."""
    from plyfile import PlyData, PlyElement

    path = storage.path(path)
    xyz = cloud.xyz.detach().cpu().float().numpy()
    rgb = (cloud.rgb.detach().cpu().float().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    arr = np.empty(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                    ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    arr["x"], arr["y"], arr["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    arr["red"], arr["green"], arr["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    with atomic_path(path, suffix=".ply") as tmp:  # fsync + rename; one upload on a bucket
        PlyData([PlyElement.describe(arr, "vertex")], text=False, byte_order="<").write(str(tmp))
    return path


def load_ply(path: str | Path) -> PointCloud:
    """Read a PLY written by ``save_ply`` (or any PLY with x, y, z and red, green, blue)."""
    from plyfile import PlyData

    v = PlyData.read(str(path))["vertex"].data
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
    rgb = np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.float32) / 255.0
    return PointCloud(torch.from_numpy(xyz), torch.from_numpy(rgb))
