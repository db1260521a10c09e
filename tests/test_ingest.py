"""Ingest: every bad input gives its own specific per-clip error while good clips go through;
real RealEstate10K pose files and the real 7-Scenes RGB-D sequence parse correctly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.formats.re10k import parse_pose_file
from pipeline.ledger import Ledger
from pipeline.runner import Runner
from pipeline.stage import ClipError
from tests.conftest import shared_path
from tests.helpers import cfg_for, pose_lines, rot_y, shard_of, write_clip


def _manifest(work) -> pd.DataFrame:
    return pd.read_parquet(work / "ingest")


def test_bad_inputs_each_get_a_specific_reason(tmp_path, ray_cluster):
    root, work = tmp_path / "data", tmp_path / "work"
    good = pose_lines(4)
    write_clip(root, "good_images", frames="images")
    write_clip(root, "good_video", frames="video")
    write_clip(root, "short_line", lines=[*good[:2], " ".join(good[2].split()[:10]), good[3]])
    write_clip(root, "bad_number", lines=[good[0], good[1].replace("0.5", "zz", 1), *good[2:]])
    write_clip(root, "ts_backwards", lines=[good[1], good[0], *good[2:]])
    skew = good[2].split()
    skew[7] = "1.5"  # r11: breaks orthonormality
    write_clip(root, "not_rotation", lines=[*good[:2], " ".join(skew), good[3]])
    write_clip(root, "count_mismatch", frames="images")
    next((root / "frames" / "test" / "count_mismatch").glob("*.png")).unlink()
    write_clip(root, "video_short", frames="video", lines=good)
    write_clip(root, "no_frames", frames=None)
    write_clip(root, "unreadable", frames="images")
    next((root / "frames" / "test" / "unreadable").glob("*.png")).write_bytes(b"not a png")
    write_clip(root, "bad id!", frames="images")
    write_clip(root, "dup", split="test")
    write_clip(root, "dup", split="train")
    # a video with fewer frames than poses
    (root / "test" / "video_short.txt").write_text(
        "https://x\n" + "\n".join(pose_lines(6)) + "\n"
    )

    summary = Runner(cfg_for(root, work, "shards.size=3")).run("ingest")
    failed = {c: f["reason"] for c, f in summary["failed"].items()}
    expect = {
        "short_line": "expected 19 numbers, got 10",
        "bad_number": "not a number",
        "ts_backwards": "timestamps not increasing",
        "not_rotation": "not orthonormal",
        "count_mismatch": "frame count 3 != pose count 4",
        "video_short": "frame count 4 != pose count 6",
        "no_frames": "no frames found for clip no_frames at",
        "unreadable": "unreadable frame",
        "bad id!": "not a safe file name",
        "dup": "duplicate clip id",
    }
    assert set(failed) == set(expect), failed
    for clip, text in expect.items():
        assert text in failed[clip], (clip, failed[clip])
    m = _manifest(work).set_index("clip_id")
    assert sorted(m.index) == ["good_images", "good_video"]
    assert m.loc["good_video", "source_type"] == "video"
    assert m.loc["good_images", "num_frames"] == 4
    assert (m.loc["good_images", "width"], m.loc["good_images", "height"]) == (32, 24)
    w2c = np.array(m.loc["good_images", "w2c"].tolist()).reshape(-1, 3, 4)
    np.testing.assert_allclose(w2c[2, :, :3], rot_y(4.0), atol=1e-8)
    np.testing.assert_allclose(w2c[3, :, 3], [0.15, 0.0, 0.3], atol=1e-8)
    assert summary["clips_in"] == len(expect) + 2


def test_path_traversal_in_clip_list_is_refused(tmp_path, ray_cluster):
    root, work = tmp_path / "data", tmp_path / "work"
    write_clip(root, "fine")
    lst = tmp_path / "clips.txt"
    lst.write_text("fine\n../../etc/passwd\n")
    summary = Runner(cfg_for(root, work, f"dataset.clip_list={lst}")).run("ingest")
    assert "not a safe file name" in summary["failed"]["../../etc/passwd"]["reason"]
    assert summary["kept"] == 1


def test_empty_dataset_is_a_clear_error(tmp_path, ray_cluster):
    (tmp_path / "data" / "test").mkdir(parents=True)
    with pytest.raises(ConfigError, match="has no clips"):
        Runner(cfg_for(tmp_path / "data", tmp_path / "work")).run("ingest")


def test_real_re10k_pose_files_parse():
    folder = shared_path("re10k_poses", "test")
    files = sorted(folder.glob("*.txt"))
    assert len(files) == 4
    for f in files:
        p = parse_pose_file(f, f.stem, 1e-3, 1e-6, 2)
        n = len(f.read_text().splitlines()) - 1
        assert p.w2c.shape == (n, 3, 4) and p.url.startswith("https://")
        assert np.all(np.diff(p.timestamps_us) > 0)
        assert 0.3 < p.intrinsics[0] < 1.0 and p.intrinsics[2] == pytest.approx(0.5)
        R = p.w2c[:, :, :3]
        np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape),
                                   atol=1e-5)


def test_real_re10k_without_frames_fails_every_clip_cleanly(tmp_path, ray_cluster):
    root = shared_path("re10k_poses")
    cfg = cfg_for(root, tmp_path / "work")
    summary = Runner(cfg).run("ingest")
    assert summary["clips_in"] == 4 and summary["kept"] == 0
    for clip, f in summary["failed"].items():
        assert f["reason"].startswith(f"no frames found for clip {clip} at ")


def test_malformed_file_reasons_name_the_line(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("url\n" + pose_lines(3)[0] + "\n1 2 3\n")
    with pytest.raises(ClipError, match="line 3: expected 19 numbers, got 3"):
        parse_pose_file(p, "c", 1e-3, 1e-6, 2)
    p.write_text("url\n" + pose_lines(1)[0] + "\n")
    with pytest.raises(ClipError, match="1 pose lines, need at least 2"):
        parse_pose_file(p, "c", 1e-3, 1e-6, 2)


def test_real_rgbd_sequence_ingests_with_known_scale(tmp_path, ray_cluster):
    seq = shared_path("rgbd", "redkitchen-seq")
    cfg = load_config(
        ["dataset=rgbd", f"dataset.root={seq}", f"paths.work_dir={tmp_path}",
         "dataset.clip_length=25", "dataset.relative_scale=0.5", "progress=false"]
    )
    summary = Runner(cfg).run("ingest")
    assert summary["clips_in"] == 4 and summary["kept"] == 4, summary["failed"]
    m = _manifest(tmp_path).sort_values("clip_id").iloc[0]
    assert m["clip_id"] == "redkitchen-seq_000000"
    assert (m["width"], m["height"], m["num_frames"]) == (640, 480, 25)
    np.testing.assert_allclose(m["intrinsics"], [525 / 640, 525 / 480, 0.5, 0.5])
    assert m["true_scale"] == pytest.approx(2.0) and m["depth_unit"] == pytest.approx(0.001)
    c2w = np.loadtxt(seq / "frame-000004.pose.txt")
    w2c = np.array(m["w2c"][1]).reshape(3, 4)
    np.testing.assert_allclose(w2c[:, :3], c2w[:3, :3].T, atol=1e-12)
    np.testing.assert_allclose(w2c[:, 3] * m["true_scale"], -c2w[:3, :3].T @ c2w[:3, 3],
                               atol=1e-12)
    assert m["depth_paths"][1].endswith("frame-000004.depth.png")


def test_frames_added_after_a_failure_are_picked_up(tmp_path, ray_cluster):
    """A clip that failed with `no frames found` must be retried once its frames appear (the pose
    file itself unchanged), and a video moved into place likewise (in the documented
    <video_id>/ folder without a split folder); untouched shards stay fresh."""
    root, work = tmp_path / "data", tmp_path / "work"
    write_clip(root, "a_ok", frames="images")
    write_clip(root, "b_late", frames="images")
    write_clip(root, "c_video", frames="video")
    late = root / "frames" / "test" / "b_late"
    late.rename(tmp_path / "held_back")
    (root / "video_clips" / "test" / "vid0" / "c_video.mp4").rename(tmp_path / "c_video.mp4")
    cfg = cfg_for(root, work, "shards.size=1")
    summary = Runner(cfg).run("ingest")
    assert set(summary["failed"]) == {"b_late", "c_video"}
    first = Ledger(work, "ingest").get(shard_of(work, "a_ok")).finished_at
    (tmp_path / "held_back").rename(late)
    # README layout <videos_root>/[<split>/][<video_id>/]<clip_id>.mp4: here no split folder
    (root / "video_clips" / "vidX").mkdir()
    (tmp_path / "c_video.mp4").rename(root / "video_clips" / "vidX" / "c_video.mp4")
    summary = Runner(cfg).run("ingest")
    assert summary["failed"] == {} and summary["kept"] == 3
    m = _manifest(work).set_index("clip_id")
    assert m.loc["c_video", "video_path"].endswith("video_clips/vidX/c_video.mp4")
    assert Ledger(work, "ingest").get(shard_of(work, "a_ok")).finished_at == first  # not redone


def test_rgbd_intrinsics_edited_in_place_make_the_clip_stale(tmp_path, ray_cluster):
    """Correcting camera-intrinsics.txt (or a pose) in place leaves the folder's mtime alone;
    the manifest must still be rebuilt with the new K, not kept as done and fresh."""
    import cv2

    seq = tmp_path / "seq"
    seq.mkdir()
    for i in range(2):
        cv2.imwrite(str(seq / f"frame-{i:06d}.color.png"), np.full((24, 32, 3), 100, np.uint8))
        cv2.imwrite(str(seq / f"frame-{i:06d}.depth.png"), np.full((24, 32), 1000, np.uint16))
        np.savetxt(seq / f"frame-{i:06d}.pose.txt", np.eye(4))
    intr = seq / "camera-intrinsics.txt"
    intr.write_text("30 0 16\n0 30 12\n0 0 1\n")
    cfg = load_config(["dataset=rgbd", f"dataset.root={seq}", f"paths.work_dir={tmp_path / 'w'}",
                       "dataset.clip_length=2", "progress=false"])
    Runner(cfg).run("ingest")
    assert _manifest(tmp_path / "w")["intrinsics"][0][0] == pytest.approx(30 / 32)
    intr.write_text("20 0 16\n0 20 12\n0 0 1\n")  # same folder, edited in place
    Runner(cfg).run("ingest")
    assert _manifest(tmp_path / "w")["intrinsics"][0][0] == pytest.approx(20 / 32)


def test_exif_rotated_jpeg_decodes_at_the_manifest_size(tmp_path):
    """Ingest measures frames as stored (IMREAD_UNCHANGED ignores EXIF orientation); the frame
    decoder must do the same, or a phone JPEG comes back transposed against width/height."""
    from PIL import Image

    from pipeline.formats.dataset import _image_size_checked
    from pipeline.formats.frames import read_frames

    path = tmp_path / "0.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(path, exif=exif.tobytes())
    w, h = _image_size_checked("c", [str(path)], "all")
    assert (w, h) == (32, 24)
    row = {"clip_id": "c", "num_frames": 1, "source_type": "images", "frame_paths": [str(path)]}
    assert read_frames(row)[0].shape == (h, w, 3)
