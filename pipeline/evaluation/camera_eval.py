"""Camera-control evaluation of videos: SfM trials, metric scale of each trial, aggregation.

One *trial* = one seeded SfM run on a clip's frames (``pipeline.sfm.incremental``), then, for
the metric variants, the project's own alignment applied to the SfM trajectory: points
triangulated with the SfM poses held fixed (``pipeline.sfm.triangulation.triangulate_clip``),
metric depth sampled at their observations, and the clip factor = median over frames of the
per-frame median of depth / z_cam (``pipeline.scale.factors.frame_factors``), exactly what the
pipeline does to a RealEstate10K clip. The factor turns the SfM trajectory into metres. A trial
runs in a Ray task
(``run_trial``: SfM + triangulation, the CPU-heavy part); depth sampling and the metrics run on
the driver (``score_trial``), where the clip's depth maps are loaded once for all trials.

Nothing is made up: a trial SfM could not finish is recorded as failed with its reason; metric
figures are NaN, with the reason, where no metric depth or no metric ground truth exists.
Aggregation: a clip's metric is the mean over its successful trials that the consensus keeps
(``consensus``: trials that converged to a model the other trials disagree with are set aside;
``evaluate.protocol=cami2v`` keeps every successful trial, as published), the reported figure
the mean over clips; the SfM success rate is successful trials / all trials. Under
``evaluate.protocol=cami2v`` the metric variants follow the published recipe instead
(``score_trial_cami2v``: SfM of the ground-truth video as the reference, frame-0 depth scale).
"""

from __future__ import annotations

import copy
import io
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.depth.model import bilinear_sample, finalize_samples, sample_sensor
from pipeline.errors import ClipError
from pipeline.geometry import camera_metrics as cm
from pipeline.geometry.poses import bottom_row_problem
from pipeline.sfm.incremental import SfmFailure, estimate_poses, write_frames

#: metric names, in report order
RELATIVE = ("RotErr", "TransErr_rel", "CamMC_rel")
METRIC = ("TransErr_metric", "CamMC_metric")
ALL_METRICS = RELATIVE + METRIC
#: ``evaluate.protocol``: the project's own, or the published CamI2V / RealCam-I2V one
PROTOCOLS = ("project", "cami2v")
#: clip id suffix of a clip's real video, scored beside the model's (the ground-truth row)
REAL_SUFFIX = "#real"


@dataclass
class EvalClip:
    """Everything a clip's trials need: frames at the evaluation resolution and the truth."""

    clip_id: str
    frames: np.ndarray  # (N, h, w, 3) uint8 RGB
    K: np.ndarray  # (3, 3) pixel intrinsics at (w, h)
    gt_c2w: np.ndarray  # (N, 4, 4) camera-to-world the video should follow (any world frame)
    gt_metric: bool  # True when gt_c2w translations are metres


@dataclass
class DepthMaps:
    """Metric depth of a clip's frames: per frame a map, and the factor from the evaluation
    resolution's pixel positions to the map's (sensor maps keep their own resolution)."""

    maps: list[np.ndarray]
    uv_scale: tuple[float, float]
    interpolation: str  # "sensor-bilinear" | "sensor-nearest" | "model" (continuous map)
    max_depth: float


def trial_seed(base: int, trial: int) -> int:
    """Seed of trial ``trial``: distinct per trial, the same for every clip (reproducible)."""
    return int(base) + int(trial)


def triangulation_config(tcfg: dict[str, Any], num_threads: int) -> dict[str, Any]:
    """The pipeline's triangulation settings, adapted to frames already at the evaluation
    resolution: no further shrinking, every frame, the trial's thread count."""
    out = copy.deepcopy(tcfg)
    out["image"]["max_long_side"] = 0
    out["frames"] = {**out["frames"], "mode": "all"}
    out["num_cpus"] = int(num_threads)
    return out


def _manifest_row(clip: str, frame_paths: list[str], K: np.ndarray, w2c: np.ndarray,
                  size: tuple[int, int]) -> dict[str, Any]:
    """A manifest-like row so ``triangulate_clip`` sees the SfM poses as a clip's poses."""
    w, h = size
    return {
        "clip_id": clip, "source_type": "images", "video_path": None,
        "frame_paths": frame_paths, "num_frames": len(frame_paths), "width": w, "height": h,
        "intrinsics": [K[0, 0] / w, K[1, 1] / h, K[0, 2] / w, K[1, 2] / h],
        "w2c": [m.reshape(12).tolist() for m in w2c],
    }


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ClipError):
        return exc.reason
    if isinstance(exc, SfmFailure):
        return str(exc)
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


def run_trial(
    clip_id: str, frames: np.ndarray, K: np.ndarray, trial: int, seed: int,
    sfm_cfg: dict[str, Any], tri_cfg: dict[str, Any] | None, scratch: str | None,
    num_threads: int = 1,
) -> dict[str, Any]:
    """One SfM trial (+ triangulation with its poses when ``tri_cfg``); never raises.

    Returns the SfM w2c and, when triangulation ran, the observations (frame, u, v at the
    evaluation resolution, z_cam in SfM units); failures come back as reasons. What COLMAP
    printed comes back as ``log`` (for the stage's log file: printed in a Ray worker, it would
    reach the driver's console at any moment, also after the run's summary).
    """
    from pipeline.capture import captured_output

    with captured_output() as captured:
        out = _trial(clip_id, frames, K, trial, seed, sfm_cfg, tri_cfg, scratch, num_threads)
    out["log"] = captured.text
    return out


def _trial(
    clip_id: str, frames: np.ndarray, K: np.ndarray, trial: int, seed: int,
    sfm_cfg: dict[str, Any], tri_cfg: dict[str, Any] | None, scratch: str | None,
    num_threads: int,
) -> dict[str, Any]:
    """The body of ``run_trial``."""
    import pycolmap

    from pipeline.sfm import colmap_scene as cs
    from pipeline.sfm.triangulation import triangulate_clip

    pycolmap.logging.minloglevel = int(sfm_cfg["log_level"])
    out: dict[str, Any] = {"clip_id": clip_id, "trial": int(trial), "seed": int(seed)}
    t0 = time.perf_counter()
    try:
        res = estimate_poses(list(frames), K, sfm_cfg, seed, scratch, num_threads)
    except Exception as exc:  # noqa: BLE001 - a failed trial is data, not a crash
        out.update(success=False, reason=_reason(exc), t_sfm=time.perf_counter() - t0)
        return out
    out.update(success=True, reason=None, w2c=res.w2c, sfm_points=res.num_points,
               reproj_error=res.reproj_error, frame0_obs=res.frame0_obs,
               t_sfm=time.perf_counter() - t0)
    if tri_cfg is None:
        return out
    t1 = time.perf_counter()
    try:
        with cs.scratch_dir(cs.scratch_root(scratch), "evaltri_") as work:
            names = write_frames(list(frames), work)
            paths = [str(work / n) for n in names]
            h, w = frames.shape[1:3]
            row = _manifest_row(clip_id, paths, K, res.w2c, (w, h))
            obs = triangulate_clip(row, tri_cfg, scratch, num_threads=num_threads)
        out["obs"] = {k: obs[k].to_numpy() for k in ("frame_idx", "u", "v", "z_cam")}
    except Exception as exc:  # noqa: BLE001 - only the metric variant is lost
        out["scale_reason"] = f"triangulation with the SfM poses failed: {_reason(exc)}"
    out["t_triangulate"] = time.perf_counter() - t1
    return out


def sample_depth(dm: DepthMaps, frame_idx: np.ndarray, u: np.ndarray,
                 v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Metric depth at observations (pixel positions at the evaluation resolution)."""
    depth = np.full(len(u), np.nan, np.float32)
    valid = np.zeros(len(u), bool)
    su, sv = dm.uv_scale
    for f in np.unique(frame_idx):
        sel = frame_idx == f
        m = dm.maps[int(f)]
        uu, vv = np.asarray(u[sel], np.float64) * su, np.asarray(v[sel], np.float64) * sv
        if dm.interpolation.startswith("sensor-"):
            depth[sel], valid[sel] = sample_sensor(m, uu, vv, dm.interpolation.split("-", 1)[1],
                                                   dm.max_depth)
        else:
            depth[sel], valid[sel] = finalize_samples(bilinear_sample(m, uu, vv), dm.max_depth)
    return depth, valid


def metric_scale(clip_id: str, num_frames: int, obs: dict[str, np.ndarray], dm: DepthMaps,
                 acfg: dict[str, Any]) -> float:
    """Metres per SfM unit: the align stage's clip factor on this trial's observations."""
    from pipeline.scale.factors import frame_factors

    depth, valid = sample_depth(dm, obs["frame_idx"], obs["u"], obs["v"])
    out = frame_factors(clip_id, num_frames, obs["frame_idx"], obs["z_cam"], depth, valid,
                        int(acfg["min_obs_per_frame"]), int(acfg["min_measured_frames"]))
    return float(out["scale_median"])


def score_trial(clip: EvalClip, result: dict[str, Any], depth: DepthMaps | None,
                no_metric_reason: str | None, acfg: dict[str, Any]) -> dict[str, Any]:
    """One per_clip.parquet row: the trial's metrics (NaN + reason where unavailable)."""
    row: dict[str, Any] = {
        "clip_id": clip.clip_id, "trial": result["trial"], "seed": result["seed"],
        "success": bool(result["success"]), "reason": result.get("reason"),
        "num_frames": int(len(clip.frames)), "sfm_points": int(result.get("sfm_points", 0)),
        "scale_factor": math.nan, "metric_reason": None,
        "t_sfm_s": float(result.get("t_sfm", math.nan)),
        **{k: math.nan for k in ALL_METRICS},
    }
    if not result["success"]:
        row["metric_reason"] = "SfM failed"
        return row
    gen = cm.c2w_from_w2c34(result["w2c"])
    try:
        row.update(cm.relative_metrics(gen, clip.gt_c2w))
    except ValueError as exc:
        row.update(success=False, reason=str(exc), metric_reason="SfM failed")
        return row
    reason = no_metric_reason
    if reason is None and result.get("scale_reason"):
        reason = result["scale_reason"]
    if reason is None and "obs" not in result:
        reason = "no triangulation for this trial"
    if reason is None:
        try:
            factor = metric_scale(clip.clip_id, len(clip.frames), result["obs"], depth, acfg)
        except ClipError as exc:
            reason = f"no metric scale: {exc.reason}"
        else:
            row["scale_factor"] = factor
            gen_m = cm.relative_to_first(gen)
            gen_m[:, :3, 3] *= factor
            row.update(cm.metric_metrics(gen_m, clip.gt_c2w))
    row["metric_reason"] = reason
    return row


def trial_distance(w2c_a: np.ndarray, w2c_b: np.ndarray) -> tuple[float, float]:
    """How far apart two trials' trajectories of the same frames are, without any ground truth:
    per-frame mean rotation angle (radians) and per-frame mean relative translation difference
    (each trajectory normalised by its own extent, as TransErr_rel does)."""
    n = len(w2c_a)
    try:
        m = cm.relative_metrics(cm.c2w_from_w2c34(w2c_a), cm.c2w_from_w2c34(w2c_b))
    except ValueError:  # a trajectory without translation agrees with nothing
        return math.inf, math.inf
    return m["RotErr"] / n, m["TransErr_rel"] / n


def consensus(results: Sequence[dict[str, Any]], ccfg: dict[str, Any]) -> list[str | None]:
    """Which successful trials of one clip count, compared among themselves (never with the
    ground truth): per trial ``None`` (kept) or why it was set aside.

    SfM on a short clip sometimes converges to a wrong but self-consistent model (a bad initial
    pair, a flipped depth ordering); such a trial disagrees with the trials that found the right
    one, and averaging it in makes the instrument noisy. ``evaluate.consensus.mode``:
    ``none`` keeps every successful trial; ``majority`` keeps the largest group of trials that
    agree with one trial (within ``rot_tol`` radians and ``trans_tol`` per frame; ties go to the
    lower mean reprojection error); ``best`` keeps the one trial with the lowest mean
    reprojection error (all successful trials have every frame registered)."""
    mode = str(ccfg["mode"])
    if mode not in ("none", "majority", "best"):
        raise ValueError(f"evaluate.consensus.mode must be none|majority|best, got {mode!r}")
    out: list[str | None] = [None] * len(results)
    ok = [i for i, r in enumerate(results) if r.get("success") and "w2c" in r]
    if mode == "none" or len(ok) < 2:
        return out
    err = {i: float(results[i].get("reproj_error", math.nan)) for i in ok}
    err = {i: (e if math.isfinite(e) else math.inf) for i, e in err.items()}
    if mode == "best":
        best = min(ok, key=lambda i: (err[i], i))
        for i in ok:
            if i != best:
                out[i] = (f"set aside: trial {results[best]['trial']} has the lower "
                          f"reprojection error ({err[best]:.3f} px vs {err[i]:.3f} px)")
        return out
    rot_tol, trans_tol = float(ccfg["rot_tol"]), float(ccfg["trans_tol"])
    agree = {i: {i} for i in ok}
    for a in ok:
        for b in ok:
            if a < b:
                dr, dt = trial_distance(results[a]["w2c"], results[b]["w2c"])
                if dr <= rot_tol and dt <= trans_tol:
                    agree[a].add(b)
                    agree[b].add(a)
    centre = min(ok, key=lambda i: (-len(agree[i]), err[i], i))
    for i in ok:
        if i not in agree[centre]:
            out[i] = (f"set aside: disagrees with the {len(agree[centre])} of {len(ok)} "
                      f"successful trials that agree with trial {results[centre]['trial']}")
    return out


def frame0_factor(result: dict[str, Any], depth: DepthMaps) -> float:
    """The published protocol's metres per SfM unit of one trial: median of metric depth / SfM
    depth over the points SfM reconstructed in frame 0 (``camera_metrics.frame0_scale``)."""
    obs = result.get("frame0_obs") or {}
    u = np.asarray(obs.get("u", []), np.float64)
    if not len(u):
        raise ValueError("SfM reconstructed no point seen in frame 0")
    d, valid = sample_depth(depth, np.zeros(len(u), np.int64), u, np.asarray(obs["v"]))
    d = np.where(valid, d, np.nan)
    return cm.frame0_scale(d, obs["z_cam"])


@dataclass
class Reference:
    """The published metric variant's ground truth: the ground-truth video's SfM trajectory in
    metres (frame-0 factor applied), or why there is none."""

    c2w: np.ndarray | None
    reason: str | None = None
    trial: int | None = None


def cami2v_reference(gt_results: Sequence[dict[str, Any]], kept: Sequence[bool],
                     depth: DepthMaps | None, no_depth_reason: str | None) -> Reference:
    """SfM of the ground-truth video in metres: of its trials (kept by the consensus), the one
    with the lowest mean reprojection error, scaled by its frame-0 factor."""
    if depth is None:
        return Reference(None, no_depth_reason or "no metric depth of the ground-truth video")
    ok = [r for r, k in zip(gt_results, kept, strict=True) if r.get("success") and k]
    if not ok:
        return Reference(None, "SfM failed on the ground-truth video")
    best = min(ok, key=lambda r: (float(r.get("reproj_error", math.inf)), r["trial"]))
    try:
        k = frame0_factor(best, depth)
    except ValueError as exc:
        return Reference(None, f"no metric scale of the ground-truth video: {exc}")
    return Reference(cm.scaled(cm.c2w_from_w2c34(best["w2c"]), k), None, int(best["trial"]))


def score_trial_cami2v(clip: EvalClip, result: dict[str, Any], depth: DepthMaps | None,
                       no_depth_reason: str | None, ref: Reference) -> dict[str, Any]:
    """One per_clip.parquet row under ``evaluate.protocol=cami2v``: the relative metrics as in
    ``score_trial``; the metric ones against the ground-truth video's SfM (``Reference``), with
    this trial put in metres by its own frame-0 factor."""
    row = score_trial(clip, result, None, "pending", {})
    row["metric_reason"] = None
    if not row["success"]:
        row["metric_reason"] = "SfM failed"
        return row
    reason = ref.reason
    if reason is None and depth is None:
        reason = no_depth_reason or "no metric depth of the video"
    if reason is None:
        try:
            k = frame0_factor(result, depth)
        except ValueError as exc:
            reason = f"no metric scale: {exc}"
        else:
            row["scale_factor"] = k
            row.update(cm.cami2v_metric_metrics(cm.c2w_from_w2c34(result["w2c"]), k,
                                                ref.c2w, 1.0))
    row["metric_reason"] = reason
    return row


def aggregate(rows: Sequence[dict[str, Any]], clip_ids: Sequence[str]) -> dict[str, Any]:
    """metrics.json: per metric, the mean over clips of each clip's mean over its successful
    trials that the consensus kept (``consensus``; a row without ``kept`` counts); NaN metric
    values (unavailable) are left out and counted, never imputed."""
    per_clip: dict[str, dict[str, Any]] = {}
    for clip in clip_ids:
        ok = [r for r in rows if r["clip_id"] == clip and r["success"] and r.get("kept", True)]
        entry: dict[str, Any] = {"trials": sum(r["clip_id"] == clip for r in rows),
                                 "successful": sum(r["clip_id"] == clip and bool(r["success"])
                                                   for r in rows),
                                 "kept": len(ok)}
        for k in ALL_METRICS:
            vals = [r[k] for r in ok if not math.isnan(r[k])]
            entry[k] = float(np.mean(vals)) if vals else math.nan
        per_clip[clip] = entry
    out: dict[str, Any] = {}
    for k in ALL_METRICS:
        vals = [e[k] for e in per_clip.values() if not math.isnan(e[k])]
        out[k] = float(np.mean(vals)) if vals else None
    n_trials = len(rows)
    n_ok = sum(bool(r["success"]) for r in rows)
    out["sfm_success_rate"] = n_ok / n_trials if n_trials else None
    out["clips"] = len(clip_ids)
    out["clips_with_sfm"] = sum(e["successful"] > 0 for e in per_clip.values())
    out["clips_with_metric"] = sum(not math.isnan(e["TransErr_metric"])
                                   for e in per_clip.values())
    out["trials"] = n_trials
    reasons = sorted({r["metric_reason"] for r in rows
                      if r["success"] and r.get("metric_reason")})
    out["metric_unavailable"] = reasons or None
    out["per_clip"] = per_clip
    return out


def ground_truth_summary(source: str, metrics: dict[str, Any],
                         real_rows: Sequence[dict[str, Any]],
                         real_ids: Sequence[str]) -> dict[str, Any]:
    """metrics.json's ``ground_truth``: the same SfM on the real frames against their own poses
    (where the right answer is zero), so every figure comes with the instrument's noise floor.
    ``source=dataset`` is that row itself; ``source=model`` scores the real clips the model was
    asked to follow; ``source=videos`` has no real frames."""
    if source == "dataset":
        return {"available": True, "note": "source=dataset: this run is the ground-truth row",
                **{k: metrics[k] for k in ALL_METRICS}}
    if not real_ids:
        return {"available": False,
                "reason": "no real frames for these videos (give the real clips as "
                          "evaluate.source=dataset to measure the instrument's error)"}
    agg = aggregate(real_rows, real_ids)
    per_clip = {cid[: -len(REAL_SUFFIX)] if cid.endswith(REAL_SUFFIX) else cid: e
                for cid, e in agg["per_clip"].items()}
    return {"available": True, **{k: agg[k] for k in ALL_METRICS},
            "sfm_success_rate": agg["sfm_success_rate"], "clips_with_sfm": agg["clips_with_sfm"],
            "per_clip": per_clip}


def unmeasured_clips(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Clip -> why nothing was measured, for every clip none of whose trials succeeded: the
    trials' reasons, most frequent first, with their counts."""
    by_clip: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_clip.setdefault(r["clip_id"], []).append(r)
    out: dict[str, str] = {}
    for clip, rs in by_clip.items():
        if any(r["success"] for r in rs):
            continue
        counts: dict[str, int] = {}
        for r in rs:
            why = str(r.get("reason") or "no reason recorded")
            counts[why] = counts.get(why, 0) + 1
        reasons = sorted(counts.items(), key=lambda kv: -kv[1])
        out[clip] = f"SfM failed in all {len(rs)} trials: " + "; ".join(
            why if n == len(rs) else f"{why} ({n} of {len(rs)})" for why, n in reasons)
    return out


def format_table(metrics: dict[str, Any], title: str) -> str:
    """The table printed at the end of a run: one line per clip, then the mean."""
    def f(x: Any) -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"

    head = f"{'clip':<22}{'ok':>6}" + "".join(f"{k:>17}" for k in ALL_METRICS)
    lines = [title, head]
    for clip, e in sorted(metrics["per_clip"].items()):
        lines.append(f"{clip[:21]:<22}{e['successful']:>3}/{e['trials']:<2}"
                     + "".join(f"{f(e[k]):>17}" for k in ALL_METRICS))
    ok = sum(e["successful"] for e in metrics["per_clip"].values())
    lines.append(f"{'mean':<22}{ok:>3}/{metrics['trials']:<2}"
                 + "".join(f"{f(metrics[k]):>17}" for k in ALL_METRICS))
    if metrics.get("metric_unavailable"):
        lines.append("metric variants unavailable: " + "; ".join(metrics["metric_unavailable"]))
    return "\n".join(lines)


def run_trials(
    clips: Sequence[EvalClip],
    submit: Callable[[EvalClip, int, int], Any],
    wait: Callable[[list[Any]], tuple[list[Any], list[Any]]],
    get: Callable[[Any], dict[str, Any]],
    trials: int,
    seed: int,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Submit every (clip, trial) and collect results by clip (the Ray calls are injected so
    this stays engine-free and testable in-process). ``on_result`` sees each trial's result as
    it arrives (progress: the trials of a run take minutes)."""
    pending: dict[Any, str] = {}
    for clip in clips:
        for t in range(trials):
            pending[submit(clip, t, trial_seed(seed, t))] = clip.clip_id
    results: dict[str, list[dict[str, Any]]] = {c.clip_id: [] for c in clips}
    refs = list(pending)
    while refs:
        ready, refs = wait(refs)
        for ref in ready:
            result = get(ref)
            results[pending[ref]].append(result)
            if on_result is not None:
                on_result(result)
    for rs in results.values():
        rs.sort(key=lambda r: r["trial"])
    return results


def read_trajectory(path: str | Path) -> np.ndarray:
    """Lines of 16 numbers (row-major camera-to-world 4x4, metres) -> (N, 4, 4); the format
    ``trainer.sampling`` reads and ``stage=evaluate`` writes beside each generated video."""
    try:
        vals = np.loadtxt(io.StringIO(storage.path(path).read_text()), dtype=np.float64,
                          ndmin=2)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read trajectory {path}: {exc}") from None
    if vals.shape[1] != 16:
        raise ValueError(f"trajectory {path}: expected 16 numbers per line (c2w 4x4), "
                         f"got {vals.shape[1]}")
    mats = vals.reshape(-1, 4, 4)
    if not np.all(np.isfinite(mats)):
        raise ValueError(f"trajectory {path}: non-finite values")
    for i, m in enumerate(mats):
        problem = bottom_row_problem(m)
        if problem:
            raise ValueError(f"trajectory {path} line {i + 1}: {problem}")
    return mats


def write_trajectory(c2w: np.ndarray, path: str | Path) -> None:
    """(N, 4, 4) camera-to-world in metres -> lines of 16 numbers (see ``read_trajectory``)."""
    from pipeline.io import write_bytes_atomic

    buf = io.StringIO()
    np.savetxt(buf, np.asarray(c2w, np.float64).reshape(-1, 16), fmt="%.9g")
    write_bytes_atomic(buf.getvalue().encode(), path)  # local disk or a bucket


def fov_intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
    """Square-pixel pinhole K with the principal point at the image centre and the given
    horizontal field of view (the sampler's rule for external images)."""
    f = 0.5 * width / math.tan(math.radians(float(fov_deg)) / 2)
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
