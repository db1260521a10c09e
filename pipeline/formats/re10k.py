"""RealEstate10K pose files: parsing with strict, line-numbered validation.

Line 1 is the source video URL; every further line is
``timestamp_us fx fy cx cy 0 0 r11 r12 r13 t1 r21 r22 r23 t2 r31 r32 r33 t3`` (intrinsics
normalised by width/height; a row-major 3x4 world-to-camera matrix with arbitrary-scale t).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import storage
from pipeline.errors import ClipError

NUMBERS_PER_LINE = 19


@dataclass
class PoseFile:
    url: str
    timestamps_us: np.ndarray  # (n,) int64
    intrinsics: np.ndarray  # (4,) normalised fx, fy, cx, cy
    w2c: np.ndarray  # (n, 3, 4)


def check_rotation(clip_id: str, R: np.ndarray, tol: float, where: str) -> None:
    err = float(np.abs(R @ R.T - np.eye(3)).max())
    det = float(np.linalg.det(R))
    if not np.isfinite(err) or err > tol or abs(det - 1.0) > tol:
        raise ClipError(
            clip_id,
            f"{where}: rotation is not orthonormal (max |R R^T - I| = {err:.2e}, det = {det:.4f})",
        )


def parse_pose_file(
    path: Path, clip_id: str, rotation_tol: float, intrinsics_tol: float, min_frames: int
) -> PoseFile:
    try:
        text = storage.path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClipError(clip_id, f"cannot read pose file {path}: {exc}") from exc
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ClipError(clip_id, f"{path}: empty file (line 1 must be the video URL)")
    url = lines[0].strip()
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != NUMBERS_PER_LINE:
            raise ClipError(
                clip_id,
                f"{path} line {lineno}: expected {NUMBERS_PER_LINE} numbers, got {len(parts)}",
            )
        try:
            ts = int(parts[0])
            vals = [float(p) for p in parts[1:]]
        except ValueError:
            msg = f"{path} line {lineno}: not a number in {line.strip()!r}"
            raise ClipError(clip_id, msg) from None
        if not np.all(np.isfinite(vals)):
            raise ClipError(clip_id, f"{path} line {lineno}: non-finite value")
        rows.append((lineno, ts, vals))
    if len(rows) < min_frames:
        raise ClipError(clip_id, f"{path}: {len(rows)} pose lines, need at least {min_frames}")
    ts = np.array([r[1] for r in rows], dtype=np.int64)
    bad = np.nonzero(np.diff(ts) <= 0)[0]
    if bad.size:
        i = int(bad[0]) + 1
        raise ClipError(
            clip_id,
            f"{path} line {rows[i][0]}: timestamps not increasing ({ts[i]} after {ts[i - 1]})",
        )
    vals = np.array([r[2] for r in rows], dtype=np.float64)
    intr = vals[:, 0:4]
    spread = np.abs(intr - intr[0]).max()
    if spread > intrinsics_tol:
        raise ClipError(clip_id, f"{path}: intrinsics change within the clip (by {spread:.2e})")
    if np.any(intr[0] <= 0):
        raise ClipError(clip_id, f"{path}: non-positive intrinsics {intr[0].tolist()}")
    w2c = vals[:, 6:18].reshape(-1, 3, 4)
    for (lineno, _, _), m in zip(rows, w2c):
        check_rotation(clip_id, m[:, :3], rotation_tol, f"{path} line {lineno}")
    return PoseFile(url=url, timestamps_us=ts, intrinsics=intr[0].copy(), w2c=w2c)
