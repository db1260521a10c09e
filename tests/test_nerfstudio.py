"""nerfstudio ``transforms.json`` as a pose source.

The axis conversion (OpenGL camera -> OpenCV camera) on a synthetic camera; strict per-clip
validation on tiny scenes (no Ray); and a real 7-Scenes sequence written as transforms.json
(OpenGL poses, frames shuffled and named so that only a natural sort restores their order)
giving the same clip scale as the 7-Scenes layout through ingest -> align.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.errors import ClipError
from pipeline.formats import nerfstudio as ns
from pipeline.formats.dataset import discover_nerfstudio, nerfstudio_row
from tests.conftest import shared_path
from tests.helpers import scales_through_layouts


def test_gl_camera_looking_down_minus_z_is_opencv_camera_looking_down_plus_z() -> None:
    c2w_gl = np.eye(4)
    c2w_gl[:3, 3] = [1.0, 2.0, 3.0]
    c2w_cv = ns.gl_to_cv(c2w_gl)
    # same centre; the OpenCV forward (+z) axis is the GL camera's viewing direction (-z world)
    assert np.allclose(c2w_cv[:3, 3], [1.0, 2.0, 3.0])
    assert np.allclose(c2w_cv[:3, 2], [0.0, 0.0, -1.0])
    assert np.allclose(c2w_cv[:3, 1], [0.0, -1.0, 0.0])  # image down = world down
    assert np.allclose(c2w_cv[:3, 0], [1.0, 0.0, 0.0])
    # a world point in front of the GL camera has positive OpenCV depth and projects to the
    # upper half of the image when it lies above the camera
    w2c = np.linalg.inv(c2w_cv)
    p = w2c @ np.array([1.0, 2.5, 1.0, 1.0])
    assert p[2] == pytest.approx(2.0) and p[1] < 0


def test_natural_order() -> None:
    names = ["images/frame_10.png", "images/frame_2.png", "images/frame_1.png"]
    frames = ns.ordered_frames({"frames": [{"file_path": n} for n in names]})
    assert [f["file_path"] for f in frames] == [names[2], names[1], names[0]]


def _scene(tmp: Path, n: int = 3, **top) -> tuple[Path, dict]:
    scene = tmp / "scene"
    (scene / "images").mkdir(parents=True)
    frames = []
    for i in range(n):
        cv2.imwrite(str(scene / "images" / f"f{i}.png"), np.zeros((6, 8, 3), np.uint8))
        m = np.eye(4)
        m[0, 3] = 0.1 * i
        frames.append({"file_path": f"images/f{i}.png", "transform_matrix": m.tolist()})
    meta = {"camera_model": "OPENCV", "fl_x": 10.0, "fl_y": 10.0, "cx": 4.0, "cy": 3.0,
            "w": 8, "h": 6, "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames,
            **top}
    return scene, meta


def _row(scene: Path, meta: dict) -> dict:
    (scene / "transforms.json").write_text(json.dumps(meta))
    cfg = load_config(["dataset=nerfstudio", f"dataset.root={scene}", "dataset.clip_length=3",
                       "dataset.relative_scale=0.5"])
    (clip_id, src), = discover_nerfstudio(cfg).items()
    return nerfstudio_row(clip_id, src, cfg)


def test_valid_scene_row(tmp_path: Path) -> None:
    scene, meta = _scene(tmp_path)
    row = _row(scene, meta)
    assert row["clip_id"] == "scene_000000" and row["num_frames"] == 3
    assert row["intrinsics"] == [10 / 8, 10 / 6, 0.5, 0.5]
    assert row["true_scale"] is None  # real nerfstudio poses: no known scale
    w2c = np.asarray(row["w2c"]).reshape(3, 3, 4)
    assert np.allclose(w2c[2, :, 3], [-0.1, 0.0, 0.0])  # GL x = CV x; t scaled by 0.5
    assert np.allclose(w2c[0, :3, :3], np.diag([1.0, -1.0, -1.0]))


@pytest.mark.parametrize("change, reason", [
    (lambda m: m.update(k1=0.02), "lens distortion (k1=0.02) is not supported"),
    (lambda m: m.update(camera_model="OPENCV_FISHEYE"), "camera_model 'OPENCV_FISHEYE'"),
    (lambda m: m.pop("fl_y"), "missing intrinsics fl_y"),
    (lambda m: m.update(w=16), "image size mismatch"),
    (lambda m: m["frames"][1]["transform_matrix"][0].__setitem__(0, 2.0),
     "rotation is not orthonormal"),
    (lambda m: m["frames"][2].update(file_path="images/gone.png"), "missing image"),
    (lambda m: m["frames"][2].update(fl_x=12.0), "intrinsics change within the clip"),
])
def test_invalid_scene_is_a_clip_error(tmp_path: Path, change, reason: str) -> None:
    scene, meta = _scene(tmp_path)
    change(meta)
    with pytest.raises(ClipError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        _row(scene, meta)


def test_root_without_scenes_and_unreadable_scene(tmp_path: Path) -> None:
    """A root with no transforms.json is one start-up line; a scene whose transforms.json is
    broken is one failing clip named after the scene (the other scenes still run)."""
    from pipeline.errors import ConfigError
    from pipeline.registry import source

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no transforms.json"):
        source().check_inputs(load_config(["dataset=nerfstudio",
                                           f"dataset.root={tmp_path / 'empty'}"]))
    scene, meta = _scene(tmp_path / "root")
    (scene / "transforms.json").write_text(json.dumps(meta))
    (tmp_path / "root" / "broken").mkdir()
    (tmp_path / "root" / "broken" / "transforms.json").write_text("{not json")
    cfg = load_config(["dataset=nerfstudio", f"dataset.root={tmp_path / 'root'}",
                       "dataset.clip_length=2", "dataset.clip_stride=1"])
    sources = discover_nerfstudio(cfg)
    assert sorted(sources) == ["broken", "scene_000000"]  # 3 frames: one clip of 2, tail dropped
    assert "cannot read" in sources["broken"]["problem"]
    assert sources["scene_000000"]["frame_indices"] == [0, 1]


def test_npy_depth_is_metres(tmp_path: Path) -> None:
    scene, meta = _scene(tmp_path)
    (scene / "depth").mkdir()
    for i, fr in enumerate(meta["frames"]):
        np.save(scene / "depth" / f"f{i}.npy", np.full((6, 8), 2.0, np.float32))
        fr["depth_file_path"] = f"depth/f{i}.npy"
    row = _row(scene, meta)
    assert row["depth_unit"] == 1.0 and row["depth_paths"][0].endswith("depth/f0.npy")
    meta["frames"][1].pop("depth_file_path")
    with pytest.raises(ClipError, match="only 2 of the clip's 3 frames have a depth_file_path"):
        _row(scene, meta)


def _as_transforms(seq: Path, dest: Path, n: int) -> None:
    """The first ``n`` frames of a 7-Scenes sequence as a nerfstudio scene: symlinked frames
    named ``frame_<number>`` (unpadded, shuffled in the file), OpenGL camera-to-world poses."""
    K = np.loadtxt(seq / "camera-intrinsics.txt")
    h, w = cv2.imread(str(seq / "frame-000000.color.jpg")).shape[:2]
    (dest / "images").mkdir(parents=True)
    (dest / "depth").mkdir()
    frames = []
    numbers = sorted(int(p.name[6:12]) for p in seq.glob("frame-*.color.jpg"))[:n]
    for i in numbers:
        stem = f"frame-{i:06d}"
        (dest / "images" / f"frame_{i}.jpg").symlink_to(seq / f"{stem}.color.jpg")
        (dest / "depth" / f"frame_{i}.png").symlink_to(seq / f"{stem}.depth.png")
        c2w_gl = np.loadtxt(seq / f"{stem}.pose.txt") @ np.diag([1.0, -1.0, -1.0, 1.0])
        frames.append({"file_path": f"images/frame_{i}.jpg",
                       "depth_file_path": f"depth/frame_{i}.png",
                       "transform_matrix": c2w_gl.tolist()})
    random.Random(0).shuffle(frames)
    (dest / "transforms.json").write_text(json.dumps(
        {"camera_model": "OPENCV", "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2],
         "cy": K[1, 2], "w": w, "h": h, "k1": 0, "k2": 0, "p1": 0, "p2": 0, "frames": frames}))


def test_transforms_json_matches_7scenes_layout(tmp_path: Path, ray_cluster) -> None:
    seq = shared_path("rgbd", "redkitchen-seq")
    n, rel = 12, 0.37
    scene = tmp_path / "redkitchen-ns"
    _as_transforms(seq, scene, n)
    common = [f"dataset.clip_length={n}", f"dataset.relative_scale={rel}", "dataset.limit=1",
              "depth=sensor", "progress=false"]
    scales = scales_through_layouts(tmp_path, common, {
        "rgbd": [f"dataset.root={seq}"],
        "nerfstudio": [f"dataset.root={scene}", "dataset.poses_metric=true"]}, rel)
    assert scales["nerfstudio"] == pytest.approx(scales["rgbd"], rel=1e-3), scales
    assert scales["rgbd"] * rel == pytest.approx(1.0, abs=0.05), scales
