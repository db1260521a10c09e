"""The synthetic renderer and the bundled sample: geometry, conventions, determinism, files."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.formats.re10k import parse_pose_file
from pipeline.synthetic import scenes as syn
from pipeline.synthetic.sample_data import MARKER, generate_sample, render_clip


@pytest.fixture(scope="module")
def scene() -> syn.Scene:
    return syn.make_scene(7)


def _empty_room(seed: int) -> syn.Scene:
    s = syn.make_scene(seed)
    s.boxes, s.spheres = [], []
    return s


def _tilted_pose(scene: syn.Scene) -> np.ndarray:
    """A camera near the room centre, turned and pitched so depth varies across the image."""
    c = (scene.room_lo + scene.room_hi) / 2
    c[1] = -1.4
    return syn.look_w2c(c, np.array([0.5, 0.35, 1.0]))


def _unproject(K: np.ndarray, w2c: np.ndarray, depth: np.ndarray) -> np.ndarray:
    h, w = depth.shape
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    pix = np.stack([cols, rows, np.ones_like(cols)], -1).reshape(-1, 3)
    cam = (pix @ np.linalg.inv(K).T) * depth.reshape(-1, 1).astype(np.float64)
    R, t = w2c[:3, :3], w2c[:3, 3]
    return (cam - t) @ R  # R^T (X_cam - t)


def test_depth_is_camera_z_on_room_planes():
    """Unprojecting z-depth at pixel centres must land exactly on a wall (not with ray length)."""
    scene = _empty_room(3)
    K = syn.intrinsics_matrix(64, 48, 60.0)
    w2c = _tilted_pose(scene)
    _, depth = syn.render(scene, K, w2c, 64, 48)
    pts = _unproject(K, w2c, depth)
    dist = np.minimum(np.abs(pts - scene.room_lo), np.abs(pts - scene.room_hi)).min(axis=1)
    assert np.all(dist < 2e-5 * depth.max())
    assert np.all(pts > scene.room_lo - 1e-4) and np.all(pts < scene.room_hi + 1e-4)
    # and every wall seen is hit where it is, not a neighbour's plane: depth varies a lot here
    assert depth.max() / depth.min() > 1.5


def test_known_wall_point_projects_to_its_depth():
    """A wall point projected into the image has the depth read at that sub-pixel spot.

    On a plane, 1/z is affine in (u, v), so bilinear interpolation of inverse depth between
    pixel centres is exact; a half-pixel error in the centre convention would show up here.
    """
    scene = _empty_room(5)
    W, H = 80, 60
    K = syn.intrinsics_matrix(W, H, 60.0)
    w2c = syn.look_w2c(np.array([0.0, -1.5, 0.0]), np.array([0.3, 0.2, 1.0]))
    _, depth = syn.render(scene, K, w2c, W, H)
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(200):
        X = np.array([rng.uniform(-1.0, 1.0), rng.uniform(-2.0, -0.5), scene.room_hi[2]])
        Xc = w2c[:3, :3] @ X + w2c[:3, 3]
        u, v = (K @ Xc)[:2] / Xc[2]
        c0, r0 = int(np.floor(u - 0.5)), int(np.floor(v - 0.5))
        if not (0 <= c0 < W - 1 and 0 <= r0 < H - 1):
            continue
        patch = depth[r0 : r0 + 2, c0 : c0 + 2].astype(np.float64)
        if np.ptp(patch) > 0.2:  # straddles a wall corner
            continue
        fx, fy = u - 0.5 - c0, v - 0.5 - r0
        inv = 1 / patch
        top = inv[0, 0] * (1 - fx) + inv[0, 1] * fx
        bot = inv[1, 0] * (1 - fx) + inv[1, 1] * fx
        z = 1 / (top * (1 - fy) + bot * fy)
        assert z == pytest.approx(Xc[2], rel=1e-5)
        checked += 1
    assert checked > 50


def test_every_pixel_lies_on_a_surface(scene):
    """With objects: each unprojected pixel is on a wall, a box face or a sphere."""
    K = syn.intrinsics_matrix(64, 48, 60.0)
    w2c = syn.make_trajectory("orbit", 2, scene, 3)[0]
    _, depth = syn.render(scene, K, w2c, 64, 48)
    pts = _unproject(K, w2c, depth)
    tol = 2e-5 * float(depth.max())
    on = np.minimum(np.abs(pts - scene.room_lo), np.abs(pts - scene.room_hi)).min(axis=1) < tol
    n_room = on.sum()
    for b in scene.boxes:
        inside = np.all((pts > b.lo - tol) & (pts < b.hi + tol), axis=1)
        face = np.minimum(np.abs(pts - b.lo), np.abs(pts - b.hi)).min(axis=1) < tol
        on |= inside & face
    for s in scene.spheres:
        on |= np.abs(np.linalg.norm(pts - s.centre, axis=1) - s.radius) < tol
    assert on.all()
    assert n_room < on.size  # the orbit looks at an object, so some pixels are not walls


def test_render_is_deterministic_and_sane():
    K = syn.intrinsics_matrix(48, 36, 60.0)
    a = syn.make_scene(11)
    b = syn.make_scene(11)
    w2c = syn.make_trajectory("pan", 3, a, 2)[1]
    np.testing.assert_array_equal(w2c, syn.make_trajectory("pan", 3, b, 2)[1])
    rgb_a, d_a = syn.render(a, K, w2c, 48, 36)
    rgb_b, d_b = syn.render(b, K, w2c, 48, 36)
    assert rgb_a.tobytes() == rgb_b.tobytes() and d_a.tobytes() == d_b.tobytes()
    assert rgb_a.dtype == np.uint8 and rgb_a.shape == (36, 48, 3)
    assert d_a.dtype == np.float32 and d_a.shape == (36, 48)
    assert rgb_a.std() > 20  # textured, not flat
    other, _ = syn.render(syn.make_scene(12), K, w2c, 48, 36)
    assert other.tobytes() != rgb_a.tobytes()


@pytest.mark.parametrize("kind", ["forward", "pan", "orbit"])
def test_trajectory_stays_inside_room(scene, kind):
    poses = syn.make_trajectory(kind, 24, scene, 5)
    assert poses.shape == (24, 4, 4)
    R = poses[:, :3, :3]
    np.testing.assert_allclose(
        R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12
    )
    centres = np.stack([-p[:3, :3].T @ p[:3, 3] for p in poses])
    assert all(syn.camera_is_free(scene, c) for c in centres)
    assert np.all(centres > scene.room_lo + 0.3) and np.all(centres < scene.room_hi - 0.3)
    travel = np.linalg.norm(np.diff(centres, axis=0), axis=1).sum()
    assert 0.4 < travel < 2.5
    K = syn.intrinsics_matrix(32, 24, 60.0)
    depths = np.stack([syn.render_depth(scene, K, p, 32, 24) for p in poses])
    assert depths.min() >= syn.MIN_VIEW_DEPTH
    assert np.median(depths) >= syn.MIN_MEDIAN_DEPTH
    # smooth: no frame-to-frame jump bigger than a few times the mean step
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    assert steps.max() < 4 * steps.mean()


def test_unknown_trajectory_kind_is_rejected(scene):
    with pytest.raises(ValueError, match="unknown trajectory kind"):
        syn.make_trajectory("teleport", 4, scene, 0)


def test_render_clip_files_match_metric_poses(tmp_path):
    rel_scale = 0.37
    row = render_clip(
        tmp_path,
        "c1",
        "train",
        seed=21,
        kind="forward",
        n_frames=4,
        width=40,
        height=30,
        rel_scale=rel_scale,
        fov_deg=55.0,
    )
    pose = parse_pose_file(
        tmp_path / "train" / "c1.txt", "c1", rotation_tol=1e-9, intrinsics_tol=0.0, min_frames=4
    )
    metric = row["metric_w2c"]
    assert pose.url == "synthetic://c1" == row["url"]
    assert np.all(np.diff(pose.timestamps_us) > 0)
    assert pose.timestamps_us.tolist() == row["timestamps_us"]
    np.testing.assert_allclose(pose.w2c[:, :, :3], metric[:, :3, :3], atol=1e-12)
    np.testing.assert_allclose(pose.w2c[:, :, 3] / rel_scale, metric[:, :3, 3], atol=1e-12)
    np.testing.assert_allclose(np.array(row["w2c"]).reshape(-1, 3, 4), pose.w2c, atol=1e-12)
    assert row["true_scale"] == pytest.approx(1 / rel_scale)
    K = syn.intrinsics_matrix(40, 30, 55.0)
    np.testing.assert_allclose(pose.intrinsics, [K[0, 0] / 40, K[1, 1] / 30, 0.5, 0.5])
    assert row["source_type"] == "images" and row["depth_unit"] == 1.0
    assert row["num_frames"] == 4 and len(row["frame_paths"]) == len(row["depth_paths"]) == 4

    from pipeline.formats.frames import read_depth, read_frames

    scene = syn.make_scene(21)
    rgb, depth = syn.render(scene, K, metric[2], 40, 30)
    np.testing.assert_array_equal(read_frames(row, [2])[2], rgb)
    np.testing.assert_array_equal(read_depth(row, 2), depth)
    assert row["frame_paths"][2].endswith(f"frames/train/c1/{row['timestamps_us'][2]}.png")


def test_render_clip_row_fits_manifest_schema(tmp_path):
    import pyarrow as pa

    from pipeline.schema import MANIFEST

    row = render_clip(tmp_path, "c2", "test", 4, "pan", 2, 16, 12, 2.0)
    row = {k: v for k, v in row.items() if k in MANIFEST.names}
    table = pa.Table.from_pylist([row], schema=MANIFEST)
    assert table.num_rows == 1 and table.column("true_scale")[0].as_py() == 0.5


def test_generate_sample_is_idempotent_and_keyed_by_definition(tmp_path):
    defn = {
        "defaults": {"n_frames": 2, "width": 16, "height": 12},
        "clips": [
            {"clip_id": "a", "split": "train", "seed": 1, "kind": "forward", "rel_scale": 0.5},
            {"clip_id": "b", "split": "test", "seed": 2, "kind": "orbit", "rel_scale": 4.0},
        ],
    }
    root = tmp_path / "sample"
    truth = generate_sample(defn, root)
    assert truth == {"a": 2.0, "b": 0.25}
    assert (root / "train" / "a.txt").is_file() and (root / "test" / "b.txt").is_file()
    assert len(list((root / "frames" / "test" / "b").glob("*.png"))) == 2
    stamp = (root / MARKER).stat().st_mtime_ns
    assert generate_sample(defn, root) == truth
    assert (root / MARKER).stat().st_mtime_ns == stamp  # nothing regenerated
    defn["clips"][1]["rel_scale"] = 2.0
    assert generate_sample(defn, root)["b"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["sample"]  # no temp dirs left behind


def test_bundled_definition_parses():
    from pipeline.synthetic.sample_data import _clip_specs, load_definition

    specs = _clip_specs(load_definition("data_manifests/sample.yaml"))
    assert len(specs) >= 6
    assert {s["split"] for s in specs} == {"train", "test"}
    assert {s["kind"] for s in specs} == {"forward", "pan", "orbit"}
    scales = [s["rel_scale"] for s in specs]
    assert len(set(scales)) == len(scales) and min(scales) <= 0.3 and max(scales) >= 3


def test_frames_give_plenty_of_sift_features(scene):
    """Textures are for SIFT: a 320x240 frame must yield well over a thousand keypoints."""
    pycolmap = pytest.importorskip("pycolmap")
    K = syn.intrinsics_matrix(320, 240, 60.0)
    rgb, _ = syn.render(scene, K, syn.make_trajectory("forward", 2, scene, 1)[0], 320, 240)
    gray = (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
    opts = pycolmap.FeatureExtractionOptions()
    opts.num_threads = 1
    extractor = pycolmap.FeatureExtractor.create(opts, pycolmap.Device.cpu)
    keypoints = extractor.extract(pycolmap.Bitmap.from_array(gray))[0]
    assert len(keypoints) > 1500


def test_generate_sample_in_parallel_matches_serial(tmp_path):
    defn = {
        "defaults": {"n_frames": 2, "width": 16, "height": 12, "kind": "pan", "split": "train"},
        "clips": [
            {"clip_id": "p", "seed": 3, "rel_scale": 0.5},
            {"clip_id": "q", "seed": 4, "rel_scale": 1.5},
        ],
    }
    generate_sample(defn, tmp_path / "serial")
    generate_sample(defn, tmp_path / "parallel", workers=2)
    for rel in ["train/q.txt", "metric_c2w.json", "ground_truth.json"]:
        assert (tmp_path / "serial" / rel).read_bytes() == (
            tmp_path / "parallel" / rel
        ).read_bytes()
    a = sorted((tmp_path / "serial" / "frames").rglob("*.png"))
    b = sorted((tmp_path / "parallel" / "frames").rglob("*.png"))
    assert len(a) == 4 and [x.read_bytes() for x in a] == [x.read_bytes() for x in b]


def test_sample_definition_errors_are_specific(tmp_path):
    base = {"clip_id": "x", "split": "train", "seed": 1, "kind": "pan", "n_frames": 2}
    with pytest.raises(ValueError, match=r"missing \['height', 'rel_scale', 'width'\]"):
        generate_sample({"clips": [base]}, tmp_path / "s")
    clip = {**base, "width": 8, "height": 6, "rel_scale": 1.0, "fps": 30}
    with pytest.raises(ValueError, match=r"unknown keys \['fps'\]"):
        generate_sample({"clips": [clip]}, tmp_path / "s")
    with pytest.raises(ValueError, match="bad sample parameters"):
        render_clip(tmp_path, "y", "train", 1, "pan", 2, 8, 6, rel_scale=-1.0)
    assert not (tmp_path / "s").exists()
