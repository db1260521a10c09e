"""The accuracy benchmark's `colmap` CLI recipe (bench/bench_accuracy.py, config ``colmap_cli``).

The model writer and database reader run everywhere (CI has no `colmap` binary); the end-to-end
recipe runs only where the binary is on PATH and checks that the observations it returns follow
the in-process conventions (pixel centre at +0.5, z_cam from the fixed w2c): the scale from them
must be the rendered clip's true scale.
"""

from __future__ import annotations

import importlib.util
import shutil
import sqlite3
import sys

import numpy as np
import pycolmap
import pytest

from pipeline.config import load_config
from pipeline.geometry.poses import pixel_K
from pipeline.sfm import colmap_scene as cs
from tests.conftest import ROOT


def _bench():
    """The script imported as a module (bench/ is not a package)."""
    if "bench_accuracy" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_accuracy",
                                                      ROOT / "bench" / "bench_accuracy.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_accuracy"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["bench_accuracy"]


def _random_w2c(rng: np.random.Generator, n: int) -> np.ndarray:
    R = np.stack([np.linalg.qr(rng.normal(size=(3, 3)))[0] for _ in range(n)])
    R *= np.sign(np.linalg.det(R))[:, None, None]  # proper rotations
    return np.concatenate([R, rng.normal(scale=3.0, size=(n, 3, 1))], axis=2)


def test_text_model_round_trips_poses_and_intrinsics_through_pycolmap(tmp_path):
    b = _bench()
    rng = np.random.default_rng(0)
    w2c = _random_w2c(rng, 7)
    K = pixel_K([0.9, 1.2, 0.51, 0.47], 321, 239)
    ids = [3, 4, 5, 9, 10, 11, 12]  # database ids need not be 1..n
    images = {iid: (f"{k:06d}.png", w2c[k]) for k, iid in enumerate(ids)}
    b.write_text_model(tmp_path, K, 321, 239, 2, images)
    rec = pycolmap.Reconstruction(str(tmp_path))
    assert rec.num_points3D() == 0 and set(rec.images) == set(ids)
    cam = rec.camera(2)
    assert (cam.model.name, cam.width, cam.height) == ("PINHOLE", 321, 239)
    np.testing.assert_array_equal(cam.params, [K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
    for iid, (name, pose) in images.items():
        im = rec.image(iid)
        assert im.name == name and im.camera_id == 2
        np.testing.assert_allclose(cs.w2c_from_rigid(im.cam_from_world()), pose,
                                   rtol=0, atol=1e-12)


def test_database_reader_returns_ids_names_and_keypoint_xy(tmp_path):
    """A database in COLMAP's schema (written by pycolmap) read back with sqlite3."""
    b = _bench()
    db_path = tmp_path / "database.db"
    db = pycolmap.Database.open(str(db_path))
    cam_id = db.write_camera(pycolmap.Camera(model="PINHOLE", width=64, height=48,
                                             params=[50.0, 50.0, 32.0, 24.0]))
    kps = {}
    for k in range(3):
        iid = db.write_image(pycolmap.Image(name=f"{k:06d}.png", camera_id=cam_id))
        xy = np.random.default_rng(k).uniform(0, 48, size=(5 + k, 2)).astype(np.float32)
        db.write_keypoints(iid, xy)
        kps[iid] = xy
    db.close()
    names, cams, kp_xy = b.read_database(db_path)
    assert cams == [cam_id]
    assert names == {iid: f"{k:06d}.png" for k, iid in enumerate(kps)}
    for iid, xy in kps.items():
        np.testing.assert_array_equal(kp_xy[iid], xy.astype(np.float64))
    con = sqlite3.connect(db_path)  # the reader opened it read-only: still a valid database
    assert con.execute("SELECT COUNT(*) FROM keypoints").fetchone()[0] == 3
    con.close()


def test_cli_config_only_with_the_binary(capsys):
    b = _bench()
    tcfg = load_config([])["triangulate"]
    assert list(b.select_configs(None, tcfg, have_cli=False)) == ["default", "colmap"]
    assert list(b.select_configs(None, tcfg, have_cli=True)) == ["default", "colmap",
                                                                  "colmap_cli"]
    assert list(b.select_configs("default,colmap_cli", tcfg, have_cli=False)) == ["default"]
    assert capsys.readouterr().out.count("colmap_cli: skipped") == 1
    with pytest.raises(SystemExit, match="unknown"):
        b.select_configs("default,colmapp", tcfg, have_cli=True)


def test_ratio_median_is_the_plain_median_of_depth_over_z(tmp_path):
    import pandas as pd

    b = _bench()
    depth = np.full((4, 6), 2.0, np.float32)
    depth[:, 3:] = 6.0
    np.save(tmp_path / "d0.npy", depth)
    row = {"clip_id": "c", "depth_paths": [str(tmp_path / "d0.npy")], "depth_unit": 1.0}
    # pixel centres (+0.5): u=1.5 samples column 1 (depth 2), u=4.5 column 4 (depth 6)
    df = pd.DataFrame({"frame_idx": [0, 0, 0], "u": [1.5, 4.5, 4.5], "v": [1.5, 2.5, 1.5],
                       "z_cam": [1.0, 2.0, 4.0]})
    dcfg = load_config(["depth=sensor"])["depth"]
    depth_at_obs = b.sample_depth(row, df, dcfg)
    assert b.ratio_median(df, depth_at_obs) == pytest.approx(np.median([2.0, 3.0, 1.5]))


@pytest.mark.skipif(shutil.which("colmap") is None,
                    reason="needs the `colmap` binary on PATH (Debian: apt-get install colmap)")
def test_cli_recipe_recovers_the_true_scale_of_a_rendered_clip(tmp_path):
    from pipeline.synthetic.sample_data import render_clip

    b = _bench()
    row = render_clip(tmp_path / "data", "cli_fwd", "test", seed=2000, kind="forward",
                      n_frames=8, width=320, height=240, rel_scale=0.3)
    row.pop("metric_w2c")
    row["set"] = row["seq"] = "test"
    cfg = load_config(["depth=sensor"])
    tcfg = b.select_configs("colmap_cli", cfg["triangulate"], have_cli=True)["colmap_cli"]
    res = b.evaluate(row, "colmap_cli", tcfg, cfg, tmp_path / "cache", 1)
    assert res["error"] is None and res["points"] >= tcfg["min_points"]
    assert abs(res["err"]) < 0.005, res
    assert abs(res["err_ratio_median"]) < 0.005, res
    assert res["cpu_per_frame"] > 0 and set(res["cpu_steps"]) == {"extract", "match",
                                                                 "triangulate"}
    tri = b.triangulate_cli_cached(row, tcfg, tmp_path / "cache", 1)  # from the cache now
    df = tri["df"]
    assert not df.duplicated(["frame_idx", "point_id"]).any()
    assert df["u"].between(0, 320).all() and df["v"].between(0, 240).all()
    assert float(df["reproj_err"].median()) < 0.5
    # per observation: exact depth / z_cam is the true scale (a half-pixel convention slip or a
    # wrong pose would spread these)
    depth = b.sample_depth(row, df, cfg["depth"])
    ok = np.isfinite(depth)
    rel = np.abs(depth[ok] / df["z_cam"].to_numpy()[ok] / row["true_scale"] - 1.0)
    assert ok.sum() > 500 and np.median(rel) < 0.005


def test_summary_coverage_of_all_and_of_kept_clips() -> None:
    """Calibration is reported twice: over every clip with a truth, and over the clips curate
    keeps (a flagged clip never reaches the dataset). Failed clips count in neither."""
    b = _bench()
    base = {"config": "default", "set": "cuts", "frames": 10, "cpu_per_frame": 0.1,
            "points": 100}
    rs = [{**base, "clip": "a@33", "err": 0.01, "kept": True, "covered": True},
          {**base, "clip": "b@33", "err": 0.04, "kept": True, "covered": False},
          {**base, "clip": "c@50", "err": 0.15, "kept": False, "covered": False},
          {**base, "clip": "d@50", "err": 0.02, "kept": False, "covered": True},
          {**base, "clip": "e@50", "error": "too few triangulated points"}]
    s = b.summarise(rs)["default/cuts"]
    assert s["coverage"] == pytest.approx(2 / 4)
    assert s["coverage_kept"] == pytest.approx(1 / 2)
    assert (s["clips"], s["failed"], s["flagged"]) == (5, 1, 2)
    assert s["max_abs_err_kept"] == pytest.approx(0.04)


def test_cuts_set_labels_each_clip_with_its_length() -> None:
    """The 'cuts' set holds several cuts of one sequence; clip ids repeat across lengths, so
    each row carries ``<clip id>@<length>`` and the tables stay unambiguous."""
    b = _bench()
    if not b.RGBD.is_dir():
        pytest.skip(f"no real RGB-D data at {b.RGBD}")
    rows = b.real_rows(False, 33, 0.37, "cuts") + b.real_rows(False, 50, 0.37, "cuts")
    labels = [r["label"] for r in rows]
    assert rows and len(set(labels)) == len(labels)
    assert all(r["set"] == "cuts" for r in rows)
    assert all(lab.endswith(("@33", "@50")) and lab.split("@")[0] == r["clip_id"]
               for lab, r in zip(labels, rows))
    assert all(r["num_frames"] <= 50 for r in rows)
