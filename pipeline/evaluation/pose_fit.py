"""Camera poses of a video of a *known* synthetic scene, by photometric fit against renders.

Why: SfM (``pipeline.evaluation.camera_eval``) needs enough resolution for SIFT; a small
generated video (32x32) has too few features for it. In a synthetic scene, though, every
candidate pose can be rendered exactly, so each frame's pose is the one whose render looks most
like the frame. The fit is validated by the ground-truth video itself: fitted there, the errors
must be near zero (the bench's ``gt`` row).

Per frame: Levenberg-Marquardt on the 6 local pose parameters (rotation vector and translation
in the camera's own frame, ``c2w @ [exp(r) | t]``) with a forward-difference Jacobian; the
residual is the difference of the two images after a Gaussian blur and a per-channel
standardisation (mean 0, unit variance), so a generated frame's blur, colour cast or contrast
loss does not pull the pose. Frames are tracked in order: each starts from the previous
frame's pose extrapolated at constant velocity, or the previous pose itself, whichever renders
closer. Candidate cameras of one iteration are rendered in one batch
(``pipeline.synthetic.scenes.render_many``).

With ``robust_scale`` > 0 the per-pixel loss is Cauchy's, ``c^2/2 log(1 + (r/c)^2)``, minimised
by iteratively reweighted LM: pixels that match no pose of the scene (content a generator
invented where the condition frame had nothing to show, a stretched edge) stop pulling the pose,
as RANSAC keeps SfM from following such pixels. Where a frame is right, residuals are far below
``c`` and the fit is the least-squares one (the ``gt`` row does not move).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pipeline.synthetic.scenes import Scene, render_many, rotvec_to_matrix

#: damping factors tried per LM iteration (x the current one), in one render batch
LM_TRIAL_FACTORS = (0.1, 1.0, 10.0)
#: after an iteration that found no better pose, the damping grows by this (towards gradient
#: descent with small steps)
LM_REJECT_GROWTH = 100.0
#: keeps the standardisation finite on a flat (single-colour) image
STD_EPS = 1e-6


@dataclass
class FitSettings:
    """``conf/bench/msa.yaml`` ``pose_fit``: see each field."""

    blur_sigma_px: list[float]  # coarse-to-fine Gaussian blurs of both images (pixels)
    iterations: int  # LM iterations per frame and blur level (fewer when converged)
    tolerance: float  # stop a level when an iteration lowers the residual by less than this
    fd_rot_deg: float  # forward-difference step of the rotation parameters
    fd_trans_m: float  # forward-difference step of the translation parameters
    damping: float  # initial LM damping (relative to the mean diagonal of J^T J)
    supersample: int  # render samples per pixel side (the frames are area-averaged)
    valley_steps: list[float]  # multiples of the FD step tried along the weakest direction
    robust_scale: float = 0.0  # Cauchy scale of the per-pixel loss (standardised units); 0 = L2

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitSettings:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _standardise(img: np.ndarray, sigma: float) -> np.ndarray:
    """(..., H, W, 3) float -> blurred, per image and channel mean 0 / std 1, flattened."""
    x = np.asarray(img, dtype=np.float64)
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:])
    if sigma > 0:
        x = np.stack([cv2.GaussianBlur(f, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
                      for f in x])
    mu = x.mean(axis=(1, 2), keepdims=True)
    sd = x.std(axis=(1, 2), keepdims=True) + STD_EPS
    return ((x - mu) / sd).reshape(*lead, -1)


def _loss(r: np.ndarray, c: float) -> np.ndarray:
    """Per-row mean loss of residuals ``r`` (N, D): squared (c = 0) or Cauchy with scale c."""
    if c <= 0:
        return (r**2).mean(axis=-1)
    return (0.5 * c**2 * np.log1p((r / c) ** 2)).mean(axis=-1)


def _weights(r: np.ndarray, c: float) -> np.ndarray:
    """IRLS weights of the loss at residuals ``r``: 1 (L2), or ``1 / (1 + (r/c)^2)``."""
    return np.ones_like(r) if c <= 0 else 1.0 / (1.0 + (r / c) ** 2)


def _perturb(c2w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``c2w @ [exp(r) | t]`` with ``x = (r, t)``: a motion in the camera's own frame."""
    d = np.eye(4)
    d[:3, :3] = rotvec_to_matrix(np.asarray(x[:3], dtype=np.float64))
    d[:3, 3] = x[3:]
    return c2w @ d


class PoseFitter:
    """Fits world camera-to-world poses of frames of ``scene`` seen with pixel intrinsics ``K``."""

    def __init__(self, scene: Scene, K: np.ndarray, width: int, height: int,
                 settings: FitSettings):
        self.scene, self.K = scene, np.asarray(K, dtype=np.float64)
        self.width, self.height = int(width), int(height)
        self.s = settings
        self.fd = np.array([np.radians(settings.fd_rot_deg)] * 3 + [settings.fd_trans_m] * 3)

    def features(self, c2ws: np.ndarray, sigma: float) -> np.ndarray:
        """Standardised renders (N, D) of world camera-to-world poses (N, 4, 4)."""
        w2cs = np.linalg.inv(np.asarray(c2ws, dtype=np.float64))
        imgs = render_many(self.scene, self.K, w2cs, self.width, self.height,
                           self.s.supersample)
        return _standardise(imgs.astype(np.float32), sigma)

    def fit_frame(self, target: np.ndarray, inits: list[np.ndarray]) -> tuple[np.ndarray, float]:
        """Best pose for one frame (H, W, 3) uint8 or float, from the best of ``inits``, coarse
        to fine; returns (c2w, mean squared residual of the standardised images at the finest
        blur)."""
        pose, err = inits[0], np.inf
        for level, sigma in enumerate(self.s.blur_sigma_px):
            cands = list(inits) if level == 0 else [pose]
            pose, err = self._fit_level(target, cands, float(sigma))
        return pose, err

    def _fit_level(self, target: np.ndarray, inits: list[np.ndarray],
                   sigma: float) -> tuple[np.ndarray, float]:
        """LM at one blur level; returns the pose and its mean squared residual (the reported
        figure whatever the loss, so that fits with and without ``robust_scale`` compare)."""
        c = float(self.s.robust_scale)
        y = _standardise(np.asarray(target, dtype=np.float32), sigma)
        feats = self.features(np.stack(inits), sigma)
        costs = _loss(y - feats, c)
        k = int(np.argmin(costs))
        pose, f0, cost = inits[k], feats[k], float(costs[k])
        lam = float(self.s.damping)
        for _ in range(int(self.s.iterations)):
            cands = np.stack([_perturb(pose, np.eye(6)[j] * self.fd[j]) for j in range(6)])
            J = (self.features(cands, sigma) - f0).T / self.fd  # (D, 6)
            r = y - f0
            w = _weights(r, c)
            A, g = J.T @ (w[:, None] * J), J.T @ (w * r)
            diag = np.mean(np.diag(A)) + STD_EPS**2  # a textureless frame: A = 0
            lams = [lam * k for k in LM_TRIAL_FACTORS]
            steps = [np.linalg.solve(A + lm * diag * np.eye(6), g) for lm in lams]
            # plus steps along the least constrained direction: a small image confuses a turn
            # with a sideways move (rotation ~ translation / depth), and Gauss-Newton steps
            # stall in that curved valley; a few points along it are tried in the same batch
            _, vecs = np.linalg.eigh(self.fd[:, None] * A * self.fd[None, :])
            weak = self.fd * vecs[:, 0]
            steps.extend(k * weak for k in self.s.valley_steps)
            trial = np.stack([_perturb(pose, st) for st in steps])
            tf = self.features(trial, sigma)
            te = _loss(y - tf, c)
            j = int(np.argmin(te))
            if te[j] < cost:
                gain = cost - float(te[j])
                pose, f0, cost = trial[j], tf[j], float(te[j])
                lam = lams[j] if j < len(lams) else lam
                if gain < float(self.s.tolerance):
                    break
            else:
                lam *= LM_REJECT_GROWTH
        return pose, float(((y - f0) ** 2).mean())

    def fit_video(self, frames: np.ndarray, c2w0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World c2w (F, 4, 4) and residuals (F,) of a video, tracked from ``c2w0`` (the world
        pose the first frame was asked at; frame 0 is fitted too)."""
        poses: list[np.ndarray] = []
        errs: list[float] = []
        for i, frame in enumerate(frames):
            if i == 0:
                inits = [c2w0]
            elif i == 1:
                inits = [poses[-1]]
            else:  # constant velocity, accelerating, or standing still
                step = poses[-1] @ np.linalg.inv(poses[-2])
                inits = [step @ poses[-1], step @ step @ poses[-1], poses[-1]]
            pose, err = self.fit_frame(frame, inits)
            poses.append(pose)
            errs.append(err)
        return np.stack(poses), np.asarray(errs)
