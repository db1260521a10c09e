"""Trajectories, metric point cloud and preview renderer against known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from trainer.inference import trajectory as tj
from trainer.inference.render import (
    coverage,
    latent_mask,
    masked_psnr,
    render_points,
    usable_mask,
)
from trainer.inference.scene import (
    PointCloud,
    intrinsics_from_fov,
    load_ply,
    point_cloud,
    save_ply,
    unproject,
)

ROOT = Path(__file__).resolve().parents[1]
PRESET_PARAMS = {"dolly_frac": 0.5, "pan_frac": 0.3, "orbit_deg": 20.0, "zoom_factor": 1.5}


def rot_y(deg: float) -> np.ndarray:
    return tj.rotation_y(deg)


def pose(R: np.ndarray, t: list[float]) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = R, t
    return m


# ------------------------------------------------------------------------------ trajectories
def test_quaternion_roundtrip_and_slerp_halfway() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        R = tj.matrix_from_quat(q)
        np.testing.assert_allclose(tj.matrix_from_quat(tj.quat_from_matrix(R)), R, atol=1e-12)
    # 180 degrees about y: the trace formula's weak spot
    np.testing.assert_allclose(tj.matrix_from_quat(tj.quat_from_matrix(rot_y(180))), rot_y(180),
                               atol=1e-12)
    q0, q1 = tj.quat_from_matrix(rot_y(0)), tj.quat_from_matrix(rot_y(90))
    np.testing.assert_allclose(tj.matrix_from_quat(tj.slerp(q0, q1, 0.5)), rot_y(45), atol=1e-12)
    np.testing.assert_allclose(tj.matrix_from_quat(tj.slerp(q0, q1, 1 / 3)), rot_y(30),
                               atol=1e-12)


def test_keyframes_pass_through_and_rotate_at_constant_speed() -> None:
    kfs = [tj.Keyframe(0.0, np.eye(4)), tj.Keyframe(1.0, pose(rot_y(30), [1.0, 0, 0.5]), 2.0),
           tj.Keyframe(2.0, pose(rot_y(60), [1.0, 0, 2.0]), 1.0)]
    tr = tj.interpolate_keyframes(kfs, 9)  # times 0, 0.25, ..., 2
    assert len(tr) == 9
    np.testing.assert_allclose(tr.c2w[0], np.eye(4), atol=1e-12)
    np.testing.assert_allclose(tr.c2w[4], kfs[1].c2w, atol=1e-12)
    np.testing.assert_allclose(tr.c2w[8], kfs[2].c2w, atol=1e-12)
    for i in range(9):  # SLERP about one axis: angle linear in time (7.5 degrees per frame)
        np.testing.assert_allclose(tr.c2w[i, :3, :3], rot_y(7.5 * i), atol=1e-12)
    np.testing.assert_allclose(tr.focal_scale, [1, 1.25, 1.5, 1.75, 2, 1.75, 1.5, 1.25, 1])
    # C1 translation: the finite-difference velocity does not jump at the middle keyframe
    dense = tj.interpolate_keyframes(kfs, 2001).c2w[:, :3, 3]
    v = np.diff(dense, axis=0)
    assert np.abs(v[1000] - v[999]).max() < 1e-5
    # linear interpolation would jump there: a real test of smoothness
    assert np.abs((kfs[2].c2w[:3, 3] - kfs[1].c2w[:3, 3])
                  - (kfs[1].c2w[:3, 3] - kfs[0].c2w[:3, 3])).max() > 0.5
    with pytest.raises(tj.TrajectoryError, match="strictly increasing"):
        tj.interpolate_keyframes([kfs[0], tj.Keyframe(0.0, np.eye(4))], 3)


def test_presets_are_sized_from_scene_depth() -> None:
    depth = np.full((10, 10), 4.0)
    depth[0, 0] = np.nan
    d = tj.scene_depth(depth)
    assert d == 4.0
    dolly = tj.preset_trajectory("dolly", 5, d, PRESET_PARAMS)
    np.testing.assert_allclose(dolly.c2w[:, 2, 3], [0, 0.5, 1.0, 1.5, 2.0])
    np.testing.assert_allclose(dolly.c2w[:, :3, :3], np.tile(np.eye(3), (5, 1, 1)))
    pan = tj.preset_trajectory("pan", 3, d, PRESET_PARAMS)
    np.testing.assert_allclose(pan.c2w[:, 0, 3], [0, 0.6, 1.2])
    orbit = tj.preset_trajectory("orbit", 5, d, PRESET_PARAMS)
    centre = np.array([0, 0, 4.0])
    for m in orbit.c2w:  # every camera at the same distance, looking at the scene centre
        np.testing.assert_allclose(np.linalg.norm(m[:3, 3] - centre), 4.0, atol=1e-12)
        fwd = m[:3, 2]
        np.testing.assert_allclose(m[:3, 3] + 4.0 * fwd, centre, atol=1e-12)
    np.testing.assert_allclose(orbit.c2w[-1, :3, :3], rot_y(20), atol=1e-12)
    zoom = tj.preset_trajectory("zoom", 3, d, PRESET_PARAMS)
    np.testing.assert_allclose(zoom.focal_scale, [1, 1.25, 1.5])
    K = intrinsics_from_fov(64, 48, 60)
    np.testing.assert_allclose(zoom.intrinsics(K)[2, 0, 0], 1.5 * K[0, 0])
    np.testing.assert_allclose(zoom.intrinsics(K)[2, 0, 2], K[0, 2])
    with pytest.raises(tj.TrajectoryError, match="unknown trajectory preset 'spin'"):
        tj.preset_trajectory("spin", 3, d, PRESET_PARAMS)


def test_json_format_roundtrip_and_keyframes_only(tmp_path: Path) -> None:
    tr = tj.preset_trajectory("orbit", 6, 3.0, PRESET_PARAMS)
    tr.fps = 8.0
    p = tj.save_trajectory(tr, tmp_path / "t.json")
    back = tj.load_trajectory(p)
    np.testing.assert_allclose(back.c2w, tr.c2w, atol=1e-15)
    np.testing.assert_allclose(back.focal_scale, tr.focal_scale)
    assert back.fps == 8.0 and back.source["preset"] == "orbit"
    # what a UI writes: keyframes only, in any world frame -> relative to the first keyframe
    w = pose(rot_y(10), [5.0, 1.0, -2.0])
    doc = {"format": tj.FORMAT, "version": 1, "num_frames": 5,
           "keyframes": [{"c2w": w.reshape(16).tolist()},
                         {"c2w": (w @ pose(rot_y(40), [0, 0, 2.0])).reshape(16).tolist()}]}
    (tmp_path / "k.json").write_text(json.dumps(doc))
    kt = tj.load_trajectory(tmp_path / "k.json")
    np.testing.assert_allclose(kt.c2w[0], np.eye(4), atol=1e-12)
    np.testing.assert_allclose(kt.c2w[-1], pose(rot_y(40), [0, 0, 2.0]), atol=1e-12)
    np.testing.assert_allclose(kt.c2w[2, :3, :3], rot_y(20), atol=1e-12)
    doc["format"] = "other"
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(tj.TrajectoryError, match="bad.json: 'format' must be"):
        tj.load_trajectory(tmp_path / "bad.json")


def test_c2w_text_and_re10k_files(tmp_path: Path) -> None:
    c2w = np.stack([pose(rot_y(5 * i), [0.1 * i, 0, 0.2 * i]) for i in range(4)])
    world = pose(rot_y(-30), [2.0, 0.5, 1.0])
    np.savetxt(tmp_path / "t.txt", (world @ c2w).reshape(4, 16))
    tr = tj.load_trajectory(tmp_path / "t.txt")
    np.testing.assert_allclose(tr.c2w, c2w, atol=1e-12)
    # RealEstate10K: relative-scale w2c; metres = relative translation * factor
    rel_scale = 0.25
    w2c = np.linalg.inv(world @ c2w)
    lines = ["https://example.com/v"]
    for i, m in enumerate(w2c):
        m = m.copy()
        m[:3, 3] *= rel_scale
        nums = [0.9, 1.6, 0.5, 0.5, 0, 0, *m[:3].reshape(-1)]
        lines.append(f"{1000 * i} " + " ".join(repr(float(x)) for x in nums))
    (tmp_path / "clip.txt").write_text("\n".join(lines) + "\n")
    got = tj.load_trajectory(tmp_path / "clip.txt", re10k_scale=1 / rel_scale)
    np.testing.assert_allclose(got.c2w, c2w, atol=1e-9)
    assert got.source["kind"] == "re10k"
    with pytest.raises(tj.TrajectoryError, match="relative scale"):
        tj.load_trajectory(tmp_path / "clip.txt")
    with pytest.raises(tj.TrajectoryError, match="not found"):
        tj.load_trajectory(tmp_path / "nope.json")


# ------------------------------------------------------------------------------ scene
def test_unproject_reprojects_to_pixel_centres(tmp_path: Path) -> None:
    K = torch.tensor([[50.0, 0, 31.0], [0, 55.0, 20.0], [0, 0, 1]], dtype=torch.float64)
    depth = torch.rand(40, 64, dtype=torch.float64) * 3 + 1
    pts = unproject(depth, K)
    proj = pts @ K.T
    uv = proj[..., :2] / proj[..., 2:]
    vv, uu = torch.meshgrid(torch.arange(40) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    torch.testing.assert_close(uv[..., 0], uu.double())
    torch.testing.assert_close(uv[..., 1], vv.double())
    torch.testing.assert_close(pts[..., 2], depth)
    img = np.random.default_rng(0).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    d = depth.float().numpy()
    d[0, 0] = 0.0  # a hole carries no point
    pc = point_cloud(img, d, K.numpy())
    assert len(pc) == 40 * 64 - 1
    back = load_ply(save_ply(pc, tmp_path / "s.ply"))
    torch.testing.assert_close(back.xyz, pc.xyz)
    torch.testing.assert_close(back.rgb, pc.rgb)


# ------------------------------------------------------------------------------ renderer
def plane_cloud(z: float, w: int, h: int, K: np.ndarray) -> PointCloud:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return point_cloud(img, np.full((h, w), z, np.float32), K)


def test_plane_translation_shifts_by_exact_disparity() -> None:
    """A fronto-parallel plane at z seen from a camera moved by b along x moves by f b / z."""
    w, h, z, f = 48, 32, 2.0, 40.0
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
    pc = plane_cloud(z, w, h, K)
    src = pc.rgb.view(h, w, 3).permute(2, 0, 1)
    shifts = [0, 3, 7]  # pixels of disparity, integers so the expected image is exact
    c2w = np.stack([pose(np.eye(3), [s * z / f, 0, 0]) for s in shifts])
    r = render_points(pc, torch.from_numpy(c2w), torch.from_numpy(K), h, w, 1)
    for i, s in enumerate(shifts):
        # the camera moved right: content moves left by s pixels; the right s columns are holes
        torch.testing.assert_close(r.image[i, :, :, : w - s], src[:, :, s:])
        assert r.visible[i, :, : w - s].all() and not r.visible[i, :, w - s:].any()
        torch.testing.assert_close(r.depth[i][r.visible[i]],
                                   torch.full_like(r.depth[i][r.visible[i]], z))
    # sub-pixel: a 0.4 px disparity keeps every pixel, a 0.6 px one moves them by one
    c2w = np.stack([pose(np.eye(3), [d * z / f, 0, 0]) for d in (0.4, 0.6)])
    r = render_points(pc, torch.from_numpy(c2w), torch.from_numpy(K), h, w, 1)
    torch.testing.assert_close(r.image[0], src)
    torch.testing.assert_close(r.image[1, :, :, : w - 1], src[:, :, 1:])
    # frame chunks give the same render as one pass
    rc = render_points(pc, torch.from_numpy(c2w), torch.from_numpy(K), h, w, 1, chunk_frames=1)
    assert torch.equal(rc.image, r.image) and torch.equal(rc.visible, r.visible)
    # splat size 3 covers the one-pixel hole column left by the shift
    r3 = render_points(pc, torch.from_numpy(c2w[1:]), torch.from_numpy(K), h, w, 3)
    assert r3.visible.all()
    # overlapping splats of one surface: a plain z-buffer lets neighbours' splats win at random
    # depth round-off; with a depth tolerance the point closest to each pixel centre wins, so the
    # identity view is reproduced exactly even with 3 x 3 splats
    eye = torch.eye(4, dtype=torch.float64)[None]
    tilted = point_cloud((src.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
                         np.linspace(2.0, 2.2, w, dtype=np.float32)[None].repeat(h, 0), K)
    for size in (2, 3):
        plain = render_points(tilted, eye, torch.from_numpy(K), h, w, size)
        tol = render_points(tilted, eye, torch.from_numpy(K), h, w, size, depth_tol=0.01)
        torch.testing.assert_close(tol.image[0], src)
        assert not torch.equal(plain.image[0], src)


def test_near_object_occludes_far_one() -> None:
    w, h, f = 40, 30, 30.0
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
    far = plane_cloud(5.0, w, h, K)
    near_rgb = torch.tensor([1.0, 0.0, 0.0]).expand(4, 3)
    near_xyz = torch.tensor([[0.0, 0.0, 1.0]]).expand(4, 3).clone()
    near_xyz[:, 0] += torch.tensor([0.0, 0.01, 0.02, 0.03])  # a few near points, all in front
    cloud = PointCloud(torch.cat([near_xyz, far.xyz]), torch.cat([near_rgb, far.rgb]))
    # far points listed after the near ones, and again before them: order must not matter
    cloud2 = PointCloud(torch.cat([far.xyz, near_xyz]), torch.cat([far.rgb, near_rgb]))
    for c in (cloud, cloud2):
        r = render_points(c, torch.eye(4)[None], torch.from_numpy(K), h, w, 1)
        # (0, 0, 1) projects to the principal point: pixel (20, 15)
        assert torch.equal(r.image[0, :, 15, 20], torch.tensor([1.0, 0, 0]))
        assert r.depth[0, 15, 20] == 1.0
        assert r.depth[0, 0, 0] == 5.0


def test_edge_rule_removes_exactly_pixels_next_to_holes() -> None:
    vis = torch.ones(2, 12, 14, dtype=torch.bool)
    vis[0, 5, 6] = False
    vis[0, 0, 13] = False  # at the border: the outside of the image is not a hole
    vis[1, :, 10:] = False
    for k in (1, 3, 5):
        got = usable_mask(vis, k)
        r = k // 2
        want = torch.zeros_like(vis)
        for f in range(2):
            holes = (~vis[f]).nonzero().tolist()
            for y in range(12):
                for x in range(14):
                    want[f, y, x] = vis[f, y, x] and all(
                        max(abs(y - hy), abs(x - hx)) > r for hy, hx in holes)
        assert torch.equal(got, want), k
    assert usable_mask(vis, 3)[0].sum() == 12 * 14 - 9 - 4
    with pytest.raises(ValueError, match="odd"):
        usable_mask(vis, 2)


def test_latent_mask_is_conservative() -> None:
    m = torch.ones(1, 8, 8, dtype=torch.bool)
    m[0, 1, 6] = False
    got = latent_mask(m, 2)
    want = torch.ones(1, 4, 4, dtype=torch.bool)
    want[0, 0, 3] = False
    assert torch.equal(got, want)
    got = latent_mask(m, 2, margin=1)
    want = torch.ones(1, 4, 4, dtype=torch.bool)
    want[0, 0:2, 2:4] = False
    assert torch.equal(got, want)


def test_psnr_and_coverage_known_values() -> None:
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[0] += 0.1  # mse 0.01 -> 20 dB
    m = torch.ones(2, 4, 4, dtype=torch.bool)
    m[1, :2] = False
    p = masked_psnr(b, a, m)
    torch.testing.assert_close(p[0], torch.tensor(20.0))
    torch.testing.assert_close(coverage(m), torch.tensor([1.0, 0.5]))
    assert torch.isnan(masked_psnr(b, a, torch.zeros_like(m))).all()


def _sample_clip(clip_id: str, frames: int):  # noqa: ANN202
    """The bundled sample's clip, rendered exactly as pipeline.synthetic.sample_data does (first
    frames)."""
    from pipeline.synthetic.scenes import intrinsics_matrix, make_scene, make_trajectory, render

    defn = yaml.safe_load((ROOT / "data_manifests" / "sample.yaml").read_text())
    spec = {**defn["defaults"], **next(c for c in defn["clips"] if c["clip_id"] == clip_id)}
    scene = make_scene(spec["seed"])
    w2c = make_trajectory(spec["kind"], spec["n_frames"], scene, spec["seed"] + 1)
    K = intrinsics_matrix(spec["width"], spec["height"], spec["fov_deg"])
    shots = [render(scene, K, m, spec["width"], spec["height"]) for m in w2c[:frames]]
    c2w_rel = w2c[0][None] @ np.linalg.inv(w2c[:frames])
    return K, shots, c2w_rel, spec


def test_preview_matches_real_frames_of_the_bundled_sample() -> None:
    """First frame + exact depth rendered along the clip's own metric trajectory reproduces the
    real frames on the usable mask (clip resolution, first 8 frames)."""
    K, shots, c2w, spec = _sample_clip("syn_test_000", 8)
    pc = point_cloud(shots[0][0], shots[0][1], K)
    r = render_points(pc, torch.from_numpy(c2w), torch.from_numpy(K), spec["height"],
                      spec["width"], 1)
    m = usable_mask(r.visible, 3)
    real = torch.from_numpy(np.stack([s[0] for s in shots])).permute(0, 3, 1, 2).float() / 255
    psnr = masked_psnr(r.image, real, m)
    cov = coverage(m)
    print(f"preview PSNR per frame {psnr.tolist()}, coverage {cov.tolist()}")
    assert psnr[1:].min() >= 25.0
    assert float(cov.mean()) >= 0.5
    # the sampling defaults (2 x 2 splats, depth tolerance) close the cracks a forward move
    # opens between the points and keep the PSNR
    from pipeline.config import load_config

    sc = load_config([])["train"]["sampling"]
    rd = render_points(pc, torch.from_numpy(c2w), torch.from_numpy(K), spec["height"],
                       spec["width"], sc["splat_size"], depth_tol=sc["render_depth_tol"])
    md = usable_mask(rd.visible, sc["sns_edge_k"])
    psnr_d, cov_d = masked_psnr(rd.image, real, md), coverage(md)
    print(f"defaults: PSNR {psnr_d.tolist()}, coverage {cov_d.tolist()}")
    assert psnr_d[1:].min() >= 25.0 and float(cov_d.mean()) > float(cov.mean())
    # the depth map of frame 0 is reproduced exactly where visible
    torch.testing.assert_close(r.depth[0], torch.from_numpy(shots[0][1]))
    # a wrong scale (translations x2) is visibly worse: the test can fail
    wrong = c2w.copy()
    wrong[:, :3, 3] *= 2.0
    r2 = render_points(pc, torch.from_numpy(wrong), torch.from_numpy(K), spec["height"],
                       spec["width"], 1)
    m2 = usable_mask(r2.visible, 3)
    assert masked_psnr(r2.image, real, m2)[1:].mean() < psnr[1:].mean() - 3.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_renderer_on_gpu_matches_cpu() -> None:
    w, h, f = 64, 48, 50.0
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]])
    rng = np.random.default_rng(2)
    pc = point_cloud(rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                     rng.uniform(1, 4, (h, w)).astype(np.float32), K)
    c2w = torch.from_numpy(np.stack([pose(rot_y(2 * i), [0.05 * i, 0, 0.1 * i])
                                     for i in range(6)]))
    cpu = render_points(pc, c2w, torch.from_numpy(K), h, w, 2)
    gpu = render_points(pc.to("cuda"), c2w.cuda(), torch.from_numpy(K).cuda(), h, w, 2)
    assert torch.equal(cpu.visible, gpu.visible.cpu())
    torch.testing.assert_close(cpu.image, gpu.image.cpu())


def test_documented_trajectory_example_loads(tmp_path: Path) -> None:
    """The documented example is valid: a UI author can start from it."""
    text = (ROOT / "docs" / "training_and_sampling.md").read_text()
    block = text.split("**Trajectory format**", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    (tmp_path / "t.json").write_text(block)
    tr = tj.load_trajectory(tmp_path / "t.json")
    assert len(tr) == 16 and tr.focal_scale[-1] == pytest.approx(1.2)
    np.testing.assert_allclose(tr.c2w[-1, :3, 3], [0.3, 0, 0.6])
