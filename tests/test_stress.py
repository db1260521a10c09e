"""The synthetic stress set: every knob applied with the requested magnitude, the truth untouched.

Noise models are checked on their own (no rendering: long made-up trajectories, small depth
maps) against what was asked for; rendering tests use tiny frames and few frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from pipeline.formats.re10k import parse_pose_file
from pipeline.io import read_json
from pipeline.synthetic import scenes as syn
from pipeline.synthetic.sample_data import (
    definition_hash,
    generate_sample,
    load_definition,
    render_clip,
)

ROOT = Path(__file__).resolve().parents[1]


def _line_trajectory(n: int = 400) -> np.ndarray:
    """A made-up smooth move (a curve with a yaw sweep): enough frames for tight RMS checks."""
    s = np.linspace(0, 1, n)
    centres = np.stack([1.5 * s, -1.4 + 0.05 * np.sin(3 * s), 0.4 * s**2], axis=1)
    return np.stack(
        [syn.look_w2c(c, syn._dir(0.2 + 0.8 * x, 0.1)) for c, x in zip(centres, s)]
    )


def _parts(w2c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    R = np.swapaxes(w2c[:, :3, :3], 1, 2)
    return R, -np.einsum("nij,nj->ni", R, w2c[:, :3, 3])


def _rms(x) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


# --------------------------------------------------------------------------- pose noise
@pytest.mark.parametrize("rot_deg", [0.05, 0.2, 0.5])
def test_rotation_jitter_has_requested_rms_and_leaves_centres(rot_deg):
    true = _line_trajectory()
    noisy, realised = syn.perturb_poses(true, rot_deg=rot_deg, seed=7)
    R, c = _parts(true)
    Rn, cn = _parts(noisy)
    angle = syn.rotation_angle_deg(R, Rn)
    assert _rms(angle) == pytest.approx(rot_deg, rel=0.08)  # 400 frames: ~3.5% sampling error
    np.testing.assert_allclose(angle, realised["rot_jitter_deg"], atol=1e-6)
    np.testing.assert_allclose(cn, c, atol=1e-12)
    # rotation vectors round-trip (the helper the noise model is built on)
    rv = np.random.default_rng(0).normal(size=(50, 3))
    np.testing.assert_allclose(syn.matrix_to_rotvec(syn.rotvec_to_matrix(rv)), rv, atol=1e-9)


def test_translation_jitter_has_requested_rms_and_leaves_rotations():
    true = _line_trajectory()
    noisy, realised = syn.perturb_poses(true, trans_m=0.005, seed=3)
    R, c = _parts(true)
    Rn, cn = _parts(noisy)
    err = np.linalg.norm(cn - c, axis=1)
    assert _rms(err) == pytest.approx(0.005, rel=0.08)
    np.testing.assert_allclose(err, realised["trans_jitter_m"], atol=1e-12)
    np.testing.assert_allclose(Rn, R, atol=1e-15)


def test_drift_is_smooth_starts_at_zero_and_peaks_at_requested():
    true = _line_trajectory(300)
    noisy, realised = syn.perturb_poses(true, drift_m=0.02, drift_deg=0.3, seed=11)
    R, c = _parts(true)
    Rn, cn = _parts(noisy)
    err = np.linalg.norm(cn - c, axis=1)
    assert err[0] == pytest.approx(0, abs=1e-12) and err.max() == pytest.approx(0.02, rel=1e-9)
    yaw = syn.rotation_angle_deg(R, Rn)
    assert yaw[0] == pytest.approx(0, abs=1e-6) and yaw.max() == pytest.approx(0.3, rel=1e-6)
    assert np.max(np.abs(realised["drift_yaw_deg"])) == pytest.approx(0.3, rel=1e-9)
    # slow: no frame moves the drift by more than a few % of its peak (jitter would: ~100%)
    assert np.linalg.norm(np.diff(cn - c, axis=0), axis=1).max() < 0.05 * 0.02
    # the heading drift is a turn about the world vertical: every camera axis keeps its
    # vertical component (row 1 of c2w), so pitch and roll are untouched
    np.testing.assert_allclose(Rn[:, 1, :], R[:, 1, :], atol=1e-12)


@pytest.mark.parametrize("offset", [0.5, -0.3, 1.25])
def test_time_offset_is_recovered_from_the_written_poses(offset):
    true = _line_trajectory(100)
    noisy, _ = syn.perturb_poses(true, time_offset_frames=offset)
    R, c = _parts(true)
    Rn, cn = _parts(noisy)
    # measured, frame by frame: displacement along the local velocity, in frames
    k = np.clip(np.floor(np.arange(100) + offset).astype(int), 0, 98)
    v = c[k + 1] - c[k]
    measured = np.einsum("ij,ij->i", cn - c[k], v) / np.einsum("ij,ij->i", v, v) + k
    np.testing.assert_allclose(measured - np.arange(100), offset, atol=1e-9)
    # SLERP: the written orientation lies on the geodesic, at the offset's share of the step
    frac = np.arange(100) + offset - k
    np.testing.assert_allclose(
        syn.rotation_angle_deg(R[k], Rn), np.abs(frac) * syn.rotation_angle_deg(R[k], R[k + 1]),
        atol=1e-6,
    )


def test_pose_noise_is_deterministic_and_zero_noise_is_identity():
    true = _line_trajectory(50)
    kw = dict(rot_deg=0.2, trans_m=0.005, drift_m=0.02, drift_deg=0.3, time_offset_frames=0.5)
    a, _ = syn.perturb_poses(true, **kw, seed=7)
    b, _ = syn.perturb_poses(true, **kw, seed=7)
    c, _ = syn.perturb_poses(true, **kw, seed=8)
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    zero, _ = syn.perturb_poses(true, seed=7)
    assert zero.tobytes() == true.tobytes()
    with pytest.raises(ValueError, match="non-negative"):
        syn.perturb_poses(true, rot_deg=-1.0)


# --------------------------------------------------------------------------- depth noise
def _step_depth(h: int = 30, w: int = 40) -> np.ndarray:
    """A slanted wall (2.0-2.4 m) with a nearer box (1 m) on the left: one occlusion edge."""
    d = np.tile(np.linspace(2.0, 2.4, w, dtype=np.float32), (h, 1))
    d[:, : w // 2] = 1.0
    return d


def test_frame_bias_is_one_global_factor_with_requested_spread():
    exact = _step_depth()
    biases = []
    for i in range(300):
        noisy, r = syn.perturb_depth(exact, frame_bias=0.03, seed=5, frame=i)
        ratio = noisy.astype(np.float64) / exact
        assert np.ptp(ratio) < 1e-6 and ratio.mean() == pytest.approx(r["bias"], rel=1e-6)
        biases.append(r["bias"])
    assert np.std(np.log(biases)) == pytest.approx(0.03, rel=0.12)  # 300 draws: ~4% error
    assert abs(np.mean(np.log(biases))) < 0.01  # unbiased in log: a few % either way


def test_smooth_field_has_requested_std_and_is_low_frequency():
    exact = _step_depth(48, 64)
    noisy, r = syn.perturb_depth(exact, smooth=0.03, seed=2, frame=4)
    log_err = np.log(noisy.astype(np.float64) / exact)
    assert np.std(log_err) == pytest.approx(0.03, rel=1e-3)
    assert r["smooth_log_std"] == pytest.approx(0.03, rel=1e-6)
    # neighbouring pixels share their error: the step is a small share of the field's spread
    assert np.abs(np.diff(log_err, axis=1)).max() < 0.2 * np.ptp(log_err)
    other, _ = syn.perturb_depth(exact, smooth=0.03, seed=2, frame=5)
    assert not np.allclose(other, noisy)  # a new field per frame


def test_edge_bleeding_ramps_across_the_edge_over_edge_px():
    exact = _step_depth()
    noisy, r = syn.perturb_depth(exact, edge_px=3)
    changed = np.flatnonzero(np.any(noisy != exact, axis=0))
    assert changed.tolist() == list(range(20 - 3, 20 + 3))  # 2 * edge_px columns, at the edge
    row = noisy[10, 16:25]  # box edge to wall, through the 6 smeared columns
    assert np.all(np.diff(row) > 0)  # a ramp from the box to the wall, no jump left
    assert np.diff(row).max() < 0.5 * (exact[10, 20] - exact[10, 19])
    assert r["edge_fraction"] == pytest.approx(8 / 40)  # the band: edge_px + 1 each side
    # a slanted wall alone is no discontinuity: nothing bleeds
    wall = np.tile(np.linspace(2.0, 2.4, 40, dtype=np.float32), (30, 1))
    assert syn.perturb_depth(wall, edge_px=3)[0].tobytes() == wall.tobytes()


# --------------------------------------------------------------------------- trajectories
@pytest.mark.parametrize("seed", [3001, 3002, 41])
def test_rotation_pan_is_rotation_dominated_with_a_far_scene(seed):
    scene = syn.make_scene(seed)
    poses = syn.make_trajectory("rotation_pan", 12, scene, seed + 1)
    R, c = _parts(poses)
    travel = np.linalg.norm(np.diff(c, axis=0), axis=1).sum()
    assert syn.ROTATION_PAN_TRAVEL[0] - 1e-9 <= travel <= syn.ROTATION_PAN_TRAVEL[1] + 1e-9
    turn = float(syn.rotation_angle_deg(R[0], R[-1]))
    assert syn.ROTATION_PAN_TURN_DEG[0] - 1e-6 <= turn <= syn.ROTATION_PAN_TURN_DEG[1] + 1e-6
    K = syn.intrinsics_matrix(32, 24, 60.0)
    for p in poses[:: 4]:
        assert np.median(syn.render_depth(scene, K, p, 32, 24)) >= 2.5  # "several metres"


def test_slow_pan_has_tiny_steps_over_300_frames():
    scene = syn.make_scene(3003)
    poses = syn.make_trajectory("slow_pan", 300, scene, 3004)
    R, c = _parts(poses)
    steps = np.linalg.norm(np.diff(c, axis=0), axis=1)
    assert syn.SLOW_PAN_TRAVEL[0] - 1e-9 <= steps.sum() <= syn.SLOW_PAN_TRAVEL[1] + 1e-9
    assert steps.max() < 0.005  # metres per frame
    assert syn.rotation_angle_deg(R[:-1], R[1:]).max() < 0.2  # degrees per frame
    assert syn.rotation_angle_deg(R[0], R[-1]) >= syn.SLOW_PAN_TURN_DEG[0] - 1e-6
    assert steps.min() > 0.2 * steps.mean()  # mostly constant speed, not a start-stop


def test_walk_travels_further_than_forward_and_stays_free():
    scene = syn.make_scene(3004)
    poses = syn.make_trajectory("walk", 24, scene, 3005)
    _, c = _parts(poses)
    assert np.linalg.norm((c[-1] - c[0])[[0, 2]]) >= 0.8 * syn.WALK_LENGTH[0]
    assert all(syn.camera_is_free(scene, x) for x in c)
    assert np.linalg.norm(np.diff(c, axis=0), axis=1).sum() <= syn.WALK_LENGTH[1] * 1.1


def test_weak_texture_keeps_the_geometry_and_lowers_gradient_energy():
    K = syn.intrinsics_matrix(64, 48, 60.0)
    normal = syn.make_scene(3005)
    weak = syn.make_scene(3005, syn.WALL_CONTRAST["weak"])
    w2c = syn.make_trajectory("pan", 2, normal, 3006)[0]
    rgb_n, d_n = syn.render(normal, K, w2c, 64, 48)
    rgb_w, d_w = syn.render(weak, K, w2c, 64, 48)
    assert d_n.tobytes() == d_w.tobytes()  # same room, same objects

    def energy(rgb: np.ndarray, mask: np.ndarray) -> float:
        g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)
        gx, gy = cv2.Sobel(g, cv2.CV_64F, 1, 0), cv2.Sobel(g, cv2.CV_64F, 0, 1)
        return float(np.mean((gx**2 + gy**2)[mask]))

    # walls only: pixels whose ray hits a room face (objects keep their normal texture)
    Rw, t = w2c[:3, :3], w2c[:3, 3]
    cols, rows = np.meshgrid(np.arange(64) + 0.5, np.arange(48) + 0.5)
    pix = np.stack([cols.ravel(), rows.ravel(), np.ones(cols.size)], axis=1)
    _, hit = syn.cast(normal, -Rw.T @ t, (pix @ np.linalg.inv(K).T) @ Rw)
    walls = np.isin(hit, normal.room_faces).reshape(48, 64)
    walls = cv2.erode(walls.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0  # off the edges
    assert walls.sum() > 300
    assert energy(rgb_w, walls) < 0.1 * energy(rgb_n, walls)
    assert energy(rgb_w, np.ones_like(walls)) < energy(rgb_n, np.ones_like(walls))


# --------------------------------------------------------------------------- clips and sets
TINY = {"n_frames": 4, "width": 32, "height": 24, "split": "train"}


def _tree(root: Path, sub: str) -> dict[str, bytes]:
    base = root / sub
    files = sorted(p for p in base.rglob("*") if p.is_file())
    return {str(p.relative_to(base)): p.read_bytes() for p in files}


def test_noisy_clip_keeps_the_truth_and_writes_what_was_asked(tmp_path):
    """Same clip with and without every stressor: frames, metric poses, true_scale and the exact
    depth identical; the pose file and depth/ carry exactly the recorded errors."""
    pose_noise = {"rot_deg": 0.3, "trans_m": 0.01, "time_offset_frames": 0.5, "seed": 4}
    depth_noise = {"frame_bias": 0.05, "smooth": 0.02, "edge_px": 2, "seed": 6}
    kw = dict(seed=21, kind="forward", rel_scale=0.37, **{k: v for k, v in TINY.items()
                                                          if k != "split"})
    clean = render_clip(tmp_path / "a", "c", "train", **kw)
    noisy = render_clip(tmp_path / "b", "c", "train", **kw, pose_noise=pose_noise,
                        depth_noise=depth_noise)
    assert noisy["true_scale"] == clean["true_scale"]
    assert noisy["metric_w2c"].tobytes() == clean["metric_w2c"].tobytes()
    assert _tree(tmp_path / "a", "frames") == _tree(tmp_path / "b", "frames")
    assert _tree(tmp_path / "a", "depth") == _tree(tmp_path / "b", "depth_exact")
    # written poses = the truth perturbed by exactly the recorded model, in the relative scale
    pose = parse_pose_file(tmp_path / "b" / "train" / "c.txt", "c", 1e-9, 0.0, 4)
    expected, realised = syn.perturb_poses(clean["metric_w2c"], **pose_noise)
    np.testing.assert_allclose(pose.w2c[:, :, :3], expected[:, :3, :3], atol=1e-12)
    np.testing.assert_allclose(pose.w2c[:, :, 3] / 0.37, expected[:, :3, 3], atol=1e-12)
    assert noisy["stress"]["pose_noise"]["realised"] == realised
    R, _ = _parts(clean["metric_w2c"])
    Rn = np.swapaxes(pose.w2c[:, :, :3], 1, 2)
    assert syn.rotation_angle_deg(R, Rn).max() > 0.01  # really applied
    # depth/: the exact depth times the recorded per-frame bias (and field, and bleeding)
    biases = [r["bias"] for r in noisy["stress"]["depth_noise"]["realised"]]
    for i, (dp, ep) in enumerate(zip(noisy["depth_paths"], clean["depth_paths"])):
        d, e = np.load(dp), np.load(ep)
        assert d.shape == e.shape and not np.array_equal(d, e)
        assert np.exp(np.median(np.log(d / e))) == pytest.approx(biases[i], rel=0.03)


def test_zero_noise_renders_exactly_as_without_the_keys(tmp_path):
    kw = dict(seed=5, kind="pan", rel_scale=1.7, n_frames=3, width=24, height=18)
    render_clip(tmp_path / "a", "z", "test", **kw)
    render_clip(tmp_path / "b", "z", "test", **kw, texture="normal",
                pose_noise={"rot_deg": 0.0, "time_offset_frames": 0.0, "seed": 3},
                depth_noise={"frame_bias": 0.0, "smooth": 0.0, "edge_px": 0, "seed": 1})
    for sub in ("frames", "depth", "test"):
        assert _tree(tmp_path / "a", sub) == _tree(tmp_path / "b", sub)


def test_stress_set_is_deterministic_and_records_its_truth(tmp_path):
    defn = {
        "defaults": TINY,
        "clips": [
            {"clip_id": "r", "seed": 3001, "kind": "rotation_pan", "rel_scale": 0.5,
             "pose_noise": {"rot_deg": 0.2, "drift_m": 0.02, "seed": 1}},
            {"clip_id": "w", "seed": 8, "kind": "pan", "rel_scale": 2.0, "texture": "weak",
             "depth_noise": {"frame_bias": 0.03, "seed": 2}},
        ],
    }
    truth = generate_sample(defn, tmp_path / "one")
    generate_sample(defn, tmp_path / "two", workers=2)
    one, two = _tree(tmp_path, "one"), _tree(tmp_path, "two")
    assert one == two  # same seeds, same bytes, serial or threaded
    assert truth == {"r": 2.0, "w": 0.5}
    st = read_json(tmp_path / "one" / "stress_truth.json")
    assert st["r"]["kind"] == "rotation_pan" and st["r"]["true_scale"] == 2.0
    assert len(st["r"]["pose_noise"]["realised"]["rot_jitter_deg"]) == 4
    assert st["w"]["wall_contrast"] == syn.WALL_CONTRAST["weak"]
    assert len(st["w"]["depth_noise"]["realised"]) == 4
    # a stress set keeps one complete exact-depth tree (clip r has no depth noise)
    assert _tree(tmp_path / "one", "depth_exact/train/r") == _tree(
        tmp_path / "one", "depth/train/r"
    )
    assert definition_hash(defn) != definition_hash({**defn, "clips": defn["clips"][:1]})


def test_stress_options_fail_with_the_clip_named(tmp_path):
    base = dict(seed=1, kind="pan", n_frames=2, width=8, height=6, rel_scale=1.0)
    with pytest.raises(ValueError, match=r"clip q: unknown pose_noise keys \['rot'\]"):
        render_clip(tmp_path, "q", "train", **base, pose_noise={"rot": 0.1})
    with pytest.raises(ValueError, match="clip q: texture 'shiny'"):
        render_clip(tmp_path, "q", "train", **base, texture="shiny")
    with pytest.raises(ValueError, match="clip q: bad depth_noise"):
        render_clip(tmp_path, "q", "train", **base, depth_noise={"edge_px": 1.5})


# --------------------------------------------------------------------------- rolling shutter
def test_row_times_are_centred_on_the_frame_time():
    np.testing.assert_allclose(syn.row_time_offsets(5, 0.8), [-0.4, -0.2, 0.0, 0.2, 0.4])
    assert syn.row_time_offsets(1, 0.8).tolist() == [0.0]
    assert not syn.row_time_offsets(240, 0.0).any()


def test_rolling_shutter_poses_follow_the_trajectory():
    w2c = _line_trajectory(20)
    # readout of 2 frame periods over 3 rows: rows at frames i-1, i, i+1 exactly
    rows = syn.rolling_shutter_poses(w2c, 7, 3, 2.0)
    np.testing.assert_allclose(rows[:, :3, :], w2c[6:9, :3, :], atol=1e-12)
    # before the first frame: the first segment continued at constant velocity
    R, c = _parts(w2c)
    first = syn.rolling_shutter_poses(w2c, 0, 3, 2.0)[0]
    Rf, cf = _parts(first[None])
    np.testing.assert_allclose(cf[0], c[0] - (c[1] - c[0]), atol=1e-12)
    assert syn.rotation_angle_deg(Rf[0], R[0]) == pytest.approx(
        syn.rotation_angle_deg(R[0], R[1]), rel=1e-9)


def test_rolling_frame_rows_are_global_renders_at_their_row_poses():
    """Top and bottom rows of a rolling-shutter frame equal the rows of global-shutter renders
    at the poses of the top and bottom row times; the frame really differs from the global
    render at the frame pose."""
    scene = syn.make_scene(3006)
    poses = syn.make_trajectory("pan", 6, scene, 3007)
    W, H = 40, 30
    K = syn.intrinsics_matrix(W, H, 60.0)
    rows = syn.rolling_shutter_poses(poses, 2, H, 0.9)
    rgb, depth = syn.render(scene, K, poses[2], W, H, row_w2c=rows)
    for r in (0, H - 1):
        g_rgb, g_depth = syn.render(scene, K, rows[r], W, H)
        np.testing.assert_allclose(depth[r], g_depth[r], rtol=1e-6)
        assert np.abs(rgb[r].astype(int) - g_rgb[r]).max() <= 1
    g_rgb, g_depth = syn.render(scene, K, poses[2], W, H)
    mid = H // 2  # the middle row time is within half a row of the frame time
    assert np.abs(depth[mid] / g_depth[mid] - 1).max() < 0.05
    assert np.abs(depth[0] / g_depth[0] - 1).max() > 1e-3  # really applied at the top
    # the same per-row path with every row at the frame pose is the global render
    same = np.repeat(np.asarray(poses[2])[None], H, axis=0)
    s_rgb, s_depth = syn.render(scene, K, poses[2], W, H, row_w2c=same)
    np.testing.assert_allclose(s_depth, g_depth, rtol=1e-9)
    assert np.abs(s_rgb.astype(int) - g_rgb).max() <= 1


def test_rolling_shutter_clip_keeps_the_written_poses_and_records_the_readout(tmp_path):
    kw = dict(seed=5, kind="pan", rel_scale=1.7, n_frames=3, width=24, height=18)
    clean = render_clip(tmp_path / "a", "z", "test", **kw)
    render_clip(tmp_path / "b", "z", "test", **kw, rolling_shutter={"readout_ms": 0})
    for sub in ("frames", "depth", "test"):  # zero readout: byte-identical
        assert _tree(tmp_path / "a", sub) == _tree(tmp_path / "b", sub)
    rs = render_clip(tmp_path / "c", "z", "test", **kw, frame_interval_us=40000,
                     rolling_shutter={"readout_ms": 30}, write_exact_depth=True)
    assert rs["w2c"] == clean["w2c"]  # the written poses: the frame-time poses
    assert rs["metric_w2c"].tobytes() == clean["metric_w2c"].tobytes()
    assert _tree(tmp_path / "a", "frames") != _tree(tmp_path / "c", "frames")
    assert _tree(tmp_path / "c", "depth") == _tree(tmp_path / "c", "depth_exact")
    assert rs["true_scale"] == pytest.approx(1 / 1.7)
    real = rs["stress"]["rolling_shutter"]["realised"]
    assert real["readout_frames"] == pytest.approx(0.75)
    assert real["row_offset_frames"] == pytest.approx([-0.375, 0.375])
    for i in range(3):
        rows = syn.rolling_shutter_poses(rs["metric_w2c"], i, 18, 0.75)
        assert real["top_bottom_rot_deg"][i] == pytest.approx(
            float(syn.rotation_angle_deg(rows[0, :3, :3], rows[-1, :3, :3])))
        d = np.load(rs["depth_paths"][i])
        g = syn.render(syn.make_scene(5), syn.intrinsics_matrix(24, 18, 60.0), rows[0], 24, 18)[1]
        np.testing.assert_allclose(d[0], g[0], rtol=1e-6)  # depth rendered with the row poses
    with pytest.raises(ValueError, match="clip z: rolling_shutter.readout_ms must be >= 0"):
        render_clip(tmp_path / "d", "z", "test", **kw, rolling_shutter={"readout_ms": -1})
    with pytest.raises(ValueError, match=r"clip z: unknown rolling_shutter keys \['ms'\]"):
        render_clip(tmp_path / "d", "z", "test", **kw, rolling_shutter={"ms": 3})


def test_intrinsics_error_writes_a_wrong_focal_and_keeps_the_frames(tmp_path):
    """A 2% focal error changes only the written fx, fy (pose file and row): frames, depth,
    poses and the true scale are those of the clean clip, and the realised focals are kept."""
    kw = dict(seed=5, kind="pan", rel_scale=1.7, n_frames=3, width=24, height=18)
    clean = render_clip(tmp_path / "a", "z", "test", **kw)
    bad = render_clip(tmp_path / "b", "z", "test", **kw, intrinsics_error={"focal": 0.02})
    for sub in ("frames", "depth"):
        assert _tree(tmp_path / "a", sub) == _tree(tmp_path / "b", sub)
    assert bad["w2c"] == clean["w2c"] and bad["true_scale"] == clean["true_scale"]
    assert bad["intrinsics"][:2] == pytest.approx([x * 1.02 for x in clean["intrinsics"][:2]])
    assert bad["intrinsics"][2:] == clean["intrinsics"][2:]
    pose_line = (tmp_path / "b" / "test" / "z.txt").read_text().splitlines()[1].split()
    assert float(pose_line[1]) == pytest.approx(clean["intrinsics"][0] * 1.02)
    real = bad["stress"]["intrinsics_error"]["realised"]
    assert real["focal_written_px"] == pytest.approx(1.02 * real["focal_true_px"])
    with pytest.raises(ValueError, match=r"clip z: unknown intrinsics_error keys \['cx'\]"):
        render_clip(tmp_path / "c", "z", "test", **kw, intrinsics_error={"cx": 1})


# What three bundled-sample clips rendered small decode to (pixels, depth, pose numbers, JSON
# values), saved with ``_decoded`` from the renderer as it was before the stress options existed
# (the encoded tree then hashed to sha256 2e34053d...). Decoded values, not file bytes: a PNG or
# .npy writer of another library version may lay out the same values in other bytes.
SAMPLE_REFERENCE = ROOT / "tests" / "data" / "sample_render_reference.npz"
SAMPLE_DEFINITION_HASH = "6301813312efe48e"


def _numbers(value: Any, key: str = "") -> list[tuple[str, float]]:
    """A JSON value's numbers with their key paths, in document order."""
    if isinstance(value, dict):
        return [kv for k in value for kv in _numbers(value[k], f"{key}/{k}")]
    if isinstance(value, list):
        return [kv for i, v in enumerate(value) for kv in _numbers(v, f"{key}/{i}")]
    return [(key, float(value))]


def _decoded(root: Path) -> dict[str, np.ndarray]:
    """Every file of a rendered tree as the values it holds: PNG -> decoded pixels, .npy -> the
    array, pose .txt -> its URL line and number table, JSON -> key paths and numbers."""
    out: dict[str, np.ndarray] = {}
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        rel = str(p.relative_to(root))
        if p.suffix == ".png":
            out[rel] = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        elif p.suffix == ".npy":
            out[rel] = np.load(p, allow_pickle=False)
        elif p.suffix == ".txt":
            url, *rows = p.read_text(encoding="utf-8").splitlines()
            out[rel + "#url"] = np.array(url)
            out[rel] = np.array([[float(x) for x in r.split()] for r in rows])
        elif p.suffix == ".json":
            pairs = _numbers(read_json(p))
            out[rel + "#keys"] = np.array("\n".join(k for k, _ in pairs))
            out[rel] = np.array([v for _, v in pairs])
        else:
            out[rel] = np.array(p.read_text(encoding="utf-8"))
    return out


def test_bundled_sample_renders_as_before(tmp_path):
    """Same files, same pixels (PNG is lossless: exact), same depth and poses as the reference."""
    defn = load_definition(ROOT / "data_manifests" / "sample.yaml")
    assert definition_hash(defn) == SAMPLE_DEFINITION_HASH  # the cached sample stays valid
    keep = ("syn_train_000", "syn_train_001", "syn_train_002")  # forward, pan, orbit
    small = {
        "defaults": {**defn["defaults"], "n_frames": 3, "width": 48, "height": 36},
        "clips": [c for c in defn["clips"] if c["clip_id"] in keep],
    }
    root = tmp_path / "s"
    generate_sample(small, root)
    got = _decoded(root)
    with np.load(SAMPLE_REFERENCE, allow_pickle=False) as ref:
        want = {k: ref[k] for k in ref.files}
    assert sorted(got) == sorted(want)
    for key, expected in want.items():
        actual = got[key]
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, key
        if expected.dtype.kind in "uiU":  # pixels and text: exact
            assert np.array_equal(actual, expected), key
        else:  # depth, poses, truth: the same floats up to the last bits
            np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-9, err_msg=key)
    assert not (root / "stress_truth.json").exists() and not (root / "depth_exact").exists()


def test_stress_dataset_composes_with_its_definition_and_sensor_depth():
    """``dataset=stress`` points at the bundled definition and defaults to sensor depth (the
    stressors are judged against exact depth, not a model's)."""
    from pipeline.config import load_config

    cfg = load_config(["dataset=stress"])
    assert cfg["dataset"]["definition"].endswith("data_manifests/stress.yaml")
    assert cfg["depth"]["backend"] == "sensor"
