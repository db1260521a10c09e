"""Sparse 3D points of one clip from its *given* poses and intrinsics (the triangulate stage's
work; ``stages/triangulate.py`` only reads the shard's manifest and writes the table).

Align needs, per frame, camera-space depths ``z_cam`` of scene points in the clip's relative
scale, at pixels where a metric depth can be sampled. COLMAP's point triangulator provides them
without touching the cameras: SIFT features, matches between nearby frames, tracks
triangulated with the poses held fixed (no mapper, no pose or intrinsics refinement; the
stage checks that the poses came back unchanged).

Real poses (SLAM, KinectFusion, head tracking) are off by pixels and can lag the frames, so the
defaults (``pipeline.settings.Triangulate``, chosen with ``bench/bench_accuracy.py`` on real
RGB-D captures and the synthetic stress set) verify matches by RANSAC, independently of the given
poses, and pair each frame with its 10 neighbours plus frames 2^k apart (long baselines on slow
clips, where neighbours see too little parallax). Cost is the other concern at 9M frames: frames
are shrunk to a 640 px long side, SIFT keeps 4096 features without upsampling, and a clip
triangulates at most 64 evenly spread frames (the others get interpolated factors). The
pose-guided epipolar check (``matching.verification=poses``) remains for exact poses.

Output (``pipeline.schema.OBSERVATIONS``), one row per kept observation, sorted by
(clip_id, frame_idx, point_id), one row per (point, frame) (where COLMAP puts two keypoints of
a frame in one track, the better-reprojecting one is kept): (u, v) in the ORIGINAL resolution
(pixel centre at +0.5), ``z_cam`` = third coordinate of ``R X + t`` (relative scale),
``track_len`` = observations of the point that survived the filters, ``reproj_err`` = this
observation's reprojection error in pixels at the triangulation resolution, ``tri_angle`` = the
point's largest angle between two of its rays (degrees: the parallax behind its depth). Point
ids are renumbered per clip in a canonical order so equal inputs give equal tables whatever
order COLMAP created the points in.

Determinism: feature extraction runs on all of the task's CPUs (per image, order-free), but
matching and point refinement default to one thread each (``matching.num_threads``,
``triangulation.num_threads``): with more, COLMAP's matcher returns slightly different matches
and the refinement sums in a different order from run to run. Same CPU-seconds, more wall time
per clip; the pipeline's parallelism is across clips (Ray tasks) anyway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pycolmap

from pipeline.errors import ClipError
from pipeline.formats import frames as frame_io
from pipeline.geometry.poses import pixel_K
from pipeline.schema import OBSERVATIONS
from pipeline.sfm import colmap_scene as cs

OBS_COLUMNS = [f.name for f in OBSERVATIONS]
IMAGE_EXT = ".png"  # lossless: JPEG artefacts would move SIFT keypoints


# ------------------------------------------------------------------------------ helpers
def select_frames(num_frames: int, sel: dict[str, Any]) -> list[int]:
    """Frame indices taking part: ``all``, every ``every_k``-th, or at most ``max_n`` evenly
    spread (first and last always included, so the clip's whole baseline is used)."""
    mode = sel["mode"]
    if num_frames <= 0:
        return []
    if mode == "all":
        return list(range(num_frames))
    if mode == "every_k":
        k = int(sel["every_k"])
        if k < 1:
            raise ValueError(f"triangulate.frames.every_k must be >= 1, got {k}")
        idx = list(range(0, num_frames, k))
        if idx[-1] != num_frames - 1:
            idx.append(num_frames - 1)
        return idx
    if mode == "max_n":
        n = int(sel["max_n"])
        if n < 2:
            raise ValueError(f"triangulate.frames.max_n must be >= 2, got {n}")
        if num_frames <= n:
            return list(range(num_frames))
        return sorted({int(round(x)) for x in np.linspace(0, num_frames - 1, n)})
    raise ValueError(f"triangulate.frames.mode must be all|every_k|max_n, got {mode!r}")


def working_size(width: int, height: int, max_long_side: int) -> tuple[int, int]:
    """(w, h) with the long side at most ``max_long_side`` (0 = original), aspect kept."""
    long_side = max(width, height)
    if max_long_side <= 0 or long_side <= max_long_side:
        return int(width), int(height)
    s = max_long_side / long_side
    return max(1, int(round(width * s))), max(1, int(round(height * s)))


def max_triangulation_angle(centres: np.ndarray, xyz: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Largest angle (degrees) between any two viewing rays of each point.

    ``centres`` (P, L, 3) camera centres of each point's observations, padded; ``mask`` (P, L)
    marks the real ones. The angle at the point is what limits depth precision: a point seen
    only under a small angle has a depth error that grows as 1/angle.
    """
    rays = centres - xyz[:, None, :]
    norms = np.linalg.norm(rays, axis=2, keepdims=True)
    rays = np.where(mask[..., None], rays / np.maximum(norms, 1e-300), 0.0)
    cos = np.einsum("pik,pjk->pij", rays, rays)
    valid = mask[:, :, None] & mask[:, None, :]
    cos = np.where(valid, cos, 1.0)
    return np.degrees(np.arccos(np.clip(cos.min(axis=(1, 2)), -1.0, 1.0)))


def _extraction_options(cfg: dict[str, Any], threads: int) -> pycolmap.FeatureExtractionOptions:
    opt = pycolmap.FeatureExtractionOptions()
    opt.num_threads = threads
    opt.use_gpu = False
    opt.max_image_size = -1  # resizing is ours (intrinsics must follow exactly)
    s = cfg["sift"]
    opt.sift.max_num_features = int(s["max_num_features"])
    opt.sift.first_octave = int(s["first_octave"])
    opt.sift.num_octaves = int(s["num_octaves"])
    opt.sift.peak_threshold = float(s["peak_threshold"])
    opt.sift.max_num_orientations = int(s["max_num_orientations"])
    opt.sift.upright = bool(s["upright"])
    return opt


def _match(db_path: Path, cfg: dict[str, Any], threads: int) -> None:
    m = cfg["matching"]
    threads = int(m["num_threads"]) or threads
    mopt = pycolmap.FeatureMatchingOptions()
    mopt.num_threads = threads
    mopt.use_gpu = False
    mopt.max_num_matches = int(m["max_num_matches"])
    mopt.sift.max_ratio = float(m["max_ratio"])
    mopt.sift.max_distance = float(m["max_distance"])
    mopt.sift.cross_check = bool(m["cross_check"])
    mopt.sift.cpu_brute_force_matcher = bool(m["cpu_brute_force"])
    mopt.skip_geometric_verification = m["verification"] == "poses"
    vopt = pycolmap.TwoViewGeometryOptions()
    vopt.min_num_inliers = int(m["min_num_inliers"])
    vopt.ransac.max_error = float(m["ransac_max_error"])
    vopt.ransac.random_seed = int(m["ransac_seed"])  # fixed seed: deterministic output
    vopt.ransac.num_threads = 1
    device = pycolmap.Device.cpu
    if m["mode"] == "sequential":
        popt = pycolmap.SequentialPairingOptions()
        popt.overlap = int(m["overlap"])
        popt.quadratic_overlap = bool(m["quadratic_overlap"])
        popt.loop_detection = False
        popt.num_threads = threads
        pycolmap.match_sequential(db_path, mopt, popt, vopt, device)
    elif m["mode"] == "exhaustive":
        popt = pycolmap.ExhaustivePairingOptions()
        pycolmap.match_exhaustive(db_path, mopt, popt, vopt, device)
    else:
        raise ValueError(
            f"triangulate.matching.mode must be sequential|exhaustive, got {m['mode']!r}"
        )


def _triangulation_options(
    cfg: dict[str, Any], threads: int
) -> pycolmap.IncrementalPipelineOptions:
    t = cfg["triangulation"]
    opt = pycolmap.IncrementalPipelineOptions()
    opt.num_threads = threads
    opt.random_seed = int(cfg["matching"]["ransac_seed"])
    opt.min_num_matches = int(cfg["matching"]["min_num_inliers"])
    opt.extract_colors = False
    opt.ba_refine_focal_length = False
    opt.ba_refine_principal_point = False
    opt.ba_refine_extra_params = False
    opt.ba_refine_sensor_from_rig = False
    opt.ba_global_max_refinements = int(t["ba_max_refinements"])
    opt.mapper.filter_max_reproj_error = float(t["filter_max_reproj_error"])
    opt.mapper.filter_min_tri_angle = float(t["min_angle"])
    opt.mapper.num_threads = threads
    tri = opt.triangulation
    tri.min_angle = float(t["min_angle"])
    tri.create_max_angle_error = float(t["create_max_angle_error"])
    tri.continue_max_angle_error = float(t["continue_max_angle_error"])
    tri.merge_max_reproj_error = float(t["merge_max_reproj_error"])
    tri.complete_max_reproj_error = float(t["complete_max_reproj_error"])
    tri.ignore_two_view_tracks = bool(t["ignore_two_view_tracks"])
    tri.random_seed = int(cfg["matching"]["ransac_seed"])
    return opt


def _write_frames(
    row: dict[str, Any], indices: list[int], size: tuple[int, int], image_dir: Path
) -> list[str]:
    """Decode (and shrink) the selected frames into the scratch folder; names sort by index so
    ``import_images`` assigns image ids in frame order."""
    names = []
    image_dir.mkdir(parents=True, exist_ok=True)
    for idx, rgb in frame_io.iter_frames(row, indices, size):
        name = f"{idx:06d}{IMAGE_EXT}"
        ok = cv2.imwrite(
            str(image_dir / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_PNG_COMPRESSION, 0],
        )
        if not ok:
            raise OSError(f"cannot write scratch frame {image_dir / name}")
        names.append(name)
    return names


# ------------------------------------------------------------------------------ one clip
@dataclass(frozen=True)
class _ClipCameras:
    """A manifest row's cameras, checked: the frames taking part, every frame's orthonormal w2c
    (relative scale), the working size and the pixel K at that size."""

    clip: str
    indices: list[int]
    w2c_all: np.ndarray
    size: tuple[int, int]
    K: np.ndarray
    #: original / working resolution, to report (u, v) at the manifest's resolution
    scale_uv: tuple[float, float]

    @classmethod
    def from_row(cls, row: dict[str, Any], cfg: dict[str, Any]) -> _ClipCameras:
        clip = str(row["clip_id"])
        n = int(row["num_frames"])
        W, H = int(row["width"]), int(row["height"])
        indices = select_frames(n, cfg["frames"])
        if len(indices) < 2:
            raise ClipError(clip, f"needs >= 2 frames to triangulate, has {len(indices)} selected")
        if len(row["w2c"]) != n:
            raise ClipError(clip, f"manifest has {len(row['w2c'])} poses for {n} frames")
        w2c_all = np.asarray(row["w2c"], dtype=np.float64).reshape(n, 3, 4)
        if not np.all(np.isfinite(w2c_all)):
            raise ClipError(clip, "non-finite w2c pose in manifest")
        w2c_all = cs.orthonormal_w2c(w2c_all)
        w, h = working_size(W, H, int(cfg["image"]["max_long_side"]))
        return cls(clip, indices, w2c_all, (w, h), pixel_K(row["intrinsics"], w, h),
                   (W / w, H / h))


@dataclass
class _Database:
    """What triangulation needs from the feature database: images in name order, the one
    camera, and every image's keypoint positions by point2D_idx."""

    images: list[Any]
    cameras: list[Any]
    kp_xy: dict[int, np.ndarray]
    n_kp: int

    @classmethod
    def read(cls, db_path: Path, clip: str, n_names: int) -> _Database:
        db = pycolmap.Database.open(str(db_path))
        try:
            images = sorted(db.read_all_images(), key=lambda im: im.name)
            cameras = db.read_all_cameras()
            # keypoint positions by point2D_idx (same order as the model's points2D): one array
            # read per image instead of one Python object per observation
            kp_xy = {im.image_id: np.asarray(db.read_keypoints(im.image_id), np.float64)[:, :2]
                     for im in images}
            n_kp = int(sum(len(x) for x in kp_xy.values()))
        finally:
            db.close()
        if len(images) != n_names or len(cameras) != 1:
            raise ClipError(clip, f"database holds {len(images)} images / {len(cameras)} cameras, "
                                  f"expected {n_names} / 1")
        return cls(images, cameras, kp_xy, n_kp)


def _extract_features(cam: _ClipCameras, db_path: Path, image_dir: Path, names: list[str],
                      cfg: dict[str, Any], threads: int) -> None:
    """A database with the frames imported under the clip's one pinhole camera, then SIFT."""
    K = cam.K
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "PINHOLE"
    params = (K[0, 0], K[1, 1], K[0, 2], K[1, 2])
    reader.camera_params = ",".join(repr(float(x)) for x in params)
    pycolmap.Database.open(str(db_path)).close()  # the path-based calls need it to exist
    # import first: ids follow name order (extraction alone numbers images as threads finish)
    pycolmap.import_images(db_path, image_dir, pycolmap.CameraMode.SINGLE, names, reader)
    pycolmap.extract_features(
        db_path, image_dir, names, pycolmap.CameraMode.SINGLE, reader,
        _extraction_options(cfg, threads), pycolmap.Device.cpu,
    )


def _match_and_verify(db_path: Path, cfg: dict[str, Any], threads: int, K: np.ndarray,
                      w2c_of: dict[int, np.ndarray]) -> Any:
    """Match the frame pairs; with ``verification=poses`` check them against the given poses
    (returns that check's figures, None for RANSAC verification)."""
    _match(db_path, cfg, threads)
    verification = cfg["matching"]["verification"]
    if verification == "poses":
        return cs.verify_with_poses(
            db_path, K, w2c_of, float(cfg["matching"]["max_epipolar_error"]),
            int(cfg["matching"]["min_num_inliers"]),
        )
    if verification != "ransac":
        raise ValueError("triangulate.matching.verification must be poses|ransac")
    return None


def _triangulate_fixed(cam: _ClipCameras, db: _Database, w2c_of: dict[int, np.ndarray],
                       paths: tuple[Path, Path, Path], cfg: dict[str, Any],
                       threads: int) -> pycolmap.Reconstruction:
    """Points triangulated with the given poses and intrinsics held fixed; raises if pycolmap
    changed either (the contract: cameras are inputs, never outputs). ``paths``: the database,
    the image folder and the work folder."""
    db_path, image_dir, work = paths
    rec = pycolmap.Reconstruction()
    pinhole = cs.pinhole_camera(cam.K, *cam.size, camera_id=db.cameras[0].camera_id)
    rec.add_camera_with_trivial_rig(pinhole)
    for im in db.images:
        rec.add_image_with_trivial_frame(
            pycolmap.Image(name=im.name, camera_id=pinhole.camera_id, image_id=im.image_id),
            cs.rigid_from_w2c(w2c_of[im.image_id]),
        )
    posed = {iid: cs.w2c_from_rigid(rec.image(iid).cam_from_world()) for iid in w2c_of}
    out_dir = work / "model"
    out_dir.mkdir()
    tri_threads = int(cfg["triangulation"]["num_threads"]) or threads
    rec = pycolmap.triangulate_points(
        rec, db_path, image_dir, out_dir, clear_points=True,
        options=_triangulation_options(cfg, tri_threads),
        refine_intrinsics=False,
    )
    for iid, before in posed.items():
        after = cs.w2c_from_rigid(rec.image(iid).cam_from_world())
        if not np.allclose(before, after, rtol=0, atol=1e-7):
            raise RuntimeError(f"pycolmap changed the pose of image {iid}: refinement is on")
    if not np.allclose(rec.camera(pinhole.camera_id).params, pinhole.params, rtol=0, atol=1e-9):
        raise RuntimeError("pycolmap changed the intrinsics: refinement is on")
    return rec


def triangulate_clip(
    row: dict[str, Any], cfg: dict[str, Any], scratch: str | Path | None = None,
    num_threads: int | None = None, stats: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Observations (OBSERVATIONS columns) of one manifest row; ``cfg`` = ``cfg["triangulate"]``.

    ``scratch`` is the parent of the per-clip scratch folder (``None``/"auto": tmpfs when
    available); the folder is always removed. ``stats`` (optional) receives per-clip figures
    (timings, counts, frames without observations). Raises ``ClipError`` with a specific
    reason when the clip cannot give enough points.
    """
    threads = int(num_threads if num_threads is not None else cfg["num_cpus"])
    stats = {} if stats is None else stats
    cam = _ClipCameras.from_row(row, cfg)
    root = cs.scratch_root(None if scratch is None else str(scratch))
    times = [time.perf_counter()]
    with cs.scratch_dir(root, f"tri_{cam.clip[:40]}_") as work:
        image_dir, db_path = work / "images", work / "database.db"
        names = _write_frames(row, cam.indices, cam.size, image_dir)
        times.append(time.perf_counter())
        _extract_features(cam, db_path, image_dir, names, cfg, threads)
        times.append(time.perf_counter())
        db = _Database.read(db_path, cam.clip, len(names))
        frame_of = {im.image_id: int(Path(im.name).stem) for im in db.images}
        w2c_of = {iid: cam.w2c_all[f] for iid, f in frame_of.items()}
        pair_stats = _match_and_verify(db_path, cfg, threads, cam.K, w2c_of)
        times.append(time.perf_counter())
        rec = _triangulate_fixed(cam, db, w2c_of, (db_path, image_dir, work), cfg, threads)
        times.append(time.perf_counter())
        df = _observations(cam.clip, rec, db.kp_xy, frame_of, w2c_of, cam.K, cam.scale_uv,
                           cfg["filters"])
    _clip_stats(stats, df, cam, db.n_kp, int(rec.num_points3D()), times, pair_stats)
    _require_points(stats, cam, db.n_kp, int(rec.num_points3D()), int(cfg["min_points"]))
    return df


def _clip_stats(stats: dict[str, Any], df: pd.DataFrame, cam: _ClipCameras, n_kp: int,
                points_raw: int, times: list[float], pair_stats: Any) -> None:
    """The per-clip figures into ``stats``: counts, frames without observations, and the
    decode / extract / match / triangulate times (``times``: the five stage boundaries)."""
    n_points = int(df["point_id"].nunique()) if len(df) else 0
    per_frame = df.groupby("frame_idx").size() if len(df) else pd.Series(dtype=int)
    frames_empty = [i for i in cam.indices if int(per_frame.get(i, 0)) == 0]
    t0, t_decode, t_extract, t_match, t_tri = times
    stats.update(
        frames_selected=len(cam.indices), size=list(cam.size), keypoints=n_kp,
        points_raw=points_raw, points=n_points, observations=int(len(df)),
        frames_without_obs=len(frames_empty),
        obs_per_frame_min=int(min((per_frame.get(i, 0) for i in cam.indices), default=0)),
        t_decode=t_decode - t0, t_extract=t_extract - t_decode, t_match=t_match - t_extract,
        t_triangulate=t_tri - t_match,
    )
    if pair_stats is not None:
        stats.update(pairs=pair_stats.pairs, pairs_kept=pair_stats.pairs_kept,
                     matches=pair_stats.matches, inliers=pair_stats.inliers)


def _require_points(stats: dict[str, Any], cam: _ClipCameras, n_kp: int, points_raw: int,
                    min_points: int) -> None:
    """Fail the clip, with the figures that say why, when too few points survived."""
    n_points = int(stats["points"])
    if n_points < min_points:
        w, h = cam.size
        raise ClipError(
            cam.clip,
            f"too few triangulated points: {n_points} < {min_points} after filters "
            f"({points_raw} before; {n_kp} keypoints in {len(cam.indices)} frames at "
            f"{w}x{h}; {stats.get('inliers', 'n/a')} verified matches)",
        )


def _observations(
    clip: str,
    rec: pycolmap.Reconstruction,
    kp_xy: dict[int, np.ndarray],
    frame_of: dict[int, int],
    w2c_of: dict[int, np.ndarray],
    K: np.ndarray,
    scale_uv: tuple[float, float],
    filt: dict[str, Any],
) -> pd.DataFrame:
    """Flatten the tracks into observations, apply the filters, renumber points canonically."""
    tracks = _flatten_tracks(rec, kp_xy)
    if tracks is None:
        return pd.DataFrame({c: pd.Series(dtype=OBSERVATIONS.field(c).type.to_pandas_dtype())
                             for c in OBS_COLUMNS})
    pids, img_ids, xy, X = tracks
    ids_sorted = sorted(w2c_of)
    lut = {iid: k for k, iid in enumerate(ids_sorted)}
    poses = np.stack([w2c_of[i] for i in ids_sorted])
    centres = -np.einsum("nji,nj->ni", poses[:, :, :3], poses[:, :, 3])
    k = np.array([lut[i] for i in img_ids])
    Xc = np.einsum("nij,nj->ni", poses[k, :, :3], X) + poses[k, :, 3]
    z = Xc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = (Xc @ K.T)[:, :2] / z[:, None]
    err = np.linalg.norm(proj - xy, axis=1)
    keep = (z > 0) & np.isfinite(err) & (err <= float(filt["max_reproj_error"]))
    # One observation per (point, frame): COLMAP can merge two keypoints of one image into a
    # track; keep the one that reprojects best so downstream keys are unique.
    keep &= _best_per_point_and_frame(pids, k, err)
    # track lengths and angles after dropping bad observations
    pids, k, xy, X, z, err = pids[keep], k[keep], xy[keep], X[keep], z[keep], err[keep]
    uniq, inv, tlen = np.unique(pids, return_inverse=True, return_counts=True)
    angle = _point_angles(len(uniq), inv, tlen, k, centres, X)
    good_pt = (tlen >= int(filt["min_track_len"])) & (angle >= float(filt["min_tri_angle"]))
    obs_keep = good_pt[inv]
    frame_idx = np.array([frame_of[ids_sorted[i]] for i in k], dtype=np.int32)[obs_keep]
    pid_old = pids[obs_keep]
    u = xy[obs_keep, 0] * scale_uv[0]
    v = xy[obs_keep, 1] * scale_uv[1]
    df = pd.DataFrame(
        {
            "clip_id": clip,
            "frame_idx": frame_idx,
            "point_id": _canonical_point_ids(pid_old, frame_idx, u, v),
            "u": u.astype(np.float32),
            "v": v.astype(np.float32),
            "z_cam": z[obs_keep].astype(np.float64),
            "track_len": tlen[inv][obs_keep].astype(np.int32),
            "reproj_err": err[obs_keep].astype(np.float32),
            "tri_angle": angle[inv][obs_keep].astype(np.float32),
        }
    )
    return df.sort_values(["frame_idx", "point_id"], kind="mergesort").reset_index(drop=True)


def _flatten_tracks(
    rec: pycolmap.Reconstruction, kp_xy: dict[int, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(point id, image id, keypoint xy, point xyz) per track element; None without points."""
    pids, img_ids, kp_idx, xyz_obs = [], [], [], []
    for pid, pt in rec.points3D.items():
        for el in pt.track.elements:
            pids.append(pid)
            img_ids.append(el.image_id)
            kp_idx.append(el.point2D_idx)
            xyz_obs.append(pt.xyz)
    if not pids:
        return None
    pids = np.asarray(pids, dtype=np.int64)
    img_ids = np.asarray(img_ids, dtype=np.int64)
    kp_idx = np.asarray(kp_idx, dtype=np.int64)
    xy = np.empty((len(pids), 2))
    for iid in np.unique(img_ids):
        sel = img_ids == iid
        xy[sel] = kp_xy[int(iid)][kp_idx[sel]]
    return pids, img_ids, xy, np.asarray(xyz_obs, dtype=np.float64)


def _point_angles(n_points: int, inv: np.ndarray, tlen: np.ndarray, k: np.ndarray,
                  centres: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Every point's largest ray angle (degrees) over its observations (``inv``: the point of
    each observation, ``k``: its camera), via per-point padded arrays of camera centres."""
    order = np.lexsort((k, inv))
    inv_o = inv[order]
    start = np.searchsorted(inv_o, np.arange(n_points))
    slot = np.arange(len(order)) - start[inv_o]
    L = int(tlen.max()) if len(tlen) else 0
    cen = np.zeros((n_points, max(L, 1), 3))
    mask = np.zeros((n_points, max(L, 1)), dtype=bool)
    cen[inv_o, slot] = centres[k[order]]
    mask[inv_o, slot] = True
    xyz_pt = np.zeros((n_points, 3))
    xyz_pt[inv] = X
    return max_triangulation_angle(cen, xyz_pt, mask)


def _canonical_point_ids(pid_old: np.ndarray, frame_idx: np.ndarray, u: np.ndarray,
                         v: np.ndarray) -> np.ndarray:
    """New point ids in a canonical order, by (first frame, u, v) of each point's first
    observation, so equal inputs give equal ids whatever order COLMAP created the points in."""
    first = pd.DataFrame({"p": pid_old, "f": frame_idx, "u": u, "v": v}).sort_values(
        ["p", "f", "u", "v"], kind="mergesort").groupby("p", sort=True).first()
    first = first.sort_values(["f", "u", "v"], kind="mergesort")
    new_id = pd.Series(np.arange(len(first), dtype=np.int64), index=first.index)
    return new_id.loc[pid_old].to_numpy()


def _best_per_point_and_frame(pids: np.ndarray, k: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Mask keeping, for every (point, image) pair, only the observation with the smallest
    reprojection error (ties: the first); NaN errors sort last."""
    order = np.lexsort((np.nan_to_num(err, nan=np.inf), k, pids))
    p_o, k_o = pids[order], k[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (p_o[1:] != p_o[:-1]) | (k_o[1:] != k_o[:-1])
    mask = np.zeros(len(order), dtype=bool)
    mask[order[first]] = True
    return mask
