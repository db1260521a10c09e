"""MSA x SNS ablation in miniature: what metric scale alignment buys a camera-conditioned model.

The RealCam-I2V ablation (metric scale alignment x scene-constrained noise shaping) on synthetic
rooms, where the ground-truth video of every test trajectory exists:

1. training clips: many random rooms (``pipeline.synthetic.ablation``), RealEstate10K-like moves
   of 0.1-3 m, each clip's translations written times a log-uniform random factor, so the written
   poses carry no metric information;
2. this project's pipeline on them (ingest -> triangulate -> depth (sensor = the exact synthetic
   depth) -> align -> curate, ``pipeline.runner.Runner``): the ``metric`` arm trains on its
   output, not on the known truth;
3. arms trained identically (same clips, data order, seed, steps, model; ``train.camera`` alone
   differs): ``no_camera`` (Plücker input zeroed), ``relative`` (the written poses), ``metric``;
4. held-out rooms with trajectories in metres and their rendered ground-truth videos; each arm
   samples every test case from its first frame, with SNS off and on (``*_sns``);
5. every generated video's cameras are fitted against renders of the known scene
   (``pipeline.evaluation.pose_fit``, Cauchy loss per pixel: ``pose_fit.robust_scale``), and
   RotErr / TransErr_rel / TransErr_metric (``pipeline.geometry.camera_metrics``),
   scale_error = median |log(realised / asked travel)| and PSNR against the ground-truth video
   are reported. The ``gt`` row fits the ground-truth videos themselves: the floor of the
   measurement. The same videos are also scored with the plain least-squares fit
   (``least_squares_fit`` in the JSON), so the effect of the loss is on record.

Usage::

    python bench/bench_msa.py [--minutes 45] [--out FILE.json] [--tier tiny|small|default]
        [--work DIR] [--device cpu|cuda] [--seed N]

``--minutes`` picks the largest tier of ``conf/bench/msa.yaml`` that fits and sizes the training
steps from the time left after data and pipeline (every arm gets the same number of steps: on
CPU the arms train side by side in worker processes, in lockstep rounds of ``chunk_steps``).
On a GPU machine the same script with a larger ``--minutes`` (and tier) is the recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from pipeline.evaluation.pose_fit import FitSettings, PoseFitter  # noqa: E402
from pipeline.geometry.camera_metrics import (  # noqa: E402
    metric_metrics,
    relative_metrics,
    relative_to_first,
    scene_scale,
)
from pipeline.runner import Runner  # noqa: E402
from pipeline.synthetic.ablation import TestCase, make_test_case, training_definition  # noqa: E402
from pipeline.synthetic.sample_data import generate_sample  # noqa: E402
from trainer.data import adjust_intrinsics, resize_crop  # noqa: E402
from trainer.inference.preview import render_preview  # noqa: E402
from trainer.inference.scene import point_cloud  # noqa: E402
from trainer.inference.sns import prepare_shaping  # noqa: E402
from trainer.inference.trajectory import Trajectory  # noqa: E402
from trainer.loop import train  # noqa: E402
from trainer.plucker import plucker_embedding  # noqa: E402
from trainer.sampling import ddim_sample, load_model, to_uint8  # noqa: E402

CONF = ROOT / "conf" / "bench" / "msa.yaml"
ARMS = {"no_camera": "none", "relative": "relative", "metric": "metric"}
ROWS = ("gt", "no_camera", "relative", "metric", "relative_sns", "metric_sns")
METRICS = ("RotErr", "TransErr_rel", "TransErr_metric", "scale_error", "psnr")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def choose_tier(bcfg: dict[str, Any], minutes: float, name: str | None) -> tuple[str, dict]:
    tiers = bcfg["tiers"]
    if name:
        return name, tiers[name]
    fits = [(t["min_minutes"], k) for k, t in tiers.items() if t["min_minutes"] <= minutes]
    key = max(fits)[1]
    return key, tiers[key]


def run_pipeline(bcfg: dict[str, Any], tier: dict[str, Any], work: Path) -> dict[str, Any]:
    """Render the training clips and run the project's pipeline on them (ingest .. curate)."""
    defn = training_definition(bcfg["data"], int(tier["n_train"]), int(bcfg["seed"]))
    def_path = work / "definition.yaml"
    OmegaConf.save(OmegaConf.create(defn), def_path)
    # rendered here with several threads; ingest finds the finished render (same definition
    # hash) and goes straight on
    generate_sample(def_path, work / "data", workers=int(bcfg["data"]["render_workers"]))
    overrides = [f"paths.work_dir={work / 'pipeline'}", f"dataset.root={work / 'data'}",
                 f"dataset.definition={def_path}", "progress=false",
                 *bcfg["pipeline"]["overrides"]]
    summary = Runner(load_config(overrides)).run("curate")
    curated = sorted((work / "pipeline" / "curated").glob("shard-*.parquet"))
    if not curated:
        raise RuntimeError(f"the pipeline kept no clip: {summary}")
    return {"files": [str(p) for p in curated], "n_defined": len(defn["clips"])}


def curated_scale_accuracy(files: list[str]) -> dict[str, float]:
    import pandas as pd

    df = pd.concat([pd.read_parquet(f) for f in files])
    err = np.abs(np.log(df["clip_scale"] / df["true_scale"]))
    return {"clips_kept": int(len(df)), "median_abs_log_scale_err": float(err.median()),
            "p90_abs_log_scale_err": float(err.quantile(0.9))}


def arm_config(bcfg: dict[str, Any], tier: dict[str, Any], camera: str) -> dict[str, Any]:
    """The train defaults (pipeline.settings.Train) + the bench's shared overrides + the tier's;
    only ``camera`` differs between arms."""
    base = OmegaConf.create(load_config([])["train"])
    merged = OmegaConf.merge(base, bcfg["train"], tier.get("train") or {}, {"camera": camera})
    return OmegaConf.to_container(merged, resolve=True)


def _train_to(tcfg: dict[str, Any], files: list[str], out: str, stop_at: int) -> int:
    """One arm to ``stop_at`` steps (exact resume from its latest checkpoint); run in a worker
    process, so that the arms train side by side."""
    return int(train({**tcfg, "max_steps": 10**7}, files, Path(out), stop_at=stop_at,
                     progress=False)["step"])


def train_arms(cfgs: dict[str, dict[str, Any]], files: list[str], work: Path, seconds: float,
               chunk: int, workers: int) -> tuple[int, float]:
    """Every arm in lockstep, ``workers`` processes side by side (one torch thread each): a
    round trains each arm ``chunk`` more steps; rounds go on while another one fits in
    ``seconds``. All arms end at the same step count (returned, with the wall time spent).

    Arms in parallel processes rather than one after another: training one arm holds one core
    (more torch threads per step measured slower), so on a 2-core machine running them side by
    side nearly doubles the steps each arm gets in the same wall time."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    t0, done = time.perf_counter(), 0
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        while True:
            r0 = time.perf_counter()
            jobs = {arm: pool.submit(_train_to, c, files, str(work / f"train_{arm}"),
                                     done + chunk) for arm, c in cfgs.items()}
            steps = {arm: j.result() for arm, j in jobs.items()}
            if len(set(steps.values())) != 1:
                raise RuntimeError(f"arms out of step: {steps}")
            done = next(iter(steps.values()))
            now = time.perf_counter()
            if now - t0 + (now - r0) > seconds:
                return done, now - t0


def model_inputs(cases: list[TestCase], hw: tuple[int, int]) -> dict[str, Any]:
    """Condition images, Plücker maps (metric trajectories), GT videos at the model's size."""
    conds, pls, gts, Ks = [], [], [], []
    for c in cases:
        H, W = c.frames.shape[1:3]
        K = adjust_intrinsics(c.K, W, H, hw)
        video = np.stack([resize_crop(f, hw) for f in c.frames])
        gts.append(video)
        conds.append(torch.from_numpy(video[0]).permute(2, 0, 1).float() / 127.5 - 1)
        pls.append(plucker_embedding(torch.from_numpy(K).expand(len(c.c2w), 3, 3),
                                     torch.from_numpy(c.c2w), *hw).float())
        Ks.append(K)
    return {"cond": torch.stack(conds), "plucker": torch.stack(pls), "gt": np.stack(gts),
            "K": Ks}


def shaping_for(model: torch.nn.Module, cases: list[TestCase], inputs: dict[str, Any],
                tcfg: dict[str, Any], hw: tuple[int, int]):
    """SNS from each case's condition frame and its exact depth, rendered along the asked
    metric trajectory with the sampler's own settings (``train.sampling``)."""
    s = tcfg["sampling"]
    prevs, masks = [], []
    for c, K in zip(cases, inputs["K"]):
        cloud = point_cloud(c.frames[0], c.depth0, c.K)
        pv = render_preview(cloud, Trajectory(c.c2w, np.ones(len(c.c2w))), K, *hw,
                            int(s["splat_size"]), int(s["sns_edge_k"]),
                            depth_tol=float(s["render_depth_tol"]))
        prevs.append(pv.render.image * 2 - 1)
        masks.append(pv.usable)
    return prepare_shaping(model, torch.stack(prevs).float(), torch.stack(masks),
                           float(s["sns_t_threshold"]), int(s["sns_latent_margin"]),
                           int(s["seed"]))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0**2 / mse) if mse > 0 else math.inf


def direction_cos(fit: np.ndarray, asked: np.ndarray) -> float:
    """Did the camera go the asked way? Cosine between the realised and the asked displacement
    of the last frame (1 = same direction, 0 = unrelated, -1 = backwards)."""
    a, b = fit[-1, :3, 3], asked[-1, :3, 3]
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / den if den > 0 else 0.0


def score_case(v: np.ndarray, c: TestCase, K: np.ndarray, gt: np.ndarray, fit_cfg: FitSettings,
               hw: tuple[int, int]) -> dict[str, Any]:
    """One generated video against its test case: fitted cameras -> the metrics."""
    fitter = PoseFitter(c.scene, K, hw[1], hw[0], fit_cfg)
    world, resid = fitter.fit_video(v, c.world_c2w0)
    rel = relative_to_first(world)
    m = relative_metrics(rel, c.c2w)
    m.update(metric_metrics(rel, c.c2w))
    m["scale_error"] = abs(math.log(max(scene_scale(rel), 1e-9) / scene_scale(c.c2w)))
    m["psnr"] = psnr(v[1:], gt[1:])
    m["direction_cos"] = direction_cos(rel, c.c2w)
    m["fit_residual"] = float(np.mean(resid))
    m["name"] = c.name
    return m


def summarise(per: list[dict[str, Any]]) -> dict[str, Any]:
    """A row: means over the test cases (scale_error: the median)."""
    row = {k: float(np.mean([p[k] for p in per])) for k in
           ("RotErr", "TransErr_rel", "TransErr_metric", "fit_residual", "direction_cos")}
    row["scale_error"] = float(np.median([p["scale_error"] for p in per]))
    ps = [p["psnr"] for p in per]
    row["psnr"] = None if any(math.isinf(x) for x in ps) else float(np.mean(ps))
    return {"row": row, "per_clip": per}


def score_all(videos: dict[str, np.ndarray], cases: list[TestCase], inputs: dict[str, Any],
              fit_cfg: FitSettings, hw: tuple[int, int], workers: int) -> dict[str, Any]:
    """Every row's videos scored, the (row, case) fits spread over ``workers`` processes (each
    fit is independent and single-threaded)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        jobs = {name: [pool.submit(score_case, v, c, K, gt, fit_cfg, hw) for v, c, K, gt in
                       zip(videos[name], cases, inputs["K"], inputs["gt"])] for name in ROWS}
        return {name: summarise([j.result() for j in js]) for name, js in jobs.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=45.0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--tier", default=None)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--strip", type=Path, default=None,
                    help="PNG of one test case: ground truth, generated metric, generated "
                         "relative, generated no-camera (one row each, frames left to right)")
    ap.add_argument("--seed", type=int, default=None,
                    help="a repeat of the experiment: the training clips' scale factors and the "
                         "trainer's seed (initial weights, data order, noise) from this value "
                         "instead of the config's seed and train.seed")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    deadline = t_start + args.minutes * 60
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    bcfg = OmegaConf.to_container(OmegaConf.load(CONF), resolve=True)
    if args.seed is not None:
        bcfg["seed"] = bcfg["train"]["seed"] = args.seed
    tier_name, tier = choose_tier(bcfg, args.minutes, args.tier)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_msa_"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"tier {tier_name}: {tier['n_train']} training clips, {tier['n_test']} test cases; "
        f"work dir {work}")
    timings: dict[str, float] = {}

    t = time.perf_counter()
    pipe = run_pipeline(bcfg, tier, work)
    timings["data_and_pipeline_s"] = time.perf_counter() - t
    acc = curated_scale_accuracy(pipe["files"])
    log(f"pipeline: {acc['clips_kept']}/{pipe['n_defined']} clips kept, median |log scale "
        f"error| {acc['median_abs_log_scale_err']:.4f} ({timings['data_and_pipeline_s']:.0f} s)")

    t = time.perf_counter()
    cases = [make_test_case(bcfg["data"], bcfg["test"], i) for i in range(int(tier["n_test"]))]
    timings["test_render_s"] = time.perf_counter() - t

    # training: every arm side by side, by the clock, to one common step count
    cfgs = {arm: arm_config(bcfg, tier, cam) for arm, cam in ARMS.items()}
    for c in cfgs.values():
        if args.device == "cpu":
            c["cpu_threads"] = int(bcfg["budget"]["cpu_threads"])
    reserve = float(bcfg["budget"]["eval_reserve_s_per_case"]) * len(cases)
    left = max(float(bcfg["budget"]["min_train_s"]), deadline - time.perf_counter() - reserve)
    workers = len(ARMS) if args.device == "cpu" else 1
    steps, timings["train_s"] = train_arms(cfgs, pipe["files"], work, left,
                                           int(bcfg["budget"]["chunk_steps"]), workers)
    log(f"{len(ARMS)} arms: {steps} steps each in {timings['train_s']:.0f} s "
        f"({workers} processes side by side)")

    hw = tuple(int(x) for x in cfgs["metric"]["data"]["resolution"])
    inputs = model_inputs(cases, hw)
    sc = bcfg["sampling"]
    videos: dict[str, np.ndarray] = {"gt": inputs["gt"]}
    t = time.perf_counter()
    for arm, tcfg in cfgs.items():
        ckpt_dir = work / f"train_{arm}" / "checkpoints"
        model = load_model(tcfg, sorted(ckpt_dir.glob("step-*.pt"))[-1], args.device)
        runs = [(arm, None)]
        if arm != "no_camera":
            runs.append((f"{arm}_sns", shaping_for(model, cases, inputs, tcfg, hw)))
        for name, shaping in runs:
            out = ddim_sample(model, tcfg, inputs["cond"], inputs["plucker"], int(sc["steps"]),
                              float(sc["guidance_scale"]), 0.0, int(sc["seed"]),
                              shaping=shaping)
            videos[name] = np.stack([to_uint8(v.cpu()) for v in out])
    timings["sampling_s"] = time.perf_counter() - t

    np.savez_compressed(work / "videos.npz", **videos)
    t = time.perf_counter()
    fit_cfg = FitSettings.from_dict(bcfg["pose_fit"])
    fit_workers = int(bcfg["budget"]["fit_workers"])
    scored = score_all(videos, cases, inputs, fit_cfg, hw, fit_workers)
    # the same videos through the plain least-squares fit: what the robust loss changes
    l2 = score_all(videos, cases, inputs, dataclasses.replace(fit_cfg, robust_scale=0.0), hw,
                   fit_workers)
    timings["pose_fit_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    rows = {name: {k: scored[name]["row"][k] for k in METRICS} for name in ROWS}
    report = {
        "rows": rows,
        "fit_residual": {name: scored[name]["row"]["fit_residual"] for name in ROWS},
        "direction_cos": {name: scored[name]["row"]["direction_cos"] for name in ROWS},
        "per_clip": {name: scored[name]["per_clip"] for name in ROWS},
        "targets": targets(rows),
        "least_squares_fit": least_squares_report(l2),
        "settings": {"tier": tier_name, "minutes": args.minutes, "steps_per_arm": steps,
                     "n_train_defined": pipe["n_defined"], "n_test": len(cases),
                     "device": args.device, "bench": bcfg, "train_metric": cfgs["metric"]},
        "pipeline": acc,
        "timings_s": timings,
        "work_dir": str(work),
    }
    print_table(rows, report["targets"], timings)
    print("\nthe same videos, plain least-squares pose fit (pose_fit.robust_scale = 0):")
    print_table(report["least_squares_fit"]["rows"], report["least_squares_fit"]["targets"], {})
    print("direction_cos (last frame, realised vs asked displacement): " + ", ".join(
        f"{k} {v:.2f}" for k, v in report["direction_cos"].items()))
    if args.strip:
        write_strip(args.strip, videos, scored, int(bcfg["strip"]["upscale"]))
        log(f"wrote {args.strip}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=float))
        log(f"wrote {args.out}")
    return 0


def least_squares_report(scored: dict[str, Any]) -> dict[str, Any]:
    """Rows, targets and per-clip figures of the least-squares fit of the same videos."""
    rows = {name: {k: scored[name]["row"][k] for k in METRICS} for name in ROWS}
    return {"rows": rows, "targets": targets(rows),
            "direction_cos": {name: scored[name]["row"]["direction_cos"] for name in ROWS},
            "per_clip": {name: scored[name]["per_clip"] for name in ROWS}}


def write_strip(path: Path, videos: dict[str, np.ndarray], scored: dict[str, Any],
                upscale: int) -> None:
    """One test case as rows of frames: the ground truth (what was asked), then the metric,
    relative and no-camera arms' videos. The case shown is the one where the metric arm's
    direction is closest to the median over cases (a typical case, not the best)."""
    import cv2

    cos = [p["direction_cos"] for p in scored["metric"]["per_clip"]]
    case = int(np.argsort(cos)[len(cos) // 2])
    rows = [np.concatenate(list(videos[name][case]), axis=1)
            for name in ("gt", "metric", "relative", "no_camera")]
    img = np.concatenate(rows, axis=0)
    img = cv2.resize(img, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img[..., ::-1])


def targets(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The issue's acceptance ratios: value, limit, met."""
    def ratio(a: str, b: str, k: str) -> float:
        return rows[a][k] / rows[b][k] if rows[b][k] else math.inf

    out = {}
    for k in ("RotErr", "TransErr_rel", "scale_error"):
        out[f"gt/no_camera {k}"] = (ratio("gt", "no_camera", k), 0.2)
    for k in ("TransErr_rel", "RotErr"):
        out[f"metric/no_camera {k}"] = (ratio("metric", "no_camera", k), 0.7)
    for k in ("TransErr_metric", "scale_error"):
        out[f"metric/relative {k}"] = (ratio("metric", "relative", k), 0.8)
    res = {name: {"ratio": r, "limit": lim, "met": bool(r <= lim)} for name, (r, lim) in
           out.items()}
    a, b = rows["metric_sns"]["psnr"], rows["metric"]["psnr"]
    res["metric_sns psnr - metric psnr"] = {"ratio": a - b, "limit": 0.0, "met": bool(a > b)}
    return res


def print_table(rows: dict[str, dict[str, Any]], tg: dict[str, Any],
                timings: dict[str, float]) -> None:
    print(f"\n{'row':<14}" + "".join(f"{k:>17}" for k in METRICS))
    for name, r in rows.items():
        cells = "".join(f"{'-' if r[k] is None else format(r[k], '.3f'):>17}" for k in METRICS)
        print(f"{name:<14}{cells}")
    print()
    for name, t in tg.items():
        verdict = "met" if t["met"] else "MISSED"
        print(f"{name:<36} {t['ratio']:8.3f}  (limit {t['limit']}) {verdict}")
    if timings:
        print("timings: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))


if __name__ == "__main__":
    raise SystemExit(main())
