"""Keyframe model of the trajectory designer (``python -m pipeline ui``): pure state, no GUI.

Why a separate model: the web page (``trainer.ui``) only forwards user actions (add, move,
delete, reorder, preset, frame count, duration) to this object and redraws what it returns, so
every editing rule is unit-tested without a browser.

Rules:

- Keyframe 0 is the **condition camera** (identity pose, metres, OpenCV axes): generation starts
  from the condition image, so the path must start there. It cannot be moved, deleted or
  reordered; its ``focal_scale`` can change (a zoom starts at 1 anyway).
- Keyframe times are evenly spaced over ``[0, 1]`` in list order, so reordering is a list
  operation and the spline's parameter follows the order the user sees.
- The path is ``trajectory.interpolate_keyframes`` (SLERP rotations, C1 Hermite positions)
  with ``num_frames`` frames at ``fps = num_frames / duration_s``; export is the documented
  trajectory JSON (``trajectory.save_trajectory``), keyframes included, so a file written here
  loads back into the designer unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.inference.trajectory import (
    Keyframe,
    Trajectory,
    TrajectoryError,
    interpolate_keyframes,
    matrix_from_quat,
    preset_trajectory,
    quat_from_matrix,
    save_trajectory,
)


# ------------------------------------------------------------------------------- angles
def euler_to_matrix(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Camera rotation (camera-to-world, OpenCV axes) from yaw about y (down: positive turns the
    view right), then pitch about the new x (positive looks down), then roll about the new z
    (the view axis). The order a camera operator thinks in: pan, tilt, roll."""
    y, p, r = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])  # z -> +y
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return ry @ rx @ rz


def matrix_to_euler(R: np.ndarray) -> tuple[float, float, float]:
    """Inverse of ``euler_to_matrix`` (degrees); at pitch = +-90 the yaw takes all the turn."""
    R = np.asarray(R, dtype=np.float64)
    pitch = np.arcsin(np.clip(R[1, 2], -1.0, 1.0))
    if abs(np.cos(pitch)) > 1e-9:
        yaw = np.arctan2(R[0, 2], R[2, 2])
        roll = np.arctan2(R[1, 0], R[1, 1])
    else:  # gimbal lock: only yaw + roll (or yaw - roll) is defined
        yaw = np.arctan2(-R[2, 0], R[0, 0])
        roll = 0.0
    return tuple(float(np.rad2deg(a)) for a in (yaw, pitch, roll))  # type: ignore[return-value]


def pose(position: Any, R: np.ndarray | None = None) -> np.ndarray:
    """4x4 c2w from a position (metres) and an optional 3x3 rotation."""
    m = np.eye(4)
    if R is not None:
        m[:3, :3] = R
    m[:3, 3] = np.asarray(position, dtype=np.float64).reshape(3)
    return m


# ------------------------------------------------------------------------------- model
@dataclass(eq=False)  # identity: two keyframes at one pose are still two keyframes
class DesignKeyframe:
    """One editable keyframe: pose relative to the condition camera (metres) and lens zoom."""

    c2w: np.ndarray
    focal_scale: float = 1.0

    @property
    def position(self) -> np.ndarray:
        return self.c2w[:3, 3].copy()

    @property
    def wxyz(self) -> np.ndarray:
        """Rotation as a unit quaternion (w, x, y, z): what a 3D gizmo reads and writes."""
        return quat_from_matrix(self.c2w[:3, :3])


@dataclass
class TrajectoryDesign:
    """Keyframes, frame count and duration of the path being designed (see the module doc)."""

    num_frames: int
    duration_s: float
    keyframes: list[DesignKeyframe] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.keyframes:
            self.keyframes = [DesignKeyframe(np.eye(4))]
        self.set_timing(self.num_frames, self.duration_s)

    # --------------------------------------------------------------------------- editing
    def _check_editable(self, i: int) -> None:
        if not 0 <= i < len(self.keyframes):
            raise TrajectoryError(f"no keyframe {i} (there are {len(self.keyframes)})")
        if i == 0:
            raise TrajectoryError("keyframe 0 is the condition camera and stays where it is")

    def add(self, after: int | None = None, step_m: float = 0.1) -> int:
        """Insert a keyframe after ``after`` (default: the last) and return its index.

        Between two keyframes it starts at the path's midpoint (position midway, rotation
        SLERP half-way), so adding never changes the path's shape much; after the last it
        continues the last segment's direction by its length (or ``step_m`` forward along the
        camera's view axis when there is only the condition camera)."""
        i = len(self.keyframes) - 1 if after is None else int(after)
        if not 0 <= i < len(self.keyframes):
            raise TrajectoryError(f"no keyframe {i} to add after")
        a = self.keyframes[i]
        if i + 1 < len(self.keyframes):
            b = self.keyframes[i + 1]
            mid = interpolate_keyframes([Keyframe(0.0, a.c2w), Keyframe(1.0, b.c2w)], 3)
            # interpolate_keyframes re-expresses relative to its first pose: undo that
            m = a.c2w @ mid.c2w[1]
            new = DesignKeyframe(m, 0.5 * (a.focal_scale + b.focal_scale))
        elif i > 0:
            prev = self.keyframes[i - 1]
            m = a.c2w.copy()
            m[:3, 3] = a.c2w[:3, 3] + (a.c2w[:3, 3] - prev.c2w[:3, 3])
            if np.allclose(m[:3, 3], a.c2w[:3, 3]):
                m[:3, 3] += step_m * a.c2w[:3, 2]
            new = DesignKeyframe(m, a.focal_scale)
        else:
            m = a.c2w.copy()
            m[:3, 3] += step_m * a.c2w[:3, 2]
            new = DesignKeyframe(m, a.focal_scale)
        self.keyframes.insert(i + 1, new)
        return i + 1

    def move(self, i: int, position: Any | None = None, rotation: np.ndarray | None = None,
             wxyz: Any | None = None, focal_scale: float | None = None) -> None:
        """Set keyframe ``i``'s position (metres), rotation (3x3, or a ``wxyz`` quaternion from
        a gizmo) and/or focal scale; keyframe 0 accepts only ``focal_scale``."""
        if i == 0 and position is None and rotation is None and wxyz is None:
            if focal_scale is not None:
                self._set_focal(0, focal_scale)
            return
        self._check_editable(i)
        k = self.keyframes[i]
        m = k.c2w.copy()
        if wxyz is not None:
            rotation = matrix_from_quat(np.asarray(wxyz, dtype=np.float64))
        if rotation is not None:
            R = np.asarray(rotation, dtype=np.float64).reshape(3, 3)
            if np.abs(R @ R.T - np.eye(3)).max() > 1e-6 or abs(np.linalg.det(R) - 1) > 1e-6:
                raise TrajectoryError(f"keyframe {i}: rotation is not orthonormal")
            m[:3, :3] = R
        if position is not None:
            p = np.asarray(position, dtype=np.float64).reshape(3)
            if not np.all(np.isfinite(p)):
                raise TrajectoryError(f"keyframe {i}: position must be finite metres")
            m[:3, 3] = p
        k.c2w = m
        if focal_scale is not None:
            self._set_focal(i, focal_scale)

    def _set_focal(self, i: int, focal_scale: float) -> None:
        f = float(focal_scale)
        if not (np.isfinite(f) and f > 0):
            raise TrajectoryError(f"keyframe {i}: focal scale must be > 0, got {focal_scale}")
        self.keyframes[i].focal_scale = f

    def delete(self, i: int) -> None:
        """Remove keyframe ``i`` (not the condition camera)."""
        self._check_editable(i)
        del self.keyframes[i]

    def reorder(self, i: int, j: int) -> None:
        """Move keyframe ``i`` to position ``j`` (neither may be the condition camera's 0)."""
        self._check_editable(i)
        self._check_editable(j)
        self.keyframes.insert(j, self.keyframes.pop(i))

    def set_timing(self, num_frames: int, duration_s: float) -> None:
        """Frames to produce and their playback duration (fps = frames / duration)."""
        n, d = int(num_frames), float(duration_s)
        if n < 2:
            raise TrajectoryError(f"frame count must be >= 2, got {num_frames}")
        if not (np.isfinite(d) and d > 0):
            raise TrajectoryError(f"duration must be > 0 seconds, got {duration_s}")
        self.num_frames, self.duration_s = n, d

    @property
    def fps(self) -> float:
        return self.num_frames / self.duration_s

    # --------------------------------------------------------------------------- presets
    @classmethod
    def from_preset(cls, name: str, num_frames: int, duration_s: float, depth_m: float,
                    params: dict[str, Any], num_keyframes: int) -> TrajectoryDesign:
        """A preset (``trajectory.preset_trajectory``, sized in metres from the scene depth)
        sampled at ``num_keyframes`` evenly spaced keyframes, ready to edit. Every preset is
        constant-speed along a line or circle, so a few keyframes reproduce it closely."""
        nk = max(2, int(num_keyframes))
        dense = preset_trajectory(name, max(int(num_frames), nk), depth_m, params)
        idx = np.round(np.linspace(0, len(dense) - 1, nk)).astype(int)
        kfs = [DesignKeyframe(dense.c2w[i].copy(), float(dense.focal_scale[i])) for i in idx]
        kfs[0].c2w = np.eye(4)
        return cls(int(num_frames), float(duration_s), kfs, source=dict(dense.source))

    @classmethod
    def from_trajectory(cls, traj: Trajectory, duration_s: float) -> TrajectoryDesign:
        """Back from a loaded trajectory: its keyframes if it has them (re-expressed relative to
        the first one), else every frame as a keyframe."""
        if traj.keyframes:
            first = np.linalg.inv(np.asarray(traj.keyframes[0].c2w, dtype=np.float64))
            kfs = [DesignKeyframe(first @ np.asarray(k.c2w, dtype=np.float64), k.focal_scale)
                   for k in sorted(traj.keyframes, key=lambda k: k.time)]
        else:
            kfs = [DesignKeyframe(m.copy(), float(f)) for m, f in zip(traj.c2w, traj.focal_scale)]
        kfs[0].c2w = np.eye(4)
        dur = len(traj) / traj.fps if traj.fps else float(duration_s)
        return cls(max(2, len(traj)), dur, kfs, source=dict(traj.source))

    # --------------------------------------------------------------------------- output
    def times(self) -> np.ndarray:
        """Evenly spaced keyframe times in list order."""
        return np.linspace(0.0, 1.0, len(self.keyframes))

    def trajectory(self) -> Trajectory:
        """The interpolated path (``num_frames`` poses; frame 0 the condition camera)."""
        kfs = [Keyframe(float(t), k.c2w.copy(), float(k.focal_scale))
               for t, k in zip(self.times(), self.keyframes)]
        if len(kfs) == 1:  # a still camera (a zoom needs two keyframes)
            traj = Trajectory(np.repeat(np.eye(4)[None], self.num_frames, axis=0),
                              np.full(self.num_frames, kfs[0].focal_scale), keyframes=kfs)
        else:
            traj = interpolate_keyframes(kfs, self.num_frames)
        traj.fps = self.fps
        traj.source = {"kind": "designer", **({"from": self.source} if self.source else {})}
        return traj

    def export(self, path: str | Path) -> Path:
        """Write the documented trajectory JSON (frames + keyframes + fps) atomically."""
        return save_trajectory(self.trajectory(), path)
