"""Accuracy benchmark: the recovered metric scale against known truth, project vs COLMAP.

Per clip and per triangulation configuration it runs the project's own code path in-process
(``pipeline.sfm.triangulation.triangulate_clip`` -> sensor/exact depth sampled as the depth
stage does -> ``pipeline.scale.factors.frame_factors`` with the align settings of ``conf/``)
and prints: clip-factor error vs the truth, per-frame factor error (median, p90, max), triangulation
CPU-seconds per frame, points, the reported uncertainty (relative half-width of the 95%
interval), whether the truth is inside that interval, and whether curate would keep the clip
(``curate.max_uncertainty``) or flag it. Then one summary row per configuration and the ratios.

Clip sets (``--sets``):
- ``real``: every sequence in ``../shared/data/rgbd`` as one whole clip (translations x
  ``--relative-scale``, true factor 1/that; sensor depth as the metric depth);
- ``clips``: the same sequences cut into ``--clip-length``-frame clips (the pipeline default);
- ``cuts``: the same sequences cut at other lengths (``--cut-lengths``, default 33 and 50
  frames): clip boundaries the defaults were not chosen on;
- ``stress``: the synthetic stress set (``data_manifests/stress.yaml``: pose noise, time
  offsets, rotation-dominated pans, long slow clips, weak texture, depth-model errors,
  rolling shutter);
- ``re10k``: the real RealEstate10K clips in ``../shared/data/re10k_frames`` (no depth: points,
  failures and CPU only).
Configurations (``--configs``): ``default`` (``pipeline.settings.Triangulate``), ``colmap``
(COLMAP's default settings in-process: 8192 SIFT at full resolution with upsampling,
sequential overlap 10 + quadratic, RANSAC verification, no extra filters) and ``colmap_cli``
(a plain COLMAP recipe run with the ``colmap`` binary, e.g. Debian's 3.8: all frames at
full resolution, ``feature_extractor`` 8192 SIFT with a single PINHOLE camera of the clip's
intrinsics, ``sequential_matcher`` overlap 10 with COLMAP's default quadratic overlap,
``point_triangulator`` on a text model of the fixed poses without intrinsics refinement; the
model is read back with pycolmap into the same observation table; its CPU is the colmap child
processes' plus this process's). ``colmap_cli`` is in the default list only when ``colmap`` is
on PATH; asked for without it, it is skipped with one line.
Besides align's clip factor, every configuration also reports ``ratio med``: the plain median
of depth / z_cam over all observations (the plain "median of depth ratios").

Triangulations are cached under ``--cache`` by (configuration, clip) content hash, so tuning
align or curate settings re-runs in seconds; ``--no-cache`` recomputes. Usage:

    python bench/bench_accuracy.py [--sets real,clips,cuts,stress,re10k] [--jobs 2]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import functools
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from pipeline.depth.model import sample_sensor  # noqa: E402
from pipeline.formats.frames import read_depth  # noqa: E402
from pipeline.io import stable_hash  # noqa: E402
from pipeline.stage import ClipError  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
RGBD = SHARED / "rgbd"
RE10K_FRAMES = SHARED / "re10k_frames"


def colmap_defaults(tcfg: dict[str, Any]) -> dict[str, Any]:
    """COLMAP's out-of-the-box triangulation settings expressed in our config."""
    c = copy.deepcopy(tcfg)
    c["frames"] = {"mode": "all", "every_k": 1, "max_n": 0}
    c["image"]["max_long_side"] = 0
    c["sift"].update(max_num_features=8192, first_octave=-1, num_octaves=4,
                     peak_threshold=0.02 / 3, max_num_orientations=2, upright=False)
    c["matching"].update(num_threads=0, mode="sequential", overlap=10, quadratic_overlap=True,
                         verification="ransac", ransac_max_error=4.0, max_ratio=0.8,
                         max_distance=0.7, cross_check=True, cpu_brute_force=False,
                         min_num_inliers=15)
    c["triangulation"].update(num_threads=0, min_angle=1.5, create_max_angle_error=2.0,
                              continue_max_angle_error=2.0, merge_max_reproj_error=4.0,
                              complete_max_reproj_error=4.0, filter_max_reproj_error=4.0,
                              ignore_two_view_tracks=True, ba_max_refinements=5)
    c["filters"].update(max_reproj_error=4.0, min_track_len=2, min_tri_angle=0.0)
    return c


# ------------------------------------------------------------------------------ clip sets
def _ingest_rows(overrides: list[str]) -> list[dict[str, Any]]:
    """Manifest rows exactly as the ingest stage builds them (same discovery and checks)."""
    from pipeline.formats.dataset import re10k_row, rgbd_row
    from stages.ingest import STAGE as INGEST

    cfg = load_config(overrides)
    rows = []
    for clip_id, src in sorted(INGEST.discover(cfg).items()):
        try:
            row = (rgbd_row if src["layout"] == "rgbd" else re10k_row)(clip_id, src, cfg)
        except ClipError as exc:
            print(f"  skip {clip_id}: {exc.reason}")
            continue
        rows.append(row)
    return rows


def real_rows(whole: bool, clip_length: int, rel: float,
              set_name: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for seq in sorted(p for p in RGBD.iterdir() if p.is_dir()) if RGBD.is_dir() else []:
        n = len(list(seq.glob("frame-*.pose.txt")))
        length = n if whole else clip_length
        for r in _ingest_rows([
            "dataset=rgbd", f"dataset.root={seq}", f"dataset.clip_length={length}",
            f"dataset.relative_scale={rel}",
        ]):
            r["set"] = set_name or ("real" if whole else "clips")
            if set_name:  # several cut lengths in one set: the same clip id, another clip
                r["label"] = f"{r['clip_id']}@{length}"
            r["seq"] = seq.name
            rows.append(r)
    return rows


def stress_rows(work: Path) -> list[dict[str, Any]]:
    definition = ROOT / "data_manifests" / "stress.yaml"
    if not definition.is_file():
        print("  no data_manifests/stress.yaml: stress set skipped")
        return []
    rows = _ingest_rows(["dataset=stress", f"dataset.root={work / 'stress_data'}"])
    for r in rows:
        r["set"], r["seq"] = "stress", r["clip_id"]
    return rows


def re10k_rows() -> list[dict[str, Any]]:
    if not RE10K_FRAMES.is_dir():
        return []
    rows = _ingest_rows(["dataset=re10k", f"dataset.root={RE10K_FRAMES}", "dataset.splits=[test]"])
    for r in rows:
        r["set"], r["seq"] = "re10k", r["clip_id"]
    return rows


# ------------------------------------------------------------------------------ one clip
def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and its waited-for children."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def _store(cache: Path | None, pq_path: Path | None, meta_path: Path | None,
           meta: dict[str, Any], df: pd.DataFrame | None) -> dict[str, Any]:
    """Cache one triangulation (observations + figures; the table first, the figures last, so
    a half-written entry is never taken for a complete one) and return it."""
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        if df is not None:
            tmp = pq_path.with_suffix(".tmp")
            df.to_parquet(tmp, index=False)
            os.replace(tmp, pq_path)
        meta_path.write_text(json.dumps(meta))
    return {**meta, "df": df}


def triangulate_cached(row: dict[str, Any], tcfg: dict[str, Any], cache: Path | None,
                       threads: int) -> dict[str, Any]:
    """Observations + CPU figures of one clip, from the cache when the same inputs ran before."""
    import pycolmap

    from pipeline.sfm.triangulation import triangulate_clip

    key = stable_hash({"cfg": tcfg, "clip": row["clip_id"], "w2c": row["w2c"],
                       "frames": row["frame_paths"], "video": row["video_path"],
                       "intrinsics": row["intrinsics"]})[:20]
    pq_path = cache / f"{key}.parquet" if cache else None
    meta_path = cache / f"{key}.json" if cache else None
    if pq_path is not None and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        df = pd.read_parquet(pq_path) if pq_path.is_file() else None
        return {**meta, "df": df}
    pycolmap.logging.minloglevel = 2
    stats: dict[str, Any] = {}
    c0 = cpu_seconds()
    try:
        df = triangulate_clip(row, tcfg, None, num_threads=threads, stats=stats)
        meta: dict[str, Any] = {"error": None}
    except ClipError as exc:
        df, meta = None, {"error": exc.reason}
    meta["cpu_s"] = cpu_seconds() - c0
    meta["points"] = int(stats.get("points", 0))
    meta["frames_without_obs"] = int(stats.get("frames_without_obs", 0))
    return _store(cache, pq_path, meta_path, meta, df)


# ------------------------------------------------------------------------------ colmap CLI
# A plain COLMAP recipe, run with the `colmap` binary (Debian ships 3.8): 8192 SIFT at
# full resolution (COLMAP's defaults: upsampling, max_image_size 3200), sequential matching with
# overlap 10 (COLMAP's default quadratic_overlap=1 kept: also frames i+2^k), RANSAC
# verification, then point_triangulator on a text model holding the fixed poses and intrinsics.
# Only these settings are passed; everything else stays COLMAP's default.
CLI_CONFIG = "colmap_cli"
CLI_RECIPE: dict[str, Any] = {
    "camera_model": "PINHOLE",
    "max_num_features": 8192,
    "overlap": 10,
    "quadratic_overlap": True,
    "refine": False,  # point_triangulator: no focal/principal point/extra refinement
}
CLI_ENV = {"QT_QPA_PLATFORM": "offscreen"}  # the Debian build links Qt even for headless calls


def colmap_binary() -> str | None:
    """Path of the `colmap` executable on PATH, or None."""
    return shutil.which("colmap")


@functools.cache
def colmap_version(binary: str) -> str:
    """First line of ``colmap -h`` (e.g. "COLMAP 3.8 -- Structure-from-Motion ..."): part of
    the cache key, so a different build recomputes."""
    out = subprocess.run([binary, "-h"], capture_output=True, text=True,
                         env={**os.environ, **CLI_ENV}, check=False)
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def write_text_model(model_dir: Path, K: np.ndarray, width: int, height: int, camera_id: int,
                     images: dict[int, tuple[str, np.ndarray]]) -> None:
    """A COLMAP text model (cameras.txt, images.txt, empty points3D.txt) with fixed cameras.

    ``images`` maps image id -> (name, 3x4 w2c with an orthonormal rotation); ids and names must
    be the database's (point_triangulator pairs model and database images by id). Poses go in as
    COLMAP's cam_from_world (qw qx qy qz tx ty tz), ``K`` as PINHOLE fx fy cx cy in COLMAP's
    pixel-centre-at-+0.5 convention, all at full float precision (repr) so nothing is rounded.
    """
    import pycolmap

    model_dir.mkdir(parents=True, exist_ok=True)
    fx, fy, cx, cy = (repr(float(x)) for x in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    (model_dir / "cameras.txt").write_text(
        "# CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
        f"{camera_id} PINHOLE {int(width)} {int(height)} {fx} {fy} {cx} {cy}\n")
    lines = ["# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME", "# POINTS2D[] (none)"]
    for iid in sorted(images):
        name, w2c = images[iid]
        w2c = np.asarray(w2c, dtype=np.float64).reshape(3, 4)
        qx, qy, qz, qw = (float(x) for x in pycolmap.Rotation3d(w2c[:, :3]).quat)  # Eigen: xyzw
        vals = " ".join(repr(x) for x in (qw, qx, qy, qz, *map(float, w2c[:, 3])))
        lines += [f"{iid} {vals} {camera_id} {name}", ""]
    (model_dir / "images.txt").write_text("\n".join(lines) + "\n")
    (model_dir / "points3D.txt").write_text("# POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[]\n")


def read_database(db_path: Path) -> tuple[dict[int, str], list[int], dict[int, np.ndarray]]:
    """(image id -> name, camera ids, image id -> keypoint xy (N, 2)) of a COLMAP database.

    Read with sqlite3 (the schema's images/cameras/keypoints tables), not pycolmap 4.x, which
    may upgrade an older database's schema under the 3.8 binary."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        names = {int(i): str(n) for i, n in con.execute("SELECT image_id, name FROM images")}
        cams = [int(c) for (c,) in con.execute("SELECT camera_id FROM cameras")]
        kps = {}
        query = "SELECT image_id, rows, cols, data FROM keypoints"
        for iid, rows, cols, blob in con.execute(query):
            arr = np.frombuffer(blob, dtype=np.float32) if blob else np.zeros(0, np.float32)
            kps[int(iid)] = arr.reshape(int(rows), int(cols))[:, :2].astype(np.float64)
    finally:
        con.close()
    return names, cams, kps


def _colmap(binary: str, clip: str, command: str, args: dict[str, Any]) -> float:
    """Run one ``colmap <command>``; returns its CPU seconds. A failure becomes a ClipError
    naming the clip and the step."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [binary, command]
    for k, v in args.items():
        cmd += [f"--{k}", str(int(v) if isinstance(v, bool) else v)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **CLI_ENV},
                         check=False)
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()
        raise ClipError(clip, f"colmap {command} exited {out.returncode}: "
                              f"{tail[-1] if tail else 'no output'}")
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)


def triangulate_cli(row: dict[str, Any], tcfg: dict[str, Any], binary: str, threads: int,
                    stats: dict[str, Any]) -> pd.DataFrame:
    """Observations of one clip from the `colmap` CLI recipe, in the same table (and through
    the same ``_observations`` flattening and filters of ``tcfg``) as the in-process configs:
    all frames at full resolution, (u, v) with the pixel centre at +0.5, ``z_cam`` from the
    fixed w2c."""
    import pycolmap

    from pipeline.geometry.poses import pixel_K
    from pipeline.sfm import colmap_scene as cs
    from pipeline.sfm.triangulation import _observations, _write_frames

    clip = str(row["clip_id"])
    n, W, H = int(row["num_frames"]), int(row["width"]), int(row["height"])
    w2c_all = cs.orthonormal_w2c(np.asarray(row["w2c"], np.float64).reshape(n, 3, 4))
    K = pixel_K(row["intrinsics"], W, H)
    rec_args = {"ImageReader.single_camera": 1, "ImageReader.camera_model": "PINHOLE",
                "ImageReader.camera_params": ",".join(
                    repr(float(x)) for x in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))}
    with cs.scratch_dir(cs.scratch_root(None), f"cli_{clip[:40]}_") as work:
        image_dir, db = work / "images", work / "database.db"
        _write_frames(row, list(range(n)), (W, H), image_dir)
        common = {"database_path": db, "image_path": image_dir}
        cpu = stats.setdefault("cpu_steps", {})
        cpu["extract"] = _colmap(binary, clip, "feature_extractor", {
            **common, **rec_args, "SiftExtraction.use_gpu": 0,
            "SiftExtraction.num_threads": threads,
            "SiftExtraction.max_num_features": CLI_RECIPE["max_num_features"]})
        names, cams, kp_xy = read_database(db)
        if len(names) != n or len(cams) != 1:
            raise ClipError(clip, f"colmap database holds {len(names)} images / {len(cams)} "
                                  f"cameras, expected {n} / 1")
        frame_of = {iid: int(Path(name).stem) for iid, name in names.items()}
        w2c_of = {iid: w2c_all[f] for iid, f in frame_of.items()}
        write_text_model(work / "sparse_in", K, W, H, cams[0],
                         {iid: (names[iid], w2c_of[iid]) for iid in names})
        cpu["match"] = _colmap(binary, clip, "sequential_matcher", {
            "database_path": db, "SiftMatching.use_gpu": 0, "SiftMatching.num_threads": threads,
            "SequentialMatching.overlap": CLI_RECIPE["overlap"],
            "SequentialMatching.quadratic_overlap": CLI_RECIPE["quadratic_overlap"]})
        (work / "sparse_out").mkdir()
        refine = bool(CLI_RECIPE["refine"])
        cpu["triangulate"] = _colmap(binary, clip, "point_triangulator", {
            **common, "input_path": work / "sparse_in", "output_path": work / "sparse_out",
            "Mapper.num_threads": threads, "Mapper.ba_refine_focal_length": refine,
            "Mapper.ba_refine_principal_point": refine, "Mapper.ba_refine_extra_params": refine})
        rec = pycolmap.Reconstruction(str(work / "sparse_out"))
        for iid, w2c in w2c_of.items():  # fixed poses: the binary must not have moved them
            after = cs.w2c_from_rigid(rec.image(iid).cam_from_world())
            if not np.allclose(after, w2c, rtol=0, atol=1e-6):
                raise RuntimeError(f"colmap point_triangulator moved image {iid} of {clip}")
        if not np.allclose(rec.camera(cams[0]).params, [K[0, 0], K[1, 1], K[0, 2], K[1, 2]],
                           rtol=0, atol=1e-6):
            raise RuntimeError(f"colmap point_triangulator changed the intrinsics of {clip}")
        df = _observations(clip, rec, kp_xy, frame_of, w2c_of, K, (1.0, 1.0), tcfg["filters"])
    stats.update(points_raw=int(rec.num_points3D()),
                 points=int(df["point_id"].nunique()) if len(df) else 0)
    if stats["points"] < int(tcfg["min_points"]):
        raise ClipError(clip, f"too few triangulated points: {stats['points']} < "
                              f"{int(tcfg['min_points'])} after filters ({stats['points_raw']} "
                              f"before; colmap CLI recipe)")
    return df


def triangulate_cli_cached(row: dict[str, Any], tcfg: dict[str, Any], cache: Path | None,
                           threads: int) -> dict[str, Any]:
    """``triangulate_cached`` for the CLI recipe: CPU = this process + the waited-for colmap
    children (``RUSAGE_CHILDREN`` delta, also stored alone as ``cpu_children_s``)."""
    binary = colmap_binary()
    if binary is None:
        raise RuntimeError("colmap_cli needs the `colmap` binary on PATH")
    key = stable_hash({"cli": CLI_RECIPE, "colmap": colmap_version(binary),
                       "filters": tcfg["filters"], "min_points": tcfg["min_points"],
                       "clip": row["clip_id"], "w2c": row["w2c"], "frames": row["frame_paths"],
                       "video": row["video_path"], "intrinsics": row["intrinsics"]})
    pq_path = cache / f"cli_{key}.parquet" if cache else None
    meta_path = cache / f"cli_{key}.json" if cache else None
    if meta_path is not None and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return {**meta, "df": pd.read_parquet(pq_path) if pq_path.is_file() else None}
    stats: dict[str, Any] = {}
    c0 = cpu_seconds()
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        df = triangulate_cli(row, tcfg, binary, threads, stats)
        meta: dict[str, Any] = {"error": None}
    except ClipError as exc:
        df, meta = None, {"error": exc.reason}
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    meta["cpu_s"] = cpu_seconds() - c0
    meta["cpu_children_s"] = (ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)
    meta["points"] = int(stats.get("points", 0))
    meta["cpu_steps"] = stats.get("cpu_steps", {})
    return _store(cache, pq_path, meta_path, meta, df)


def sample_depth(row: dict[str, Any], df: pd.DataFrame, dcfg: dict[str, Any]) -> np.ndarray:
    """Sensor/exact depth at the observations, as ``depth=sensor`` samples it."""
    depth = np.full(len(df), np.nan)
    valid = np.zeros(len(df), dtype=bool)
    u, v = df["u"].to_numpy(np.float64), df["v"].to_numpy(np.float64)
    for f, idx in df.groupby("frame_idx").indices.items():
        d, ok = sample_sensor(read_depth(row, int(f)), u[idx], v[idx],
                              dcfg["interpolation"], float(dcfg["max_depth"]))
        depth[idx], valid[idx] = d, ok
    return np.where(valid, depth, np.nan)


def ratio_median(df: pd.DataFrame, depth: np.ndarray) -> float:
    """The plain scale: the median of depth / z_cam over every observation
    with a depth (``sample_depth``; no per-frame factors, weights, shrinkage or outlier rules),
    NaN if none."""
    z = df["z_cam"].to_numpy(np.float64)
    ok = np.isfinite(depth) & (z > 0)
    return float(np.median(depth[ok] / z[ok])) if ok.any() else float("nan")


def align_clip(row: dict[str, Any], df: pd.DataFrame, depth: np.ndarray, cfg: dict[str, Any],
               tcfg: dict[str, Any]) -> dict[str, Any]:
    """Align's factors for one clip from its observations and their sampled depth."""
    from pipeline.scale.factors import (
        camera_arrays,
        frame_factors,
        uncertainty_settings,
        working_focal,
    )

    acfg = cfg["align"]
    man = pd.DataFrame([{k: row[k] for k in ("clip_id", "intrinsics", "width", "height")}])
    focal = working_focal(man, tcfg["image"]["max_long_side"])[row["clip_id"]]
    w2c, K = camera_arrays(row)
    return frame_factors(
        row["clip_id"], int(row["num_frames"]), df["frame_idx"].to_numpy(),
        df["z_cam"].to_numpy(), depth, np.isfinite(depth),
        int(acfg["min_obs_per_frame"]), int(acfg["min_measured_frames"]),
        point_id=df["point_id"].to_numpy(),
        tri_angle=df["tri_angle"].to_numpy(np.float64) if "tri_angle" in df else None,
        ray_err=df["reproj_err"].to_numpy(np.float64) / focal, ucfg=uncertainty_settings(acfg),
        uv=df[["u", "v"]].to_numpy(np.float64), w2c=w2c, K=K,
    )


def evaluate(row: dict[str, Any], name: str, tcfg: dict[str, Any], cfg: dict[str, Any],
             cache: Path | None, threads: int) -> dict[str, Any]:
    if name == CLI_CONFIG:
        tri = triangulate_cli_cached(row, tcfg, cache, threads)
    else:
        tri = triangulate_cached(row, tcfg, cache, threads)
    n = int(row["num_frames"])
    out: dict[str, Any] = {
        "config": name, "set": row["set"], "seq": row["seq"],
        "clip": row.get("label", row["clip_id"]),
        "frames": n, "cpu_per_frame": tri["cpu_s"] / n, "points": tri["points"],
        "error": tri["error"],
    }
    if "cpu_steps" in tri:
        out["cpu_steps"] = tri["cpu_steps"]
    true = row.get("true_scale")
    if tri["df"] is None or not row.get("depth_paths"):
        return out
    try:
        depth = sample_depth(row, tri["df"], cfg["depth"])  # read each depth map once
        al = align_clip(row, tri["df"], depth, cfg, tcfg)
        ratio = ratio_median(tri["df"], depth)
    except ClipError as exc:
        out["error"] = exc.reason
        return out
    limit = cfg["curate"]["max_uncertainty"]
    out.update(
        scale=al["scale_median"], uncertainty=al["scale_uncertainty"],
        sigma_boot=al["scale_sigma_boot"], sigma_sys=al["scale_sigma_sys"],
        tri_angle=al["tri_angle_median"], ray_err=al["ray_err_median"],
        focal_sens=al["scale_focal_sensitivity"], focal_fit=al["focal_consistency"],
        kept=bool(limit is None or al["scale_uncertainty"] <= float(limit)),
        scale_ratio_median=ratio,
    )
    if true:
        fs = np.asarray(al["frame_scale"]) / true - 1.0
        raw = np.asarray(al["frame_scale_raw"]) / true - 1.0
        raw = raw[np.isfinite(raw)]
        out.update(
            err=al["scale_median"] / true - 1.0,
            err_ratio_median=ratio / true - 1.0 if np.isfinite(ratio) else None,
            frame_med=float(np.median(np.abs(fs))), frame_p90=float(np.percentile(np.abs(fs), 90)),
            frame_max=float(np.max(np.abs(fs))),
            raw_frame_p90=float(np.percentile(np.abs(raw), 90)) if raw.size else np.nan,
            covered=bool(al["scale_ci_low"] <= true <= al["scale_ci_high"]),
        )
    return out


def _job(args: tuple) -> dict[str, Any]:
    return evaluate(*args)


# ------------------------------------------------------------------------------ report
def _pct(x: Any, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "    -  "
    return f"{100 * x:+6.2f}%" if signed else f"{100 * x:6.2f}%"


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"\n{'set':6s} {'clip':31s} {'config':10s} {'n':>4s} {'err':>8s} {'ratio med':>9s}"
          f" {'frame med':>9s}"
          f" {'p90':>8s} {'max':>8s} {'cpu/f':>7s} {'points':>6s} {'+-95%':>8s} {'in CI':>5s}"
          f" {'angle':>6s} status")
    for r in results:
        status = ("FAILED: " + r["error"][:70]) if r.get("error") else (
            "kept" if r.get("kept", True) else "flagged")
        print(f"{r['set']:6s} {r['clip'][:31]:31s} {r['config']:10s} {r['frames']:4d}"
              f" {_pct(r.get('err'), True):>8s} {_pct(r.get('err_ratio_median'), True):>9s}"
              f" {_pct(r.get('frame_med')):>9s}"
              f" {_pct(r.get('frame_p90')):>8s} {_pct(r.get('frame_max')):>8s}"
              f" {r['cpu_per_frame']:7.3f} {r['points']:6d} {_pct(r.get('uncertainty')):>8s}"
              f" {str(r.get('covered', '-')):>5s} {r.get('tri_angle', float('nan')):6.2f} {status}")


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (configuration, set): error statistics over clips with a known truth."""
    out: dict[str, Any] = {}
    for key in sorted({(r["config"], r["set"]) for r in results}):
        rs = [r for r in results if (r["config"], r["set"]) == key]
        errs = np.array([abs(r["err"]) for r in rs if r.get("err") is not None])
        errs_r = np.array([abs(r["err_ratio_median"]) for r in rs
                           if r.get("err_ratio_median") is not None])
        kept = np.array([abs(r["err"]) for r in rs if r.get("err") is not None and r["kept"]])
        cov = [r["covered"] for r in rs if r.get("covered") is not None]
        cov_kept = [r["covered"] for r in rs if r.get("covered") is not None and r["kept"]]
        frames = sum(r["frames"] for r in rs)
        out["/".join(key)] = {
            "clips": len(rs),
            "failed": sum(1 for r in rs if r.get("error")),
            "flagged": sum(1 for r in rs if r.get("kept") is False),
            "median_abs_err": float(np.median(errs)) if errs.size else None,
            "max_abs_err": float(np.max(errs)) if errs.size else None,
            "max_abs_err_kept": float(np.max(kept)) if kept.size else None,
            "median_abs_err_ratio": float(np.median(errs_r)) if errs_r.size else None,
            "max_abs_err_ratio": float(np.max(errs_r)) if errs_r.size else None,
            "frame_p90_median": float(np.median([r["frame_p90"] for r in rs if "frame_p90" in r]))
            if any("frame_p90" in r for r in rs) else None,
            "coverage": float(np.mean(cov)) if cov else None,
            "coverage_kept": float(np.mean(cov_kept)) if cov_kept else None,
            "cpu_per_frame": sum(r["cpu_per_frame"] * r["frames"] for r in rs) / max(frames, 1),
            "points_per_frame": sum(r["points"] for r in rs) / max(frames, 1),
        }
    return out


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\n{'config/set':18s} {'clips':>5s} {'fail':>4s} {'flag':>4s} {'med|err|':>8s}"
          f" {'max|err|':>8s} {'max kept':>8s} {'fr p90':>7s} {'in CI':>6s} {'kept in CI':>10s}"
          f" {'cpu/f':>7s}"
          f" {'pts/f':>6s} {'ratio med|err|':>14s} {'ratio max|err|':>14s}")
    for k, s in summary.items():
        cov = "-" if s["coverage"] is None else f"{100 * s['coverage']:.0f}%"
        cov_k = "-" if s["coverage_kept"] is None else f"{100 * s['coverage_kept']:.0f}%"
        print(f"{k:18s} {s['clips']:5d} {s['failed']:4d} {s['flagged']:4d}"
              f" {_pct(s['median_abs_err']):>8s} {_pct(s['max_abs_err']):>8s}"
              f" {_pct(s['max_abs_err_kept']):>8s} {_pct(s['frame_p90_median']):>7s}"
              f" {cov:>6s} {cov_k:>10s} {s['cpu_per_frame']:7.3f} {s['points_per_frame']:6.1f}"
              f" {_pct(s['median_abs_err_ratio']):>14s} {_pct(s['max_abs_err_ratio']):>14s}")
    sets = sorted({k.split("/", 1)[1] for k in summary})
    others = sorted({k.split("/", 1)[0] for k in summary} - {"default"})
    for other in others:
        print(f"\nratios {other} / default (same clips, one run)")
        for st in sets:
            a, b = summary.get(f"default/{st}"), summary.get(f"{other}/{st}")
            if not a or not b:
                continue
            d_med = (a["median_abs_err"] or 0) - (b["median_abs_err"] or 0)
            d_max = (a["max_abs_err"] or 0) - (b["max_abs_err"] or 0)
            print(f"  {st:7s} cpu/frame x{b['cpu_per_frame'] / max(a['cpu_per_frame'], 1e-9):5.2f}"
                  f"   median |err| default - {other} {100 * d_med:+.2f} pp"
                  f"   max |err| {100 * d_max:+.2f} pp")


def select_configs(requested: str | None, tcfg: dict[str, Any],
                   have_cli: bool) -> dict[str, dict[str, Any]]:
    """Configuration name -> triangulate settings. ``requested`` None = all available (the CLI
    recipe only with the binary); a requested ``colmap_cli`` without the binary is dropped with
    one printed line. The CLI recipe takes its output filters and ``min_points`` from the
    ``colmap`` configuration (its matching/triangulation settings are the binary's own)."""
    wanted = (requested or "default,colmap" + (f",{CLI_CONFIG}" if have_cli else "")).split(",")
    if CLI_CONFIG in wanted and not have_cli:
        print(f"{CLI_CONFIG}: skipped, no `colmap` binary on PATH (Debian: apt-get install colmap)")
    available = {"default": tcfg, "colmap": colmap_defaults(tcfg)}
    if have_cli:
        available[CLI_CONFIG] = colmap_defaults(tcfg)
    unknown = set(wanted) - set(available) - {CLI_CONFIG}
    if unknown:
        raise SystemExit(f"--configs: unknown {sorted(unknown)}; choose from default, colmap, "
                         f"{CLI_CONFIG}")
    return {k: v for k, v in available.items() if k in wanted}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="real,clips,cuts,stress,re10k")
    ap.add_argument("--configs", default=None,
                    help="default,colmap[,colmap_cli]; colmap_cli is in the default list only "
                         "when the `colmap` binary is on PATH")
    ap.add_argument("--clips", default=None,
                    help="only clips whose id matches one of these comma-separated shell "
                         "patterns, e.g. 'st_walk*,st_pan_rs30'")
    ap.add_argument("--clip-length", type=int, default=25)
    ap.add_argument("--cut-lengths", default="33,50",
                    help="set 'cuts': the real sequences cut at these other clip lengths "
                         "(clip boundaries the defaults were not chosen on)")
    ap.add_argument("--relative-scale", type=float, default=0.37)
    ap.add_argument("--jobs", type=int, default=2, help="clips triangulated at once")
    ap.add_argument("--threads", type=int, default=1, help="COLMAP threads per clip")
    ap.add_argument("--cache", type=Path,
                    default=Path(tempfile.gettempdir()) / "metric_align_bench_accuracy")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. align.uncertainty.gain=2")
    args = ap.parse_args()
    cfg = load_config(args.overrides)
    configs = select_configs(args.configs, cfg["triangulate"], colmap_binary() is not None)
    sets = args.sets.split(",")
    rows: list[dict[str, Any]] = []
    if "real" in sets:
        rows += real_rows(True, args.clip_length, args.relative_scale)
    if "clips" in sets:
        rows += real_rows(False, args.clip_length, args.relative_scale)
    if "cuts" in sets:
        for length in (int(x) for x in args.cut_lengths.split(",")):
            rows += real_rows(False, length, args.relative_scale, "cuts")
    if "stress" in sets:
        rows += stress_rows(args.cache)
    if "re10k" in sets:
        rows += re10k_rows()
    if args.clips:
        patterns = args.clips.split(",")
        rows = [r for r in rows if any(fnmatch.fnmatchcase(r["clip_id"], p) for p in patterns)]
    cache = None if args.no_cache else args.cache / "triangulations"
    jobs = [(row, name, tcfg, cfg, cache, args.threads)
            for name, tcfg in configs.items() for row in rows]
    print(f"{len(rows)} clips x {len(configs)} configurations, {args.jobs} at once")
    t0 = time.perf_counter()
    results = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for r in pool.map(_job, jobs):
            results.append(r)
            print(f"  {r['config']:10s} {r['clip'][:32]:32s} err {_pct(r.get('err'), True)}"
                  f" +-{_pct(r.get('uncertainty'))} cpu/f {r['cpu_per_frame']:.3f}"
                  + (f"  FAILED: {r['error'][:60]}" if r.get("error") else ""), flush=True)
    print_table(results)
    summary = summarise(results)
    print_summary(summary)
    print(f"\nwall {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"clips": results, "summary": summary}, indent=1,
                                        default=float))


if __name__ == "__main__":
    main()
