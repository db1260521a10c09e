"""stage=sample with previews: outputs, QA numbers against real frames, SNS on, external image
with a preset, depth from the Depth Anything backend (tiny random local checkpoint)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.synthetic.sample_data import render_clip
from tests.test_trainer import _default_cfg, _global_task, train_cfg, write_curated

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


def _frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, fr = cap.read()
        if not ok:
            break
        out.append(fr)
    cap.release()
    return out


@pytest.fixture(scope="module")
def small_sample(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One clip rendered exactly like the bundled sample (smaller), curated with its exact
    metric poses; its exact depth sits in the sample layout under ``depth/``."""
    tmp = tmp_path_factory.mktemp("inf")
    row = render_clip(tmp / "data", "syn_small", "test", seed=2000, kind="forward", n_frames=8,
                      width=96, height=72, rel_scale=0.3)
    c2w = np.linalg.inv(np.asarray(row["metric_w2c"]))
    cur = write_curated(tmp / "curated" / "shard-00000.parquet", [{
        "clip_id": "syn_small", "split": "test", "c2w": c2w, "rel_scale": 0.3, "width": 96,
        "height": 72, "intrinsics": row["intrinsics"], "frame_paths": row["frame_paths"]}])
    return {"tmp": tmp, "row": row, "curated": [str(cur)]}


def _cfg(small_sample: dict, **sampling) -> dict:
    cfg = copy.deepcopy(_default_cfg())
    cfg["progress"] = False
    cfg["train"] = train_cfg(max_steps=2)
    cfg["train"]["data"]["split"] = ""  # the one clip is in the test split
    cfg["train"]["sampling"].update(steps=3, **sampling)
    cfg["dataset"]["depth_root"] = str(small_sample["tmp"] / "data" / "depth")
    cfg["depth"] = {"backend": "sensor"}
    return cfg


def _train(cfg: dict, tmp_path: Path, curated: list[str]) -> None:
    from stages.train import STAGE as TRAIN

    TRAIN.process_shard(_global_task(TRAIN, cfg, tmp_path, curated))


def _sample(cfg: dict, tmp_path: Path, curated: list[str]) -> dict:
    """Run the global sample stage as the runner does; its output JSON is what it returned."""
    from stages.sample import STAGE as SAMPLE

    task = _global_task(SAMPLE, cfg, tmp_path, curated)
    SAMPLE.process_shard(task)
    return json.loads(Path(task.output).read_text())


def test_train_then_sample_with_noise_shaping(small_sample: dict, tmp_path: Path) -> None:
    cfg = _cfg(small_sample, after_train=False)
    cur = small_sample["curated"]
    _train(cfg, tmp_path, cur)
    plain = _sample(cfg, tmp_path, cur)
    plain_frames = np.stack(_frames(Path(plain["mp4"])))
    assert json.loads(Path(plain["json"]).read_text())["sns"]["noise_shaping"] is False
    cfg["train"]["sampling"].update(noise_shaping=True, save_point_cloud=True)
    out = _sample(cfg, tmp_path, cur)
    sdir = tmp_path / "train" / "samples"
    for suffix in (".mp4", ".preview.mp4", ".mask.mp4", ".json", ".ply", ".qa.png"):
        assert (sdir / f"syn_small{suffix}").is_file(), suffix
    assert out["preview"].endswith("syn_small.preview.mp4")
    gen, prev, mask = (_frames(sdir / f"syn_small{s}") for s in (".mp4", ".preview.mp4",
                                                                  ".mask.mp4"))
    assert len(gen) == len(prev) == len(mask) == 4
    assert gen[0].shape == (16, 32, 3) and prev[0].shape == (16, 16, 3)
    rep = json.loads((sdir / "syn_small.json").read_text())
    assert rep["sns"]["noise_shaping"] is True and rep["sns"]["t_threshold"] == 0.9
    assert len(rep["trajectory"]["frames"]) == 4
    assert rep["preview"]["depth_source"].startswith("dataset")
    qa = rep["preview"]["qa_vs_real"]
    assert len(qa["psnr_db"]) == 4 and qa["coverage"][0] == 1.0
    # exact depth and exact poses: the preview reproduces the real frames where usable
    assert min(qa["psnr_db"][1:]) > 22.0 and qa["mean_coverage_first"] > 0.3
    assert rep["sns"]["latent_mask_coverage"][0] == 1.0
    # frame 0 of the trajectory is the identity, the model-resolution intrinsics are recorded
    np.testing.assert_allclose(np.reshape(rep["trajectory"]["frames"][0]["c2w"], (4, 4)),
                               np.eye(4), atol=1e-9)
    # SNS changes the generated video (same seed)
    assert not np.array_equal(plain_frames, np.stack(gen))


def test_external_image_with_preset_and_depth_file(small_sample: dict, tmp_path: Path) -> None:
    row = small_sample["row"]
    cfg = _cfg(small_sample, after_train=False)
    cur = small_sample["curated"]
    _train(cfg, tmp_path, cur)
    cfg["train"]["sampling"].update(image=row["frame_paths"][0], depth=row["depth_paths"][0],
                                    trajectory_preset="orbit", noise_shaping=True,
                                    intrinsics=list(row["intrinsics"]))
    out = _sample(cfg, tmp_path, cur)
    rep = json.loads(Path(out["json"]).read_text())
    src = rep["trajectory"]["source"]
    assert src["preset"] == "orbit" and src["orbit_deg"] == 20.0
    depth = np.load(row["depth_paths"][0])
    assert src["scene_depth_m"] == pytest.approx(float(np.median(depth)))
    assert rep["intrinsics"]["source"] == "config" and "qa_vs_real" not in rep["preview"]
    assert len(_frames(Path(out["mp4"]))) == 4 and Path(out["mask"]).is_file()
    # a preset needs depth: without any source the error says what to configure
    cfg["train"]["sampling"].update(depth="")
    with pytest.raises(RuntimeError, match="train.sampling.depth=FILE"):
        _sample(cfg, tmp_path, cur)


def test_depth_anything_backend_gives_a_full_map(tmp_path: Path) -> None:
    from tests.helpers import save_random_checkpoint
    from trainer.inference.preview import condition_depth
    from trainer.sampling import scene_inputs

    model = save_random_checkpoint(str(tmp_path / "da2"), "tiny", "metric", 20, 70)
    # the sample run's own depth backend stays sensor; only the condition image uses the model
    dcfg = scene_inputs({"depth": {"backend": "sensor"},
                         "train": {"sampling": {"depth_model": model}}})["depth_cfg"]
    assert dcfg["backend"] == "da2_metric" and dcfg["model"] == model
    rgb = np.random.default_rng(0).integers(0, 256, (45, 60, 3), dtype=np.uint8)
    d, src = condition_depth(rgb, None, None, dcfg, "cpu")
    assert d.shape == (45, 60) and src.startswith("da2_metric")
    assert np.all(np.isfinite(d)) and 0 < d.min() and d.max() < 20.0 and d.std() > 0
