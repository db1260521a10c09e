"""Bad user inputs to sampling fail with one specific line (file + problem), never silently:
trajectory files (non-rigid poses, empty lists, wrong JSON shapes, non-finite numbers), frame
counts other than the model's (resampled along the path, logged), and condition images that are
too small (rejected) or very large (downscaled before depth and point-cloud work)."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.test_inference_render import pose, rot_y
from trainer.inference import trajectory as tj

torch = pytest.importorskip("torch")

FMT = {"format": tj.FORMAT, "version": 1}




def _write(tmp_path: Path, doc: Any, name: str = "t.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def _frames_doc(mats: list[np.ndarray], **frame0: Any) -> dict[str, Any]:
    frames = [{"c2w": np.asarray(m).reshape(16).tolist()} for m in mats]
    frames[0].update(frame0)
    return {**FMT, "frames": frames}


def _strict_json(text: str) -> Any:
    """``json.loads`` that refuses NaN / Infinity (what the JSON standard allows)."""
    def no_constant(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=no_constant)


# ------------------------------------------------------------------------------ trajectories
def test_c2w_bottom_row_must_be_0001(tmp_path: Path) -> None:
    bad = pose(rot_y(10), [0.1, 0, 0.2])
    bad[3] = [0, 0, 0, 2]
    p = _write(tmp_path, _frames_doc([np.eye(4), bad]))
    with pytest.raises(tj.TrajectoryError, match=r"t\.json frame 1: .*bottom row .*\[0, 0, 0, 1\]"):
        tj.load_trajectory(p)
    np.savetxt(tmp_path / "t.txt", np.stack([np.eye(4), bad]).reshape(2, 16))
    with pytest.raises(tj.TrajectoryError, match=r"t\.txt line 2: .*bottom row"):
        tj.load_trajectory(tmp_path / "t.txt")
    # rounding within the documented tolerance is fine
    ok = pose(rot_y(10), [0.1, 0, 0.2])
    ok[3, 3] += 0.1 * tj.RIGID_TOL
    assert len(tj.load_trajectory(_write(tmp_path, _frames_doc([np.eye(4), ok]), "ok.json"))) == 2
    # the evaluate stage's trajectory reader applies the same rule
    from pipeline.evaluation.camera_eval import read_trajectory

    with pytest.raises(ValueError, match=r"t\.txt line 2: .*bottom row"):
        read_trajectory(tmp_path / "t.txt")


def test_empty_lists_and_wrong_json_shapes_are_named(tmp_path: Path) -> None:
    cases = [
        ({**FMT, "frames": []}, r"'frames' is empty"),
        ({**FMT, "num_frames": 4, "keyframes": []}, r"'keyframes' is empty"),
        ([{"c2w": np.eye(4).reshape(16).tolist()}],
         r"expected a JSON object with 'frames' or 'keyframes', got a list"),
        ({**FMT, "frames": {"c2w": 1}}, r"'frames' must be a list"),
        ({**FMT, "frames": [[1, 0, 0, 0]]}, r"frame 0 must be an object"),
        ({**FMT, "frames": [{"c2w": "identity"}]}, r"frame 0: c2w must be 16 finite numbers"),
        ({**FMT, "version": "one", "frames": []}, r"unsupported version 'one'"),
    ]
    for i, (doc, msg) in enumerate(cases):
        p = _write(tmp_path, doc, f"c{i}.json")
        with pytest.raises(tj.TrajectoryError, match=rf"c{i}\.json.*{msg}") as err:
            tj.load_trajectory(p)
        assert "\n" not in str(err.value)


def test_non_finite_and_non_positive_numbers_are_rejected(tmp_path: Path) -> None:
    eye = np.eye(4).reshape(16).tolist()
    fwd = pose(np.eye(3), [0, 0, 0.5]).reshape(16).tolist()
    kf = {**FMT, "num_frames": 4}
    cases = [  # raw JSON text: Python's json module reads NaN / Infinity unless told not to
        ('"focal_scale": Infinity', "frames", r"frame 0: focal_scale must be a finite number > 0"),
        ('"focal_scale": NaN', "frames", r"frame 0: focal_scale must be a finite number > 0"),
        ('"focal_scale": -1', "frames", r"frame 0: focal_scale must be a finite number > 0"),
        ('"focal_scale": 0', "frames", r"frame 0: focal_scale must be a finite number > 0"),
        ('"focal_scale": 1e999', "frames", r"frame 0: focal_scale must be a finite number > 0"),
        ('"focal_scale": Infinity', "keyframes",
         r"keyframe 0: focal_scale must be a finite number > 0"),
        ('"time": NaN', "keyframes", r"keyframe 0: time must be a finite number"),
    ]
    for i, (field, key, msg) in enumerate(cases):
        first = json.dumps({"c2w": eye})[:-1] + ", " + field + "}"
        rest = json.dumps({"c2w": fwd})
        head = json.dumps(kf if key == "keyframes" else FMT)[:-1]
        p = tmp_path / f"n{i}.json"
        p.write_text(f'{head}, "{key}": [{first}, {rest}]}}')
        with pytest.raises(tj.TrajectoryError, match=rf"n{i}\.json {msg}"):
            tj.load_trajectory(p)
    bad_pose = tmp_path / "pose.json"
    bad_pose.write_text(json.dumps(FMT)[:-1] + ', "frames": [{"c2w": ['
                        + ", ".join(["Infinity"] + ["0"] * 15) + "]}]}")
    with pytest.raises(tj.TrajectoryError, match=r"pose\.json frame 0: c2w must be 16 finite"):
        tj.load_trajectory(bad_pose)
    for field, msg in (('"fps": Infinity', r"'fps' must be a finite number > 0"),
                       ('"num_frames": Infinity', r"'num_frames' must be a whole number >= 1"),
                       ('"num_frames": 0', r"'num_frames' must be a whole number >= 1")):
        p = tmp_path / "top.json"
        p.write_text(json.dumps({**kf, "keyframes": [{"c2w": eye}, {"c2w": fwd}]})[:-1]
                     .replace('"num_frames": 4', field) + "}")
        with pytest.raises(tj.TrajectoryError, match=rf"top\.json: {msg}"):
            tj.load_trajectory(p)
    # built in code: the same rule, and nothing non-standard is ever written
    with pytest.raises(tj.TrajectoryError, match="focal_scale"):
        tj.Trajectory(np.eye(4)[None], [np.inf])
    traj = tj.Trajectory(np.eye(4)[None], [1.0])
    traj.focal_scale[0] = np.inf  # mutated after the checks
    with pytest.raises(ValueError):
        tj.save_trajectory(traj, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()
    traj.focal_scale[0] = 1.5
    _strict_json(tj.save_trajectory(traj, tmp_path / "out.json").read_text())


def _path_mats(n: int, dist_m: float, deg: float) -> np.ndarray:
    """``n`` poses moving ``dist_m`` forward and turning ``deg`` about y, both linear in time."""
    s = np.linspace(0.0, 1.0, n)
    mats = np.tile(np.eye(4), (n, 1, 1))
    mats[:, :3, :3] = rot_y(deg * s)
    mats[:, 2, 3] = dist_m * s
    return mats


def test_long_trajectory_is_resampled_along_the_whole_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from trainer.inference.preview import choose_trajectory

    mats = _path_mats(10_000, 3.0, 90.0)
    doc = {**FMT, "fps": 30.0, "frames": [{"c2w": m.reshape(16).tolist()} for m in mats]}
    p = _write(tmp_path, doc, "long.json")
    with caplog.at_level(logging.INFO, logger="metric_align"):
        traj = choose_trajectory({"trajectory": str(p)}, None, 16)
    assert len(traj) == 16
    # the whole path, evenly in time: not its first 16 frames (0.5 mm and 0.14 degrees)
    ref = _path_mats(16, 3.0, 90.0)
    np.testing.assert_allclose(traj.c2w, ref, atol=1e-9)
    assert traj.source["resampled_from"] == 10_000
    assert traj.fps == pytest.approx(30.0 * 16 / 10_000)  # same duration
    lines = [r.getMessage() for r in caplog.records if "resampled" in r.getMessage()]
    assert len(lines) == 1 and "long.json" in lines[0] and "10000" in lines[0]
    assert "16" in lines[0]
    # fewer poses than the model's frames: interpolated up the same way (SLERP rotations)
    short = _write(tmp_path, _frames_doc(list(_path_mats(4, 1.5, 30.0))), "short.json")
    up = choose_trajectory({"trajectory": str(short)}, None, 16)
    np.testing.assert_allclose(up.c2w, _path_mats(16, 1.5, 30.0), atol=1e-9)
    # the model's own frame count: used as is, nothing logged
    caplog.clear()
    same = _write(tmp_path, _frames_doc(list(_path_mats(16, 1.5, 30.0))), "same.json")
    with caplog.at_level(logging.INFO, logger="metric_align"):
        exact = choose_trajectory({"trajectory": str(same)}, None, 16)
    np.testing.assert_allclose(exact.c2w, _path_mats(16, 1.5, 30.0), atol=1e-12)
    assert "resampled_from" not in exact.source and not caplog.records


# ------------------------------------------------------------------------------ images
def _gradient_png(path: Path, w: int, h: int) -> Path:
    """A smooth image (compresses to a small PNG, unlike noise)."""
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    img = np.stack([np.broadcast_to(x, (h, w)), np.broadcast_to(y, (h, w)),
                    np.full((h, w), 128.0, np.float32)], -1).astype(np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


def _sample_cfg(tmp_path: Path, **sampling: Any) -> dict[str, Any]:
    from tests.test_trainer import _default_cfg, train_cfg

    cfg = copy.deepcopy(_default_cfg())
    cfg["train"] = train_cfg()
    cfg["train"]["sampling"].update(steps=1, **sampling)
    cfg["paths"]["work_dir"] = str(tmp_path / "work")
    return cfg


def _fast_sampler(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``sample_to_mp4`` without a trained model: the denoiser returns grey frames; what the
    depth model and the point cloud were given is recorded."""
    from trainer import sampling
    from trainer.inference import preview as pv
    from trainer.inference import scene

    seen: dict[str, Any] = {}

    def fake_ddim(model: Any, tcfg: dict, cond: Any, plucker: Any, *a: Any, **k: Any) -> Any:
        return torch.zeros(1, plucker.shape[1], 3, *cond.shape[-2:])

    def fake_depth(rgb: np.ndarray, depth_cfg: dict, device: str) -> np.ndarray:
        seen["depth_model_input"] = rgb.shape
        return np.full(rgb.shape[:2], 2.0, np.float32)

    real_cloud = scene.point_cloud

    def spy_cloud(image: Any, depth: Any, K: Any) -> Any:
        seen.setdefault("cloud_input", []).append(np.asarray(image).shape)
        return real_cloud(image, depth, K)

    monkeypatch.setattr(sampling, "load_model", lambda *a, **k: None)
    monkeypatch.setattr(sampling, "ddim_sample", fake_ddim)
    monkeypatch.setattr(pv, "depth_from_model", fake_depth)
    monkeypatch.setattr(scene, "point_cloud", spy_cloud)
    return seen


def test_tiny_image_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.errors import ConfigError
    from stages.sample import STAGE as SAMPLE
    from trainer.sampling import sample_to_mp4

    _fast_sampler(monkeypatch)
    img = tmp_path / "dot.png"
    assert cv2.imwrite(str(img), np.zeros((1, 1, 3), np.uint8))
    depth = tmp_path / "dot.npy"
    np.save(depth, np.ones((1, 1), np.float32))
    cfg = _sample_cfg(tmp_path, image=str(img), depth=str(depth), trajectory_preset="dolly")
    side = int(cfg["train"]["sampling"]["min_image_side"])
    assert side > 1
    with pytest.raises(ValueError, match=rf"dot\.png is 1x1 pixels.*at least {side}") as err:
        sample_to_mp4(cfg["train"], tmp_path / "out", None, checkpoint_path="unused")
    assert type(err.value).__name__ == "ImageError"
    # stage=sample checks it on the driver, before any stage runs: one line at the CLI
    with pytest.raises(ConfigError, match=r"train\.sampling\.image: .*dot\.png is 1x1") as err:
        SAMPLE.check_ready(cfg)
    assert "\n" not in str(err.value)
    from stages.train import STAGE as TRAIN  # its after-train sample uses the same inputs

    with pytest.raises(ConfigError, match=r"dot\.png is 1x1"):
        TRAIN.check_ready(cfg)
    # ... and a bad trajectory file too
    bad = _write(tmp_path, {**FMT, "frames": []}, "empty.json")
    cfg["train"]["sampling"].update(image="", trajectory=str(bad), trajectory_preset="")
    with pytest.raises(ConfigError, match=r"train\.sampling\.trajectory: .*empty\.json"):
        SAMPLE.check_ready(cfg)
    cfg["train"]["sampling"].update(trajectory=str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match=r"no such file .*missing\.json"):
        SAMPLE.check_ready(cfg)


def test_large_image_is_downscaled_before_depth_and_point_cloud(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from trainer.sampling import sample_to_mp4, scene_inputs

    seen = _fast_sampler(monkeypatch)
    w, h = 1600, 1200
    img = _gradient_png(tmp_path / "big.png", w, h)
    cfg = _sample_cfg(tmp_path, image=str(img), trajectory_preset="dolly", depth_model="fake")
    s = cfg["train"]["sampling"]
    s["max_image_side"] = 160
    with caplog.at_level(logging.INFO, logger="metric_align"):
        out = sample_to_mp4(cfg["train"], tmp_path / "out", None, checkpoint_path="unused",
                            **scene_inputs(cfg))
    # the depth model and the point cloud saw the working size, not 1600x1200
    assert seen["depth_model_input"][:2] == (120, 160)
    assert all(shape[:2] == (120, 160) for shape in seen["cloud_input"])
    rep = _strict_json(Path(out["json"]).read_text())
    assert rep["intrinsics"]["condition_size_wh"] == [160, 120]
    assert rep["intrinsics"]["original_size_wh"] == [w, h]
    assert rep["preview"]["points"] == 160 * 120
    assert any("big.png" in r.getMessage() and "downscaled" in r.getMessage()
               for r in caplog.records)
    # a depth map at the image's own size is downscaled with it (nearest: no mixed depths)
    depth = np.full((h, w), 3.0, np.float32)
    np.save(tmp_path / "big.npy", depth)
    s.update(depth=str(tmp_path / "big.npy"), depth_model="")
    seen.clear()
    out = sample_to_mp4(cfg["train"], tmp_path / "out", None, checkpoint_path="unused")
    rep = _strict_json(Path(out["json"]).read_text())
    assert rep["preview"]["scene_depth_m"] == pytest.approx(3.0)
    assert all(shape[:2] == (120, 160) for shape in seen["cloud_input"])
