"""Every GPU figure in one run: depth throughput/parity/OOM, SVD step, triangulation.

Why one script: a borrowed accelerator often comes with a few minutes of device time in all,
start-up included, so every measurement has to run from one prepared command that cannot lose
what it measured. The script therefore

- writes the whole JSON of figures again after every single measurement (atomically), so a
  run stopped by its caller's timeout still leaves everything measured so far;
- stops itself cleanly before ``--budget-s`` (each measurement checks what is left against its
  estimate; a ``SIGALRM`` at the budget interrupts a measurement that runs over), marking what
  it skipped;
- goes through the project's own code paths (``stages.depth.run_model_shard``,
  ``pipeline.depth.model.DepthPredictor``/``load_depth_model``,
  ``trainer.loop.diffusion_loss``, ``trainer.svd_backbone.SVDBackbone``,
  ``pipeline.sfm.triangulation.triangulate_clip``), with randomly initialised weights at the real
  architectures (Depth Anything V2 Metric Large = ViT-L; Stable Video Diffusion's full-size
  UNet, temporal VAE and ViT-H/14 CLIP image encoder), built from config objects: no download.

``--quick`` runs the same code paths with tiny shapes on whatever device is there (CPU here) in
well under a minute; ``tests/test_gpu_suite.py`` runs it.

    python bench/gpu_suite.py --quick                                  # CPU, < 1 min
    python bench/gpu_suite.py --out work/gpu_suite.json --budget-s 420 # on the GPU machine

Sections (``--sections`` picks some, in this order of priority): ``depth`` (raw forward bf16 and
fp32 and the whole stage for each batch size and resolution, ratio stage/raw, GPU memory),
``depth_parity`` (bf16 vs fp32; on-device preprocessing vs the image processor), ``depth_oom``
(a real CUDA out-of-memory under a capped memory fraction, halved by ``DepthPredictor.launch``;
simulated on CPU), ``svd_train``, ``builtin_train``, ``triangulate`` (clips/s for 1..16
workers: Ray tasks when Ray is importable, else a process pool), ``depth_opts`` (eager vs SDPA
attention, channels-last, TF32, ``torch.compile``, CUDA graphs, prefetch threads).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SECTIONS = ("depth", "depth_parity", "depth_oom", "svd_train", "builtin_train", "triangulate",
            "depth_opts")

#: Shapes per mode. ``full`` is the full measurement; ``quick`` exercises the same code paths
#: with tiny shapes so a CPU run takes seconds.
PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "arch": "vitl", "input_size": 518,
        "resolutions": [(640, 360), (1280, 720)], "batches": [8, 16, 32, 64],
        "raw_repeats": 3, "stage_clips": 16, "stage_frames": 16, "obs_per_frame": 2000,
        "parity_frames": 8, "parity_points": 2000,
        "oom_batch": 64, "oom_headroom": 2.5,
        "opt_batch": 32, "opt_resolution": (1280, 720), "prefetch_workers": [2, 4, 8],
        "svd": [(320, 512, 16), (576, 1024, 14)], "svd_steps": 2,
        "builtin_steps": 5,
        "tri_clips": 16, "tri_unique": 4, "tri_frames": 10, "tri_size": (480, 270),
        "tri_workers": [1, 2, 4, 8, 16],
    },
    "quick": {
        "arch": "tiny", "input_size": 56,
        "resolutions": [(96, 54)], "batches": [2, 4],
        "raw_repeats": 1, "stage_clips": 2, "stage_frames": 4, "obs_per_frame": 50,
        "parity_frames": 2, "parity_points": 200,
        "oom_batch": 8, "oom_headroom": 2.5,
        "opt_batch": 4, "opt_resolution": (96, 54), "prefetch_workers": [2],
        "svd": [(16, 16, 4)], "svd_steps": 1,
        "builtin_steps": 1,
        "tri_clips": 2, "tri_unique": 1, "tri_frames": 4, "tri_size": (320, 180),
        "tri_workers": [1, 2],
    },
}

#: Rough seconds each measurement needs at full size on an H200 (quick: a tenth); a measurement
#: starts only when at least this much budget is left.
ESTIMATE_S = {
    "depth_setup": 60, "depth_raw": 8, "depth_stage": 10, "depth_parity": 15, "depth_oom": 20,
    "svd_setup": 40, "svd_step": 25, "builtin": 25, "tri_render": 30, "tri_run": 40,
    "opt": 15, "compile": 150, "cudagraphs": 200,
}


class BudgetExceeded(BaseException):
    """Raised by the alarm at the budget; a BaseException so per-measurement handlers
    (which record ``Exception``s as that measurement's error) do not swallow it."""


class Suite:
    """Figures, the budget and the JSON file they are written to after every measurement."""

    def __init__(self, out: Path, budget_s: float, quick: bool):
        self.out = out
        self.t0 = time.monotonic()
        self.budget_s = float(budget_s)
        self.quick = quick
        self.scale = 0.1 if quick else 1.0
        self.results: dict[str, Any] = {"meta": {}}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def allows(self, what: str) -> bool:
        return self.left() > ESTIMATE_S[what] * self.scale

    def save(self) -> None:
        from pipeline.io import write_json_atomic

        self.results["meta"]["elapsed_s"] = round(time.monotonic() - self.t0, 2)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.results, self.out)


# ---------------------------------------------------------------------- device helpers
def _torch() -> Any:
    import torch

    return torch


def sync(device: Any) -> None:
    torch = _torch()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: Any) -> None:
    torch = _torch()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_mb(device: Any) -> float | None:
    """Peak GPU memory allocated since the last ``reset_peak`` (None on CPU)."""
    torch = _torch()
    if torch.device(device).type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def free_memory(device: Any) -> None:
    gc.collect()
    if _torch().device(device).type == "cuda":
        _torch().cuda.empty_cache()


def rel_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Relative difference |a - b| / |b| over points finite in both (median, p99, max)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b) & (np.abs(b) > 0)
    r = np.abs(a[ok] - b[ok]) / np.abs(b[ok])
    if not len(r):
        return {"n": 0, "median": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {"n": int(len(r)), "median": float(np.median(r)), "p99": float(np.quantile(r, 0.99)),
            "max": float(r.max())}


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


# ---------------------------------------------------------------------- depth
class DepthBench:
    """One random checkpoint at the real architecture, loaded once through the stage's loader;
    predictors of the stage's own class share it."""

    def __init__(self, P: dict[str, Any], tmp: Path, device: str):
        from pipeline.config import load_config
        from pipeline.depth.model import load_depth_model
        from tests.helpers import save_random_checkpoint

        self.P, self.tmp = P, tmp
        ckpt = save_random_checkpoint(str(tmp / "ckpt"), P["arch"], "metric", 20,
                                      input_size=P["input_size"])
        self.cfg = load_config(["depth=da2_metric", f"depth.model={ckpt}",
                                f"paths.work_dir={tmp / 'work'}", "depth.preview=false"])
        self.dcfg = self.cfg["depth"]
        self.model, self.processor = load_depth_model(ckpt, float(self.dcfg["max_depth"]))
        self.device = device
        self.stage_dtype = self.dcfg["dtype"] if self.device == "cuda" else self.dcfg["cpu_dtype"]
        self.params_m = round(sum(p.numel() for p in self.model.parameters()) / 1e6, 1)
        self.shards: dict[tuple[int, int], tuple[Path, Path]] = {}

    def predictor(self, dtype: str, batch: int, preprocess: str | None = None) -> Any:
        from pipeline.depth.model import DepthPredictor

        return DepthPredictor(self.model, self.processor, self.device, dtype,
                              float(self.dcfg["max_depth"]), batch,
                              preprocess or self.dcfg["preprocess"])

    def shard(self, res: tuple[int, int]) -> tuple[Path, Path]:
        """A shard of textured JPEG frames + random observations (bench_depth's generator)."""
        from bench_depth import make_shard

        if res not in self.shards:
            root = self.tmp / f"data_{res[0]}x{res[1]}"
            self.shards[res] = make_shard(root, self.P["stage_clips"], self.P["stage_frames"],
                                          res[0], res[1], self.P["obs_per_frame"], "images")
        return self.shards[res]

    def frames(self, res: tuple[int, int], n: int) -> list[np.ndarray]:
        import cv2

        self.shard(res)
        paths = sorted((self.tmp / f"data_{res[0]}x{res[1]}").rglob("*.jpg"))
        return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
                for p in (paths * (n // len(paths) + 1))[:n]]

    def input_batch(self, pred: Any, res: tuple[int, int], batch: int) -> Any:
        """A device-resident preprocessed batch (one frame repeated), as the model sees it."""
        one = pred.to_device(pred.preprocess(self.frames(res, 1)[0])[None])
        if pred.mode == "device":
            one = pred._device_preprocess(one)
        return one.expand(batch, -1, -1, -1).contiguous()

    def raw(self, dtype: str, batch: int, res: tuple[int, int],
            forward: Callable[[Any], Any] | None = None,
            transform: Callable[[Any], Any] | None = None) -> dict[str, Any]:
        """Images/s of the raw batched forward (after one warm-up), and its peak memory."""
        pred = self.predictor(dtype, batch)
        x = self.input_batch(pred, res, batch)
        if transform is not None:
            x = transform(x)
        fwd = forward or pred.forward
        fwd(x)
        reset_peak(self.device)
        n = int(self.P["raw_repeats"])
        t = time.perf_counter()
        for _ in range(n):
            fwd(x)
        sync(self.device)
        dt = time.perf_counter() - t
        return {"images_per_s": round(n * batch / dt, 3), "peak_mem_mb": peak_mb(self.device),
                "model_input_hw": list(x.shape[-2:])}

    def stage(self, batch: int, res: tuple[int, int], tag: str,
              dcfg: dict[str, Any] | None = None) -> dict[str, Any]:
        """Images/s of ``stages.depth.run_model_shard`` on a whole shard (decode, preprocess,
        forward, upsample, sample, Parquet), at the stage's configured dtype."""
        from pipeline.stage import ShardTask
        from stages import depth as depth_stage

        dcfg = dcfg or self.dcfg
        manifest, obs = self.shard(res)
        pred = self.predictor(self.stage_dtype, batch)
        out = self.tmp / "work" / "depth" / f"shard-{tag}.parquet"
        task = ShardTask(stage="depth", shard_id=f"shard-{tag}", clip_ids=[], cfg=self.cfg,
                         inputs={"ingest": str(manifest), "triangulate": str(obs)},
                         output=str(out), work_dir=str(self.tmp))
        reset_peak(self.device)
        t = time.perf_counter()
        res_ = depth_stage.run_model_shard(task, pred, dcfg)
        sync(self.device)
        dt = time.perf_counter() - t
        if res_.failures:
            raise RuntimeError(f"depth stage failed clips: {res_.failures}")
        return {"images_per_s": round(res_.stats["frames"] / dt, 3),
                "peak_mem_mb": peak_mb(self.device), "oom_halvings": pred.n_oom,
                "frames": res_.stats["frames"], "valid_fraction":
                round(res_.stats["valid"] / max(res_.stats["obs"], 1), 4)}

    def items(self, pred: Any, res: tuple[int, int], n: int, points: int) -> list[Any]:
        from pipeline.depth.model import Item

        rng = np.random.default_rng(1)
        out = []
        for i, rgb in enumerate(self.frames(res, n)):
            h, w = rgb.shape[:2]
            out.append(Item(("parity", i), pred.preprocess(rgb), (h, w),
                            rng.uniform(0, w, points), rng.uniform(0, h, points)))
        return out


def run_depth(suite: Suite, P: dict[str, Any], db: DepthBench) -> None:
    sec = suite.results.setdefault("depth", {})
    sec.update(arch=P["arch"], params_m=db.params_m, device=db.device,
               stage_dtype=db.stage_dtype, preprocess=db.predictor("float32", 1).mode,
               prefetch_workers=int(db.dcfg["prefetch_workers"]), raw=[], stage=[])
    raw_cache: dict[tuple[Any, ...], dict[str, Any]] = {}
    dtypes = ["bfloat16", "float32"]
    for res in P["resolutions"]:
        # warm-up of the stage's path (kernels, allocator, frame files in the page cache)
        db.stage(P["batches"][0], res, f"warm-{res[0]}")
        for bs in P["batches"]:
            for dtype in dtypes:
                if not suite.allows("depth_raw"):
                    sec["raw"].append({"res": f"{res[0]}x{res[1]}", "batch": bs, "dtype": dtype,
                                       "skipped": "budget"})
                    continue
                pred = db.predictor(dtype, bs)
                shape = tuple(db.input_batch(pred, res, 1).shape[-2:])
                key = (shape, dtype, bs)
                try:
                    if key not in raw_cache:
                        raw_cache[key] = db.raw(dtype, bs, res)
                    row = dict(raw_cache[key])
                except Exception as exc:  # noqa: BLE001 - recorded, the suite goes on
                    row = {"error": _err(exc)}
                    free_memory(db.device)
                sec["raw"].append({"res": f"{res[0]}x{res[1]}", "batch": bs, "dtype": dtype,
                                   **row})
                suite.save()
            if not suite.allows("depth_stage"):
                sec["stage"].append({"res": f"{res[0]}x{res[1]}", "batch": bs,
                                     "skipped": "budget"})
                continue
            try:
                row = db.stage(bs, res, f"{res[0]}-{bs}")
                raw = next((r for r in sec["raw"] if r["res"] == f"{res[0]}x{res[1]}"
                            and r["batch"] == bs and r["dtype"] == db.stage_dtype
                            and "images_per_s" in r), None)
                if raw:
                    row["ratio_stage_raw"] = round(row["images_per_s"] / raw["images_per_s"], 3)
            except Exception as exc:  # noqa: BLE001
                row = {"error": _err(exc)}
                free_memory(db.device)
            sec["stage"].append({"res": f"{res[0]}x{res[1]}", "batch": bs, **row})
            suite.save()
    ok = [r for r in sec["stage"] if "images_per_s" in r]
    if ok:
        best = max(ok, key=lambda r: r["images_per_s"])
        sec["best_stage"] = {k: best[k] for k in ("res", "batch", "images_per_s")
                             if k in best} | {"ratio_stage_raw": best.get("ratio_stage_raw")}
    sec["status"] = "ok"


def run_depth_parity(suite: Suite, P: dict[str, Any], db: DepthBench) -> None:
    """bf16 vs fp32 depth at sampled points; on-device preprocessing vs the image processor."""
    torch = _torch()
    sec = suite.results.setdefault("depth_parity", {})
    res = P["resolutions"][0]
    n, k = P["parity_frames"], P["parity_points"]
    fp32 = db.predictor("float32", n)
    ref = fp32.run(db.items(fp32, res, n, k))
    bf16 = db.predictor("bfloat16", n)
    low = bf16.run(db.items(bf16, res, n, k))
    sec["bf16_vs_fp32"] = rel_stats(np.concatenate([s for s, _ in low]),
                                    np.concatenate([s for s, _ in ref]))
    sec["bf16_vs_fp32"]["preprocess"] = fp32.mode
    suite.save()
    dev = db.predictor("float32", n, "device")
    proc = db.predictor("float32", n, "processor")
    p = db.processor
    grey = []
    for rgb in db.frames(res, n):
        a = torch.from_numpy(proc.preprocess(rgb))
        b = dev._device_preprocess(dev.to_device(dev.preprocess(rgb)[None]))[0].float().cpu()
        std = torch.tensor(p.image_std).view(3, 1, 1)
        grey.append((a - b).abs().mul(std).div(float(p.rescale_factor)).numpy().ravel())
    g = np.concatenate(grey)
    d_dev = dev.run(db.items(dev, res, n, k))
    d_proc = proc.run(db.items(proc, res, n, k))
    sec["device_vs_processor"] = {
        "pixel_grey_levels": {"mean": float(g.mean()), "p99": float(np.quantile(g, 0.99)),
                              "max": float(g.max())},
        "depth_rel": rel_stats(np.concatenate([s for s, _ in d_dev]),
                               np.concatenate([s for s, _ in d_proc])),
    }
    sec["frames"], sec["points_per_frame"], sec["res"] = n, k, f"{res[0]}x{res[1]}"
    sec["status"] = "ok"


@contextlib.contextmanager
def memory_cap(device: str, limit_bytes: int) -> Iterator[float]:
    """Cap this process's CUDA caching allocator at ``limit_bytes`` (a real OOM above it)."""
    torch = _torch()
    total = torch.cuda.get_device_properties(0).total_memory
    frac = min(1.0, max(limit_bytes / total, 1e-3))
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(frac)
    try:
        yield frac
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def run_depth_oom(suite: Suite, P: dict[str, Any], db: DepthBench) -> None:
    """An oversized batch through ``DepthPredictor.launch``: a real CUDA OOM under a capped
    allocator (the stage's halving must take it and still return every frame's samples); on
    CPU the OOM is simulated by the forward, which runs the same halving code."""
    torch = _torch()
    sec = suite.results.setdefault("depth_oom", {})
    res, big = P["resolutions"][0], P["oom_batch"]
    small = max(1, big // 8)
    ref_pred = db.predictor(db.stage_dtype, small)
    items = db.items(ref_pred, res, big, 64)
    free_memory(db.device)
    reset_peak(db.device)
    ref = ref_pred.run(items)
    pred = db.predictor(db.stage_dtype, big)
    if db.device == "cuda":
        base = torch.cuda.memory_allocated()
        extra = torch.cuda.max_memory_allocated() - base
        # the cap leaves room for ~headroom x the reference batch; if part of the peak does not
        # grow with the batch and the big batch still fits, retry with a tighter cap
        for headroom in (P["oom_headroom"], 1.2):
            pred = db.predictor(db.stage_dtype, big)
            limit = int(base + headroom * extra)
            with memory_cap(db.device, limit) as frac:
                out = pred.run(items)
            if pred.n_oom:
                break
        sec.update(real_cuda_oom=True, memory_fraction=round(frac, 5), headroom=headroom,
                   limit_mb=round(limit / 2**20, 1), batch_peak_extra_mb=round(extra / 2**20, 1),
                   reference_batch=small)
    else:
        fits = max(1, int(small * P["oom_headroom"]))

        def forward(x: Any) -> Any:
            if x.shape[0] > fits:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated on CPU)")
            return pred.forward(x)

        out = pred.run(items, forward=forward)
        sec.update(real_cuda_oom=False, simulated_fit=fits, reference_batch=small)
    got = np.concatenate([s for s, _ in out])
    want = np.concatenate([s for s, _ in ref])
    sec.update(start_batch=big, final_batch=pred.batch_size, halvings=pred.n_oom,
               frames_in=len(items), frames_out=len(out),
               complete=len(out) == len(items) and bool(np.isfinite(got).all()),
               rel_diff_vs_reference=rel_stats(got, want))
    sec["status"] = "ok" if pred.n_oom > 0 and sec["complete"] else "failed: no halving seen"


def run_depth_opts(suite: Suite, P: dict[str, Any], db: DepthBench) -> None:
    """Speed-ups a strong engineer would try, each against the same baseline (raw bf16 forward
    at ``opt_batch``; prefetch threads on the whole stage). Each records its figure or error."""
    torch = _torch()
    sec = suite.results.setdefault("depth_opts", {"variants": {}})
    res, bs = tuple(P["opt_resolution"]), P["opt_batch"]
    dtype = db.stage_dtype if db.device == "cuda" else "bfloat16"
    sec.update(res=f"{res[0]}x{res[1]}", batch=bs, dtype=dtype)
    base = db.raw(dtype, bs, res)
    sec["baseline"] = base
    sec["attn_implementation"] = db.model.backbone.config._attn_implementation
    suite.save()
    var = sec["variants"]

    def record(name: str, fn: Callable[[], dict[str, Any]], est: str = "opt",
               stage: bool = False) -> None:
        if not suite.allows(est):
            var[name] = {"skipped": "budget"}
            return
        try:
            row = fn()
            if "images_per_s" in row:  # a stage run is compared with the raw forward
                key = "ratio_stage_raw" if stage else "speedup"
                row[key] = round(row["images_per_s"] / base["images_per_s"], 3)
            var[name] = row
        except Exception as exc:  # noqa: BLE001
            var[name] = {"error": _err(exc)}
        free_memory(db.device)
        suite.save()

    def attn(impl: str) -> dict[str, Any]:
        # the attention lives in the DINOv2 backbone (its config picks SDPA by default);
        # the DepthAnything wrapper itself refuses set_attn_implementation("sdpa")
        bb = db.model.backbone
        old = bb.config._attn_implementation
        bb.set_attn_implementation(impl)
        try:
            return db.raw(dtype, bs, res)
        finally:
            bb.set_attn_implementation(old)

    def channels_last() -> dict[str, Any]:
        db.model.to(memory_format=torch.channels_last)
        try:
            return db.raw(dtype, bs, res,
                          transform=lambda x: x.contiguous(memory_format=torch.channels_last))
        finally:
            db.model.to(memory_format=torch.contiguous_format)

    def tf32() -> dict[str, Any]:
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            row = db.raw("float32", bs, res)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
        fp32 = db.raw("float32", bs, res)
        row["fp32_images_per_s"] = fp32["images_per_s"]
        return row

    def compiled(mode: str | None) -> dict[str, Any]:
        pred = db.predictor(dtype, bs)
        model = torch.compile(db.model, mode=mode)
        x = db.input_batch(pred, res, bs)

        def fwd(t: Any) -> Any:
            with torch.inference_mode(), torch.autocast(
                device_type=pred.device.type, dtype=pred.dtype, enabled=pred.autocast
            ):
                return model(pixel_values=t).predicted_depth.float()

        t = time.perf_counter()
        y = fwd(x)
        sync(db.device)
        compile_s = time.perf_counter() - t
        ref = pred.forward(x)
        row = db.raw(dtype, bs, res, forward=fwd)
        row["compile_s"] = round(compile_s, 1)
        row["rel_diff_vs_eager"] = rel_stats(y.float().cpu().numpy(), ref.cpu().numpy())
        return row

    def prefetch(n: int) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            d = copy.deepcopy(db.dcfg)
            d["prefetch_workers"] = n
            return db.stage(bs, res, f"prefetch{n}", dcfg=d)
        return go

    record("attention_eager", lambda: attn("eager"))
    record("attention_sdpa", lambda: attn("sdpa"))
    record("channels_last", channels_last)
    if db.device == "cuda":
        record("tf32_fp32", tf32)
    base_stage = None
    for n in P["prefetch_workers"]:
        record(f"stage_prefetch_{n}", prefetch(n), stage=True)
        row = var[f"stage_prefetch_{n}"]
        if "images_per_s" in row:
            base_stage = base_stage or row["images_per_s"]
            row["vs_first"] = round(row["images_per_s"] / base_stage, 3)
    if db.device == "cuda" or not suite.quick:
        record("torch_compile", lambda: compiled(None), "compile")
        record("torch_compile_cudagraphs", lambda: compiled("reduce-overhead"), "cudagraphs")
    else:
        var["torch_compile"] = {"skipped": "quick mode on CPU (compilation alone takes minutes)"}
    sec["status"] = "ok"


# ---------------------------------------------------------------------- training
def svd_modules(quick: bool, device: str) -> tuple[Any, Any, Any]:
    """SVD img2vid UNet / temporal VAE / ViT-H/14 CLIP image encoder at their published sizes
    (random weights, built directly on the device), or tiny ones for ``--quick``."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch = _torch()
    with torch.device(device):
        if quick:
            unet = UNetSpatioTemporalConditionModel(
                in_channels=8, out_channels=4,
                down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
                block_out_channels=(32, 64), addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=24, layers_per_block=1,
                cross_attention_dim=16, num_attention_heads=(2, 4), num_frames=4,
            )
            vae = AutoencoderKLTemporalDecoder(
                down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                block_out_channels=(32, 32), layers_per_block=1, latent_channels=4,
            )
            enc = CLIPVisionModelWithProjection(CLIPVisionConfig(
                hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                image_size=16, patch_size=8, projection_dim=16,
            ))
        else:
            # diffusers' defaults for this class are the released img2vid UNet config
            unet = UNetSpatioTemporalConditionModel()
            vae = AutoencoderKLTemporalDecoder(
                down_block_types=("DownEncoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                sample_size=768, scaling_factor=0.18215,
            )
            enc = CLIPVisionModelWithProjection(CLIPVisionConfig(
                hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                num_attention_heads=16, image_size=224, patch_size=14, projection_dim=1024,
                hidden_act="gelu",
            ))
    return unet, vae, enc


def synthetic_batch(b: int, f: int, h: int, w: int) -> dict[str, Any]:
    """Random video in [-1, 1] and the Plücker maps of a forward-moving camera."""
    torch = _torch()
    from trainer.plucker import plucker_embedding

    g = torch.Generator().manual_seed(0)
    K = torch.tensor([[0.8 * w, 0, w / 2], [0, 0.8 * w, h / 2], [0, 0, 1.0]], dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(f, 1, 1)
    c2w[:, 2, 3] = torch.linspace(0, 1, f, dtype=torch.float64)
    pl = plucker_embedding(K.expand(f, 3, 3), c2w, h, w).float()
    return {"video": torch.rand(b, f, 3, h, w, generator=g) * 2 - 1,
            "plucker": pl[None].expand(b, -1, -1, -1, -1).contiguous(),
            "cond_index": torch.zeros(b, dtype=torch.long)}


def time_train_steps(model: Any, tcfg: dict[str, Any], batch: dict[str, Any], device: str,
                     steps: int) -> dict[str, Any]:
    """One warm-up + ``steps`` optimizer steps through ``trainer.loop.diffusion_loss`` (the
    training loop's own loss, autocast and clipping), timed; peak memory over the timed ones."""
    torch = _torch()
    from trainer.loop import _autocast, build_noise_scheduler, diffusion_loss, step_generator

    dev = torch.device(device)
    sched = build_noise_scheduler(tcfg)
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=float(tcfg["lr"]))
    model.train()
    loss = float("nan")

    def one(i: int) -> float:
        opt.zero_grad(set_to_none=True)
        with _autocast(dev, str(tcfg["mixed_precision"])):
            lo = diffusion_loss(model, sched, batch, step_generator(0, i, 0, 0), tcfg, dev)
        lo.backward()
        torch.nn.utils.clip_grad_norm_(params, float(tcfg["max_grad_norm"]))
        opt.step()
        return float(lo.detach())

    one(0)
    sync(dev)
    reset_peak(dev)
    t = time.perf_counter()
    for i in range(steps):
        loss = one(i + 1)
    sync(dev)
    dt = (time.perf_counter() - t) / steps
    b = int(batch["video"].shape[0])
    return {"step_s": round(dt, 4), "samples_per_s": round(b / dt, 3),
            "peak_mem_mb": peak_mb(dev), "loss": loss}


def run_svd_train(suite: Suite, P: dict[str, Any], device: str) -> None:
    from pipeline.config import load_config
    from trainer.svd_backbone import SVDBackbone

    sec = suite.results.setdefault("svd_train", {"runs": []})
    tcfg = load_config(["train=svd_320x512"])["train"]
    tcfg["svd"]["gradient_checkpointing"] = False  # toggled per run below
    t = time.perf_counter()
    unet, vae, enc = svd_modules(suite.quick, device)
    model = SVDBackbone(unet, vae, enc, tcfg["svd"]).to(device)
    sec["build_s"] = round(time.perf_counter() - t, 1)
    sec["params_m"] = {k: round(sum(p.numel() for p in m.parameters()) / 1e6, 1)
                       for k, m in (("unet", unet), ("vae", vae), ("image_encoder", enc),
                                    ("camera_adapter", model.camera))}
    sec["mixed_precision"] = tcfg["mixed_precision"]
    suite.save()
    for h, w, f in P["svd"]:
        for ckpt_on in (True, False):
            row: dict[str, Any] = {"res": f"{h}x{w}", "frames": f, "batch": 1,
                                   "gradient_checkpointing": ckpt_on}
            if not suite.allows("svd_step"):
                sec["runs"].append({**row, "skipped": "budget"})
                continue
            if ckpt_on:
                unet.enable_gradient_checkpointing()
            else:
                unet.disable_gradient_checkpointing()
            batch = None
            try:
                batch = synthetic_batch(1, f, h, w)
                row.update(time_train_steps(model, tcfg, batch, device, P["svd_steps"]))
            except Exception as exc:  # noqa: BLE001 - an OOM at 576x1024 is a figure too
                row["error"] = _err(exc)
            del batch
            free_memory(device)
            sec["runs"].append(row)
            suite.save()
    del model, unet, vae, enc
    free_memory(device)
    sec["status"] = "ok"


def run_builtin_train(suite: Suite, P: dict[str, Any], device: str) -> None:
    from pipeline.config import load_config
    from trainer.model import BuiltinBackbone

    sec = suite.results.setdefault("builtin_train", {})
    # quick: the default (32x32) config with few frames, so one CPU step takes about a second
    over = ["train.data.num_frames=4", "train.batch_size=1"] if suite.quick else [
        "train=builtin_256"]
    tcfg = load_config(over)["train"]
    h, w = tcfg["data"]["resolution"]
    f, b = int(tcfg["data"]["num_frames"]), int(tcfg["batch_size"])
    model = BuiltinBackbone(tcfg["builtin"]).to(device)
    sec.update(res=f"{h}x{w}", frames=f, batch=b, config=" ".join(over),
        params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 2))
    sec.update(time_train_steps(model, tcfg, synthetic_batch(b, f, h, w), device,
                                P["builtin_steps"]))
    del model
    free_memory(device)
    sec["status"] = "ok"


# ---------------------------------------------------------------------- triangulation
def _triangulate_one(row: dict[str, Any], tcfg: dict[str, Any]) -> dict[str, Any]:
    """One clip in one worker, one COLMAP thread: CPU seconds and observations (or the error)."""
    from pipeline.sfm.triangulation import triangulate_clip

    c0 = time.process_time()
    try:
        n_obs, err = len(triangulate_clip(row, tcfg, None, num_threads=1)), None
    except Exception as exc:  # noqa: BLE001 - a clip failure is reported, not fatal
        n_obs, err = 0, _err(exc)
    return {"cpu_s": time.process_time() - c0, "obs": n_obs, "error": err}


def _warm(_: int) -> int:
    """Start-up of a worker (imports pycolmap and the stage), kept out of the timings."""
    import stages.triangulate  # noqa: F401

    return os.getpid()


def _render(args: tuple[Any, ...]) -> dict[str, Any]:
    from pipeline.synthetic.sample_data import render_clip

    row = render_clip(*args)
    row.pop("metric_w2c", None)
    return row


def _spawn_pool(n: int) -> Any:
    """A process pool that does not fork: the parent holds CUDA and OpenMP threads by then."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"))


Runner = Callable[[list[dict[str, Any]], dict[str, Any], int], list[dict[str, Any]]]


def _ray_runner(max_workers: int) -> tuple[Runner, Any] | None:
    """Ray tasks (one CPU each) with at most ``n`` in flight; None without Ray."""
    try:
        import ray
        from ray import cloudpickle
    except ImportError:
        return None
    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # address="local": never join another user's cluster found on this machine
        ray.init(address="local", num_cpus=max_workers, include_dashboard=False,
                 log_to_driver=False, object_store_memory=200 * 2**20)
        started = True
    if __name__ != "__main__":  # imported (tests): ship this module's functions by value
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    task = ray.remote(num_cpus=1)(_triangulate_one)
    warm = ray.remote(num_cpus=1)(_warm)

    def run(rows: list[dict[str, Any]], tcfg: dict[str, Any], n: int) -> list[dict[str, Any]]:
        ray.get([warm.remote(i) for i in range(2 * n)])  # worker processes up, imports done
        cfg_ref = ray.put(tcfg)
        t = time.perf_counter()
        pending, out = [], []
        for row in rows:
            if len(pending) >= n:
                done, pending = ray.wait(pending, num_returns=1)
                out += ray.get(done)
            pending.append(task.remote(row, cfg_ref))
        out += ray.get(pending)
        out[0]["wall_s"] = time.perf_counter() - t
        return out

    return run, (ray.shutdown if started else None)


def _pool_runner() -> Runner:
    def run(rows: list[dict[str, Any]], tcfg: dict[str, Any], n: int) -> list[dict[str, Any]]:
        with _spawn_pool(n) as pool:
            list(pool.map(_warm, range(2 * n)))  # processes up, imports done
            t = time.perf_counter()
            out = list(pool.map(_triangulate_one, rows, [tcfg] * len(rows)))
            out[0]["wall_s"] = time.perf_counter() - t
        return out

    return run


def usable_cpus() -> int:
    """CPUs this process may run on (a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_triangulate(suite: Suite, P: dict[str, Any], tmp: Path, executor: str) -> None:
    from pipeline.config import load_config

    sec = suite.results.setdefault("triangulate", {"runs": []})
    tcfg = load_config([])["triangulate"]
    w, h = P["tri_size"]
    kinds = ("forward", "pan", "orbit")
    t = time.perf_counter()
    jobs = [(tmp / "tri", f"tri_{i}", "test", 700 + i, kinds[i % 3], P["tri_frames"], w, h, 1.0)
            for i in range(P["tri_unique"])]
    if len(jobs) > 1:
        with _spawn_pool(len(jobs)) as pool:
            unique = list(pool.map(_render, jobs))
    else:
        unique = [_render(j) for j in jobs]
    sec["render_s"] = round(time.perf_counter() - t, 1)
    rows = []
    for i in range(P["tri_clips"]):
        r = dict(unique[i % len(unique)])
        r["clip_id"] = f"tri_{i:03d}"  # distinct ids: distinct scratch folders
        rows.append(r)
    cpus = usable_cpus()
    workers = [n for n in P["tri_workers"] if n <= cpus] or [1]
    runner, close = None, None
    if executor in ("auto", "ray"):
        got = _ray_runner(max(workers))
        if got is None and executor == "ray":
            raise RuntimeError("triangulate: --tri-executor ray but Ray is not importable")
        if got is not None:
            runner, close = got
            executor = "ray"
    if runner is None:
        runner, executor = _pool_runner(), "process_pool"
    sec.update(executor=executor, clips=len(rows), distinct_clips=len(unique),
               frames_per_clip=P["tri_frames"], size=f"{w}x{h}", cpus=cpus,
               workers_skipped=[n for n in P["tri_workers"] if n > cpus])
    frames = len(rows) * P["tri_frames"]
    try:
        base = None
        for n in workers:
            if not suite.allows("tri_run"):
                sec["runs"].append({"workers": n, "skipped": "budget"})
                continue
            out = runner(rows, tcfg, n)
            dt = out[0].pop("wall_s")  # from the first task to the last (no start-up)
            cps = len(rows) / dt
            base = base or cps
            sec["runs"].append({
                "workers": n, "wall_s": round(dt, 2), "clips_per_s": round(cps, 4),
                "cpu_s_per_frame": round(sum(o["cpu_s"] for o in out) / frames, 4),
                "scaling_vs_1": round(cps / base, 3), "efficiency": round(cps / base / n, 3),
                "obs": int(sum(o["obs"] for o in out)),
                "failures": sorted({o["error"] for o in out if o["error"]}),
            })
            suite.save()
    finally:
        if close is not None:
            close()
    sec["status"] = "ok"


# ---------------------------------------------------------------------- projection
def projection(r: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """RealEstate10K wall time and cost from this run's measured rates (the projection of
    docs/benchmarks.md with the assumed 50 images/s replaced): depth at the best whole-stage
    rate per GPU for each resolution, triangulation at the measured CPU-seconds per frame spread
    over the node's cores (shards are independent)."""
    frames = args.re10k_clips * args.re10k_frames
    out: dict[str, Any] = {"frames": frames, "node_cores": args.node_cores,
                           "node_gpus": args.node_gpus, "usd_per_hour": args.node_cost_per_hour,
                           "depth_hours": {}}
    stage = [x for x in r.get("depth", {}).get("stage", []) if "images_per_s" in x]
    for res in sorted({x["res"] for x in stage}):
        ips = max(x["images_per_s"] for x in stage if x["res"] == res)
        out["depth_hours"][res] = {"images_per_s_per_gpu": ips, "hours": round(
            frames / (ips * args.node_gpus) / 3600, 2)}
    runs = [x for x in r.get("triangulate", {}).get("runs", []) if "cpu_s_per_frame" in x]
    if runs:
        cpu = max(runs, key=lambda x: x["workers"])["cpu_s_per_frame"]
        out["triangulate"] = {"cpu_s_per_frame": cpu, "hours": round(
            cpu * frames / args.node_cores / 3600, 2)}
    return out


# ---------------------------------------------------------------------- driver
def environment(device: str) -> dict[str, Any]:
    torch = _torch()
    meta: dict[str, Any] = {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__, "python": platform.python_version(),
        "cpus": os.cpu_count(), "device": device,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        meta.update(gpu=torch.cuda.get_device_name(0), gpu_mem_gb=round(props.total_memory / 1e9,
                    1), cuda=torch.version.cuda)
    else:
        meta["gpu"] = None
    for mod in ("transformers", "diffusers", "pycolmap", "ray"):
        try:
            meta[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing package is a fact about the machine
            meta[mod] = None
    return meta


def _v(row: dict[str, Any], key: str) -> str:
    """The figure, or why there is none (error / skipped), shortened for the table."""
    return str(row.get(key, row.get("error", row.get("skipped"))))[:60]


def print_table(r: dict[str, Any]) -> None:
    m = r["meta"]
    print(f"\n== gpu_suite  {m.get('gpu') or 'CPU'}  torch {m.get('torch')}  {m.get('date_utc')}"
          f"  {'quick' if m.get('quick') else 'full'}  {m.get('elapsed_s')} s"
          f"{'  STOPPED BY BUDGET' if m.get('stopped_by_budget') else ''}")
    d = r.get("depth", {})
    for row in d.get("raw", []):
        print(f"depth raw    {row['res']:>9} b{row['batch']:<3} {row['dtype']:<9}"
              f" {_v(row, 'images_per_s'):>10} img/s"
              f"  mem {row.get('peak_mem_mb')} MB")
    for row in d.get("stage", []):
        print(f"depth stage  {row['res']:>9} b{row['batch']:<3} {d.get('stage_dtype', ''):<9}"
              f" {_v(row, 'images_per_s'):>10} img/s"
              f"  ratio {row.get('ratio_stage_raw')}  mem {row.get('peak_mem_mb')} MB")
    p = r.get("depth_parity", {})
    if "bf16_vs_fp32" in p:
        b = p["bf16_vs_fp32"]
        print(f"parity bf16/fp32 rel: median {b['median']:.2e} p99 {b['p99']:.2e}")
    if "device_vs_processor" in p:
        q = p["device_vs_processor"]
        print(f"parity device/processor: pixels max {q['pixel_grey_levels']['max']:.2f} grey,"
              f" depth rel median {q['depth_rel']['median']:.2e} p99 {q['depth_rel']['p99']:.2e}")
    o = r.get("depth_oom", {})
    if "halvings" in o:
        print(f"oom ({'real CUDA' if o['real_cuda_oom'] else 'simulated'}): batch "
              f"{o['start_batch']} -> {o['final_batch']} after {o['halvings']} halving(s),"
              f" complete {o['complete']}")
    for row in r.get("svd_train", {}).get("runs", []):
        gc_on = row["gradient_checkpointing"]
        print(f"svd step     {row['res']:>9} x{row['frames']:<3} gc={gc_on!s:<5}"
              f" {_v(row, 'step_s'):>10} s"
              f"  mem {row.get('peak_mem_mb')} MB")
    bt = r.get("builtin_train", {})
    if "samples_per_s" in bt:
        print(f"builtin      {bt['res']:>9} x{bt['frames']:<3} b{bt['batch']}"
              f" {bt['samples_per_s']:>10} samples/s  mem {bt.get('peak_mem_mb')} MB")
    tr = r.get("triangulate", {})
    for row in tr.get("runs", []):
        print(f"triangulate  {tr.get('executor')} workers {row['workers']:>2}"
              f" {_v(row, 'clips_per_s'):>8} clips/s"
              f"  x{row.get('scaling_vs_1')}  CPU {row.get('cpu_s_per_frame')} s/frame")
    pr = r.get("projection_re10k", {})
    for res, row in pr.get("depth_hours", {}).items():
        print(f"RealEstate10K depth at {res}: {row['images_per_s_per_gpu']} img/s/GPU ->"
              f" {row['hours']} h on {pr['node_gpus']} GPUs")
    if "triangulate" in pr:
        print(f"RealEstate10K triangulation: {pr['triangulate']['hours']} h on"
              f" {pr['node_cores']} cores")
    for name, row in r.get("depth_opts", {}).get("variants", {}).items():
        print(f"opt {name:<26} {_v(row, 'images_per_s'):>10}"
              f"  speedup {row.get('speedup', row.get('ratio_stage_raw'))}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny shapes, any device, < 1 min")
    ap.add_argument("--out", type=Path, default=ROOT / "work" / "gpu_suite.json")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="stop cleanly (partial JSON) before this many seconds")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--tri-executor", default="auto", choices=["auto", "ray", "pool"],
                    help="auto: Ray if importable, else a process pool")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu"])
    # the projection's assumptions, as in bench/bench_pipeline.py
    ap.add_argument("--re10k-clips", type=int, default=66000)
    ap.add_argument("--re10k-frames", type=int, default=150)
    ap.add_argument("--node-cores", type=int, default=128)
    ap.add_argument("--node-gpus", type=int, default=8)
    ap.add_argument("--node-cost-per-hour", type=float, default=30.0,
                    help="USD per hour for the stated node (assumption)")
    args = ap.parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown sections {unknown}; choose from {','.join(SECTIONS)}")

    torch = _torch()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    P = PROFILES["quick" if args.quick else "full"]
    suite = Suite(args.out, args.budget_s, args.quick)
    suite.results["meta"] = {**environment(device), "quick": args.quick,
                             "budget_s": args.budget_s, "sections": wanted,
                             "stopped_by_budget": False, "profile": {
                                 k: v for k, v in P.items()}}
    suite.save()
    alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM")
    old_handler = None
    if alarm:
        def on_alarm(signum: int, frame: Any) -> None:
            raise BudgetExceeded()

        old_handler = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, max(args.budget_s, 1.0))
    tmp = Path(tempfile.mkdtemp(prefix="gpu_suite_"))
    db: DepthBench | None = None
    current = None
    try:
        for name in wanted:
            current = name
            t_sec = time.perf_counter()
            if name.startswith("depth") and db is None:
                if not suite.allows("depth_setup"):
                    suite.results[name] = {"status": "skipped: budget"}
                    continue
                t = time.perf_counter()
                db = DepthBench(P, tmp, device)
                suite.results["meta"]["depth_setup_s"] = round(time.perf_counter() - t, 1)
            try:
                if name == "depth":
                    run_depth(suite, P, db)
                elif name == "depth_parity":
                    run_depth_parity(suite, P, db)
                elif name == "depth_oom":
                    run_depth_oom(suite, P, db)
                elif name == "depth_opts":
                    run_depth_opts(suite, P, db)
                elif name == "svd_train":
                    run_svd_train(suite, P, device)
                elif name == "builtin_train":
                    run_builtin_train(suite, P, device)
                elif name == "triangulate":
                    run_triangulate(suite, P, tmp, {"pool": "process_pool"}.get(
                        args.tri_executor, args.tri_executor))
            except Exception as exc:  # noqa: BLE001 - one broken section must not lose the rest
                suite.results.setdefault(name, {})["status"] = f"error: {_err(exc)}"
                free_memory(device)
            suite.results["meta"].setdefault("section_s", {})[name] = round(
                time.perf_counter() - t_sec, 1)
            suite.save()
    except BudgetExceeded:
        suite.results["meta"]["stopped_by_budget"] = True
        suite.results.setdefault(current or "meta", {})["status"] = "stopped: budget"
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler)
        suite.results["projection_re10k"] = projection(suite.results, args)
        suite.save()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    print_table(suite.results)
    print(f"\nfigures: {args.out}")
    return suite.results


if __name__ == "__main__":
    main()
