"""Precision of the camera-control instrument: SfM on real frames against their own poses.

The right answer is zero: real footage, compared with the cameras it was filmed with. Whatever
``stage=evaluate`` reports on it is the instrument's own error (its noise floor). Per clip this
runs, on the very same frames,

- ``reference``: a plain pycolmap recipe, one trial: SIFT with COLMAP's defaults, exhaustive
  matching, incremental mapping with the clip's intrinsics held fixed;
- ``stage``: the stage's own SfM path (``pipeline.evaluation.camera_eval.run_trial`` with the
  ``evaluate.sfm`` settings of ``conf/``, ``evaluate.trials`` trials, then the stage's choice of
  trials, ``select_trials``), scored as the stage scores (mean over the kept trials);

and prints RotErr, TransErr_rel (sums over the clip's frames), registered frames and CPU
seconds, per clip and per clip set, then the stage / reference ratios. The reference scores
the frames it registered (and says how many); the stage fails a trial that misses a frame.

Clip sets: ``re10k`` (the RealEstate10K clips of ``../shared/data/re10k_frames``, 25 frames,
official intrinsics and poses) and ``rgbd`` (the sequences of ``../shared/data/rgbd`` cut into
``--frames``-frame videos every ``--stride``-th frame). Usage (CPU heavy: run it niced):

    nice -n 15 python bench/bench_instrument.py [--sets re10k,rgbd] [--trials 5] [--jobs 2]
        [--override evaluate.sfm.matching.mode=sequential ...] [--clips ID,ID] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "data"


# ---------------------------------------------------------------------------- clips
def re10k_clips(n_frames: int) -> list[dict[str, Any]]:
    """The RealEstate10K clips with frames: K from the normalised intrinsics, c2w poses."""
    from pipeline.geometry.camera_metrics import c2w_from_w2c34

    base = SHARED / "re10k_frames"
    out = []
    for txt in sorted((base / "test").glob("*.txt")):
        clip = txt.stem
        lines = [ln.split() for ln in txt.read_text().splitlines()[1:] if ln.strip()]
        by_ts = {int(v[0]): np.asarray(v[1:], np.float64) for v in lines}
        files = sorted((base / "frames" / "test" / clip).glob("*.jpg"), key=lambda p: int(p.stem))
        files = files[:n_frames]
        frames = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in files])
        h, w = frames.shape[1:3]
        rows = [by_ts[int(p.stem)] for p in files]
        fx, fy, cx, cy = rows[0][:4]
        K = np.array([[fx * w, 0, cx * w], [0, fy * h, cy * h], [0, 0, 1.0]])
        gt = c2w_from_w2c34(np.stack([r[6:18] for r in rows]))
        out.append({"set": "re10k", "clip": clip, "frames": frames, "K": K, "gt": gt})
    return out


#: every k-th frame of a sequence makes a video with real motion but enough overlap: the
#: 7-Scenes folders hold every 4th Kinect frame (k = 2: ~0.3 s apart); the HoloLens walk
#: (~4 m over 50 frames) and the TUM key frames (~0.67 s apart) move more per frame
STRIDES = {"hololens-lounge-a": 1, "tum-fr3-cabinet": 1}


def rgbd_clips(n_frames: int, stride: int, per_seq: int) -> list[dict[str, Any]]:
    """Each RGB-D sequence cut into up to ``per_seq`` videos of ``n_frames`` frames taken every
    ``stride``-th frame (``STRIDES`` per sequence; disjoint, from the start)."""
    out = []
    default_stride = stride
    for seq in sorted(p for p in (SHARED / "rgbd").iterdir() if p.is_dir()):
        stride = STRIDES.get(seq.name, default_stride)
        poses = sorted(seq.glob("frame-*.pose.txt"))
        K = np.loadtxt(seq / "camera-intrinsics.txt").reshape(3, 3)
        span = (n_frames - 1) * stride + 1
        for c in range(per_seq):
            start = c * span
            idx = list(range(start, start + span, stride))
            if idx[-1] >= len(poses):
                break
            frames, gt = [], []
            for i in idx:
                stem = poses[i].name[: -len(".pose.txt")]
                img = next(seq.glob(stem + ".color.*"))
                frames.append(cv2.cvtColor(cv2.imread(str(img)), cv2.COLOR_BGR2RGB))
                gt.append(np.loadtxt(poses[i]).reshape(4, 4))
            out.append({"set": "rgbd", "clip": f"{seq.name}@{start}/{stride}",
                        "frames": np.stack(frames), "K": K, "gt": np.stack(gt)})
    return out


# ---------------------------------------------------------------------------- runs
def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def reference(clip: dict[str, Any]) -> dict[str, Any]:
    """Plain pycolmap: default SIFT, exhaustive matching, incremental mapping, K fixed."""
    import tempfile

    import pycolmap

    from pipeline.geometry import camera_metrics as cm
    from pipeline.sfm.incremental import write_frames

    pycolmap.logging.minloglevel = 2
    c0 = _cpu()
    K, frames = clip["K"], clip["frames"]
    with tempfile.TemporaryDirectory(prefix="benchref_") as tmp:
        work = Path(tmp)
        names = write_frames(list(frames), work / "images")
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = "PINHOLE"
        reader.camera_params = ",".join(repr(float(x)) for x in (K[0, 0], K[1, 1], K[0, 2],
                                                                  K[1, 2]))
        ext = pycolmap.FeatureExtractionOptions()
        ext.num_threads = 1
        ext.use_gpu = False
        mopt = pycolmap.FeatureMatchingOptions()
        mopt.num_threads = 1
        mopt.use_gpu = False
        db = work / "database.db"
        pycolmap.Database.open(str(db)).close()
        pycolmap.import_images(db, work / "images", pycolmap.CameraMode.SINGLE, names, reader)
        pycolmap.extract_features(db, work / "images", names, pycolmap.CameraMode.SINGLE, reader,
                                  ext, pycolmap.Device.cpu)
        pycolmap.match_exhaustive(db, mopt, pycolmap.ExhaustivePairingOptions(),
                                  pycolmap.TwoViewGeometryOptions(), pycolmap.Device.cpu)
        opt = pycolmap.IncrementalPipelineOptions()
        opt.num_threads = 1
        opt.ba_refine_focal_length = False
        opt.ba_refine_principal_point = False
        opt.ba_refine_extra_params = False
        (work / "sparse").mkdir()
        models = pycolmap.incremental_mapping(db, work / "images", work / "sparse", opt)
        out: dict[str, Any] = {"cpu_s": 0.0, "registered": 0, "n": len(frames)}
        if models:
            rec = max(models.values(), key=lambda r: r.num_reg_images())
            by_name = {im.name: im for im in rec.images.values() if im.has_pose}
            keep = [i for i, n in enumerate(names) if n in by_name]
            from pipeline.sfm.colmap_scene import w2c_from_rigid

            w2c = np.stack([w2c_from_rigid(by_name[names[i]].cam_from_world()) for i in keep])
            out["registered"] = len(keep)
            if len(keep) >= 2:
                out.update(cm.relative_metrics(cm.c2w_from_w2c34(w2c), clip["gt"][keep]))
    out["cpu_s"] = _cpu() - c0
    return out


def stage(clip: dict[str, Any], ecfg: dict[str, Any], trials: int,
          seed: int) -> dict[str, Any]:
    """The stage's SfM path: its trials, its choice of trials, its scoring."""
    from pipeline.evaluation import camera_eval as ce

    c0 = _cpu()
    results = [ce.run_trial(clip["clip"], clip["frames"], clip["K"], t, ce.trial_seed(seed, t),
                            ecfg["sfm"], None, None, 1) for t in range(trials)]
    ec = ce.EvalClip(clip["clip"], clip["frames"], clip["K"], clip["gt"], False)
    rows = [ce.score_trial(ec, r, None, "bench", {}) for r in results]
    # (a checkout from before the consensus existed keeps every successful trial)
    asides = (ce.consensus(results, ecfg["consensus"]) if hasattr(ce, "consensus")
              else [None] * len(results))
    for row, why in zip(rows, asides, strict=True):
        row["kept"] = why is None
    agg = ce.aggregate(rows, [clip["clip"]])["per_clip"][clip["clip"]]
    agg.setdefault("kept", agg["successful"])
    per_trial = [(round(r["RotErr"], 3), round(r["TransErr_rel"], 3),
                  round(float(res.get("reproj_error", math.nan)), 3),
                  "kept" if r["kept"] else "aside") if r["success"]
                 else r["reason"][:60] for r, res in zip(rows, results, strict=True)]
    return {"RotErr": agg["RotErr"], "TransErr_rel": agg["TransErr_rel"],
            "ok": sum(r["success"] for r in rows), "kept": agg["kept"],
            "trials": len(rows), "cpu_s": _cpu() - c0, "per_trial": per_trial,
            "registered": len(clip["frames"]) if agg["successful"] else 0,
            "n": len(clip["frames"])}


def _cache_key(kind: str, clip: dict[str, Any], ecfg: dict[str, Any], trials: int,
               seed: int) -> str:
    """Content key of one run: the frames, the truth and (for the stage) its settings."""
    import hashlib

    h = hashlib.sha256()
    for a in (clip["frames"], clip["K"], clip["gt"]):
        h.update(np.ascontiguousarray(a).tobytes())
    if kind == "stage":
        h.update(json.dumps([ecfg["sfm"], ecfg.get("consensus"), trials, seed],
                            sort_keys=True).encode())
        h.update((ROOT / "pipeline" / "sfm" / "incremental.py").read_bytes())
        h.update((ROOT / "pipeline" / "evaluation" / "camera_eval.py").read_bytes())
    return f"{kind}-{clip['clip'].replace('/', '_').replace('@', '_')}-{h.hexdigest()[:16]}"


def _job(args: tuple[str, dict[str, Any], dict[str, Any], int, int, str | None]
         ) -> dict[str, Any]:
    kind, clip, ecfg, trials, seed, cache = args
    path = Path(cache) / f"{_cache_key(kind, clip, ecfg, trials, seed)}.json" if cache else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    res = reference(clip) if kind == "reference" else stage(clip, ecfg, trials, seed)
    out = {"kind": kind, "set": clip["set"], "clip": clip["clip"], **res}
    print(f"  done {kind} {clip['clip']}: RotErr {_fmt(res.get('RotErr'))} TransErr_rel "
          f"{_fmt(res.get('TransErr_rel'))} cpu {res['cpu_s']:.0f} s", flush=True)
    if path is not None:
        from pipeline.io import write_json_atomic

        write_json_atomic(out, path)
    return out


# ---------------------------------------------------------------------------- report
def _fmt(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def report(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per clip and per set tables; returns the per-set summary."""
    by = {(r["kind"], r["clip"]): r for r in results}
    clips = sorted({(r["set"], r["clip"]) for r in results})
    print(f"{'set':<6}{'clip':<30}{'ref Rot':>9}{'ref Tr':>9}{'ref reg':>9}{'ref cpu':>9}"
          f"{'stg Rot':>9}{'stg Tr':>9}{'stg ok':>9}{'stg cpu':>9}  per trial (Rot, Tr)")
    for s, c in clips:
        a, b = by.get(("reference", c), {}), by.get(("stage", c), {})
        print(f"{s:<6}{c[:29]:<30}{_fmt(a.get('RotErr')):>9}{_fmt(a.get('TransErr_rel')):>9}"
              f"{str(a.get('registered', '-')) + '/' + str(a.get('n', '-')):>9}"
              f"{_fmt(a.get('cpu_s')):>9}{_fmt(b.get('RotErr')):>9}"
              f"{_fmt(b.get('TransErr_rel')):>9}"
              f"{str(b.get('kept', '-')) + '/' + str(b.get('trials', '-')):>9}"
              f"{_fmt(b.get('cpu_s')):>9}  {b.get('per_trial', '')}")
    summary: dict[str, Any] = {}
    print("\nper clip set, over the clips BOTH register completely (a reference that "
          "registered a few frames sums fewer terms):")
    print(f"{'set':<8}{'kind':<11}{'RotErr':>9}{'TransErr':>10}{'clips':>7}{'all reg':>9}"
          f"{'cpu s':>9}")
    for s in sorted({x[0] for x in clips}):
        ids = [c for ss, c in clips if ss == s]
        both = [c for c in ids if all(by.get((k, c), {}).get("registered") == by.get(
            (k, c), {}).get("n", -1) for k in ("reference", "stage"))]
        for kind in ("reference", "stage"):
            rs = [by[(kind, c)] for c in ids if (kind, c) in by]
            if not rs:
                continue
            common = [by[(kind, c)] for c in both] or rs
            e = {"RotErr": float(np.nanmean([r.get("RotErr", math.nan) for r in common])),
                 "TransErr_rel": float(np.nanmean([r.get("TransErr_rel", math.nan)
                                                   for r in common])),
                 "clips": len(common),
                 "fully_registered": f"{sum(r['registered'] == r['n'] for r in rs)}/{len(rs)}",
                 "cpu_s": float(sum(r["cpu_s"] for r in rs))}
            summary[f"{s}/{kind}"] = e
            print(f"{s:<8}{kind:<11}{e['RotErr']:>9.3f}{e['TransErr_rel']:>10.3f}"
                  f"{e['clips']:>7}{e['fully_registered']:>9}{e['cpu_s']:>9.1f}")
        ref, stg = summary.get(f"{s}/reference"), summary.get(f"{s}/stage")
        if ref and stg:
            print(f"{s:<8}{'stage/ref':<11}{stg['RotErr'] / ref['RotErr']:>9.2f}"
                  f"{stg['TransErr_rel'] / ref['TransErr_rel']:>10.2f}")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="re10k,rgbd")
    ap.add_argument("--frames", type=int, default=25, help="frames per cut clip (both sets)")
    ap.add_argument("--spread", type=int, default=None,
                    help="then keep this many, evenly spread (the stage's evaluate.num_frames; "
                         "default: that setting)")
    ap.add_argument("--cache", default=None, help="folder caching each (kind, clip) result")
    ap.add_argument("--stride", type=int, default=2, help="rgbd: every k-th frame")
    ap.add_argument("--per-seq", type=int, default=1, help="rgbd: clips per sequence")
    ap.add_argument("--trials", type=int, default=None, help="stage trials (evaluate.trials)")
    ap.add_argument("--kinds", default="reference,stage")
    ap.add_argument("--clips", default="", help="only these clip ids (comma separated)")
    ap.add_argument("--override", action="append", default=[], help="config override")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"no shared data at {SHARED}: the benchmark needs ../shared/data")
    from pipeline.config import load_config

    cfg = load_config(args.override)
    ecfg = cfg["evaluate"]
    trials = int(args.trials or ecfg["trials"])
    sets = args.sets.split(",")
    clips = (re10k_clips(args.frames) if "re10k" in sets else []) + (
        rgbd_clips(args.frames, args.stride, args.per_seq) if "rgbd" in sets else [])
    from pipeline.sfm.triangulation import select_frames

    n_keep = int(args.spread or ecfg["num_frames"])
    for c in clips:
        idx = select_frames(len(c["frames"]), {"mode": "max_n", "max_n": n_keep})
        c["frames"], c["gt"] = c["frames"][idx], c["gt"][idx]
    if args.clips:
        want = args.clips.split(",")
        clips = [c for c in clips if any(c["clip"].startswith(w) for w in want)]
    jobs = [(k, c, ecfg, trials, int(ecfg["seed"]), args.cache)
            for c in clips for k in args.kinds.split(",")]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(_job, jobs))
    print(f"# {len(clips)} clips x {n_keep} frames, stage trials={trials}, "
          f"overrides={args.override}, "
          f"wall {time.perf_counter() - t0:.0f} s")
    summary = report(results)
    if args.json:
        from pipeline.io import write_json_atomic

        write_json_atomic({"args": vars(args), "summary": summary,
                           "results": results}, Path(args.json))


if __name__ == "__main__":
    main()
