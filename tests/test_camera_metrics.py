"""Camera-control formulas against hand-computed answers (pipeline.geometry.camera_metrics) and the
protocol's aggregation (pipeline.evaluation.camera_eval.aggregate)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation import camera_eval as ce
from pipeline.geometry import camera_metrics as cm
from tests.helpers import traj


def rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


LINE = traj([np.eye(3)] * 3, [[0, 0, 0], [1, 0, 0], [2, 0, 0]])  # scene scale 2


def test_identical_trajectories_score_zero():
    rel = cm.relative_metrics(LINE, LINE)
    met = cm.metric_metrics(LINE, LINE)
    assert rel == {"RotErr": 0.0, "TransErr_rel": 0.0, "CamMC_rel": 0.0}
    assert met == {"TransErr_metric": 0.0, "CamMC_metric": 0.0}


def test_known_rotation():
    # frame 2 turned by 90 degrees about z, translations equal: RotErr = pi/2 and the 3x4
    # difference is R - I = [[-1, -1, 0], [1, -1, 0], [0, 0, 0]]: Frobenius norm 2
    gen = LINE.copy()
    gen[2, :3, :3] = rot_z(90)
    rel = cm.relative_metrics(gen, LINE)
    assert rel["RotErr"] == pytest.approx(math.pi / 2, abs=1e-12)
    assert rel["TransErr_rel"] == pytest.approx(0.0, abs=1e-12)
    assert rel["CamMC_rel"] == pytest.approx(2.0, abs=1e-12)
    # 30 degrees: the geodesic angle, not a matrix norm
    gen[2, :3, :3] = rot_z(30)
    assert cm.relative_metrics(gen, LINE)["RotErr"] == pytest.approx(math.pi / 6, abs=1e-12)


def test_known_translation_both_normalisations():
    # generated moves along y instead of x, same length: both scene scales are 2;
    # per frame ||(0, .5) - (.5, 0)|| = sqrt(.5) and ||(0, 1) - (1, 0)|| = sqrt(2)
    gen = traj([np.eye(3)] * 3, [[0, 0, 0], [0, 1, 0], [0, 2, 0]])
    want = math.sqrt(0.5) + math.sqrt(2.0)
    rel = cm.relative_metrics(gen, LINE)
    assert rel["TransErr_rel"] == pytest.approx(want, abs=1e-12)
    assert rel["CamMC_rel"] == pytest.approx(want, abs=1e-12)  # rotations equal
    met = cm.metric_metrics(gen, LINE)
    assert met["TransErr_metric"] == pytest.approx(want, abs=1e-12)  # same size: same figure


def test_metric_and_relative_differ_exactly_by_the_scale():
    # the right path, three times too long: relative errors vanish (own normalisation), the
    # metric one is sum ||3 t - t|| / s = 2 * (1 + 2) / 2 = 3
    gen = LINE.copy()
    gen[:, :3, 3] *= 3.0
    assert cm.relative_metrics(gen, LINE)["TransErr_rel"] == pytest.approx(0.0, abs=1e-12)
    met = cm.metric_metrics(gen, LINE)
    assert met["TransErr_metric"] == pytest.approx(3.0, abs=1e-12)
    assert met["CamMC_metric"] == pytest.approx(3.0, abs=1e-12)
    # any trajectory rescaled to the ground truth's scene scale scores the same both ways
    rng = np.random.default_rng(0)
    wobbly = traj([rot_z(d) for d in (0, 7, -11, 20)], rng.normal(size=(4, 3)).tolist())
    truth = traj([rot_z(d) for d in (0, 5, -9, 25)], rng.normal(size=(4, 3)).tolist())
    rel = cm.relative_metrics(wobbly, truth)
    k = cm.scene_scale(cm.relative_to_first(truth)) / cm.scene_scale(cm.relative_to_first(wobbly))
    scaled = cm.relative_to_first(wobbly)
    scaled[:, :3, 3] *= k
    met = cm.metric_metrics(scaled, truth)
    assert met["TransErr_metric"] == pytest.approx(rel["TransErr_rel"], rel=1e-12)
    assert met["CamMC_metric"] == pytest.approx(rel["CamMC_rel"], rel=1e-12)


def test_relative_metrics_ignore_world_frame_and_scale():
    rng = np.random.default_rng(1)
    gen = traj([rot_z(d) for d in (0, 3, 9, 14)], rng.normal(size=(4, 3)).tolist())
    gt = traj([rot_z(d) for d in (0, 4, 8, 16)], rng.normal(size=(4, 3)).tolist())
    ref = cm.relative_metrics(gen, gt)
    world = np.eye(4)
    world[:3, :3] = rot_z(33) @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
    world[:3, 3] = [5.0, -2.0, 7.0]
    moved = world[None] @ gen
    moved[:, :3, 3] *= 4.2  # SfM's arbitrary scale
    got = cm.relative_metrics(moved, gt)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


def test_w2c_conversion_and_degenerate_trajectory():
    w2c = np.linalg.inv(LINE)[:, :3, :4]
    np.testing.assert_allclose(cm.c2w_from_w2c34(w2c), LINE, atol=1e-12)
    still = traj([np.eye(3), rot_z(10)], [[0, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="without translation"):
        cm.relative_metrics(still, still)


def _row(clip: str, trial: int, ok: bool, rot: float, metric: float = math.nan) -> dict:
    r = {"clip_id": clip, "trial": trial, "success": ok, "metric_reason": None,
         **{k: math.nan for k in ce.ALL_METRICS}}
    if ok:
        r.update(RotErr=rot, TransErr_rel=rot, CamMC_rel=rot, TransErr_metric=metric,
                 CamMC_metric=metric)
        if math.isnan(metric):
            r["metric_reason"] = "no metric depth: test"
    return r


def test_aggregate_means_over_successful_trials_then_clips():
    rows = [
        _row("a", 0, True, 1.0, 10.0), _row("a", 1, True, 3.0, 30.0), _row("a", 2, False, 0),
        _row("b", 0, True, 6.0), _row("b", 1, False, 0), _row("b", 2, False, 0),
        _row("c", 0, False, 0),
    ]
    m = ce.aggregate(rows, ["a", "b", "c"])
    assert m["per_clip"]["a"]["RotErr"] == pytest.approx(2.0)  # (1 + 3) / 2, failure left out
    assert m["RotErr"] == pytest.approx((2.0 + 6.0) / 2)  # clip c has no success: no value
    assert m["TransErr_metric"] == pytest.approx(20.0)  # only clip a has a metric figure
    assert m["sfm_success_rate"] == pytest.approx(3 / 7)
    assert m["clips"] == 3 and m["clips_with_sfm"] == 2 and m["clips_with_metric"] == 1
    assert m["metric_unavailable"] == ["no metric depth: test"]
    none = ce.aggregate([_row("a", 0, True, 1.0)], ["a"])
    assert none["TransErr_metric"] is None and none["CamMC_metric"] is None  # never imputed


def test_trajectory_file_round_trip(tmp_path):
    p = tmp_path / "t.txt"
    ce.write_trajectory(LINE, p)
    np.testing.assert_allclose(ce.read_trajectory(p), LINE)
    (tmp_path / "bad.txt").write_text("1 2 3\n")
    with pytest.raises(ValueError, match="16 numbers"):
        ce.read_trajectory(tmp_path / "bad.txt")
