"""Camera-control metrics of the video-generation literature (CamI2V / RealCam-I2V protocol).

A generated video's cameras (estimated by SfM) are compared with the trajectory it was asked to
follow. Both trajectories are camera-to-world 4x4 poses (OpenCV axes) made relative to their
first frame (``inv(c2w_0) @ c2w_i``), which removes the arbitrary world frame SfM picks. Per clip:

- ``RotErr   = sum_i arccos((tr(R~_i R_i^T) - 1) / 2)`` (radians; the geodesic angle);
- ``TransErr = sum_i || T~_i / s~ - T_i / s ||``;
- ``CamMC    = sum_i || [R~_i | T~_i / s~] - [R_i | T_i / s] ||`` (Frobenius norm of the 3x4
  difference, i.e. the 2-norm of its 12 numbers).

The two translation normalisations: **relative** divides each trajectory by its own scene scale
(distance from the first camera to the farthest one), so SfM's unknown scale cancels; **metric**
divides both by the ground truth's scale, so a generated trajectory in metres is penalised for a
wrong size. Pure numpy: no pipeline, SfM or I/O here, so every formula is testable by hand.
"""

from __future__ import annotations

import numpy as np

#: below this scene scale a trajectory has no translation to normalise (a pure rotation)
MIN_SCENE_SCALE = 1e-12


def relative_to_first(c2w: np.ndarray) -> np.ndarray:
    """(N, 4, 4) camera-to-world -> poses in the first camera's frame (frame 0 = identity)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"expected (N, 4, 4) camera-to-world poses, got shape {c2w.shape}")
    out = np.linalg.inv(c2w[0])[None] @ c2w
    out[0] = np.eye(4)  # exact by definition; the product leaves round-off
    return out


def c2w_from_w2c34(w2c: np.ndarray) -> np.ndarray:
    """(N, 3, 4) or (N, 12) world-to-camera -> (N, 4, 4) camera-to-world (rigid inverse)."""
    w2c = np.asarray(w2c, dtype=np.float64).reshape(-1, 3, 4)
    R, t = w2c[:, :, :3], w2c[:, :, 3]
    out = np.zeros((len(w2c), 4, 4))
    out[:, :3, :3] = np.swapaxes(R, 1, 2)
    out[:, :3, 3] = -np.einsum("nji,nj->ni", R, t)
    out[:, 3, 3] = 1.0
    return out


def scene_scale(c2w_rel: np.ndarray) -> float:
    """Distance from the first camera to the farthest one (the relative normalisation)."""
    t = np.asarray(c2w_rel, dtype=np.float64)[:, :3, 3]
    return float(np.linalg.norm(t - t[0], axis=1).max())


def rotation_angles(R_gen: np.ndarray, R_gt: np.ndarray) -> np.ndarray:
    """Per-frame geodesic angle (radians) between (N, 3, 3) rotations; the cosine is clipped to
    [-1, 1] because round-off can push ``(tr - 1) / 2`` of identical rotations just above 1."""
    rel = np.einsum("nij,nkj->nik", np.asarray(R_gen, float), np.asarray(R_gt, float))
    cos = (np.trace(rel, axis1=1, axis2=2) - 1.0) / 2.0
    return np.arccos(np.clip(cos, -1.0, 1.0))


def rot_err(gen: np.ndarray, gt: np.ndarray) -> float:
    """RotErr: the sum of per-frame rotation angles (radians) of relative c2w poses."""
    return float(rotation_angles(gen[:, :3, :3], gt[:, :3, :3]).sum())


def trans_err(gen: np.ndarray, gt: np.ndarray, s_gen: float, s_gt: float) -> float:
    """TransErr: sum_i ||T~_i / s_gen - T_i / s_gt|| over relative c2w poses."""
    d = gen[:, :3, 3] / s_gen - gt[:, :3, 3] / s_gt
    return float(np.linalg.norm(d, axis=1).sum())


def cammc(gen: np.ndarray, gt: np.ndarray, s_gen: float, s_gt: float) -> float:
    """CamMC: sum_i of the Frobenius norm of [R~_i | T~_i / s_gen] - [R_i | T_i / s_gt]."""
    a = np.array(gen[:, :3, :4], dtype=np.float64)
    b = np.array(gt[:, :3, :4], dtype=np.float64)
    a[:, :, 3] /= s_gen
    b[:, :, 3] /= s_gt
    return float(np.linalg.norm((a - b).reshape(len(a), -1), axis=1).sum())


def _check_pair(gen: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gen = np.asarray(gen, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if gen.shape != gt.shape or gen.ndim != 3 or gen.shape[1:] != (4, 4):
        raise ValueError(f"trajectories must both be (N, 4, 4): {gen.shape} vs {gt.shape}")
    return gen, gt


def relative_metrics(gen_c2w: np.ndarray, gt_c2w: np.ndarray) -> dict[str, float]:
    """RotErr, TransErr_rel, CamMC_rel of two c2w trajectories (any world frame, any scale).

    Raises ``ValueError`` when either trajectory has no translation (scene scale 0): the
    relative normalisation is undefined there, and a number would be meaningless.
    """
    gen, gt = _check_pair(relative_to_first(gen_c2w), relative_to_first(gt_c2w))
    s_gen, s_gt = scene_scale(gen), scene_scale(gt)
    if s_gen < MIN_SCENE_SCALE or s_gt < MIN_SCENE_SCALE:
        raise ValueError(
            f"trajectory without translation (scene scale generated {s_gen:.3g}, "
            f"ground truth {s_gt:.3g}): relative translation errors are undefined"
        )
    return {
        "RotErr": rot_err(gen, gt),
        "TransErr_rel": trans_err(gen, gt, s_gen, s_gt),
        "CamMC_rel": cammc(gen, gt, s_gen, s_gt),
    }


def metric_metrics(gen_c2w_m: np.ndarray, gt_c2w_m: np.ndarray) -> dict[str, float]:
    """TransErr_metric, CamMC_metric: both trajectories in metres, both divided by the ground
    truth's scene scale (so a generated trajectory of the wrong size is penalised)."""
    gen, gt = _check_pair(relative_to_first(gen_c2w_m), relative_to_first(gt_c2w_m))
    s_gt = scene_scale(gt)
    if s_gt < MIN_SCENE_SCALE:
        raise ValueError("ground-truth trajectory without translation: metric errors undefined")
    return {
        "TransErr_metric": trans_err(gen, gt, s_gt, s_gt),
        "CamMC_metric": cammc(gen, gt, s_gt, s_gt),
    }


def frame0_scale(depth: np.ndarray, z_cam: np.ndarray) -> float:
    """Metres per SfM unit as the published protocol measures it: the median, over the SfM
    points seen in frame 0, of metric depth / SfM camera depth (invalid depth or points behind
    the camera left out). Raises ``ValueError`` when no point is usable."""
    depth = np.asarray(depth, dtype=np.float64)
    z_cam = np.asarray(z_cam, dtype=np.float64)
    ok = np.isfinite(depth) & np.isfinite(z_cam) & (depth > 0) & (z_cam > 0)
    if not ok.any():
        raise ValueError(f"no SfM point of frame 0 has a valid metric depth "
                         f"({len(depth)} points)")
    return float(np.median(depth[ok] / z_cam[ok]))


def scaled(c2w: np.ndarray, factor: float) -> np.ndarray:
    """Camera-to-world poses with translations multiplied by ``factor`` (rotations kept)."""
    out = np.array(c2w, dtype=np.float64)
    out[:, :3, 3] *= float(factor)
    return out


def cami2v_metric_metrics(gen_sfm_c2w: np.ndarray, k_gen: float, gt_sfm_c2w: np.ndarray,
                          k_gt: float) -> dict[str, float]:
    """The published absolute variant: SfM of the generated video and SfM of the ground-truth
    video, each put in metres by its own frame-0 factor, both divided by the ground-truth
    video's extent (``metric_metrics`` on the two scaled SfM trajectories)."""
    return metric_metrics(scaled(gen_sfm_c2w, k_gen), scaled(gt_sfm_c2w, k_gt))
