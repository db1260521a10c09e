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

from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ClipError
from pipeline.geometry.poses import pixel_K
from pipeline.scale.stats import (
    Z95,
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
    """One clip's factors and their uncertainty (see the module docstring for every definition).

    ``point_id`` groups observations for the bootstrap (without it every observation counts as
    its own point: the old, over-confident behaviour); ``tri_angle`` (degrees) and ``ray_err``
    (reprojection error over the focal length, radians) feed the conditioning term. ``ucfg`` is
    ``align.uncertainty`` + ``align.shrinkage`` merged (defaults: no bootstrap, no shrinkage).
    ``uv`` (pixels, the manifest's resolution), ``w2c`` (num_frames, 3, 4) and pixel ``K`` let
    the clip be re-triangulated under a perturbed focal length (``scale_focal_sensitivity``);
    without them that column is NaN and its uncertainty term 0.

    Raises ``ClipError`` when fewer than ``min_measured_frames`` frames reach
    ``min_obs_per_frame`` valid ratios: a factor made up from nothing would poison the dataset.
    """
    ucfg = dict(ucfg or {})
    frame_idx = np.asarray(frame_idx, dtype=np.int64)
    z_cam = np.asarray(z_cam, dtype=np.float64)
    depth = np.asarray(depth, dtype=np.float64)
    n_total = int(frame_idx.size)
    if num_frames < 1:
        raise ClipError(clip_id, f"manifest says num_frames={num_frames}")
    if n_total == 0:
        raise ClipError(clip_id, "no observations from triangulate for this clip")
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = (
            np.asarray(valid, dtype=bool)
            & np.isfinite(depth) & (depth > 0)
            & np.isfinite(z_cam) & (z_cam > 0)
            & (frame_idx >= 0) & (frame_idx < num_frames)
        )
    pid = np.arange(n_total) if point_id is None else np.asarray(point_id, np.int64)
    data = FrameRatios.build(frame_idx[ok], depth[ok] / z_cam[ok], pid[ok], num_frames)
    n_valid = int(data.ratio.size)
    counts = data.counts().astype(np.int32)
    measured = data.measured(min_obs_per_frame)
    n_measured = int(measured.sum())
    if n_measured < max(1, min_measured_frames):
        best = int(counts.max()) if counts.size else 0
        if n_measured == 0:
            raise ClipError(
                clip_id,
                f"no frame has >= {min_obs_per_frame} valid depth/point ratios "
                f"(valid: {n_valid} of {n_total} observations; best frame has {best})",
            )
        raise ClipError(
            clip_id,
            f"only {n_measured} of {num_frames} frames have >= {min_obs_per_frame} valid "
            f"depth/point ratios (need {min_measured_frames}; valid: {n_valid} of {n_total})",
        )
    est = clip_scale(data, min_obs_per_frame, int(ucfg.get("bootstrap", 0)),
                     int(ucfg.get("seed", 0)))
    meas_idx = np.flatnonzero(measured)
    raw = est.frame_raw[meas_idx]
    log_clip = float(np.log(est.clip))
    if ucfg.get("shrinkage", False):
        log_f, keep, tau = shrink_frames(np.log(raw), est.frame_sigma[meas_idx], log_clip,
                                         float(ucfg.get("frame_sigma", 0.0)),
                                         float(ucfg.get("max_tau", np.inf)))
        meas_val = np.exp(log_f)
    else:
        meas_val, keep, tau = raw, np.ones(n_measured), float("nan")
    spread = np.full(num_frames, np.nan)
    for i in meas_idx:
        spread[i] = _mad_rel(data.ratio[data.starts[i] : data.ends[i]])
    # np.interp is linear between measured frames and constant (nearest) beyond the ends.
    scale = np.interp(np.arange(num_frames, dtype=np.float64), meas_idx, meas_val)
    scale[meas_idx] = meas_val  # exact values, no interpolation round-off
    raw_all = np.full(num_frames, np.nan)
    raw_all[meas_idx] = raw
    shrink_all = np.ones(num_frames)
    shrink_all[meas_idx] = 1.0 - keep
    med = est.clip
    sel = ok & np.isin(frame_idx, meas_idx)
    angle_med = _median_per_point(pid[sel], tri_angle[sel]) if tri_angle is not None else np.nan
    err_med = float(np.median(ray_err[sel])) if ray_err is not None and sel.any() else np.nan
    sys_sigma = systematic_sigma(err_med, angle_med, float(ucfg.get("gain", 0.0)),
                                 float(ucfg.get("floor", 0.0)))
    boot = est.clip_sigma_boot
    frames_sigma, _, n_eff = between_frame_sigma(np.log(raw))
    frames_sigma *= float(ucfg.get("frames_gain", 0.0))
    focal_sens = focal_fit = float("nan")
    if uv is not None and w2c is not None and K is not None:
        uv = np.asarray(uv, np.float64)
        tri = (frame_idx >= 0) & (frame_idx < num_frames) & np.all(np.isfinite(uv), axis=1)
        args = (frame_idx[tri], pid[tri], uv[tri, 0], uv[tri, 1])
        focal_sens = focal_sensitivity(
            *args, np.where(ok, depth, np.nan)[tri], ok[tri], w2c, K, num_frames,
            min_obs_per_frame, float(ucfg.get("focal_step", 0.02)),
        )
        if float(ucfg.get("focal_check_gain", 0.0)) > 0:
            focal_fit = focal_consistency(
                *args, w2c, K, float(ucfg["focal_search"]), float(ucfg["focal_search_step"]),
                float(ucfg["focal_cap_px"]),
            )
    # relative focal error believed: the prior, and what the tracks say beyond the check's own
    # noise (log units)
    excess = (max(0.0, abs(np.log1p(focal_fit)) - float(ucfg.get("focal_check_tolerance", 0.0)))
              if np.isfinite(focal_fit) else 0.0)
    focal_err = np.hypot(float(ucfg.get("focal_sigma", 0.0)),
                         float(ucfg.get("focal_check_gain", 0.0)) * excess)
    focal_sigma = abs(focal_sens) * focal_err if np.isfinite(focal_sens) else 0.0
    sigma = (float(np.sqrt(boot**2 + sys_sigma**2 + frames_sigma**2 + focal_sigma**2))
             if np.isfinite(boot) else float("nan"))
    return {
        "clip_id": clip_id,
        "num_frames": int(num_frames),
        "frame_scale": scale.tolist(),
        "frame_scale_raw": raw_all.tolist(),
        "frame_shrinkage": shrink_all.tolist(),
        "frame_num_obs": counts.tolist(),
        "frame_spread": spread.tolist(),
        "frame_interpolated": (~measured).tolist(),
        "scale_max": float(meas_val.max()),
        "scale_min": float(meas_val.min()),
        "scale_median": med,
        "scale_spread": _mad_rel(raw),
        "scale_range": float((meas_val.max() - meas_val.min()) / med),
        "scale_sigma": sigma,
        "scale_sigma_boot": float(boot),
        "scale_sigma_sys": float(sys_sigma),
        "scale_sigma_frames": float(frames_sigma),
        "scale_sigma_focal": float(focal_sigma),
        "scale_focal_sensitivity": focal_sens,
        "focal_consistency": float(focal_fit),
        "frames_effective": float(n_eff),
        "scale_ci_low": float(med * np.exp(-Z95 * sigma)),
        "scale_ci_high": float(med * np.exp(Z95 * sigma)),
        "scale_uncertainty": float(np.expm1(Z95 * sigma)),
        "frame_tau": float(tau),
        "tri_angle_median": float(angle_med),
        "ray_err_median": float(err_med),
        "num_points": int(np.unique(pid[sel]).size),
        "num_frames_measured": n_measured,
        "num_obs_total": n_total,
        "num_obs_valid": n_valid,
    }


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
