"""Robust scale statistics for one clip: frame factors, a point bootstrap, shrinkage.

Pure numpy, no engine imports: ``pipeline/scale/factors.py`` calls it per clip and the
accuracy bench calls it on its own observations, so both measure exactly the same estimator.

Why each piece exists
- **Frame factor** = median of ``depth / z_cam`` over the frame's observations (the seed
  recipe). A median ignores up to half of the ratios being wrong (depth edges, glass, bad
  tracks), but on real footage its *inputs* are correlated: every observation of one 3D point
  shares that point's triangulation error, so counting observations overstates the evidence.
- **Point bootstrap** resamples 3D points, not observations (Poisson weights per point, so a
  replicate is a weighted median over the same sorted ratios: one sort, then cumulative sums).
  It gives each frame's and the clip's sampling spread honestly.
- **Conditioning term.** Errors common to every point (pose error of the given cameras, a
  frame/pose time offset) do not shrink with more points, so the bootstrap cannot see them. A
  triangulated depth is off by about (angular error of the rays) / (triangulation angle); the
  angular error is observable as the reprojection residual over the focal length, the angle
  from the geometry. ``sys = gain * (residual / f) / median angle`` is added in quadrature;
  ``gain`` and ``floor`` are calibrated with ``bench/bench_accuracy.py``.
- **Intrinsics sensitivity.** With the poses fixed, a wrong focal length moves every point the
  same way: on a rotation-dominated clip the rotation is then mis-compensated and read as
  parallax. ``focal_sensitivity`` re-triangulates the same observations with the focal scaled by
  ``1 +- step`` and reports ``d log(scale) / d log(f)`` (about -1 for sideways travel, 0 for
  pure forward motion, -3 to -6 for pans). ``focal_consistency`` asks the tracks themselves: the
  focal change that best explains them under the fixed poses (on synthetic pans a 2% error
  is found to within 0.5%). Sensitivity times (that measured inconsistency, in quadrature with
  a prior) is a fourth term: on a pan a 2% focal error moves the scale by 6-12%.
- **Shrinkage.** The trainer uses the condition frame's own factor, so a frame factor measured
  from a handful of points must not swing by 100%. Each frame's log factor is pulled toward the
  clip's by the ratio of its own variance to the between-frame variance that is really there
  (empirical Bayes: ``tau^2 = robust var(log f) - typical sampling var``, floored at 0): a
  well-measured frame keeps its own value, a poorly measured one takes the clip's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.geometry.poses import midpoint_depths, point_index

#: two-sided normal quantile of the reported interval (95%)
Z95 = 1.959963984540054
#: MAD -> standard deviation for normal data
MAD_TO_SD = 1.482602218505602
#: sd of a median / sd of a mean for normal data
SQRT_HALF_PI = 1.2533141373155003
#: autocorrelation cap: n_eff never drops below n / 39 (a clip is never "one frame" long)
MAX_RHO = 0.95


@dataclass
class FrameRatios:
    """One clip's valid ratios, sorted by (frame, ratio), with per-observation point index."""

    ratio: np.ndarray  # (n,) float64, sorted by frame, then by value within each frame
    point: np.ndarray  # (n,) int64 in [0, n_points)
    n_points: int
    starts: np.ndarray  # (num_frames,) first index of each frame
    ends: np.ndarray  # (num_frames,) one past the last

    @classmethod
    def build(
        cls, frame: np.ndarray, ratio: np.ndarray, point: np.ndarray, num_frames: int
    ) -> FrameRatios:
        frame = np.asarray(frame, np.int64)
        ratio = np.asarray(ratio, np.float64)
        point_idx = point_index(np.asarray(point, np.int64))
        order = np.lexsort((ratio, frame))
        f = frame[order]
        frames = np.arange(num_frames)
        return cls(
            ratio=ratio[order],
            point=point_idx[order].astype(np.int64),
            n_points=int(point_idx.max()) + 1 if point_idx.size else 0,
            starts=np.searchsorted(f, frames, side="left"),
            ends=np.searchsorted(f, frames, side="right"),
        )

    def counts(self) -> np.ndarray:
        return (self.ends - self.starts).astype(np.int64)

    def measured(self, min_obs: int) -> np.ndarray:
        """Frames with enough ratios to carry their own factor; at least one whatever the
        setting (an empty frame's median would be NaN and poison the clip's factors)."""
        return self.counts() >= max(1, int(min_obs))


def weighted_medians(values: np.ndarray, weights: np.ndarray, starts: np.ndarray,
                     ends: np.ndarray) -> np.ndarray:
    """Weighted median of each segment ``values[s:e]`` (values sorted within segments) for
    every row of ``weights`` (B, n): returns (B, n_segments); NaN where a segment has no weight.
    Where the cumulative weight reaches exactly half, the midpoint with the next value is taken,
    so unit weights give the ordinary median (the two middle values averaged for even sizes)."""
    b = weights.shape[0]
    out = np.full((b, len(starts)), np.nan)
    for j, (s, e) in enumerate(zip(starts, ends)):
        if e <= s:
            continue
        w = weights[:, s:e]
        cw = np.cumsum(w, axis=1)
        half = cw[:, -1:] / 2.0
        lo = np.argmax(cw >= half, axis=1)
        # exactly half reached at lo: the median is the midpoint with the next value
        hi = np.minimum(np.where(np.isclose(cw[np.arange(b), lo], half[:, 0]), lo + 1, lo),
                        e - s - 1)
        v = values[s:e]
        med = 0.5 * (v[lo] + v[hi])
        med[cw[:, -1] <= 0] = np.nan
        out[:, j] = med
    return out


@dataclass
class ClipScale:
    frame_raw: np.ndarray  # (F,) median per frame; NaN where not measured
    frame_sigma: np.ndarray  # (F,) bootstrap sd of log frame factor; NaN where not measured
    clip: float  # median of the measured frame factors
    clip_sigma_boot: float  # bootstrap sd of log clip factor; NaN without a bootstrap


def clip_scale(data: FrameRatios, min_obs: int, n_boot: int, seed: int) -> ClipScale:
    """Frame medians, clip median and their bootstrap over points (see module docstring)."""
    measured = data.measured(min_obs)
    ones = np.ones((1, data.ratio.size))
    raw = weighted_medians(data.ratio, ones, data.starts, data.ends)[0]
    raw[~measured] = np.nan
    meas = np.flatnonzero(measured)
    clip = float(np.median(raw[meas]))
    frame_sigma = np.full(measured.size, np.nan)
    clip_sigma = float("nan")
    if n_boot > 0 and data.n_points > 0:
        rng = np.random.default_rng(seed)
        wp = rng.poisson(1.0, size=(n_boot, data.n_points)).astype(np.float64)
        rep = weighted_medians(data.ratio, wp[:, data.point], data.starts[meas], data.ends[meas])
        with np.errstate(invalid="ignore", divide="ignore"):
            log_rep = np.log(rep)
        frame_sigma[meas] = _nan_sd(log_rep, axis=0)
        # a replicate's clip factor: median over the frames that kept weight in it
        boot_clip = np.nanmedian(np.where(np.isfinite(log_rep), rep, np.nan), axis=1)
        boot_clip = boot_clip[np.isfinite(boot_clip)]
        if boot_clip.size > 1:
            clip_sigma = float(np.std(np.log(boot_clip), ddof=1))
    return ClipScale(raw, frame_sigma, clip, clip_sigma)


def _nan_sd(x: np.ndarray, axis: int) -> np.ndarray:
    finite = np.isfinite(x)
    n = finite.sum(axis=axis)
    xm = np.where(finite, x, 0.0)
    mean = xm.sum(axis=axis) / np.maximum(n, 1)
    dev = np.where(finite, x - np.expand_dims(mean, axis), 0.0)
    var = (dev**2).sum(axis=axis) / np.maximum(n - 1, 1)
    return np.where(n > 1, np.sqrt(var), np.nan)


def shrink_frames(log_raw: np.ndarray, log_sigma: np.ndarray, log_clip: float,
                  frame_sigma: float, max_tau: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Empirical-Bayes shrinkage of measured frames' log factors toward the clip's.

    ``log_raw``/``log_sigma`` (bootstrap sd) for the measured frames only. A frame's error
    variance is its bootstrap variance plus ``frame_sigma^2``: the error every frame factor
    carries from its own camera pose, which no resampling of points can see. ``tau^2``, the
    between-frame variance that is really there (a depth model's frame-to-frame scale
    inconsistency), is the robust variance of the deviations minus the typical error variance,
    floored at 0 and capped at ``max_tau``: deviations beyond a few percent are measurement
    errors, not scale. Returns (shrunk log factors, the weight each frame keeps in [0, 1], tau).
    """
    # NaN sd = no bootstrap (align.uncertainty.bootstrap=0): the pose-error prior alone
    s2 = np.nan_to_num(np.asarray(log_sigma, np.float64), nan=0.0) ** 2 + frame_sigma**2
    dev = log_raw - log_clip
    if dev.size < 3:
        tau2 = 0.0
    else:
        robust_var = (MAD_TO_SD * np.median(np.abs(dev - np.median(dev)))) ** 2
        finite = s2[np.isfinite(s2)]
        typical = float(np.median(finite)) if finite.size else 0.0
        tau2 = min(max(0.0, float(robust_var - typical)), max_tau**2)
    keep = tau2 / (tau2 + s2) if tau2 > 0 else np.zeros_like(dev)
    return log_clip + keep * dev, keep, float(np.sqrt(tau2))


def between_frame_sigma(log_factors: np.ndarray) -> tuple[float, float, float]:
    """Sd of the clip factor (log) due to frame-to-frame disagreement: (sigma, sd, n_eff).

    Each frame factor carries its own frame's pose error (and depth misregistration), which the
    point bootstrap keeps fixed. Their robust spread ``sd`` (MAD-based) says how much frames
    disagree; consecutive frames disagree alike (pose errors drift slowly), so the number of
    independent frames is the AR(1) effective size ``n (1 - rho) / (1 + rho)`` with ``rho`` the
    lag-1 autocorrelation of the deviations (in frame order). The median of ``n_eff``
    independent values has an sd of ``sqrt(pi / 2) * sd / sqrt(n_eff)``.
    """
    x = np.asarray(log_factors, np.float64)
    n = x.size
    if n < 2:
        return 0.0, 0.0, float(n)
    dev = x - np.median(x)
    sd = MAD_TO_SD * float(np.median(np.abs(dev)))
    denom = float(np.sum(dev * dev))
    rho = float(np.sum(dev[1:] * dev[:-1]) / denom) if denom > 0 else 0.0
    rho = min(max(rho, 0.0), MAX_RHO)
    n_eff = max(1.0, n * (1.0 - rho) / (1.0 + rho))
    return float(SQRT_HALF_PI * sd / np.sqrt(n_eff)), sd, n_eff


def systematic_sigma(ray_err: float, angle_deg: float, gain: float, floor: float) -> float:
    """Relative scale error common to all points: ray angle error (radians: reprojection
    residual over the focal length) over the triangulation angle, in quadrature with ``floor``.

    Unknown conditioning (no angle or residual) with ``gain > 0`` is an unbounded error: the
    clip cannot claim a precision it has no evidence for.
    """
    if gain == 0:
        return float(floor)
    if not (np.isfinite(ray_err) and np.isfinite(angle_deg) and angle_deg > 0):
        return float("inf")
    return float(np.hypot(gain * ray_err / np.radians(angle_deg), floor))


def _with_focal(K: np.ndarray, rel: float) -> np.ndarray:
    """``K`` with both focal lengths scaled by ``1 + rel`` (principal point unchanged)."""
    Kp = np.array(K, np.float64)
    Kp[0, 0] *= 1.0 + rel
    Kp[1, 1] *= 1.0 + rel
    return Kp


def focal_sensitivity(
    frame: np.ndarray, point: np.ndarray, u: np.ndarray, v: np.ndarray, depth: np.ndarray,
    valid: np.ndarray, w2c: np.ndarray, K: np.ndarray, num_frames: int, min_obs: int,
    step: float,
) -> float:
    """``d log(clip factor) / d log(focal)`` by a central difference of ``step`` (relative).

    Every observation (``valid`` or not) takes part in re-triangulating its point, as in the
    original triangulation; only valid ones give ratios. The clip factor is the same estimator
    as the stage's (median of frame medians), so the figure describes the reported number.
    NaN when a perturbed re-triangulation leaves no measured frame.
    """
    pidx = point_index(point)
    logs = []
    for sign in (1.0, -1.0):
        z = midpoint_depths(u, v, frame, point, w2c, _with_focal(K, sign * step), pidx=pidx)
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = np.asarray(valid, bool) & np.isfinite(z) & (z > 0)
        data = FrameRatios.build(frame[ok], depth[ok] / z[ok], point[ok], num_frames)
        if not data.measured(min_obs).any() or data.ratio.size == 0:
            return float("nan")
        logs.append(np.log(clip_scale(data, min_obs, 0, 0).clip))
    return float((logs[0] - logs[1]) / (np.log1p(step) - np.log1p(-step)))


def focal_consistency(
    frame: np.ndarray, point: np.ndarray, u: np.ndarray, v: np.ndarray, w2c: np.ndarray,
    K: np.ndarray, search: float, step: float, cap_px: float,
) -> float:
    """The relative focal change ``g`` (``K' = K`` with ``f * (1 + g)``) under which the tracks
    re-triangulate with the smallest robust reprojection error, the poses held fixed.

    Cost: mean of ``min(err, cap_px)^2`` (a wrong track costs at most ``cap_px``); a grid over
    ``[-search, search]`` in ``step``, refined by a parabola through the best three. About 0 when
    the given intrinsics agree with the poses; NaN without observations or when the best value
    lies on the edge of the search (the residuals are not a focal error's).
    """
    if frame.size == 0:
        return float("nan")
    pidx = point_index(point)
    grid = np.arange(-search, search + step / 2, step)
    cost = np.empty(grid.size)
    for j, g in enumerate(grid):
        _, err = midpoint_depths(u, v, frame, point, w2c, _with_focal(K, g), reproj=True,
                                 pidx=pidx)
        cost[j] = np.mean(np.minimum(np.nan_to_num(err, nan=cap_px), cap_px) ** 2)
    k = int(np.argmin(cost))
    if k in (0, grid.size - 1):
        # still falling at the edge of the search: the poses, not the focal, explain the
        # residuals (seen on clips with translation noise and drift): no verdict
        return float("nan")
    best = float(grid[k])
    curv = cost[k - 1] - 2 * cost[k] + cost[k + 1]
    if curv > 0:
        best += 0.5 * step * (cost[k - 1] - cost[k + 1]) / curv
    return best
