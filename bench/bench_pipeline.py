"""Whole-pipeline benchmark on N synthetic sample clips, with a projection to RealEstate10K.

Runs ingest -> curate once (fresh work dir, local Ray) and prints per stage: clips/s, frames/s,
CPU-seconds per frame (all shard workers, threads included), GPU-seconds per frame where a GPU
was used, and the peak memory of a worker; then projects wall time and cost for all of
RealEstate10K (~66k clips x ~150 frames) on a stated node. The projection assumes CPU stages
scale with cores (shards are independent) and depth with GPUs; it is an estimate, not a promise.

    python bench/bench_pipeline.py --clips 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.io import read_json  # noqa: E402
from pipeline.ledger import DONE, Ledger  # noqa: E402
from pipeline.registry import default_chain  # noqa: E402
from pipeline.runner import Runner  # noqa: E402

KINDS = ("forward", "pan", "orbit")


def write_definition(path: Path, n_clips: int, n_frames: int, width: int, height: int) -> None:
    base = OmegaConf.to_container(OmegaConf.load(ROOT / "data_manifests" / "sample.yaml"))
    base["defaults"].update({"n_frames": n_frames, "width": width, "height": height})
    base["clips"] = [
        {
            "clip_id": f"bench_{i:04d}",
            "split": "train",
            "seed": 5000 + i,
            "kind": KINDS[i % len(KINDS)],
            "rel_scale": round(0.2 * 1.35 ** (i % 12), 4),
        }
        for i in range(n_clips)
    ]
    OmegaConf.save(OmegaConf.create(base), path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--work-dir", default=None, help="default: a temp dir, removed afterwards")
    ap.add_argument("--node-cores", type=int, default=128)
    ap.add_argument("--node-gpus", type=int, default=8)
    ap.add_argument("--node-cost-per-hour", type=float, default=30.0,
                    help="USD per hour for the stated node (on-demand 8-GPU node, assumption)")
    ap.add_argument("--gpu-images-per-s", type=float, default=None,
                    help="Depth Anything throughput per GPU (from bench_depth.py on a GPU); "
                         "without it the depth projection uses this run's measured figure")
    ap.add_argument("--re10k-clips", type=int, default=66000)
    ap.add_argument("--re10k-frames", type=int, default=150)
    ap.add_argument("overrides", nargs="*", help="extra pipeline overrides, e.g. depth=da2_metric")
    args = ap.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_pipeline_"))
    definition = work / "bench_sample.yaml"
    work.mkdir(parents=True, exist_ok=True)
    write_definition(definition, args.clips, args.frames, args.width, args.height)
    cfg = load_config(
        [f"paths.work_dir={work}", f"dataset.definition={definition}", "progress=false",
         *args.overrides]
    )
    t0 = time.time()
    runner = Runner(cfg)
    summary = runner.run("curate")
    total_wall = time.time() - t0

    frames_total = args.clips * args.frames
    print()
    print(f"bench: {args.clips} clips x {args.frames} frames at {args.width}x{args.height}, "
          f"{os.cpu_count()} CPUs here, depth={cfg['depth']['backend']}")
    hdr = (f"{'stage':<12}{'wall s':>8}{'clips/s':>9}{'frames/s':>10}{'CPU s/frame':>13}"
           f"{'GPU s/frame':>13}{'peak MB/worker':>16}")
    print(hdr)
    n_frames_all = args.re10k_clips * args.re10k_frames
    shard_ids = sorted(read_json(work / "plan.json")["shards"])
    projection = []
    for name in default_chain():
        st = runner.report["stages"].get(name, {})
        entries = [
            e for e in Ledger(work, name).entries(shard_ids).values()
            if e is not None and e.status == DONE
        ]
        wall = st.get("wall_s") or 1e-9
        cpu = sum(e.cpu_s or 0.0 for e in entries)
        gpu = sum(e.stats.get("gpu_s", 0.0) for e in entries)
        peak = max((e.peak_rss_mb or 0.0 for e in entries), default=0.0)
        cpu_pf, gpu_pf = cpu / frames_total, gpu / frames_total
        print(f"{name:<12}{wall:>8.1f}{args.clips / wall:>9.2f}{frames_total / wall:>10.1f}"
              f"{cpu_pf:>13.4f}{(f'{gpu_pf:.4f}' if gpu else '-'):>13}{peak:>16.0f}")
        if name == "depth" and (args.gpu_images_per_s or cfg["depth"]["backend"] != "sensor"):
            # Depth Anything on the node's GPUs: the given per-GPU rate, else this run's
            per_gpu = args.gpu_images_per_s or (frames_total / wall)
            hours = n_frames_all / (per_gpu * args.node_gpus) / 3600
        else:
            hours = cpu_pf * n_frames_all / args.node_cores / 3600
        projection.append((name, hours))
    print(f"{'total':<12}{total_wall:>8.1f}   kept {summary['kept']}/{summary['clips_in']}")
    print()
    print(f"projection for RealEstate10K ({args.re10k_clips} clips x {args.re10k_frames} frames) "
          f"on one node with {args.node_cores} cores + {args.node_gpus} GPUs "
          f"at ${args.node_cost_per_hour:.0f}/h:")
    total_h = 0.0
    for name, hours in projection:
        total_h += hours
        print(f"  {name:<12}{hours:>9.1f} h   ${hours * args.node_cost_per_hour:>9.0f}")
    print(f"  {'total':<12}{total_h:>9.1f} h   ${total_h * args.node_cost_per_hour:>9.0f}"
          "   (stages run one after another; CPU and GPU stages could overlap)")
    if args.gpu_images_per_s:
        print(f"  depth projected at {args.gpu_images_per_s:g} images/s per GPU (given, "
              "not measured in this run)")
    elif cfg["depth"]["backend"] == "sensor":
        print("  note: depth=sensor here; Depth Anything on GPUs: pass depth=da2_metric on a GPU "
              "node or --gpu-images-per-s from bench/bench_depth.py")
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
