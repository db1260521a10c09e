"""Source videos decoded at the pose timestamps (``dataset.source_videos``).

Real RealEstate10K frames are written into a video at a known frame rate; pose timestamps are
``frame_index / fps`` in microseconds. Decoding at those timestamps must give back exactly the
frames written there (compared by pixels against every frame of the clip, so a seek that
snapped to a keyframe or landed one frame off fails), each frame decoded once when clips of a
video come in time order, and a clip whose timestamps fall outside its video fails alone.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.errors import ClipError
from pipeline.formats import frames as frame_io
from pipeline.formats import source_video as sv
from pipeline.runner import Runner
from tests.conftest import shared_path
from tests.helpers import cfg_for, pose_lines

FPS = 30
PATTERN = "^[A-Za-z0-9_-]{1,64}$"


def _real_frames(n: int = 25) -> list[np.ndarray]:
    clip = shared_path("re10k_frames", "frames", "test", "0bf152ef84195293")
    return [cv2.imread(str(p)) for p in sorted(clip.glob("*.jpg"))[:n]]


def write_video(path: Path, frames_bgr: list[np.ndarray], fourcc: str = "mp4v") -> None:
    """``frames_bgr`` at ``FPS``: mp4v has a keyframe every 12 frames (seeks are tested),
    MJPG in .avi keeps the pixels closest to the source."""
    h, w = frames_bgr[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (w, h))
    for f in frames_bgr:
        vw.write(f)
    vw.release()


def ts_of(i: int) -> int:
    return int(round(i / FPS * 1e6))


@pytest.mark.parametrize("url, vid", [
    ("https://www.youtube.com/watch?v=QShWPZxTDoE", "QShWPZxTDoE"),
    ("https://www.youtube.com/watch?feature=x&v=-aldZQifF2U", "-aldZQifF2U"),
    ("https://youtu.be/_ca03xP_KUU", "_ca03xP_KUU"),
])
def test_video_id_from_url(url: str, vid: str) -> None:
    assert sv.video_id_from_url(url, "c", PATTERN) == vid


@pytest.mark.parametrize("url", [
    "https://www.youtube.com/watch?v=../../etc/passwd",
    "https://www.youtube.com/watch?v=a/b",
    "https://www.youtube.com/watch?v=..",
    "https://www.youtube.com/watch?list=abc",
])
def test_unsafe_or_missing_video_id_is_a_clip_error(url: str) -> None:
    with pytest.raises(ClipError, match="safe file name|names no video"):
        sv.video_id_from_url(url, "c", PATTERN)


def test_decoding_at_timestamps_returns_the_frames_written_there(tmp_path: Path) -> None:
    frames = _real_frames()
    video = tmp_path / "vid.mp4"
    write_video(video, frames)
    table = sv.probe(str(video), "c")
    assert len(table.pts) == len(frames) and len(table.keyframes) < len(frames)
    # timestamps a little off the frame times still pick the nearest frame
    jitter = [ts_of(i) + (1 if i % 2 else -1) * int(0.4e6 / FPS) for i in range(len(frames))]
    assert sv.frames_at(table, jitter, "c", str(video)).tolist() == list(range(len(frames)))
    row = {"clip_id": "c", "source_type": "source_video", "video_path": str(video),
           "timestamps_us": jitter, "num_frames": len(frames)}
    wanted = [5, 13, 14, 23]  # between keyframes (0, 12, 24): exact seeks, not snapped
    got = frame_io.read_frames(row, wanted)
    rgb = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB).astype(np.int16) for f in frames]
    for k in wanted:
        diff = [float(np.abs(got[k].astype(np.int16) - f).mean()) for f in rgb]
        assert int(np.argmin(diff)) == k, (k, diff)
        assert diff[k] < 5.0 and diff[k] < 0.5 * sorted(diff)[1], (k, diff)
    # the same frame as a plain sequential decode (OpenCV) of the video
    cap = cv2.VideoCapture(str(video))
    for _ in range(14):
        cap.read()
    ok, bgr = cap.read()
    cap.release()
    assert ok
    assert np.abs(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.int16)
                  - got[14].astype(np.int16)).mean() < 1.0
    # resized to the working size on the way out
    small = frame_io.read_frames(row, [14], (144, 80))[14]
    assert small.shape == (80, 144, 3)


def test_clips_of_one_video_in_time_order_decode_each_frame_once(tmp_path: Path) -> None:
    frames = _real_frames()
    video = tmp_path / "vid.mp4"
    write_video(video, frames)
    sv.SourceVideoReader.close_all()
    rows = [{"clip_id": f"c{k}", "source_type": "source_video", "video_path": str(video),
             "timestamps_us": [ts_of(i) for i in range(a, a + 6)], "num_frames": 6}
            for k, a in enumerate((14, 1, 7))]
    for row in sorted(rows, key=frame_io.decode_order):
        frame_io.read_frames(row)
    reader = sv.SourceVideoReader.shared(str(video), "c")
    # one pass over frames 0..19, each decoded once (0: the keyframe before the first wanted
    # frame); the second seek jumps to the keyframe at 12, which the decoder would reach anyway
    assert reader.decoded == 20, (reader.decoded, reader.seeks)
    assert reader.seeks == 2


def test_timestamps_outside_the_video_fail_that_clip_alone(tmp_path: Path, ray_cluster) -> None:
    root, work = tmp_path / "data", tmp_path / "work"
    frames = _real_frames(12)
    write_video(root / "source_videos" / "vidA_000001.mp4", frames)
    lines = pose_lines(12)

    def pose_file(clip: str, stamps: list[int]) -> None:
        body = [" ".join([str(t), *ln.split()[1:]]) for t, ln in zip(stamps, lines)]
        (root / "test").mkdir(parents=True, exist_ok=True)
        (root / "test" / f"{clip}.txt").write_text(
            "https://www.youtube.com/watch?v=vidA_000001\n" + "\n".join(body) + "\n")

    pose_file("inside", [ts_of(i) for i in range(12)])
    pose_file("beyond", [ts_of(i) for i in range(6, 18)])  # the video has 12 frames
    (root / "test" / "traversal.txt").write_text(
        "https://www.youtube.com/watch?v=../inside\n" + "\n".join(lines) + "\n")
    (root / "test" / "no_video.txt").write_text(
        "https://www.youtube.com/watch?v=notThere\n" + "\n".join(lines) + "\n")
    summary = Runner(cfg_for(root, work, f"dataset.source_videos={root / 'source_videos'}",
                             "shards.size=1")).run("ingest")
    failed = {c: f["reason"] for c, f in summary["failed"].items()}
    assert set(failed) == {"beyond", "traversal", "no_video"}, failed
    assert f"pose timestamp {ts_of(12)} us (pose 7 of the clip)" in failed["beyond"]
    assert "12 frames covering 0..366667 us" in failed["beyond"]
    assert "not a safe file name" in failed["traversal"]
    assert "source video notThere not found" in failed["no_video"]
    m = pd.read_parquet(work / "ingest").set_index("clip_id")
    assert list(m.index) == ["inside"]
    assert m.loc["inside", "source_type"] == "source_video"
    assert m.loc["inside", "video_path"].endswith("vidA_000001.mp4")
    assert (m.loc["inside", "width"], m.loc["inside", "height"]) == (576, 320)


def test_threads_decoding_one_video_get_their_own_frames(tmp_path: Path) -> None:
    """The depth stage decodes clips on several threads: each has its own reader."""
    import threading

    video = tmp_path / "vid.mp4"
    write_video(video, _real_frames())
    rows = [{"clip_id": f"c{a}", "source_type": "source_video", "video_path": str(video),
             "timestamps_us": [ts_of(i) for i in range(a, a + 8)], "num_frames": 8}
            for a in (0, 9, 16)]
    expected = {r["clip_id"]: frame_io.read_frames(r) for r in rows}
    got: dict[int, dict] = {}

    def work(k: int) -> None:  # half the threads in reverse order: seeks back and forth
        got[k] = {r["clip_id"]: frame_io.read_frames(r) for r in (rows[::-1] if k % 2 else rows)}

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [0, 1, 2, 3]
    for clips in got.values():
        for cid, frames in clips.items():
            assert frames.keys() == expected[cid].keys()
            assert all(np.array_equal(frames[i], expected[cid][i]) for i in frames), cid


def test_damaged_video_is_a_clip_error(tmp_path: Path) -> None:
    video = tmp_path / "vid.mp4"
    write_video(video, _real_frames(6))
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    row = {"clip_id": "c", "source_type": "source_video", "video_path": str(video),
           "timestamps_us": [ts_of(i) for i in range(6)], "num_frames": 6}
    with pytest.raises(ClipError, match="video"):
        frame_io.read_frames(row)
