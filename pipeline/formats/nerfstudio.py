"""nerfstudio ``transforms.json`` scenes (DL3DV, Polycam, Record3D, ``ns-process-data``).

One scene folder holds ``transforms.json``: top-level intrinsics ``fl_x, fl_y, cx, cy, w, h``
(pixels; any of them may be overridden per frame), an optional ``camera_model`` and distortion
``k1 k2 k3 k4 p1 p2``, and ``frames: [{file_path, transform_matrix, depth_file_path?}]`` where
``transform_matrix`` is a 4x4 camera-to-world matrix in OpenGL/Blender camera axes (x right,
y up, z back). Paths are relative to the scene folder.

The project works in OpenCV axes (x right, y down, z forward), so the camera's y and z axes are
flipped: ``c2w_cv = c2w_gl @ diag(1, -1, -1, 1)``. nerfstudio does not promise any frame order
in the file, so frames are ordered by file name, naturally (``frame_2`` before ``frame_10``):
SfM and the per-frame factors need the capture order.

Nothing here imports the engine: the functions raise ``ClipError`` with a reason a user can act
on, and the ingest stage turns those into per-clip failures.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.errors import ClipError
from pipeline.formats.re10k import check_rotation

TRANSFORMS = "transforms.json"
#: camera models whose images are usable without undistortion (when distortion is all zero)
CAMERA_MODELS = ("OPENCV", "PINHOLE")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
#: OpenGL/Blender camera axes -> OpenCV camera axes (right-multiplied onto a camera-to-world)
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def is_scene_dir(path: Any) -> bool:
    return path.is_dir() and (path / TRANSFORMS).is_file()


def scene_dirs(root: Any) -> list[Any]:
    """``root`` itself when it holds ``transforms.json``, else its sub-folders that do."""
    if is_scene_dir(root):
        return [root]
    return sorted(p for p in root.iterdir() if is_scene_dir(p)) if root.is_dir() else []


def natural_key(name: str) -> list[Any]:
    """Sort key that orders the digit runs of a name as numbers (``img2`` < ``img10``)."""
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", name)]


def read_transforms(scene: Any, clip_id: str) -> dict[str, Any]:
    """The parsed ``transforms.json`` of ``scene``; any problem is a ``ClipError``."""
    path = scene / TRANSFORMS
    try:
        meta = json.loads(storage.path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ClipError(clip_id, f"cannot read {path}: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise ClipError(clip_id, f"{path}: expected an object with a 'frames' list")
    for i, fr in enumerate(meta["frames"]):
        if not isinstance(fr, dict) or not isinstance(fr.get("file_path"), str):
            raise ClipError(clip_id, f"{path}: frames[{i}] has no 'file_path'")
    return meta


def ordered_frames(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The frames in capture order: natural sort of ``file_path`` (the file gives none)."""
    return sorted(meta["frames"], key=lambda f: natural_key(str(f["file_path"])))


def resolve(scene: Any, file_path: str) -> Any:
    """A frame's path: absolute as written, else relative to the scene folder."""
    if storage.is_uri(file_path) or Path(file_path).is_absolute():
        return storage.path(file_path)
    return scene / file_path


def camera(meta: dict[str, Any], frame: dict[str, Any], clip_id: str,
           where: str) -> tuple[float, float, float, float, int, int]:
    """``(fx, fy, cx, cy, w, h)`` of one frame (its own keys override the top level).

    A non-zero distortion coefficient is an error: frames are used as they are, and treating
    a distorted image as a pinhole one would bias every triangulated depth."""
    def get(key: str) -> Any:
        return frame.get(key, meta.get(key))

    model = get("camera_model")
    if model is not None and str(model).upper() not in CAMERA_MODELS:
        raise ClipError(clip_id, f"{where}: camera_model {model!r} is not supported (only "
                                 f"{' or '.join(CAMERA_MODELS)} without distortion)")
    nonzero = {k: get(k) for k in DISTORTION_KEYS if get(k) not in (None, 0, 0.0)}
    if nonzero:
        shown = ", ".join(f"{k}={v}" for k, v in nonzero.items())
        raise ClipError(clip_id, f"{where}: lens distortion ({shown}) is not supported: "
                                 "undistort the images first (e.g. ns-process-data or COLMAP's "
                                 "image_undistorter) and write zero distortion")
    missing = [k for k in INTRINSIC_KEYS if get(k) is None]
    if missing:
        raise ClipError(clip_id, f"{where}: missing intrinsics {', '.join(missing)} (give them "
                                 "at the top level of transforms.json or per frame)")
    try:
        fx, fy, cx, cy = (float(get(k)) for k in INTRINSIC_KEYS[:4])
        w, h = int(get("w")), int(get("h"))
    except (TypeError, ValueError) as exc:
        raise ClipError(clip_id, f"{where}: intrinsics are not numbers: {exc}") from exc
    if not (fx > 0 and fy > 0 and w > 0 and h > 0 and np.isfinite([fx, fy, cx, cy]).all()):
        raise ClipError(clip_id, f"{where}: intrinsics need positive fl_x, fl_y, w, h "
                                 f"(got fl_x={fx}, fl_y={fy}, w={w}, h={h})")
    return fx, fy, cx, cy, w, h


def c2w_opencv(frame: dict[str, Any], clip_id: str, where: str, rotation_tol: float) -> np.ndarray:
    """The frame's 4x4 camera-to-world in OpenCV camera axes, checked to be rigid."""
    try:
        m = np.asarray(frame.get("transform_matrix"), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ClipError(clip_id, f"{where}: transform_matrix is not a 4x4 matrix") from exc
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ClipError(clip_id, f"{where}: transform_matrix must be a finite 4x4 matrix")
    if np.abs(m[3] - [0.0, 0.0, 0.0, 1.0]).max() > rotation_tol:
        raise ClipError(clip_id, f"{where}: transform_matrix's last row must be 0 0 0 1")
    check_rotation(clip_id, m[:3, :3], rotation_tol, where)
    return gl_to_cv(m)


def gl_to_cv(c2w_gl: np.ndarray) -> np.ndarray:
    """OpenGL/Blender camera-to-world -> OpenCV camera-to-world (same world, same centre)."""
    return np.asarray(c2w_gl, dtype=np.float64) @ GL_TO_CV
