"""Camera trajectories for sampling: one documented format, readers for the other inputs, presets
and keyframe interpolation.

Convention (the one the model trains on, see ``trainer.data``): per frame a camera-to-world 4x4
in OpenCV axes (x right, y down, z forward), **relative to the condition camera** (frame 0 is
the identity) with translations in **metres**. A per-frame ``focal_scale`` multiplies the
condition camera's fx and fy (1 = same lens; > 1 = optical zoom-in), so a zoom is a trajectory
too.

The trajectory file format (``.json``, written by ``save_trajectory`` and by a UI)::

    {
      "format": "metric-align.trajectory",
      "version": 1,
      "num_frames": 16,                         # frames to produce (needed with keyframes only)
      "fps": 8.0,                               # optional, playback only
      "frames": [                               # optional if "keyframes" is given
        {"c2w": [16 numbers, row-major], "focal_scale": 1.0}, ...
      ],
      "keyframes": [                            # optional: what an editor manipulates
        {"time": 0.0, "c2w": [16 numbers], "focal_scale": 1.0}, ...
      ],
      "source": {"kind": "preset", "preset": "orbit", ...}   # optional provenance, free form
    }

Every ``c2w`` must be rigid: an orthonormal rotation (det +1) and a bottom row of
``[0, 0, 0, 1]``, each within ``RIGID_TOL`` (1e-4, absolute): files written with a few decimals
pass, a scaled or projective matrix is rejected with the file and frame in the message.

When ``frames`` is present it is used as is (re-expressed relative to its first pose, so a file
in any world frame works); otherwise ``num_frames`` frames are interpolated from ``keyframes``
(``interpolate_keyframes``). Sampling needs the model's frame count: a trajectory with another
count is resampled along its whole path (``resample_trajectory``), and a log line says so.
``focal_scale`` defaults to 1 and ``time`` to evenly spaced values.
Every number must be finite (no NaN / Infinity, which JSON does not have but Python reads);
``focal_scale`` and ``fps`` must be > 0, ``num_frames`` a whole number >= 1. Files are written
as strict JSON.

Other readers (``load_trajectory`` dispatches on content): a c2w text file (16 numbers per line,
row-major, metres) and a RealEstate10K pose file (URL line + 19 numbers per line, relative
scale), whose translations are multiplied by a metric factor (a given one, or a curated clip's
``frame_scale`` of its first frame, as RealCam-I2V does for the condition frame).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.geometry.poses import (
    RIGID_TOL,
    bottom_row_problem,
    relative_poses,
    scale_translation,
    w2c_to_mat44,
)
from pipeline.geometry.poses import rigid_inverse as _rigid_inverse
from pipeline.log import log

FORMAT = "metric-align.trajectory"
VERSION = 1
PRESETS = ("dolly", "orbit", "pan", "zoom")


class TrajectoryError(ValueError):
    """A trajectory file or request that cannot be used (message names the file/problem)."""


@dataclass
class Keyframe:
    """A pose the interpolated path passes through exactly at ``time``."""

    time: float
    c2w: np.ndarray  # (4, 4), relative to the condition camera, metres
    focal_scale: float = 1.0


@dataclass
class Trajectory:
    """Per-frame metric poses relative to the condition camera (``c2w[0]`` is the identity)."""

    c2w: np.ndarray  # (N, 4, 4) float64
    focal_scale: np.ndarray  # (N,) float64
    fps: float | None = None
    keyframes: list[Keyframe] | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.c2w = np.asarray(self.c2w, dtype=np.float64).reshape(-1, 4, 4)
        self.focal_scale = np.broadcast_to(
            np.asarray(self.focal_scale, dtype=np.float64), (len(self.c2w),)
        ).copy()
        if len(self.c2w) == 0:
            raise TrajectoryError("trajectory has no frames")
        if not np.all(np.isfinite(self.c2w)):
            raise TrajectoryError("trajectory has non-finite poses")
        if not (np.all(np.isfinite(self.focal_scale)) and np.all(self.focal_scale > 0)):
            raise TrajectoryError("trajectory focal_scale must be finite numbers > 0")

    def __len__(self) -> int:
        return len(self.c2w)

    def intrinsics(self, K: np.ndarray) -> np.ndarray:
        """(N, 3, 3) per-frame pixel intrinsics: the condition camera's ``K`` with fx, fy
        multiplied by ``focal_scale`` (the principal point stays)."""
        Ks = np.repeat(np.asarray(K, dtype=np.float64)[None], len(self), axis=0)
        Ks[:, 0, 0] *= self.focal_scale
        Ks[:, 1, 1] *= self.focal_scale
        return Ks

    def fit(self, n: int) -> Trajectory:
        """Exactly ``n`` frames (the model's count): itself when it has them, else the whole path
        resampled (``resample_trajectory``) with one log line saying so. Cutting a long path to
        its first ``n`` poses would silently drop almost all of the camera move."""
        if len(self) == int(n):
            return self
        out = resample_trajectory(self, n)
        name = self.source.get("file") or self.source.get("kind") or "trajectory"
        log.info(f"trajectory {name}: {len(self)} poses resampled to the model's {int(n)} frames "
                 "along the whole path (evenly in time; SLERP rotations, spline positions)")
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of the module docstring (frames always written)."""
        out: dict[str, Any] = {"format": FORMAT, "version": VERSION, "num_frames": len(self)}
        if self.fps is not None:
            out["fps"] = float(self.fps)
        out["frames"] = [
            {"c2w": m.reshape(16).tolist(), "focal_scale": float(f)}
            for m, f in zip(self.c2w, self.focal_scale)
        ]
        if self.keyframes:
            out["keyframes"] = [
                {"time": float(k.time), "c2w": np.asarray(k.c2w).reshape(16).tolist(),
                 "focal_scale": float(k.focal_scale)}
                for k in self.keyframes
            ]
        if self.source:
            out["source"] = self.source
        return out


# ------------------------------------------------------------------------------- rotations
def quat_from_matrix(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation -> (..., 4) unit quaternion (w, x, y, z), w >= 0.

    Shepperd's method: picks the largest of the four squared components to divide by, which
    keeps it accurate near 180 degrees where the trace formula loses precision.
    """
    R = np.asarray(R, dtype=np.float64)
    flat = R.reshape(-1, 3, 3)
    out = np.empty((len(flat), 4))
    for i, m in enumerate(flat):
        tr = np.trace(m)
        diag = np.array([tr, m[0, 0], m[1, 1], m[2, 2]])
        k = int(np.argmax(diag))
        if k == 0:
            s = 2.0 * np.sqrt(1.0 + tr)
            q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s,
                 (m[1, 0] - m[0, 1]) / s]
        elif k == 1:
            s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
            q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s,
                 (m[0, 2] + m[2, 0]) / s]
        elif k == 2:
            s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
            q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s,
                 (m[1, 2] + m[2, 1]) / s]
        else:
            s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
            q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s,
                 0.25 * s]
        q = np.asarray(q)
        q /= np.linalg.norm(q)
        out[i] = q if q[0] >= 0 else -q
    return out.reshape(*R.shape[:-2], 4)


def matrix_from_quat(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternion (w, x, y, z), any norm -> (..., 3, 3) rotation."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def slerp(q0: np.ndarray, q1: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Spherical linear interpolation between unit quaternions at fractions ``u`` (shortest
    arc: constant angular speed, the reason keyframe rotations use it)."""
    q0, q1 = np.asarray(q0, float), np.asarray(q1, float)
    u = np.asarray(u, dtype=np.float64)[..., None]
    d = float(np.dot(q0, q1))
    if d < 0:  # q and -q are the same rotation: take the short way round
        q1, d = -q1, -d
    d = min(d, 1.0)
    theta = np.arccos(d)
    if theta < 1e-8:  # (nearly) equal: the linear formula is exact to rounding
        q = (1 - u) * q0 + u * q1
    else:
        q = (np.sin((1 - u) * theta) * q0 + np.sin(u * theta) * q1) / np.sin(theta)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def rotation_y(deg: float | np.ndarray) -> np.ndarray:
    """Rotation(s) about the camera's y axis (down): positive turns the view to the right."""
    a = np.deg2rad(np.asarray(deg, dtype=np.float64))
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1),
                     np.stack([-s, z, c], -1)], -2)


# ------------------------------------------------------------------------------- keyframes
def _hermite_tangents(times: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Catmull-Rom tangents for non-uniform times (one-sided at the ends)."""
    m = np.zeros_like(pts)
    if len(pts) == 1:
        return m
    m[0] = (pts[1] - pts[0]) / (times[1] - times[0])
    m[-1] = (pts[-1] - pts[-2]) / (times[-1] - times[-2])
    for i in range(1, len(pts) - 1):
        m[i] = (pts[i + 1] - pts[i - 1]) / (times[i + 1] - times[i - 1])
    return m


def interpolate_keyframes(keyframes: Sequence[Keyframe], num_frames: int) -> Trajectory:
    """``num_frames`` poses at evenly spaced times from the first to the last keyframe.

    Rotation: SLERP between the two keyframes around each time. Translation: cubic Hermite
    spline with Catmull-Rom tangents, which passes through every keyframe with a continuous
    velocity (no jerk at keyframes, unlike piecewise-linear). ``focal_scale``: linear. The
    result is re-expressed relative to its first pose, so keyframe 0 need not be the identity.
    """
    kfs = sorted(keyframes, key=lambda k: k.time)
    if not kfs:
        raise TrajectoryError("no keyframes")
    n = int(num_frames)
    if n < 1:
        raise TrajectoryError(f"num_frames must be >= 1, got {num_frames}")
    times = np.array([k.time for k in kfs], dtype=np.float64)
    if np.any(np.diff(times) <= 0):
        raise TrajectoryError(f"keyframe times must be strictly increasing, got {times.tolist()}")
    mats = np.stack([np.asarray(k.c2w, dtype=np.float64).reshape(4, 4) for k in kfs])
    quats = quat_from_matrix(mats[:, :3, :3])
    pos = mats[:, :3, 3]
    fs = np.array([k.focal_scale for k in kfs], dtype=np.float64)
    if len(kfs) == 1:
        out = np.repeat(mats[:1], n, axis=0)
        return Trajectory(relative_poses(out), np.full(n, fs[0]), keyframes=list(kfs),
                          source={"kind": "keyframes"})
    tang = _hermite_tangents(times, pos)
    ts = np.linspace(times[0], times[-1], n)
    out = np.tile(np.eye(4), (n, 1, 1))
    focal = np.empty(n)
    seg = np.clip(np.searchsorted(times, ts, side="right") - 1, 0, len(kfs) - 2)
    for i, (t, k) in enumerate(zip(ts, seg)):
        h = times[k + 1] - times[k]
        u = (t - times[k]) / h
        out[i, :3, :3] = matrix_from_quat(slerp(quats[k], quats[k + 1], u))
        h00, h10 = 2 * u**3 - 3 * u**2 + 1, u**3 - 2 * u**2 + u
        h01, h11 = -2 * u**3 + 3 * u**2, u**3 - u**2
        out[i, :3, 3] = (h00 * pos[k] + h10 * h * tang[k] + h01 * pos[k + 1]
                         + h11 * h * tang[k + 1])
        focal[i] = (1 - u) * fs[k] + u * fs[k + 1]
    return Trajectory(relative_poses(out), focal, keyframes=list(kfs),
                      source={"kind": "keyframes"})


def resample_trajectory(traj: Trajectory, num_frames: int) -> Trajectory:
    """``num_frames`` poses evenly spaced in time from the first pose to the last.

    Time is the frame index (a file's frames are taken as evenly timed), so the path keeps its
    speed profile: each output pose lies between its two neighbouring input poses, rotation by
    SLERP, position by the keyframes' C1 Hermite spline, ``focal_scale`` linearly (the input
    frames are used as keyframes of ``interpolate_keyframes``). Works both ways: a long recording
    is thinned along its whole length, a short one is interpolated. ``fps`` is scaled so the
    duration stays; ``source["resampled_from"]`` records the input's frame count.
    """
    kfs = [Keyframe(float(i), m, float(f))
           for i, (m, f) in enumerate(zip(traj.c2w, traj.focal_scale))]
    out = interpolate_keyframes(kfs, num_frames)
    out.keyframes = traj.keyframes  # the editor's keyframes, not thousands of frames
    out.fps = traj.fps * len(out) / len(traj) if traj.fps else traj.fps
    out.source = {**traj.source, "resampled_from": len(traj)}
    return out


# ------------------------------------------------------------------------------- presets
def scene_depth(depth: np.ndarray) -> float:
    """Median of the valid (finite, positive) depths: the scale presets are sized by."""
    d = np.asarray(depth, dtype=np.float64)
    d = d[np.isfinite(d) & (d > 0)]
    if d.size == 0:
        raise TrajectoryError("depth map has no valid value to size a preset from")
    return float(np.median(d))


def preset_trajectory(
    name: str, num_frames: int, depth_m: float, params: dict[str, Any]
) -> Trajectory:
    """A preset camera move sized from the scene's median depth ``depth_m`` (metres).

    ``params`` (``train.sampling.preset`` in the config): ``dolly_frac`` (forward move as a
    fraction of the depth), ``pan_frac`` (sideways move to the right, a fraction of the depth;
    negative = left), ``orbit_deg`` (total angle around the point on the optical axis at the
    scene depth, the camera keeps looking at it; positive = moves to the left and turns right)
    and ``zoom_factor`` (final focal multiplier of an optical zoom, camera static). Every preset
    moves at constant speed from the condition camera (frame 0 = identity).
    """
    n = int(num_frames)
    if n < 1:
        raise TrajectoryError(f"num_frames must be >= 1, got {num_frames}")
    if not (np.isfinite(depth_m) and depth_m > 0):
        raise TrajectoryError(f"scene depth must be a positive number of metres, got {depth_m}")
    s = np.linspace(0.0, 1.0, n)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    focal = np.ones(n)
    if name == "dolly":
        c2w[:, 2, 3] = float(params["dolly_frac"]) * depth_m * s
    elif name == "pan":
        c2w[:, 0, 3] = float(params["pan_frac"]) * depth_m * s
    elif name == "orbit":
        R = rotation_y(float(params["orbit_deg"]) * s)
        centre = np.array([0.0, 0.0, depth_m])
        c2w[:, :3, :3] = R
        c2w[:, :3, 3] = centre - depth_m * R[:, :, 2]  # stay at the same distance, look at it
    elif name == "zoom":
        focal = 1.0 + (float(params["zoom_factor"]) - 1.0) * s
    else:
        raise TrajectoryError(f"unknown trajectory preset '{name}' (one of {', '.join(PRESETS)})")
    c2w[0] = np.eye(4)
    src = {"kind": "preset", "preset": name, "scene_depth_m": float(depth_m),
           **{k: float(v) for k, v in params.items()}}
    return Trajectory(c2w, focal, source=src)


# ------------------------------------------------------------------------------- files
def save_trajectory(traj: Trajectory, path: str | Path) -> Path:
    """Write the JSON format atomically (temp file + rename). Strict JSON: a NaN or infinity
    raises ``ValueError`` before anything is written (other readers reject them)."""
    text = json.dumps(traj.to_dict(), indent=1, allow_nan=False) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _mat16(v: Any, where: str) -> np.ndarray:
    """A file's c2w as a checked rigid 4x4: orthonormal rotation and bottom row [0, 0, 0, 1]
    within ``RIGID_TOL`` (anything else would be silently treated as rigid downstream)."""
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        a = np.empty(0)
    if a.size != 16 or not np.all(np.isfinite(a)):
        raise TrajectoryError(f"{where}: c2w must be 16 finite numbers (row-major 4x4)")
    a = a.reshape(4, 4)
    R = a[:3, :3]
    if np.abs(R @ R.T - np.eye(3)).max() > RIGID_TOL or abs(np.linalg.det(R) - 1) > RIGID_TOL:
        raise TrajectoryError(f"{where}: c2w rotation is not orthonormal")
    problem = bottom_row_problem(a)
    if problem:
        raise TrajectoryError(f"{where}: {problem}")
    return a


def _number(v: Any, what: str, positive: bool = False) -> float:
    """A finite number from a file, else a ``TrajectoryError`` naming it: Python's JSON reader
    accepts NaN and Infinity (and 1e999 overflows to infinity), which no pose or zoom means."""
    try:
        x = float(v)
    except (TypeError, ValueError, OverflowError):
        x = float("nan")
    if isinstance(v, bool) or not np.isfinite(x) or (positive and x <= 0):
        need = "a finite number > 0" if positive else "a finite number"
        raise TrajectoryError(f"{what} must be {need}, got {v!r}")
    return x


def _count(v: Any, what: str) -> int:
    """A whole number >= 1 from a file (a frame count), else a ``TrajectoryError``."""
    try:
        x = float(v)
    except (TypeError, ValueError, OverflowError):
        x = float("nan")
    if isinstance(v, bool) or not np.isfinite(x) or x < 1 or x != int(x):
        raise TrajectoryError(f"{what} must be a whole number >= 1, got {v!r}")
    return int(x)


def _non_finite_path(v: Any, path: str = "") -> str | None:
    """Where a NaN / infinity sits in a free-form JSON value (``source``), or None."""
    if isinstance(v, float) and not np.isfinite(v):
        return path or "value"
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    for k, x in items:
        hit = _non_finite_path(x, f"{path}.{k}" if path else str(k))
        if hit:
            return hit
    return None


_JSON_KINDS = {list: "list", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def _json_kind(v: Any) -> str:
    return _JSON_KINDS.get(type(v), type(v).__name__)


def _pose_list(doc: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    """``doc[key]`` as a list of objects ([] when absent); a wrong type names the key."""
    items = doc.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        raise TrajectoryError(f"{where}: '{key}' must be a list of poses, "
                              f"got a {_json_kind(items)}")
    what = key[:-1]  # frame / keyframe
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise TrajectoryError(f"{where}: {what} {i} must be an object like "
                                  f'{{"c2w": [16 numbers]}}, got a {_json_kind(item)}')
    return items


def trajectory_from_dict(doc: Any, where: str = "trajectory") -> Trajectory:
    """Parse the JSON document (see the module docstring); ``where`` names it in errors."""
    if not isinstance(doc, dict):
        raise TrajectoryError(f"{where}: expected a JSON object with 'frames' or 'keyframes', "
                              f"got a {_json_kind(doc)}")
    if doc.get("format") != FORMAT:
        raise TrajectoryError(f"{where}: 'format' must be '{FORMAT}', got {doc.get('format')!r}")
    try:
        version_ok = int(doc.get("version", -1)) == VERSION
    except (TypeError, ValueError, OverflowError):
        version_ok = False
    if not version_ok:
        raise TrajectoryError(f"{where}: unsupported version {doc.get('version')!r} (this reader "
                              f"reads version {VERSION})")
    fps = doc.get("fps")
    if fps is not None:
        fps = _number(fps, f"{where}: 'fps'", positive=True)
    num_frames = doc.get("num_frames")
    if num_frames is not None:
        num_frames = _count(num_frames, f"{where}: 'num_frames'")
    bad = _non_finite_path(doc.get("source"))
    if bad:
        raise TrajectoryError(f"{where}: 'source' has a NaN or infinite number at {bad}")
    raw_frames = _pose_list(doc, "frames", where)
    raw_kfs = _pose_list(doc, "keyframes", where)
    kfs = None
    if raw_kfs:
        default_t = np.linspace(0.0, 1.0, len(raw_kfs))
        kfs = [Keyframe(_number(k.get("time", default_t[i]), f"{where} keyframe {i}: time"),
                        _mat16(k.get("c2w"), f"{where} keyframe {i}"),
                        _number(k.get("focal_scale", 1.0), f"{where} keyframe {i}: focal_scale",
                                positive=True))
               for i, k in enumerate(raw_kfs)]
    if raw_frames:
        c2w = np.stack([_mat16(f.get("c2w"), f"{where} frame {i}")
                        for i, f in enumerate(raw_frames)])
        focal = np.array([_number(f.get("focal_scale", 1.0), f"{where} frame {i}: focal_scale",
                                  positive=True) for i, f in enumerate(raw_frames)])
        traj = Trajectory(relative_poses(c2w), focal, keyframes=kfs)
    elif kfs:
        if num_frames is None:
            raise TrajectoryError(f"{where}: keyframes without 'num_frames'")
        traj = interpolate_keyframes(kfs, num_frames)
    else:
        empty = [k for k in ("frames", "keyframes") if k in doc]
        if empty:
            raise TrajectoryError(f"{where}: '{empty[0]}' is empty: give at least one pose")
        raise TrajectoryError(f"{where}: neither 'frames' nor 'keyframes'")
    traj.fps = fps
    traj.source = dict(doc.get("source") or traj.source)
    return traj


def load_c2w_txt(path: str | Path) -> Trajectory:
    """Lines of 16 numbers (row-major c2w, metres) -> relative to the first pose."""
    try:
        mats = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise TrajectoryError(f"{path}: not a c2w text file (16 numbers a line): {exc}") from None
    if mats.shape[1] != 16:
        raise TrajectoryError(f"{path}: expected 16 numbers per line, got {mats.shape[1]}")
    c2w = np.stack([_mat16(m, f"{path} line {i + 1}") for i, m in enumerate(mats)])
    return Trajectory(relative_poses(c2w), np.ones(len(c2w)),
                      source={"kind": "c2w_txt", "file": Path(path).name})


def load_re10k(path: str | Path, scale: float) -> Trajectory:
    """RealEstate10K pose file -> metric trajectory relative to its first frame.

    ``scale`` maps the file's relative translations to metres (a clip factor, or a curated
    clip's ``frame_scale[0]``: the condition frame's own factor, as in RealCam-I2V).
    """
    from pipeline.errors import ClipError
    from pipeline.formats.re10k import parse_pose_file

    if not (np.isfinite(scale) and scale > 0):
        raise TrajectoryError(
            f"{path}: a RealEstate10K pose file is in relative scale; give a positive metric "
            f"factor (train.sampling.trajectory_scale), got {scale}"
        )
    try:
        pf = parse_pose_file(Path(path), Path(path).stem, rotation_tol=1e-3, intrinsics_tol=1e-6,
                             min_frames=1)
    except ClipError as exc:
        raise TrajectoryError(str(exc)) from None
    c2w = _rigid_inverse(w2c_to_mat44(pf.w2c))
    rel = scale_translation(relative_poses(c2w), float(scale))
    return Trajectory(rel, np.ones(len(rel)),
                      source={"kind": "re10k", "file": Path(path).name, "scale": float(scale),
                              "intrinsics": pf.intrinsics.tolist()})


def is_re10k_file(path: str | Path) -> bool:
    """A RealEstate10K pose file starts with a non-numeric URL line followed by 19-number lines."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = [ln for ln in (fh.readline() for _ in range(2)) if ln.strip()]
    if len(lines) < 2:
        return False
    try:
        float(lines[0].split()[0])
        return False
    except ValueError:
        return len(lines[1].split()) == 19


def load_trajectory(path: str | Path, re10k_scale: float | None = None) -> Trajectory:
    """Any supported file -> ``Trajectory``: ``.json`` (the format above), a RealEstate10K pose
    file (needs ``re10k_scale``), else a c2w text file."""
    p = Path(path)
    if not p.is_file():
        raise TrajectoryError(f"trajectory file not found: {p}")
    if p.suffix.lower() == ".json":
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise TrajectoryError(f"{p}: not valid JSON ({exc})") from None
        traj = trajectory_from_dict(doc, str(p))
        traj.source.setdefault("file", p.name)
        return traj
    if is_re10k_file(p):
        return load_re10k(p, float(re10k_scale) if re10k_scale else float("nan"))
    return load_c2w_txt(p)
