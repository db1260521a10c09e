"""Both evaluation protocols (``evaluate.protocol=project`` and ``cami2v``) on one small known
case, every metric against numbers worked out by hand in the comments; the published frame-0
metric scale; the consensus that picks which trials of a clip count."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation import camera_eval as ce
from pipeline.geometry import camera_metrics as cm
from tests.helpers import traj

RZ90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


I3 = np.eye(3)
# the asked cameras, in metres: along x, the last one turned 90 degrees about z; extent 2
GT = traj([I3, I3, RZ90], [[0, 0, 0], [1, 0, 0], [2, 0, 0]])
# what SfM recovered from the generated video, in SfM units: frame 1 drifts sideways, frame 2
# does not turn; extent max(|(.5, .5, 0)| = .7071, |(1, 0, 0)| = 1) = 1
GEN = traj([I3, I3, I3], [[0, 0, 0], [0.5, 0.5, 0], [1, 0, 0]])


def test_relative_metrics_by_hand_both_protocols():
    # RotErr: frames 0, 1 agree; frame 2 differs by 90 degrees: 0 + 0 + pi/2 = 1.5707963
    # TransErr_rel: GEN / 1 -> (.5, .5, 0), (1, 0, 0); GT / 2 -> (.5, 0, 0), (1, 0, 0);
    #   differences (0, .5, 0) and 0: 0.5
    # CamMC_rel: frame 1: rotations equal, translation difference .5 -> 0.5; frame 2:
    #   I - Rz90 = [[1, 1, 0], [-1, 1, 0], [0, 0, 0]], Frobenius sqrt(4) = 2, translations equal
    #   -> 2; sum 2.5
    # cami2v uses the same three formulas (geodesic sum, own-extent normalisation, Frobenius
    # of [R|t]), so one computation serves both protocols
    m = cm.relative_metrics(GEN, GT)
    assert m["RotErr"] == pytest.approx(1.5707963268, abs=1e-9)
    assert m["TransErr_rel"] == pytest.approx(0.5, abs=1e-12)
    assert m["CamMC_rel"] == pytest.approx(2.5, abs=1e-12)


def test_project_metric_variant_by_hand():
    # the project's variant: SfM trajectory x clip factor 3 (from triangulation + align) against
    # the asked metric cameras, both divided by the asked extent 2.
    # GEN x 3 -> (1.5, 1.5, 0), (3, 0, 0); / 2 -> (.75, .75, 0), (1.5, 0, 0)
    # GT / 2 -> (.5, 0, 0), (1, 0, 0)
    # frame 1: |(.25, .75, 0)| = sqrt(.0625 + .5625) = sqrt(.625) = 0.7905694
    # frame 2: |(.5, 0, 0)| = 0.5             TransErr_metric = 1.2905694
    # CamMC_metric: frame 1 0.7905694 (rotations equal); frame 2 sqrt(2^2 + .5^2) = sqrt(4.25)
    #   = 2.0615528; sum 2.8521222
    gen_m = cm.scaled(GEN, 3.0)
    m = cm.metric_metrics(gen_m, GT)
    assert m["TransErr_metric"] == pytest.approx(1.2905694, abs=1e-7)
    assert m["CamMC_metric"] == pytest.approx(2.8521222, abs=1e-7)


def test_frame0_scale_by_hand():
    # depth / z = 3, 3, 3, 6 -> median (3 + 3) / 2 = 3; the NaN depth and the point behind the
    # camera (z = -1) are left out
    depth = np.array([3.0, 6.0, 9.0, 30.0, np.nan, 4.0])
    z = np.array([1.0, 2.0, 3.0, 5.0, 1.0, -1.0])
    assert cm.frame0_scale(depth, z) == pytest.approx(3.0, abs=1e-12)
    with pytest.raises(ValueError, match="no SfM point of frame 0"):
        cm.frame0_scale(np.array([np.nan]), np.array([1.0]))


def test_cami2v_metric_variant_by_hand():
    # the published variant: SfM of the ground-truth video too. Its SfM trajectory is GT at a
    # quarter of the size: (.25, 0, 0), (.5, 0, 0); its frame-0 depth / z = 2/.5, 4/1, 8/2 ->
    # median 4 -> in metres (1, 0, 0), (2, 0, 0) = GT, extent 2. The generated video's frame 0
    # gives 3, 3, 3, 6 -> 3 (previous test), GEN x 3 as in the project variant: the same numbers,
    # TransErr_metric 1.2905694 and CamMC_metric 2.8521222
    gt_sfm = traj([I3, I3, RZ90], [[0, 0, 0], [0.25, 0, 0], [0.5, 0, 0]])
    k_gt = cm.frame0_scale(np.array([2.0, 4.0, 8.0]), np.array([0.5, 1.0, 2.0]))
    k_gen = cm.frame0_scale(np.array([3.0, 6.0, 9.0, 30.0]), np.array([1.0, 2.0, 3.0, 5.0]))
    assert (k_gt, k_gen) == (pytest.approx(4.0), pytest.approx(3.0))
    m = cm.cami2v_metric_metrics(GEN, k_gen, gt_sfm, k_gt)
    assert m["TransErr_metric"] == pytest.approx(1.2905694, abs=1e-7)
    assert m["CamMC_metric"] == pytest.approx(2.8521222, abs=1e-7)
    # a wrong frame-0 factor of the ground-truth video (2 instead of 4: extent 1, GT at half
    # size) changes the figure: GEN x 3 / 1 -> (1.5, 1.5, 0), (3, 0, 0); GT/2 at / 1 ->
    # (.5, 0, 0), (1, 0, 0): |(1, 1.5, 0)| = sqrt(3.25) = 1.8027756, |(2, 0, 0)| = 2 -> 3.8027756
    m2 = cm.cami2v_metric_metrics(GEN, 3.0, gt_sfm, 2.0)
    assert m2["TransErr_metric"] == pytest.approx(3.8027756, abs=1e-7)


def _result(trial: int, c2w: np.ndarray, reproj: float, ok: bool = True) -> dict:
    w2c = np.linalg.inv(c2w)[:, :3, :4]
    return {"clip_id": "c", "trial": trial, "seed": trial, "success": ok, "w2c": w2c,
            "reproj_error": reproj, "sfm_points": 10,
            "frame0_obs": {"u": np.array([1.0, 2.0, 2.5]), "v": np.array([1.0, 1.0, 2.0]),
                           "z_cam": np.array([2.0, 2.0, 3.0])}}


def test_consensus_sets_aside_the_trial_that_disagrees():
    # trials 0 and 2 found GEN (1 and 2 in SfM's own scale and world: they agree), trial 1
    # converged elsewhere (GT's path); trial 3 failed
    world = np.eye(4)
    world[:3, :3] = RZ90
    results = [_result(0, GEN, 0.6), _result(1, GT, 0.4),
               _result(2, world[None] @ cm.scaled(GEN, 2.0), 0.7), _result(3, GEN, 0, ok=False)]
    cfg = {"mode": "majority", "rot_tol": 0.01, "trans_tol": 0.02}
    out = ce.consensus(results, cfg)
    assert out[0] is None and out[2] is None and out[3] is None
    assert "disagrees with the 2 of 3" in out[1]
    # best: the one lowest reprojection error, whatever the others say
    best = ce.consensus(results, {**cfg, "mode": "best"})
    assert best[1] is None and best[0] and best[2]
    assert ce.consensus(results, {**cfg, "mode": "none"}) == [None] * 4
    with pytest.raises(ValueError, match="consensus.mode"):
        ce.consensus(results, {**cfg, "mode": "vote"})


def test_score_trial_cami2v_uses_frame0_depth_and_the_reference():
    # depth map 6 m everywhere; frame 0's points at z = 2, 2, 3 -> 3, 3, 2 -> factor 3;
    # reference = GT in metres: the by-hand figures of the tests above
    dm = ce.DepthMaps([np.full((8, 8), 6.0, np.float32)] * 3, (1.0, 1.0), "model", 100.0)
    clip = ce.EvalClip("c", np.zeros((3, 8, 8, 3), np.uint8), np.eye(3), GT, True)
    row = ce.score_trial_cami2v(clip, _result(0, GEN, 0.5), dm, None, ce.Reference(GT))
    assert row["scale_factor"] == pytest.approx(3.0)
    assert row["RotErr"] == pytest.approx(math.pi / 2)
    assert row["TransErr_metric"] == pytest.approx(1.2905694, abs=1e-6)
    assert row["metric_reason"] is None
    none = ce.score_trial_cami2v(clip, _result(0, GEN, 0.5), dm, None,
                                 ce.Reference(None, "no ground-truth video"))
    assert math.isnan(none["TransErr_metric"]) and none["metric_reason"] == "no ground-truth video"
    # the reference itself: lowest reprojection error of the kept trials, frame-0 factor 3
    ref = ce.cami2v_reference([_result(0, GEN, 0.9), _result(1, GEN, 0.2)], [True, True], dm,
                              None)
    assert ref.trial == 1 and ref.reason is None
    np.testing.assert_allclose(ref.c2w[:, :3, 3], cm.scaled(GEN, 3.0)[:, :3, 3], atol=1e-9)
