"""Per-frame metric scale factors of one clip from metric depth at its triangulated points
(the align stage's work; ``stages/align.py`` joins a shard's observations with their depth
samples, calls ``frame_factors`` per clip and writes the table).

For every observation of a triangulated point the ratio ``depth(u, v) / z_cam`` estimates the
factor that turns the clip's relative scale into metres (``t_metric = t_rel * factor``). Depth
networks are wrong on some pixels (edges, glass, sky) and triangulation has outliers, so each
frame's factor is the *median* ratio, which ignores up to half of the ratios being wrong.

Definitions of the output columns (one row per clip, schema ``pipeline.schema.ALIGN``):
- ``frame_scale_raw[i]``: median ratio of frame i when it has >= ``align.min_obs_per_frame``
  valid ratios, and at least one ("measured"); NaN otherwise.
- ``frame_scale[i]``: the measured frame's raw factor shrunk toward the clip factor in log space
  (``pipeline.scale.stats.shrink_frames``: a frame keeps its own deviation only in proportion to
  the real between-frame variation against its own error), ``frame_shrinkage[i]`` the weight
  given to the clip factor; unmeasured frames are linearly interpolated in frame index between
  the nearest measured frames, or take the nearest measured value before the first / after the
  last one (flagged in ``frame_interpolated[i]``). Every frame gets a factor because the trainer
  may pick any frame as its condition frame.
- ``frame_num_obs[i]``: valid ratios in frame i (also for frames below the threshold).
- ``frame_spread[i]``: MAD / median of frame i's ratios (MAD = median |r - median r|, unscaled);
  a relative, outlier-robust dispersion. NaN for interpolated frames.
- ``scale_median``: median of the measured frames' *raw* factors, the clip factor used by
  curate (``clip_scale``); ``scale_max`` / ``scale_min``: max / min of the measured frames'
  ``frame_scale`` (interpolated values lie between measured ones, so max/min are the same over
  all frames).
- ``scale_spread``: MAD / median of the measured raw factors; ``scale_range``:
  (max - min) / median.
- ``scale_sigma`` (sd of log ``scale_median``) = point bootstrap (+) conditioning term (+)
  frame-disagreement term (+) intrinsics term, each reported
  (``scale_sigma_boot/_sys/_frames/_focal``); ``scale_focal_sensitivity`` = d log(scale) /
  d log(focal length) with the poses fixed (the intrinsics term is its magnitude times
  ``align.uncertainty.focal_sigma``); ``scale_ci_low``,
  ``scale_ci_high`` and ``scale_uncertainty`` (relative half-width) are its 95% interval; see
  ``pipeline/scale/stats.py`` for why each part exists.
An observation is valid when its depth sample is flagged valid, both depth and ``z_cam`` are
finite and > 0, and its frame index is inside the clip; optional track-length and reprojection
filters come from the ``align`` settings (``pipeline.settings.Align``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ClipError
from pipeline.geometry.poses import pixel_K
from pipeline.scale.stats import (
    Z95,
    ClipScale,
    FrameRatios,
    between_frame_sigma,
    clip_scale,
    focal_consistency,
    focal_sensitivity,
    shrink_frames,
    systematic_sigma,
)
from pipeline.sfm.triangulation import working_size


def _mad_rel(values: np.ndarray) -> float:
    """MAD / median: dispersion relative to the estimate, robust to the outliers it describes."""
    med = float(np.median(values))
    return float(np.median(np.abs(values - med)) / med)


@dataclass(frozen=True)
class FactorSettings:
    """How one clip's factors are estimated: the frame thresholds plus ``align.uncertainty`` and
    ``align.shrinkage`` (the defaults switch every optional term off: no bootstrap, no
    shrinkage, no conditioning, frame or intrinsics term)."""

    #: a frame is measured with at least this many valid ratios (and at least one)
    min_obs_per_frame: int
    #: fewer measured frames than this fail the clip
    min_measured_frames: int = 1
    #: point-bootstrap replicates (0: ``scale_sigma`` is NaN) and their fixed seed
    bootstrap: int = 0
    seed: int = 0
    #: shrink the measured frames toward the clip factor (``pipeline.scale.stats.shrink_frames``)
    shrinkage: bool = False
    frame_sigma: float = 0.0
    max_tau: float = np.inf
    #: conditioning term: gain * (ray error / triangulation angle), floor in quadrature
    gain: float = 0.0
    floor: float = 0.0
    #: frame-disagreement term's gain
    frames_gain: float = 0.0
    #: intrinsics term: prior focal error, central-difference step, and the focal check
    focal_sigma: float = 0.0
    focal_step: float = 0.02
    focal_check_gain: float = 0.0
    focal_check_tolerance: float = 0.0
    focal_search: float | None = None
    focal_search_step: float | None = None
    focal_cap_px: float | None = None

    @classmethod
    def from_ucfg(cls, min_obs_per_frame: int, min_measured_frames: int = 1,
                  ucfg: dict[str, Any] | None = None) -> FactorSettings:
        """The settings from ``uncertainty_settings``'s merged dict (keys it lacks keep their
        defaults; keys it has beyond the settings, like ``enabled``, are ignored)."""
        u = dict(ucfg or {})

        def opt(key: str) -> float | None:
            return float(u[key]) if key in u else None

        return cls(
            int(min_obs_per_frame), int(min_measured_frames),
            bootstrap=int(u.get("bootstrap", 0)), seed=int(u.get("seed", 0)),
            shrinkage=bool(u.get("shrinkage", False)),
            frame_sigma=float(u.get("frame_sigma", 0.0)), max_tau=float(u.get("max_tau", np.inf)),
            gain=float(u.get("gain", 0.0)), floor=float(u.get("floor", 0.0)),
            frames_gain=float(u.get("frames_gain", 0.0)),
            focal_sigma=float(u.get("focal_sigma", 0.0)),
            focal_step=float(u.get("focal_step", 0.02)),
            focal_check_gain=float(u.get("focal_check_gain", 0.0)),
            focal_check_tolerance=float(u.get("focal_check_tolerance", 0.0)),
            focal_search=opt("focal_search"), focal_search_step=opt("focal_search_step"),
            focal_cap_px=opt("focal_cap_px"),
        )

    @classmethod
    def from_align(cls, acfg: dict[str, Any]) -> FactorSettings:
        """The settings of the ``align`` config section."""
        return cls.from_ucfg(int(acfg["min_obs_per_frame"]), int(acfg["min_measured_frames"]),
                             uncertainty_settings(acfg))


@dataclass(frozen=True)
class ClipObservations:
    """One clip's observations of triangulated points, one entry per observation.

    ``point_id`` groups observations for the bootstrap (None: every observation counts as its
    own point, which is over-confident); ``tri_angle`` (degrees) and ``ray_err`` (reprojection
    error over the focal length, radians) feed the conditioning term; ``uv`` (pixels, the
    manifest's resolution) lets the focal terms re-triangulate the clip."""

    frame_idx: np.ndarray
    z_cam: np.ndarray
    depth: np.ndarray
    valid: np.ndarray
    point_id: np.ndarray | None = None
    tri_angle: np.ndarray | None = None
    ray_err: np.ndarray | None = None
    uv: np.ndarray | None = None


def frame_factors(
    clip_id: str,
    num_frames: int,
    frame_idx: np.ndarray,
    z_cam: np.ndarray,
    depth: np.ndarray,
    valid: np.ndarray,
    min_obs_per_frame: int,
    min_measured_frames: int = 1,
    point_id: np.ndarray | None = None,
    tri_angle: np.ndarray | None = None,
    ray_err: np.ndarray | None = None,
    ucfg: dict[str, Any] | None = None,
    uv: np.ndarray | None = None,
    w2c: np.ndarray | None = None,
    K: np.ndarray | None = None,
) -> dict[str, Any]:
    """``clip_factors`` with the observations and settings as flat arguments (``ucfg``:
    ``uncertainty_settings``'s dict; defaults: no bootstrap, no shrinkage); ``w2c``
    (num_frames, 3, 4) and pixel ``K`` are the clip's cameras."""
    obs = ClipObservations(frame_idx, z_cam, depth, valid, point_id, tri_angle, ray_err, uv)
    settings = FactorSettings.from_ucfg(min_obs_per_frame, min_measured_frames, ucfg)
    return clip_factors(clip_id, num_frames, obs, settings, w2c, K)


def clip_factors(clip_id: str, num_frames: int, obs: ClipObservations,
                 settings: FactorSettings, w2c: np.ndarray | None = None,
                 K: np.ndarray | None = None) -> dict[str, Any]:
    """One clip's factors and their uncertainty (see the module docstring for every definition).

    ``w2c`` (num_frames, 3, 4) and pixel ``K``, with ``obs.uv``, let the clip be re-triangulated
    under a perturbed focal length (``scale_focal_sensitivity``); without them that column is
    NaN and its uncertainty term 0.

    Raises ``ClipError`` when fewer than ``min_measured_frames`` frames reach
    ``min_obs_per_frame`` valid ratios: a factor made up from nothing would poison the dataset.
    """
    c = _ClipRatios.build(clip_id, num_frames, obs, settings)
    frames = _FrameFactors.estimate(c, settings)
    sel = c.ok & np.isin(c.frame_idx, frames.meas_idx)
    angle_med = (_median_per_point(c.pid[sel], obs.tri_angle[sel])
                 if obs.tri_angle is not None else np.nan)
    err_med = (float(np.median(obs.ray_err[sel]))
               if obs.ray_err is not None and sel.any() else np.nan)
    sys_sigma = systematic_sigma(err_med, angle_med, settings.gain, settings.floor)
    frames_sigma, _, n_eff = between_frame_sigma(np.log(frames.raw))
    frames_sigma *= settings.frames_gain
    focal_sens, focal_fit = _focal_terms(c, obs.uv, w2c, K, settings)
    focal_sigma = _focal_sigma(focal_sens, focal_fit, settings)
    boot = frames.est.clip_sigma_boot
    sigma = (float(np.sqrt(boot**2 + sys_sigma**2 + frames_sigma**2 + focal_sigma**2))
             if np.isfinite(boot) else float("nan"))
    return {
        **frames.columns(c),
        "scale_sigma": sigma,
        "scale_sigma_boot": float(boot),
        "scale_sigma_sys": float(sys_sigma),
        "scale_sigma_frames": float(frames_sigma),
        "scale_sigma_focal": float(focal_sigma),
        "scale_focal_sensitivity": focal_sens,
        "focal_consistency": float(focal_fit),
        "frames_effective": float(n_eff),
        "scale_ci_low": float(frames.est.clip * np.exp(-Z95 * sigma)),
        "scale_ci_high": float(frames.est.clip * np.exp(Z95 * sigma)),
        "scale_uncertainty": float(np.expm1(Z95 * sigma)),
        "frame_tau": float(frames.tau),
        "tri_angle_median": float(angle_med),
        "ray_err_median": float(err_med),
        "num_points": int(np.unique(c.pid[sel]).size),
        "num_frames_measured": frames.n_measured,
        "num_obs_total": c.n_total,
        "num_obs_valid": int(c.data.ratio.size),
    }


@dataclass
class _ClipRatios:
    """A clip's observations checked: which are valid, their ratios grouped by frame, and the
    frames measured (enough valid ratios)."""

    clip_id: str
    num_frames: int
    frame_idx: np.ndarray
    depth: np.ndarray
    ok: np.ndarray
    pid: np.ndarray
    data: FrameRatios
    counts: np.ndarray
    measured: np.ndarray
    n_total: int

    @classmethod
    def build(cls, clip_id: str, num_frames: int, obs: ClipObservations,
              settings: FactorSettings) -> _ClipRatios:
        frame_idx = np.asarray(obs.frame_idx, dtype=np.int64)
        z_cam = np.asarray(obs.z_cam, dtype=np.float64)
        depth = np.asarray(obs.depth, dtype=np.float64)
        n_total = int(frame_idx.size)
        if num_frames < 1:
            raise ClipError(clip_id, f"manifest says num_frames={num_frames}")
        if n_total == 0:
            raise ClipError(clip_id, "no observations from triangulate for this clip")
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = (
                np.asarray(obs.valid, dtype=bool)
                & np.isfinite(depth) & (depth > 0)
                & np.isfinite(z_cam) & (z_cam > 0)
                & (frame_idx >= 0) & (frame_idx < num_frames)
            )
        pid = np.arange(n_total) if obs.point_id is None else np.asarray(obs.point_id, np.int64)
        data = FrameRatios.build(frame_idx[ok], depth[ok] / z_cam[ok], pid[ok], num_frames)
        c = cls(clip_id, num_frames, frame_idx, depth, ok, pid, data,
                data.counts().astype(np.int32), data.measured(settings.min_obs_per_frame),
                n_total)
        c._require_measured(settings)
        return c

    def _require_measured(self, settings: FactorSettings) -> None:
        """Fail the clip, saying why, when too few frames are measured."""
        n_measured = int(self.measured.sum())
        if n_measured >= max(1, settings.min_measured_frames):
            return
        n_valid, thr = int(self.data.ratio.size), settings.min_obs_per_frame
        if n_measured == 0:
            best = int(self.counts.max()) if self.counts.size else 0
            raise ClipError(
                self.clip_id,
                f"no frame has >= {thr} valid depth/point ratios "
                f"(valid: {n_valid} of {self.n_total} observations; best frame has {best})",
            )
        raise ClipError(
            self.clip_id,
            f"only {n_measured} of {self.num_frames} frames have >= {thr} valid "
            f"depth/point ratios (need {settings.min_measured_frames}; valid: {n_valid} of "
            f"{self.n_total})",
        )


@dataclass
class _FrameFactors:
    """The clip factor and the measured frames' raw and (possibly shrunk) factors."""

    est: ClipScale
    meas_idx: np.ndarray
    raw: np.ndarray
    meas_val: np.ndarray
    keep: np.ndarray
    tau: float
    n_measured: int

    @classmethod
    def estimate(cls, c: _ClipRatios, settings: FactorSettings) -> _FrameFactors:
        est = clip_scale(c.data, settings.min_obs_per_frame, settings.bootstrap, settings.seed)
        meas_idx = np.flatnonzero(c.measured)
        raw = est.frame_raw[meas_idx]
        n_measured = int(c.measured.sum())
        if settings.shrinkage:
            log_f, keep, tau = shrink_frames(np.log(raw), est.frame_sigma[meas_idx],
                                             float(np.log(est.clip)), settings.frame_sigma,
                                             settings.max_tau)
            meas_val = np.exp(log_f)
        else:
            meas_val, keep, tau = raw, np.ones(n_measured), float("nan")
        return cls(est, meas_idx, raw, meas_val, keep, tau, n_measured)

    def columns(self, c: _ClipRatios) -> dict[str, Any]:
        """The per-frame columns and the clip factor's spread and range."""
        n, meas_idx, meas_val, med = c.num_frames, self.meas_idx, self.meas_val, self.est.clip
        spread = np.full(n, np.nan)
        for i in meas_idx:
            spread[i] = _mad_rel(c.data.ratio[c.data.starts[i] : c.data.ends[i]])
        # np.interp is linear between measured frames and constant (nearest) beyond the ends.
        scale = np.interp(np.arange(n, dtype=np.float64), meas_idx, meas_val)
        scale[meas_idx] = meas_val  # exact values, no interpolation round-off
        raw_all = np.full(n, np.nan)
        raw_all[meas_idx] = self.raw
        shrink_all = np.ones(n)
        shrink_all[meas_idx] = 1.0 - self.keep
        return {
            "clip_id": c.clip_id,
            "num_frames": int(n),
            "frame_scale": scale.tolist(),
            "frame_scale_raw": raw_all.tolist(),
            "frame_shrinkage": shrink_all.tolist(),
            "frame_num_obs": c.counts.tolist(),
            "frame_spread": spread.tolist(),
            "frame_interpolated": (~c.measured).tolist(),
            "scale_max": float(meas_val.max()),
            "scale_min": float(meas_val.min()),
            "scale_median": med,
            "scale_spread": _mad_rel(self.raw),
            "scale_range": float((meas_val.max() - meas_val.min()) / med),
        }


def _focal_terms(c: _ClipRatios, uv: np.ndarray | None, w2c: np.ndarray | None,
                 K: np.ndarray | None, settings: FactorSettings) -> tuple[float, float]:
    """(d log(scale) / d log(focal), the focal change that best fits the tracks), NaN where
    the cameras are missing or the check is off."""
    focal_sens = focal_fit = float("nan")
    if uv is None or w2c is None or K is None:
        return focal_sens, focal_fit
    uv = np.asarray(uv, np.float64)
    n = c.num_frames
    tri = (c.frame_idx >= 0) & (c.frame_idx < n) & np.all(np.isfinite(uv), axis=1)
    args = (c.frame_idx[tri], c.pid[tri], uv[tri, 0], uv[tri, 1])
    focal_sens = focal_sensitivity(
        *args, np.where(c.ok, c.depth, np.nan)[tri], c.ok[tri], w2c, K, n,
        settings.min_obs_per_frame, settings.focal_step,
    )
    if settings.focal_check_gain > 0:
        if None in (settings.focal_search, settings.focal_search_step, settings.focal_cap_px):
            raise ValueError("the focal check (focal_check_gain > 0) needs focal_search, "
                             "focal_search_step and focal_cap_px")
        focal_fit = focal_consistency(*args, w2c, K, settings.focal_search,
                                      settings.focal_search_step, settings.focal_cap_px)
    return focal_sens, focal_fit


def _focal_sigma(focal_sens: float, focal_fit: float, settings: FactorSettings) -> float:
    """The intrinsics term (log units): the sensitivity times the relative focal error
    believed, the prior and what the tracks say beyond the check's own noise."""
    excess = (max(0.0, abs(np.log1p(focal_fit)) - settings.focal_check_tolerance)
              if np.isfinite(focal_fit) else 0.0)
    focal_err = np.hypot(settings.focal_sigma, settings.focal_check_gain * excess)
    return abs(focal_sens) * focal_err if np.isfinite(focal_sens) else 0.0


def _median_per_point(pid: np.ndarray, values: np.ndarray) -> float:
    """Median over points of a per-point value repeated on each observation (each point once,
    so long tracks do not dominate)."""
    if pid.size == 0:
        return float("nan")
    _, first = np.unique(pid, return_index=True)
    return float(np.median(np.asarray(values, np.float64)[first]))


def uncertainty_settings(acfg: dict[str, Any]) -> dict[str, Any]:
    """``frame_factors``'s ``ucfg`` from the ``align`` config section (the stage and the
    accuracy bench must estimate with exactly the same settings)."""
    return {**acfg["uncertainty"], **acfg["shrinkage"],
            "shrinkage": bool(acfg["shrinkage"]["enabled"])}


def working_focal(manifest: pd.DataFrame, max_long_side: int) -> dict[str, float]:
    """clip -> focal length (pixels, mean of fx and fy) at the triangulation resolution, where
    ``reproj_err`` is measured: their ratio is the angular residual of a ray."""
    out = {}
    for r in manifest.itertuples(index=False):
        w, h = working_size(int(r.width), int(r.height), int(max_long_side))
        out[r.clip_id] = 0.5 * (float(r.intrinsics[0]) * w + float(r.intrinsics[1]) * h)
    return out


def camera_arrays(row: Any) -> tuple[np.ndarray | None, np.ndarray]:
    """(w2c (num_frames, 3, 4), pixel K at the manifest's resolution) of a manifest row (a
    namedtuple or a dict): the cameras the observations' ``u, v`` were measured with. ``w2c`` is
    None when the manifest's pose count does not match its frames (triangulate refuses those)."""
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
    n = int(get("num_frames"))
    poses = get("w2c")
    w2c = None
    if poses is not None and len(poses) == n:
        w2c = np.asarray([np.asarray(p, np.float64) for p in poses]).reshape(n, 3, 4)
    return w2c, pixel_K(get("intrinsics"), int(get("width")), int(get("height")))
