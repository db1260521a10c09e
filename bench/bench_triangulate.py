"""Benchmark: the project's default triangulation config against COLMAP's defaults.

Runs, in one process and on the same clips, (a) the project's default triangulate settings
(``pipeline.settings.Triangulate``) and (b) a "COLMAP defaults" variant of it (8192 SIFT
features, full resolution, sequential matching with overlap 10 and quadratic overlap, RANSAC
verification, no filters beyond COLMAP's own), and
prints per config: CPU-seconds per triangulated frame (``time.process_time``, which counts every
thread of this process, plus ``getrusage`` of children), points, and the scale error, then the
ratios (b)/(a).

Scale error follows what align does with the output: per frame, the factor is the median of
``depth(u, v) / z_cam`` over its observations (ground-truth depth for the synthetic clips, the
Kinect depth for redkitchen); the clip factor is the median of the frame factors. Reported:
``clip_err`` = |clip factor / true - 1| and ``frame_err`` = mean |frame factor / true - 1|.

Usage (from the repository root):
    python bench/bench_triangulate.py [--threads 2] [--cache DIR] [--no-real] [--quick]
The synthetic clips are rendered once into ``--cache`` (default: a temp folder).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_accuracy import colmap_defaults, cpu_seconds  # noqa: E402  (one copy of each)

from pipeline.formats.frames import read_depth  # noqa: E402
from pipeline.settings import Triangulate, defaults  # noqa: E402
from pipeline.sfm.triangulation import select_frames, triangulate_clip  # noqa: E402

REAL_SEQ = ROOT.parent / "shared" / "data" / "rgbd" / "redkitchen-seq"
REAL_SCALE = 0.37
SYNTHETIC = [  # (clip_id, seed, trajectory kind, rel_scale)
    ("bench_forward", 11, "forward", 0.37),
    ("bench_pan", 23, "pan", 1.7),
    ("bench_orbit", 37, "orbit", 0.6),
]


def _sample(depth: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear depth at (u, v), pixel centres at +0.5; 0 when a neighbour is missing."""
    h, w = depth.shape
    x, y = u - 0.5, v - 0.5
    x0 = np.clip(np.floor(x).astype(int), 0, w - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, h - 2)
    fx, fy = np.clip(x - x0, 0, 1), np.clip(y - y0, 0, 1)
    q = [depth[y0, x0], depth[y0, x0 + 1], depth[y0 + 1, x0], depth[y0 + 1, x0 + 1]]
    out = q[0] * (1 - fx) * (1 - fy) + q[1] * fx * (1 - fy) + q[2] * (1 - fx) * fy + q[3] * fx * fy
    return np.where(np.min(q, axis=0) > 0, out, 0.0)


def scale_errors(row: dict[str, Any], df) -> dict[str, float]:
    true = float(row["true_scale"])
    factors = []
    for f, g in df.groupby("frame_idx"):
        d = _sample(read_depth(row, int(f)), g["u"].to_numpy(), g["v"].to_numpy())
        ok = d > 0
        if ok.sum() >= 5:
            factors.append(float(np.median(d[ok] / g["z_cam"].to_numpy()[ok])))
    factors = np.asarray(factors)
    return {
        "clip_err": float(abs(np.median(factors) / true - 1.0)),
        "frame_err": float(np.mean(np.abs(factors / true - 1.0))),
        "frames_measured": int(len(factors)),
    }


def real_row() -> dict[str, Any]:
    ids = sorted(int(p.name[6:12]) for p in REAL_SEQ.glob("frame-*.color.jpg"))
    w2c = []
    for i in ids:
        c2w = np.loadtxt(REAL_SEQ / f"frame-{i:06d}.pose.txt")
        R, t = c2w[:3, :3], c2w[:3, 3]
        w2c.append(np.hstack([R.T, (-R.T @ t)[:, None] * REAL_SCALE]).reshape(-1).tolist())
    return {
        "clip_id": "redkitchen", "split": "test", "source_type": "images", "video_path": None,
        "frame_paths": [str(REAL_SEQ / f"frame-{i:06d}.color.jpg") for i in ids],
        "depth_paths": [str(REAL_SEQ / f"frame-{i:06d}.depth.png") for i in ids],
        "depth_unit": 0.001, "timestamps_us": list(range(len(ids))),
        "intrinsics": [525 / 640, 525 / 480, 320 / 640, 240 / 480],
        "width": 640, "height": 480, "num_frames": len(ids), "w2c": w2c,
        "true_scale": 1 / REAL_SCALE, "url": "",
    }


def synthetic_rows(cache: Path, n_frames: int, width: int, height: int) -> list[dict[str, Any]]:
    from pipeline.synthetic.sample_data import render_clip

    rows = []
    for clip_id, seed, kind, rel in SYNTHETIC:
        marker = cache / f"{clip_id}_{n_frames}_{width}x{height}.json"
        if marker.exists():
            rows.append(json.loads(marker.read_text()))
            continue
        row = render_clip(cache / f"{width}x{height}_{n_frames}", clip_id, "test", seed, kind,
                          n_frames, width, height, rel)
        row.pop("metric_w2c")
        marker.write_text(json.dumps(row))
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--frames", type=int, default=16, help="frames per synthetic clip")
    ap.add_argument("--size", default="640x360", help="synthetic frame size WxH")
    ap.add_argument("--no-real", action="store_true", help="skip the redkitchen clip")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    cache = args.cache or Path(tempfile.gettempdir()) / "metric_align_bench_triangulate"
    cache.mkdir(parents=True, exist_ok=True)
    w, h = (int(x) for x in args.size.split("x"))
    rows = synthetic_rows(cache, args.frames, w, h)
    if not args.no_real and REAL_SEQ.is_dir():
        rows.append(real_row())
    base = defaults(Triangulate)
    configs = {"default": base, "colmap": colmap_defaults(base)}
    results: dict[str, dict[str, Any]] = {k: {} for k in configs}
    for row in rows:
        for name, cfg in configs.items():
            stats: dict[str, Any] = {}
            c0, t0 = cpu_seconds(), time.perf_counter()
            df = triangulate_clip(row, cfg, None, num_threads=args.threads, stats=stats)
            cpu, wall = cpu_seconds() - c0, time.perf_counter() - t0
            n_sel = len(select_frames(int(row["num_frames"]), cfg["frames"]))
            err = scale_errors(row, df)
            results[name][row["clip_id"]] = {
                "cpu_per_frame": cpu / n_sel, "wall": wall, "frames": n_sel,
                "points": stats["points"], "observations": stats["observations"], **err,
            }
            print(f"{name:8s} {row['clip_id']:14s} cpu/frame {cpu / n_sel:6.3f} s"
                  f"  wall {wall:6.1f} s"
                  f"  points {stats['points']:6d}  clip_err {100 * err['clip_err']:6.3f}%"
                  f"  frame_err {100 * err['frame_err']:6.3f}%", flush=True)
    print("\nper clip: cpu ratio colmap/default, error difference default - colmap (pp)")
    for clip in results["default"]:
        a, b = results["default"][clip], results["colmap"][clip]
        print(f"  {clip:14s} cpu x{b['cpu_per_frame'] / a['cpu_per_frame']:5.2f}"
              f"  points {a['points']}/{b['points']}"
              f"  clip_err {100 * (a['clip_err'] - b['clip_err']):+6.3f} pp"
              f"  frame_err {100 * (a['frame_err'] - b['frame_err']):+6.3f} pp")
    summary = {}
    for name, res in results.items():
        cpu = sum(r["cpu_per_frame"] * r["frames"] for r in res.values())
        frames = sum(r["frames"] for r in res.values())
        summary[name] = {
            "cpu_per_frame": cpu / frames,
            "points": int(sum(r["points"] for r in res.values())),
            "clip_err": float(np.mean([r["clip_err"] for r in res.values()])),
            "frame_err": float(np.mean([r["frame_err"] for r in res.values()])),
        }
    a, b = summary["default"], summary["colmap"]
    print("\nall clips (errors: mean over clips)")
    for name, s in summary.items():
        print(f"  {name:8s} cpu/frame {s['cpu_per_frame']:6.3f} s  points {s['points']:7d}"
              f"  clip_err {100 * s['clip_err']:6.3f}%  frame_err {100 * s['frame_err']:6.3f}%")
    print(f"  ratio    cpu colmap/default x{b['cpu_per_frame'] / a['cpu_per_frame']:.2f}"
          f"  points default/colmap {a['points'] / max(b['points'], 1):.2f}"
          f"  clip_err {100 * (a['clip_err'] - b['clip_err']):+.3f} pp"
          f"  frame_err {100 * (a['frame_err'] - b['frame_err']):+.3f} pp")
    if args.json:
        args.json.write_text(json.dumps({"clips": results, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
