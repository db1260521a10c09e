"""Posed RGB-D folders in the 7-Scenes / 3DMatch layout.

``frame-XXXXXX.color.(png|jpg)``, ``frame-XXXXXX.depth.png`` (uint16, ``depth_unit`` metres per
unit, 0 = no measurement), ``frame-XXXXXX.pose.txt`` (4x4 camera-to-world, metres, OpenCV axes)
and ``camera-intrinsics.txt`` (3x3 K of the colour camera, pixels).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from pipeline import storage
from pipeline.errors import ClipError

FRAME_RE = re.compile(r"^frame-(\d+)\.color\.(png|jpg|jpeg)$", re.IGNORECASE)


def is_sequence_dir(path: Path) -> bool:
    return path.is_dir() and any(FRAME_RE.match(p.name) for p in path.iterdir())


def sequence_dirs(root: Path) -> list[Path]:
    """``root`` itself when it is a sequence, else its immediate sub-folders that are."""
    if is_sequence_dir(root):
        return [root]
    return sorted(p for p in root.iterdir() if is_sequence_dir(p)) if root.is_dir() else []


def list_frames(seq: Path) -> list[tuple[int, Path]]:
    out = []
    for p in seq.iterdir():
        m = FRAME_RE.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def read_intrinsics(seq: Path, clip_id: str) -> np.ndarray:
    path = seq / "camera-intrinsics.txt"
    try:
        K = np.loadtxt(io.StringIO(storage.path(path).read_text()), dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise ClipError(clip_id, f"cannot read intrinsics {path}: {exc}") from exc
    if K.shape != (3, 3) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ClipError(clip_id, f"{path}: expected a 3x3 K with positive focal lengths")
    return K


def read_pose(path: Path, clip_id: str) -> np.ndarray:
    try:
        m = np.loadtxt(io.StringIO(storage.path(path).read_text()), dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise ClipError(clip_id, f"cannot read pose {path}: {exc}") from exc
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ClipError(clip_id, f"{path}: expected a finite 4x4 camera-to-world matrix")
    return m
