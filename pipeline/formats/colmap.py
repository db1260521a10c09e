"""COLMAP sparse models (``cameras``/``images``/``points3D``, ``.txt`` or ``.bin``) as a pose
source, with the image folder they were built from.

Layout of a scene folder: ``<scene>/<images_dir>/`` (the images, named as in the model) and
``<scene>/<sparse_dir>/`` holding either one model or numbered sub-models (``sparse/0``,
``sparse/1``... as COLMAP's mapper writes them). Each model is one clip (``<scene>`` or
``<scene>_<sub-model>``), its registered images ordered by name, naturally (``img2`` before
``img10``): COLMAP numbers images in the order it registered them, not the capture order that
SfM and the per-frame factors need.

COLMAP's ``cam_from_world`` already is a world-to-camera pose in OpenCV axes, so it is used as
it is; intrinsics are normalised by the camera's own width and height. Only cameras without
lens distortion fit the pipeline's pinhole model (a distortion model whose parameters are all
zero is accepted): an undistorted model (``colmap image_undistorter``) is the way in for others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ClipError
from pipeline.formats.nerfstudio import natural_key

#: the files that make a folder a COLMAP model (either encoding)
MODEL_FILES = ("cameras", "images")
#: camera model -> indices of (fx, fy, cx, cy) in its params (fy = fx for one focal length);
#: the remaining params are distortion and must be zero
CAMERA_PARAMS = {
    "SIMPLE_PINHOLE": (0, 0, 1, 2),
    "PINHOLE": (0, 1, 2, 3),
    "SIMPLE_RADIAL": (0, 0, 1, 2),
    "RADIAL": (0, 0, 1, 2),
    "OPENCV": (0, 1, 2, 3),
    "FULL_OPENCV": (0, 1, 2, 3),
}


def is_model_dir(path: Path) -> bool:
    return path.is_dir() and all(
        (path / f"{name}.bin").is_file() or (path / f"{name}.txt").is_file()
        for name in MODEL_FILES)


def scene_models(scene: Path, sparse_dir: str) -> list[tuple[str, Path]]:
    """``(clip id, model folder)`` of each model of a scene: ``<sparse_dir>`` itself when it is
    a model (clip id = the scene's name), else each of its model sub-folders."""
    sparse = scene / sparse_dir
    if is_model_dir(sparse):
        return [(scene.name, sparse)]
    if not sparse.is_dir():
        return []
    subs = sorted((p for p in sparse.iterdir() if is_model_dir(p)), key=lambda p: natural_key(
        p.name))
    return [(f"{scene.name}_{p.name}", p) for p in subs]


def scene_dirs(root: Path, sparse_dir: str) -> list[Path]:
    """``root`` itself when it holds a model, else its sub-folders that do."""
    if scene_models(root, sparse_dir):
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and scene_models(p, sparse_dir))


def read_model(model: Path, clip_id: str) -> Any:
    """The ``pycolmap.Reconstruction`` of ``model``; an unreadable model is a ``ClipError``."""
    import pycolmap

    try:
        rec = pycolmap.Reconstruction(str(model))
    except Exception as exc:  # noqa: BLE001 - pycolmap raises plain RuntimeError/ValueError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClipError(clip_id, f"cannot read COLMAP model {model}: {first}") from None
    if rec.num_reg_images() == 0:
        raise ClipError(clip_id, f"COLMAP model {model} has no registered image")
    return rec


def camera_pinhole(camera: Any, clip_id: str, where: str) -> tuple[float, float, float, float]:
    """``(fx, fy, cx, cy)`` in pixels of a COLMAP camera without lens distortion."""
    model = camera.model.name if hasattr(camera.model, "name") else str(camera.model)
    if model not in CAMERA_PARAMS:
        raise ClipError(clip_id, f"{where}: camera model {model!r} is not supported (use "
                                 f"{', '.join(CAMERA_PARAMS)}, undistorted)")
    params = np.asarray(camera.params, dtype=np.float64)
    idx = CAMERA_PARAMS[model]
    rest = np.delete(params, sorted(set(idx)))
    if np.any(rest != 0):
        raise ClipError(clip_id, f"{where}: lens distortion ({model} {rest.tolist()}) is not "
                                 "supported: undistort the images first (colmap "
                                 "image_undistorter)")
    fx, fy, cx, cy = (float(params[i]) for i in idx)
    if min(fx, fy) <= 0 or not np.all(np.isfinite(params)):
        raise ClipError(clip_id, f"{where}: bad intrinsics {params.tolist()}")
    return fx, fy, cx, cy


def ordered_images(rec: Any) -> list[Any]:
    """Registered images ordered naturally by name."""
    images = [im for im in rec.images.values() if im.has_pose]
    return sorted(images, key=lambda im: natural_key(im.name))


def w2c(image: Any) -> np.ndarray:
    """3x4 world-to-camera matrix (OpenCV axes) of a COLMAP image."""
    pose = image.cam_from_world
    pose = pose() if callable(pose) else pose
    return np.asarray(pose.matrix(), dtype=np.float64)
