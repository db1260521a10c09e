"""Photometric pose fit against renders of a known synthetic scene (pipeline.evaluation.pose_fit)
and the ablation's synthetic sets (pipeline.synthetic.ablation), against known answers."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.pose_fit import FitSettings, PoseFitter
from pipeline.geometry.camera_metrics import relative_metrics, relative_to_first
from pipeline.synthetic.ablation import training_definition
from pipeline.synthetic.scenes import (
    intrinsics_matrix,
    make_scene,
    make_trajectory,
    render,
    render_many,
    rotvec_to_matrix,
)

SETTINGS = FitSettings(blur_sigma_px=[2.5, 1.0], iterations=6, tolerance=1e-5, fd_rot_deg=0.5,
                       fd_trans_m=0.02, damping=1e-3, supersample=2,
                       valley_steps=[-8.0, -3.0, 3.0, 8.0])


@pytest.fixture(scope="module")
def room():
    scene = make_scene(4242)
    w2c = make_trajectory("forward", 4, scene, 4243)
    return scene, w2c


def test_render_many_matches_render(room) -> None:
    scene, w2c = room
    K = intrinsics_matrix(24, 20, 60.0)
    batch = render_many(scene, K, w2c[:3], 24, 20, supersample=2)
    for i in range(3):
        one, _ = render(scene, K, w2c[i], 24, 20, supersample=2)
        assert np.abs(batch[i] * 255 - one).max() <= 1.0  # render rounds to uint8


@pytest.mark.parametrize("rot_deg, trans_m, tol_deg, tol_m", [
    ([0.0, 2.0, 0.0], [0.0, 0.0, 0.0], 0.3, 0.015),   # a 2 degree turn
    ([0.0, 0.0, 0.0], [0.08, 0.0, 0.0], 0.1, 0.005),  # an 8 cm sideways step
    # a 3 degree turn with 10 cm: at 32x32 pixels a turn and a sideways move of about
    # depth x angle look alike, so the fit lands within ~1.4 degrees / 7 cm (the floor the
    # bench's gt row measures along whole trajectories)
    ([1.5, -2.5, 0.5], [0.06, -0.03, 0.08], 1.4, 0.07),
])
def test_fit_recovers_perturbed_pose(room, rot_deg, trans_m, tol_deg, tol_m) -> None:
    """A frame rendered at a known pose, fitted from a perturbed start, comes back close."""
    scene, w2c = room
    K = intrinsics_matrix(32, 32, 60.0)
    truth = np.linalg.inv(w2c[2])
    frame, _ = render(scene, K, w2c[2], 32, 32)
    off = np.eye(4)
    off[:3, :3] = rotvec_to_matrix(np.radians(rot_deg))
    off[:3, 3] = trans_m
    pose, _ = PoseFitter(scene, K, 32, 32, SETTINGS).fit_frame(frame, [truth @ off])
    rel = np.linalg.inv(truth) @ pose
    angle = np.degrees(np.arccos(np.clip((np.trace(rel[:3, :3]) - 1) / 2, -1, 1)))
    assert angle < tol_deg and np.linalg.norm(rel[:3, 3]) < tol_m, (angle, rel[:3, 3])


def test_fit_video_tracks_ground_truth(room) -> None:
    """The ground-truth video's fitted trajectory matches the asked one (the bench's gt row)."""
    scene, w2c = room
    K = intrinsics_matrix(32, 32, 60.0)
    frames = np.stack([render(scene, K, p, 32, 32)[0] for p in w2c])
    c2w = np.linalg.inv(w2c)
    world, resid = PoseFitter(scene, K, 32, 32, SETTINGS).fit_video(frames, c2w[0])
    m = relative_metrics(relative_to_first(world), relative_to_first(c2w))
    assert m["RotErr"] < 0.05 and m["TransErr_rel"] < 0.1, m
    assert resid.max() < 0.05


def test_training_definition_hides_scale() -> None:
    """Kinds cycle, every clip has its own room, and the written scale factor is log-uniform over
    the configured range (so the written poses carry no metric information); deterministic."""
    data = {"n_frames": 16, "width": 128, "height": 96, "fov_deg": 60.0,
            "kinds": ["forward", "pan", "orbit"], "rel_scale_log10": [-1.0, 1.0],
            "train_seed_base": 10, "test_seed_base": 99}
    a = training_definition(data, 300, seed=0)
    assert a == training_definition(data, 300, seed=0)
    clips = a["clips"]
    assert [c["kind"] for c in clips[:4]] == ["forward", "pan", "orbit", "forward"]
    assert len({c["seed"] for c in clips}) == 300
    logs = np.log10([c["rel_scale"] for c in clips])
    assert logs.min() >= -1.0 and logs.max() <= 1.0
    assert logs.min() < -0.9 and logs.max() > 0.9 and abs(np.median(logs)) < 0.2
    assert a["defaults"] == {"n_frames": 16, "width": 128, "height": 96, "fov_deg": 60.0}



def test_robust_fit_scores_an_exact_reprojection_by_its_geometry() -> None:
    """What a perfect geometric model that invents nothing would generate: frame 0 reprojected
    with its exact depth along an orbit (a held-out case of the MSA bench), the image's edge
    stretched where the view leaves it. Least squares is pulled off by the stretched edge;
    the Cauchy loss (``robust_scale``) follows the part that is right, and leaves the fit of
    the ground-truth video where it was."""
    import dataclasses
    from pathlib import Path

    import cv2
    import torch
    from omegaconf import OmegaConf

    from pipeline.synthetic.ablation import make_test_case
    from trainer.data import adjust_intrinsics, resize_crop
    from trainer.plucker import plucker_embedding
    from trainer.sampling import to_uint8
    from trainer.warp import warp_condition

    bench = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/bench/msa.yaml")
    case = make_test_case(bench.data, bench.test, 10)  # an orbit, 22 degrees
    hw = (32, 32)
    H, W = case.frames.shape[1:3]
    K = adjust_intrinsics(case.K, W, H, hw)
    gt = np.stack([resize_crop(f, hw) for f in case.frames])
    cond = torch.from_numpy(gt[0]).permute(2, 0, 1).float()[None] / 127.5 - 1
    depth = torch.from_numpy(cv2.resize(case.depth0, hw[::-1], interpolation=cv2.INTER_AREA))
    pl = plucker_embedding(torch.from_numpy(K).expand(len(case.c2w), 3, 3),
                           torch.from_numpy(case.c2w), *hw).float()[None]
    warped, valid = warp_condition(cond, pl, depth[None, None].float(), 3)
    assert 0.6 < float(valid[0, -1].mean()) < 0.9  # most of the last view is still in frame 0
    video = to_uint8(warped[0])

    def rot_err(frames: np.ndarray, c: float) -> float:
        fitter = PoseFitter(case.scene, K, hw[1], hw[0],
                            dataclasses.replace(SETTINGS, robust_scale=c))
        world, _ = fitter.fit_video(frames, case.world_c2w0)
        return relative_metrics(relative_to_first(world), case.c2w)["RotErr"]

    robust, plain = rot_err(video, 0.25), rot_err(video, 0.0)
    assert robust < 0.35 and robust < 0.5 * plain, (robust, plain)
    assert rot_err(gt, 0.25) < 0.1
