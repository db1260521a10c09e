"""pycolmap plumbing for triangulating with *known* cameras: scratch space, the fixed-pose model,
pose-guided match verification and reading the result back as arrays.

Why a module of its own: the triangulate stage orchestrates (frames, config, filters, output
table); everything here is about getting pycolmap 4.x to do exactly "triangulate these matches
with these cameras and nothing else", which has several traps (the pitfalls list of the
design notes: rig/frame API, database image ids, thread counts, tmpfs databases).

Conventions: poses are world-to-camera 3x4 (OpenCV axes), ``K`` is in pixels at the resolution
the images were written at, with COLMAP's pixel-centre-at-+0.5 convention (the same convention
as ``pipeline.schema``, so scaling ``K`` and (u, v) by the resize ratio is exact).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

TMPFS = Path("/dev/shm")


def scratch_root(setting: str | None) -> Path:
    """Where per-clip scratch goes: ``auto`` = the tmpfs when writable (the database is hit by
    many small writes and pycolmap opens it once per call), else the system temp directory."""
    if setting and setting != "auto":
        return Path(setting)
    if TMPFS.is_dir() and os.access(TMPFS, os.W_OK):
        return TMPFS
    return Path(tempfile.gettempdir())


@contextlib.contextmanager
def scratch_dir(root: Path, prefix: str) -> Iterator[Path]:
    """A fresh directory under ``root``, removed on exit whatever happens (tmpfs is RAM)."""
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def pinhole_camera(K: np.ndarray, width: int, height: int, camera_id: int = 1) -> pycolmap.Camera:
    """A fixed PINHOLE camera; ``has_prior_focal_length`` keeps COLMAP from treating the focal
    length as a guess (hand-built cameras default to False)."""
    cam = pycolmap.Camera(
        model="PINHOLE",
        width=int(width),
        height=int(height),
        params=[float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])],
        camera_id=camera_id,
    )
    cam.has_prior_focal_length = True
    return cam


def orthonormal_w2c(w2c: np.ndarray) -> np.ndarray:
    """w2c (..., 3, 4) with each rotation replaced by its nearest rotation (SVD).

    Stored poses carry a few digits only; COLMAP keeps rotations as quaternions and normalises
    them during refinement, so a slightly non-orthonormal input would come back "changed". Using
    the projected rotation everywhere (model, epipolar checks, z_cam) keeps all three consistent.
    """
    w2c = np.array(w2c, dtype=np.float64)
    U, _, Vt = np.linalg.svd(w2c[..., :3, :3])
    d = np.sign(np.linalg.det(U @ Vt))
    U[..., :, 2] *= d[..., None]
    w2c[..., :3, :3] = U @ Vt
    return w2c


def rigid_from_w2c(w2c: np.ndarray) -> pycolmap.Rigid3d:
    """cam_from_world from a 3x4 w2c whose rotation is orthonormal (see ``orthonormal_w2c``)."""
    w2c = np.asarray(w2c, dtype=np.float64).reshape(3, 4)
    return pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[:, :3]), w2c[:, 3].copy())


def w2c_from_rigid(rigid: pycolmap.Rigid3d) -> np.ndarray:
    return np.asarray(rigid.matrix(), dtype=np.float64).reshape(3, 4)


def fundamental(K1: np.ndarray, w2c1: np.ndarray, K2: np.ndarray, w2c2: np.ndarray) -> np.ndarray:
    """F with x2^T F x1 = 0 for pixels x1 in image 1 and x2 in image 2 (homogeneous)."""
    R1, t1 = w2c1[:, :3], w2c1[:, 3]
    R2, t2 = w2c2[:, :3], w2c2[:, 3]
    R = R2 @ R1.T
    t = t2 - R @ t1
    tx = np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]])
    return np.linalg.inv(K2).T @ tx @ R @ np.linalg.inv(K1)


def sampson_sq(F: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Squared Sampson distance (pixels^2) of correspondences (N, 2) under F.

    Invariant to the scale of F, so short baselines (tiny t) need no special case; a pair with
    exactly zero baseline has F = 0 and every match gets NaN (rejected by the caller).
    """
    h1 = np.hstack([x1, np.ones((len(x1), 1))])
    h2 = np.hstack([x2, np.ones((len(x2), 1))])
    Fx1 = h1 @ F.T
    Ftx2 = h2 @ F
    num = np.einsum("ij,ij->i", h2, Fx1) ** 2
    den = Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


@dataclass
class PairStats:
    pairs: int = 0
    pairs_kept: int = 0
    matches: int = 0
    inliers: int = 0


def verify_with_poses(
    database_path: Path,
    K: np.ndarray,
    w2c_by_image: dict[int, np.ndarray],
    max_error_px: float,
    min_num_inliers: int,
) -> PairStats:
    """Replace COLMAP's RANSAC by the epipolar constraint of the known poses.

    With the poses given, the two-view geometry of every pair is known exactly; estimating it
    again by RANSAC costs time and can lock onto a wrong model (dominant plane, repeated
    texture). Each raw match is kept when its Sampson distance under the pose-derived F is at
    most ``max_error_px``; pairs with fewer than ``min_num_inliers`` survivors get no geometry
    (the triangulator then ignores them, as it ignores pairs RANSAC rejects).
    """
    stats = PairStats()
    db = pycolmap.Database.open(str(database_path))
    try:
        keypoints = {
            iid: np.asarray(db.read_keypoints(iid), dtype=np.float64)[:, :2]
            for iid in w2c_by_image
        }
        pair_ids, matches_list = db.read_all_matches()
        for pair_id, matches in zip(pair_ids, matches_list):
            id1, id2 = pycolmap.pair_id_to_image_pair(int(pair_id))
            matches = np.asarray(matches, dtype=np.uint32).reshape(-1, 2)
            stats.pairs += 1
            stats.matches += len(matches)
            if db.exists_two_view_geometry(id1, id2):
                db.delete_two_view_geometry(id1, id2)
            if len(matches) < min_num_inliers:
                continue
            F = fundamental(K, w2c_by_image[id1], K, w2c_by_image[id2])
            err = sampson_sq(F, keypoints[id1][matches[:, 0]], keypoints[id2][matches[:, 1]])
            keep = matches[np.nan_to_num(err, nan=np.inf) <= max_error_px**2]
            if len(keep) < min_num_inliers:
                continue
            geom = pycolmap.TwoViewGeometry()
            geom.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
            geom.F = F / np.linalg.norm(F)
            geom.inlier_matches = np.ascontiguousarray(keep, dtype=np.uint32)
            db.write_two_view_geometry(id1, id2, geom)
            stats.pairs_kept += 1
            stats.inliers += len(keep)
    finally:
        db.close()
    return stats
