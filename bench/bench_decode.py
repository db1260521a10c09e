"""Benchmark: frames decoded from a source video at pose timestamps against pre-dumped JPEGs.

Builds a 1280x720 H.264 source video (30 fps, a keyframe every 2 s, as YouTube serves them)
from the real captures in ``../shared/data/rgbd`` (307 frames of moving cameras, upscaled), and
the same frames as JPEG files (quality 95, as a frame dump would store them). Then reads, for
RealEstate10K-like clips (25 poses each, every ``--step``-th video frame, clips back to back
in the video), every clip's frames at the triangulation working size (long side 640, area
interpolation) both ways:

- ``video``: ``pipeline.formats.frames.iter_frames`` on ``source_type=source_video`` rows
  (timestamp -> nearest frame from the packets, exact seek, decode, RGB, resize), clips in time
  order as the triangulate stage orders them;
- ``jpeg``: the same rows as image folders (``cv2.imread`` + resize, the frame-folder path).

Prints frames/s (wall) and CPU-seconds per frame (``time.process_time``: every thread of the
process, FFmpeg's decoder threads included) for each, and their ratios, as JSON.

Usage (from the repository root):
    python bench/bench_decode.py [--step 5] [--clips 10] [--repeat 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.formats import frames as frame_io  # noqa: E402
from pipeline.formats.source_video import SourceVideoReader  # noqa: E402
from pipeline.sfm.triangulation import working_size  # noqa: E402

FPS = 30
GOP_FRAMES = 60  # a keyframe every 2 s
SIZE = (1280, 720)
JPEG_QUALITY = 95
WORK_LONG_SIDE = 640
CRF = "23"


def source_frames() -> list[np.ndarray]:
    """Every colour frame of the shared RGB-D captures, in sequence order, BGR at ``SIZE``."""
    base = ROOT.parent / "shared" / "data" / "rgbd"
    if not base.is_dir():
        sys.exit(f"needs the shared data at {base}")
    out = []
    for seq in sorted(p for p in base.iterdir() if p.is_dir()):
        for p in sorted(seq.glob("frame-*.color.*")):
            out.append(cv2.resize(cv2.imread(str(p)), SIZE, interpolation=cv2.INTER_CUBIC))
    return out


def write_h264(frames: list[np.ndarray], path: Path) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": CRF, "g": str(GOP_FRAMES), "preset": "medium"}
        for img in frames:
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def rows(video: Path, jpeg_dir: Path, n_frames: int, step: int, clips: int
         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    span = 25 * step
    video_rows, jpeg_rows = [], []
    for c in range(clips):
        start = c * span
        if start + span > n_frames:
            break
        idx = list(range(start, start + span, step))
        ts = [int(round(i * 1e6 / FPS)) for i in idx]
        base = {"clip_id": f"clip{c}", "timestamps_us": ts, "num_frames": len(idx)}
        video_rows.append({**base, "source_type": "source_video", "video_path": str(video),
                           "frame_paths": []})
        jpeg_rows.append({**base, "source_type": "images", "video_path": None,
                          "frame_paths": [str(jpeg_dir / f"{i:06d}.jpg") for i in idx]})
    return video_rows, jpeg_rows


def measure(rows_: list[dict[str, Any]], size: tuple[int, int]) -> dict[str, float]:
    SourceVideoReader.close_all()  # every repeat opens and probes the video again
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for row in sorted(rows_, key=frame_io.decode_order):
        for _, rgb in frame_io.iter_frames(row, None, size):
            n += int(rgb.shape[0] > 0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"frames": n, "wall_s": wall, "cpu_s": cpu, "frames_per_s": n / wall,
            "cpu_s_per_frame": cpu / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--step", type=int, default=5, help="video frames between two poses")
    ap.add_argument("--clips", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs per side")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    frames = source_frames()
    size = working_size(*SIZE, WORK_LONG_SIDE)
    with tempfile.TemporaryDirectory() as tmp:
        video, jpeg_dir = Path(tmp) / "source.mp4", Path(tmp) / "jpeg"
        jpeg_dir.mkdir()
        write_h264(frames, video)
        for i, img in enumerate(frames):
            cv2.imwrite(str(jpeg_dir / f"{i:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY,
                                                             JPEG_QUALITY])
        vrows, jrows = rows(video, jpeg_dir, len(frames), args.step, args.clips)
        result: dict[str, Any] = {
            "source": {"frames": len(frames), "size": SIZE, "fps": FPS, "gop": GOP_FRAMES,
                      "codec": f"h264 crf {CRF}", "bytes": video.stat().st_size},
            "clips": len(vrows), "poses_per_clip": 25, "step": args.step,
            "working_size": size, "repeat": args.repeat,
        }
        for name, rs in (("video", vrows), ("jpeg", jrows)):
            runs = [measure(rs, size) for _ in range(args.repeat)]
            result[name] = min(runs, key=lambda r: r["wall_s"])
        v, j = result["video"], result["jpeg"]
        result["ratio_video_over_jpeg"] = {
            "frames_per_s": v["frames_per_s"] / j["frames_per_s"],
            "cpu_s_per_frame": v["cpu_s_per_frame"] / j["cpu_s_per_frame"]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
