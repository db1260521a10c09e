"""Depth stage throughput vs. the raw batched model forward on the same device.

The stage's images/s covers everything a shard costs (Parquet in, frame decoding, the image
processor, forward, bicubic upsampling to full resolution, sampling, Parquet out); the raw
figure is ``model(pixel_values)`` on already-preprocessed batches already on the device. Their
ratio shows how well decoding/preprocessing hide behind inference (target >= 0.9).

Offline by default: a randomly initialised checkpoint with the real ViT-S/B/L shapes is built in a
temporary directory (the hub is not reachable here); ``--model`` takes a real checkpoint (hub id
or directory) instead. CUDA is used when available.

    python bench/bench_depth.py --arch vits --frames 8            # CPU here: a few minutes
    python bench/bench_depth.py --arch vitl --frames 256 --batch-size 32   # on a GPU machine
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_config  # noqa: E402
from pipeline.schema import MANIFEST, OBSERVATIONS  # noqa: E402
from pipeline.stage import ShardTask  # noqa: E402
from stages import depth as depth_stage  # noqa: E402
from tests.helpers import save_random_checkpoint  # noqa: E402


def make_shard(root: Path, n_clips: int, n_frames: int, w: int, h: int, obs_per_frame: int,
               source: str) -> tuple[Path, Path]:
    """Clips of textured random frames (JPEG files or one mp4 each) + random observations."""
    rng = np.random.default_rng(0)
    rows, recs = [], []
    for c in range(n_clips):
        cid = f"clip{c:03d}"
        d = root / cid
        d.mkdir(parents=True, exist_ok=True)
        base = cv2.resize(rng.integers(0, 255, (h // 8, w // 8, 3), np.uint8), (w, h))
        imgs = [np.roll(base, 3 * i, axis=1) for i in range(n_frames)]
        paths: list[str] = []
        video = None
        if source == "video":
            video = str(d / "clip.mp4")
            vw = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 30, (w, h))
            for im in imgs:
                vw.write(im)
            vw.release()
        else:
            for i, im in enumerate(imgs):
                paths.append(str(d / f"{i:05d}.jpg"))
                cv2.imwrite(paths[-1], im)
        rows.append({
            "clip_id": cid, "split": "test", "source_type": source if source == "video"
            else "images", "video_path": video, "frame_paths": paths, "depth_paths": [],
            "depth_unit": 1.0, "timestamps_us": list(range(1, n_frames + 1)),
            "intrinsics": [0.8, 1.4, 0.5, 0.5], "width": w, "height": h,
            "num_frames": n_frames, "w2c": [[1.0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]] * n_frames,
            "true_scale": None, "url": "",
        })
        for f in range(n_frames):
            for _ in range(obs_per_frame):
                recs.append((cid, f, len(recs), rng.uniform(0, w), rng.uniform(0, h)))
    cols = list(zip(*recs))
    n = len(recs)
    obs = pa.Table.from_arrays(
        [pa.array(cols[0]), pa.array(cols[1], pa.int32()), pa.array(cols[2], pa.int64()),
         pa.array(cols[3], pa.float32()), pa.array(cols[4], pa.float32()),
         pa.array(np.ones(n)), pa.array(np.full(n, 3), pa.int32()),
         pa.array(np.zeros(n), pa.float32()), pa.array(np.full(n, 5.0), pa.float32())],
        schema=OBSERVATIONS)
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST), root / "manifest.parquet")
    pq.write_table(obs, root / "obs.parquet")
    return root / "manifest.parquet", root / "obs.parquet"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="vits", choices=["tiny", "vits", "vitb", "vitl"])
    ap.add_argument("--model", default=None, help="real checkpoint (hub id or dir) instead")
    ap.add_argument("--frames", type=int, default=8, help="frames per clip")
    ap.add_argument("--clips", type=int, default=2)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--obs", type=int, default=2000, help="observations per frame")
    ap.add_argument("--batch-size", type=int, default=None, help="default: depth config")
    ap.add_argument("--workers", type=int, default=None, help="prefetch threads")
    ap.add_argument("--source", default="images", choices=["images", "video"])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu"])
    ap.add_argument("--preprocess", default="auto", choices=["auto", "processor", "device"])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch

    tmp = Path(tempfile.mkdtemp(prefix="bench_depth_"))
    model = args.model or save_random_checkpoint(str(tmp / "ckpt"), args.arch, "metric", 20)
    over = ["depth=da2_metric", f"depth.model={model}", f"paths.work_dir={tmp / 'work'}",
            f"depth.device={args.device}", "depth.preview=false",
            f"depth.preprocess={args.preprocess}"]
    if args.batch_size:
        over.append(f"depth.batch_size={args.batch_size}")
    if args.workers:
        over.append(f"depth.prefetch_workers={args.workers}")
    cfg = load_config(over)
    dcfg = cfg["depth"]
    manifest, obs = make_shard(tmp / "data", args.clips, args.frames, args.width, args.height,
                               args.obs, args.source)
    predictor = depth_stage.local_predictor(dcfg)
    dev = predictor.device
    n_img = args.clips * args.frames
    bs = predictor.batch_size
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    # raw forward on preprocessed, device-resident batches (same batch size and dtype)
    rgb = cv2.cvtColor(cv2.imread(str(next((tmp / "data").rglob("*.jpg"))))
                       if args.source == "images" else
                       np.zeros((args.height, args.width, 3), np.uint8), cv2.COLOR_BGR2RGB)
    t = time.perf_counter()
    pv = predictor.preprocess(rgb)
    t_pre = time.perf_counter() - t
    one = predictor.to_device(pv[None])
    if predictor.mode == "device":
        one = predictor._device_preprocess(one)
    shape = tuple(one.shape[-2:])
    batches = [one.expand(min(bs, n_img - i), -1, -1, -1).contiguous()
               for i in range(0, n_img, bs)]
    predictor.forward(batches[0])  # warm-up (kernels, allocator)
    sync()

    def raw_images_per_s() -> float:
        t0 = time.perf_counter()
        for b in batches:
            predictor.forward(b)
        sync()
        return n_img / (time.perf_counter() - t0)

    raw = [raw_images_per_s() for _ in range(args.repeats)]

    # the stage, end to end (raw and stage alternate so a shared machine's load hits both)
    stage = []
    model_share = []
    for r in range(args.repeats):
        raw.append(raw_images_per_s())
        task = ShardTask(
            stage="depth", shard_id=f"shard-{r:05d}", clip_ids=[], cfg=cfg,
            inputs={"ingest": str(manifest), "triangulate": str(obs)},
            output=str(tmp / "work" / "depth" / f"shard-{r:05d}.parquet"), work_dir=str(tmp),
        )
        t = time.perf_counter()
        res = depth_stage.run_model_shard(task, predictor, dcfg)
        sync()
        stage.append(n_img / (time.perf_counter() - t))
        model_share.append(res.stats["model_s"] * stage[-1] / n_img)
        assert res.failures == {}, res.failures

    raw_ips, stage_ips = max(raw), max(stage)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"device: {name}  model: {args.model or args.arch + ' (random weights)'}  "
          f"dtype: {dcfg['dtype'] if dev.type == 'cuda' else dcfg['cpu_dtype']}")
    print(f"frames: {args.clips} clips x {args.frames} @ {args.width}x{args.height} "
          f"({args.source}) -> model input {shape[1]}x{shape[0]}, batch {bs}, "
          f"{dcfg['prefetch_workers']} prefetch threads, {args.obs} obs/frame, "
          f"preprocess on {predictor.mode}")
    print(f"preprocess (1 frame, 1 thread, cold): {1000 * t_pre:.1f} ms")
    print(f"raw batched forward : {raw_ips:8.2f} images/s")
    print(f"depth stage (shard) : {stage_ips:8.2f} images/s")
    print(f"ratio stage/raw     : {stage_ips / raw_ips:8.3f}   (target >= 0.9)")
    print(f"share of the stage's wall time spent queueing/collecting model work: "
          f"{max(model_share):.3f}")


if __name__ == "__main__":
    main()
