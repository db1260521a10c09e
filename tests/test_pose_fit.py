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


def test_robust_fit_ignores_content_no_pose_explains(room) -> None:
    """A frame that is right in its left half and invented in its right half (the condition
    image's edge stretched across it, as a warp that left the image leaves it): the Cauchy loss
    (``robust_scale``) recovers the pose from the half that is right; least squares is pulled
    off by the stretched half. Both start from the same 3-degree, 10 cm perturbation."""
    import dataclasses

    scene, w2c = room
    K = intrinsics_matrix(32, 32, 60.0)
    truth = np.linalg.inv(w2c[2])
    frame, _ = render(scene, K, w2c[2], 32, 32)
    frame = frame.copy()
    frame[:, 16:] = frame[:, 15:16]  # the right half: the last true column, stretched
    off = np.eye(4)
    off[:3, :3] = rotvec_to_matrix(np.radians([1.5, -2.5, 0.5]))
    off[:3, 3] = [0.06, -0.03, 0.08]

    def error_deg(c: float) -> float:
        fitter = PoseFitter(scene, K, 32, 32, dataclasses.replace(SETTINGS, robust_scale=c))
        pose, _ = fitter.fit_frame(frame, [truth @ off])
        rel = np.linalg.inv(truth) @ pose
        return float(np.degrees(np.arccos(np.clip((np.trace(rel[:3, :3]) - 1) / 2, -1, 1))))

    robust, plain = error_deg(0.25), error_deg(0.0)
    assert robust < 1.4, (robust, plain)  # the floor of the unspoilt frame (test above)
    assert plain > 2 * robust, (robust, plain)
