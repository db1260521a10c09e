"""Pose helpers shared by curate and the trainer, vectorised over frames.

Conventions (see ``pipeline/schema.py``): a ``w2c`` is a row-major 3x4 world-to-camera matrix in
OpenCV axes stored as 12 floats; ``c2w`` is its inverse as a 4x4. A *relative* pose expresses
every camera in the coordinate frame of a reference camera (``inv(c2w_ref) @ c2w_i``), which
makes the reference pose the identity and removes the arbitrary world frame of each clip: this is
what camera-conditioned video models consume. Only translations carry the clip's unknown scale,
so converting to metres is a multiplication of the translation column by a factor.
"""

from __future__ import annotations

import numpy as np

#: How far a camera-to-world file's bottom row may be from [0, 0, 0, 1] (absolute, per entry).
#: Files written with a few decimals pass; a scale or projective row, which ``rigid_inverse``
#: would silently treat as [0, 0, 0, 1], does not.
RIGID_TOL = 1e-4


def bottom_row_problem(mat: np.ndarray, tol: float = RIGID_TOL) -> str | None:
    """Why a 4x4 is not a rigid transform's homogeneous form (its bottom row), or None."""
    row = np.asarray(mat, dtype=np.float64).reshape(4, 4)[3]
    if np.abs(row - [0.0, 0.0, 0.0, 1.0]).max() <= tol:
        return None
    got = ", ".join(f"{x:g}" for x in row)
    return f"c2w bottom row must be [0, 0, 0, 1] (within {tol:g}), got [{got}]"


def pixel_K(intrinsics: list[float] | np.ndarray, w: int, h: int) -> np.ndarray:
    """Pixel K at (w, h) from normalised [fx/W, fy/H, cx/W, cy/H] (exact for any resize in the
    pixel-centre-at-+0.5 convention). The one copy: triangulation and the trainer use it."""
    fx, fy, cx, cy = (float(x) for x in intrinsics)
    return np.array([[fx * w, 0.0, cx * w], [0.0, fy * h, cy * h], [0.0, 0.0, 1.0]])


def w2c_to_mat44(w2c: np.ndarray) -> np.ndarray:
    """(N, 12) or (N, 3, 4) row-major world-to-camera -> (N, 4, 4) homogeneous matrices."""
    w2c = np.asarray(w2c, dtype=np.float64)
    n = w2c.shape[0]
    m = np.zeros((n, 4, 4), dtype=np.float64)
    m[:, :3, :4] = w2c.reshape(n, 3, 4)
    m[:, 3, 3] = 1.0
    return m


def mat44_to_w2c(mat: np.ndarray) -> np.ndarray:
    """(N, 4, 4) -> (N, 12) row-major top 3x4 block (the schema's storage form)."""
    mat = np.asarray(mat, dtype=np.float64)
    return mat[:, :3, :4].reshape(mat.shape[0], 12).copy()


def rigid_inverse(mat: np.ndarray) -> np.ndarray:
    """Inverse of rigid (N, 4, 4) transforms as [R^T, -R^T t].

    Exact for rotations and cheaper and better conditioned than a general inverse; poses stored
    with a few digits are only approximately orthonormal, and R^T keeps the result rigid in the
    same sense as the input rather than amplifying the rounding.
    """
    mat = np.asarray(mat, dtype=np.float64)
    rot = mat[..., :3, :3]
    t = mat[..., :3, 3]
    rt = np.swapaxes(rot, -1, -2)
    out = np.zeros_like(mat)
    out[..., :3, :3] = rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rt, t)
    out[..., 3, 3] = 1.0
    return out


def c2w_from_w2c(w2c: np.ndarray) -> np.ndarray:
    """(N, 12) world-to-camera -> (N, 4, 4) camera-to-world."""
    return rigid_inverse(w2c_to_mat44(w2c))


def relative_poses(c2w: np.ndarray, ref: int = 0) -> np.ndarray:
    """``inv(c2w[ref]) @ c2w[i]`` for every i: cameras in the reference camera's frame."""
    c2w = np.asarray(c2w, dtype=np.float64)
    ref_inv = rigid_inverse(c2w[ref])
    out = np.einsum("ij,njk->nik", ref_inv, c2w)
    out[ref] = np.eye(4)  # exact by definition; the product leaves ~1e-16 round-off
    return out


def scale_translation(mat: np.ndarray, scale: float | np.ndarray) -> np.ndarray:
    """Multiply the translation column of (N, 4, 4) poses by ``scale`` (scalar or per frame).

    For a relative pose the translation is linear in the scene's scale, so this maps relative
    units to metres when ``scale`` is the clip's factor (t_metric = t_rel * scale).
    """
    out = np.array(mat, dtype=np.float64, copy=True)
    s = np.asarray(scale, dtype=np.float64)
    out[..., :3, 3] *= s[..., None] if s.ndim else s
    return out


def metric_relative_c2w(w2c: np.ndarray, scale: float, ref: int = 0) -> np.ndarray:
    """(N, 12) relative-scale w2c -> (N, 4, 4) c2w relative to frame ``ref``, in metres."""
    return scale_translation(relative_poses(c2w_from_w2c(w2c), ref), scale)


def relative_metric_w2c(c2w_metric: np.ndarray) -> np.ndarray:
    """(N, 16) or (N, 4, 4) metric c2w relative to frame 0 -> (N, 4, 4) w2c in the same frame.

    Camera-conditioned video models (RealCam-I2V, CameraCtrl) take world-to-camera extrinsics
    whose world is the first camera; inverting the rigid c2w exactly (R^T, -R^T t) avoids the
    round-off of a general matrix inverse."""
    c2w = np.asarray(c2w_metric, dtype=np.float64).reshape(-1, 4, 4)
    R, t = c2w[:, :3, :3], c2w[:, :3, 3]
    out = np.zeros_like(c2w)
    out[:, :3, :3] = np.transpose(R, (0, 2, 1))
    out[:, :3, 3] = -np.einsum("nji,nj->ni", R, t)
    out[:, 3, 3] = 1.0
    return out


def camera_extent(c2w_metric: np.ndarray) -> float:
    """Largest distance (metres) of a camera centre from frame 0's: how far the camera moves,
    the number RealCam-Vid calls the camera scale (0 for a clip that only rotates)."""
    c2w = np.asarray(c2w_metric, dtype=np.float64).reshape(-1, 4, 4)
    return float(np.linalg.norm(c2w[:, :3, 3] - c2w[:1, :3, 3], axis=1).max())


def point_index(point: np.ndarray) -> np.ndarray:
    """Dense 0..P-1 index of each observation's point id: what ``midpoint_depths`` groups by.
    Callers that re-triangulate the same tracks many times compute it once and pass it in."""
    return np.unique(np.asarray(point), return_inverse=True)[1].reshape(-1)


def midpoint_depths(
    u: np.ndarray, v: np.ndarray, frame: np.ndarray, point: np.ndarray,
    w2c: np.ndarray, K: np.ndarray, reproj: bool = False,
    pidx: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Camera-space depth of every observation after re-triangulating its point from all of the
    point's rays (least-squares midpoint: the 3D point closest to the rays), with the given
    poses (N, 3, 4) and pixel ``K`` (same pixel convention as ``u, v``).

    Not a replacement for COLMAP's triangulation (no outlier handling, no reprojection
    refinement): it exists so the same observations can be re-triangulated under a perturbed
    ``K`` to measure how strongly the scale depends on the intrinsics. ``reproj=True`` also
    returns each observation's reprojection error (pixels) under that ``K``. ``pidx``: the
    observations' ``point_index(point)``, when the caller already has it.
    """
    u = np.asarray(u, np.float64)
    v = np.asarray(v, np.float64)
    frame = np.asarray(frame, np.int64)
    w2c = np.asarray(w2c, np.float64).reshape(-1, 3, 4)
    R, t = w2c[:, :, :3], w2c[:, :, 3]
    centre = -np.einsum("fji,fj->fi", R, t)  # -R^T t
    ray_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], 1)
    ray = np.einsum("nji,nj->ni", R[frame], ray_cam)  # R^T d: world direction
    ray /= np.linalg.norm(ray, axis=1, keepdims=True)
    proj = np.eye(3)[None] - ray[:, :, None] * ray[:, None, :]  # onto the ray's normal plane
    if pidx is None:
        pidx = point_index(point)
    n_pts = int(pidx.max()) + 1 if pidx.size else 0
    # per-point sums (bincount: one pass per component, far cheaper than np.add.at)
    rhs = np.einsum("nij,nj->ni", proj, centre[frame])
    A = np.stack([np.bincount(pidx, proj[:, i, j], n_pts) for i in range(3) for j in range(3)],
                 1).reshape(n_pts, 3, 3)
    b = np.stack([np.bincount(pidx, rhs[:, i], n_pts) for i in range(3)], 1).reshape(n_pts, 3)
    # a point seen along parallel rays has no depth: singular A -> NaN, not an exception
    det = np.linalg.det(A)
    ok = np.abs(det) > 1e-18
    X = np.full((n_pts, 3), np.nan)
    X[ok] = np.linalg.solve(A[ok], b[ok][..., None])[..., 0]
    Xc = np.einsum("nij,nj->ni", R[frame], X[pidx] - centre[frame])
    if not reproj:
        return Xc[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.hypot(K[0, 0] * Xc[:, 0] / Xc[:, 2] + K[0, 2] - u,
                       K[1, 1] * Xc[:, 1] / Xc[:, 2] + K[1, 2] - v)
    return Xc[:, 2], err
