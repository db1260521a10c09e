"""COLMAP sparse models as a pose source (``dataset=colmap``).

Models are written with pycolmap (text and binary): poses and intrinsics read back equal what
was written, frames come in natural name order whatever order COLMAP registered them in, every
bad input is a per-clip reason; and a real 7-Scenes sequence written as a COLMAP model gives the
same clip scale as the 7-Scenes layout through ingest -> align.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.errors import ClipError
from pipeline.formats.dataset import check_dataset, colmap_row, discover_colmap
from tests.conftest import shared_path
from tests.helpers import rot_y, scales_through_layouts


def write_model(model: Path, names: list[str], w2c: list[np.ndarray], size: tuple[int, int],
                params: list[float], camera_model: str = "PINHOLE", binary: bool = True,
                second_camera: list[float] | None = None) -> None:
    """A COLMAP model of ``names`` (registered in reverse order) with the given 3x4 poses."""
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(
        model=camera_model, width=size[0], height=size[1], params=params, camera_id=1))
    if second_camera is not None:
        rec.add_camera_with_trivial_rig(pycolmap.Camera(
            model=camera_model, width=size[0], height=size[1], params=second_camera,
            camera_id=2))
    order = list(range(len(names)))[::-1]
    for image_id, i in enumerate(order, start=1):
        cam = 2 if second_camera is not None and i == len(names) - 1 else 1
        im = pycolmap.Image(name=names[i], camera_id=cam, image_id=image_id)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[i][:, :3]), w2c[i][:, 3].copy())
        rec.add_image_with_trivial_frame(im, pose)
    model.mkdir(parents=True, exist_ok=True)
    (rec.write_binary if binary else rec.write_text)(str(model))


def _poses(n: int) -> list[np.ndarray]:
    return [np.concatenate([rot_y(3.0 * i), np.array([[0.1 * i], [0.0], [0.2 * i]])], axis=1)
            for i in range(n)]


def _scene(tmp: Path, n: int = 3, size: tuple[int, int] = (8, 6), **kw) -> Path:
    scene = tmp / "scene"
    (scene / "images").mkdir(parents=True)
    names = [f"img{i + 1}.png" for i in range(n)]  # img1, img2, ... img10: natural order
    for name in names:
        cv2.imwrite(str(scene / "images" / name), np.zeros((size[1], size[0], 3), np.uint8))
    kw.setdefault("params", [10.0, 12.0, 4.0, 3.0])
    write_model(scene / "sparse" / "0", names, _poses(n), size, **kw)
    return scene


def _rows(root: Path, *extra: str) -> dict[str, dict]:
    cfg = load_config(["dataset=colmap", f"dataset.root={root}", "dataset.relative_scale=0.5",
                       *extra])
    out = {}
    for clip_id, src in discover_colmap(cfg).items():
        try:
            out[clip_id] = colmap_row(clip_id, src, cfg)
        except ClipError as exc:
            out[clip_id] = {"error": exc.reason}
    return out


@pytest.mark.parametrize("binary", [True, False])
def test_model_reads_back_in_name_order(tmp_path: Path, binary: bool) -> None:
    scene = _scene(tmp_path, n=11, binary=binary)
    (row,) = _rows(scene).values()
    assert row["clip_id"] == "scene_0" and row["num_frames"] == 11
    assert [Path(p).name for p in row["frame_paths"]] == [f"img{i + 1}.png" for i in range(11)]
    assert row["intrinsics"] == pytest.approx([10 / 8, 12 / 6, 4 / 8, 3 / 6])
    assert (row["width"], row["height"]) == (8, 6) and row["true_scale"] is None
    got = np.asarray(row["w2c"]).reshape(11, 3, 4)
    for i, m in enumerate(_poses(11)):
        np.testing.assert_allclose(got[i, :, :3], m[:, :3], atol=1e-12)
        np.testing.assert_allclose(got[i, :, 3], 0.5 * m[:, 3], atol=1e-12)  # relative_scale


def test_sub_models_are_clips_and_bad_models_fail_alone(tmp_path: Path) -> None:
    scene = _scene(tmp_path / "root")
    write_model(scene / "sparse" / "1", ["img1.png", "img2.png"], _poses(2), (8, 6),
                [10.0, 12.0, 4.0, 3.0], binary=False)
    broken = tmp_path / "root" / "broken" / "sparse"
    broken.mkdir(parents=True)
    (broken / "cameras.txt").write_text("1 PINHOLE eight 6 1 1 1 1\n")
    (broken / "images.txt").write_text("")
    rows = _rows(tmp_path / "root")
    assert sorted(rows) == ["broken", "scene_0", "scene_1"]
    assert rows["scene_1"]["num_frames"] == 2 and rows["scene_0"]["num_frames"] == 3
    assert "cannot read COLMAP model" in rows["broken"]["error"]


@pytest.mark.parametrize("kw, change, reason", [
    ({"camera_model": "SIMPLE_RADIAL", "params": [10.0, 4.0, 3.0, 0.05]}, None,
     "lens distortion (SIMPLE_RADIAL [0.05]) is not supported"),
    ({"camera_model": "OPENCV_FISHEYE", "params": [10.0, 10.0, 4.0, 3.0, 0, 0, 0, 0]}, None,
     "camera model 'OPENCV_FISHEYE' is not supported"),
    ({"second_camera": [11.0, 12.0, 4.0, 3.0]}, None, "camera changes within the model"),
    ({}, lambda s: (s / "images" / "img2.png").unlink(), "missing image"),
    ({}, lambda s: cv2.imwrite(str(s / "images" / "img3.png"), np.zeros((6, 9, 3), np.uint8)),
     "image size mismatch"),
    ({}, lambda s: (s / "images" / "img1.png").write_bytes(b"not a png"), "unreadable frame"),
])
def test_invalid_model_is_a_clip_error(tmp_path: Path, kw: dict, change, reason: str) -> None:
    scene = _scene(tmp_path, **kw)
    if change:
        change(scene)
    (row,) = _rows(scene).values()
    assert reason in row.get("error", ""), row


def test_root_without_models_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no COLMAP model"):
        check_dataset(load_config(["dataset=colmap", f"dataset.root={tmp_path / 'empty'}"]))


def _as_colmap(seq: Path, dest: Path, n: int) -> list[np.ndarray]:
    """The first ``n`` frames of a 7-Scenes sequence as a binary COLMAP model with symlinked
    images and depth (``depth/<image stem>.png``); returns the source world-to-camera poses."""
    K = np.loadtxt(seq / "camera-intrinsics.txt")
    h, w = cv2.imread(str(seq / "frame-000000.color.jpg")).shape[:2]
    (dest / "images").mkdir(parents=True)
    (dest / "depth").mkdir()
    numbers = sorted(int(p.name[6:12]) for p in seq.glob("frame-*.color.jpg"))[:n]
    names, w2c = [], []
    for i in numbers:
        stem = f"frame-{i:06d}"
        (dest / "images" / f"{stem}.jpg").symlink_to(seq / f"{stem}.color.jpg")
        (dest / "depth" / f"{stem}.png").symlink_to(seq / f"{stem}.depth.png")
        c2w = np.loadtxt(seq / f"{stem}.pose.txt")
        R = c2w[:3, :3]
        # the pose files' rotations are orthonormal to ~1e-6; the model stores a quaternion
        u, _, vt = np.linalg.svd(R)
        R = u @ vt
        w2c.append(np.concatenate([R.T, (-R.T @ c2w[:3, 3])[:, None]], axis=1))
        names.append(f"{stem}.jpg")
    write_model(dest / "sparse", names, w2c, (w, h), [K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
    return w2c


def test_colmap_model_matches_7scenes_layout(tmp_path: Path, ray_cluster) -> None:
    seq = shared_path("rgbd", "redkitchen-seq")
    n, rel = 12, 0.37
    scene = tmp_path / "redkitchen-colmap"
    w2c = _as_colmap(seq, scene, n)
    (row,) = _rows(scene, f"dataset.relative_scale={rel}", "dataset.depth_dir=depth").values()
    got = np.asarray(row["w2c"]).reshape(n, 3, 4)
    for i in range(n):
        np.testing.assert_allclose(got[i, :, :3], w2c[i][:, :3], atol=1e-9)
        np.testing.assert_allclose(got[i, :, 3], rel * w2c[i][:, 3], atol=1e-9)
    assert row["depth_paths"][0].endswith("depth/frame-000000.png")
    common = [f"dataset.relative_scale={rel}", "depth=sensor", "progress=false"]
    scales = scales_through_layouts(tmp_path, common, {
            "rgbd": [f"dataset.root={seq}", f"dataset.clip_length={n}", "dataset.limit=1"],
            "colmap": [f"dataset.root={scene}", "dataset.poses_metric=true",
                       "dataset.depth_dir=depth"]}, rel)
    assert scales["colmap"] == pytest.approx(scales["rgbd"], rel=1e-3), scales
    assert scales["rgbd"] * rel == pytest.approx(1.0, abs=0.05), scales
