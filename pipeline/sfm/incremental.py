"""Camera poses of a short video by pycolmap SfM with known, fixed intrinsics.

``evaluate.sfm.mapper`` picks the mapper: ``global`` (GLOMAP-style rotation averaging and global
positioning: every verified pair constrains every rotation at once, so no single initial pair
can lock a short forward-moving clip into a wrong model) or ``incremental`` (COLMAP's).

This is the pose estimator of the camera-control benchmark: the protocol runs SfM on each
generated video, with the intrinsics the video was generated for, several times with different
seeds (SfM is random: RANSAC samples, initial pair), and counts failures. Intrinsics are fixed
(no focal or principal-point refinement) so that SfM cannot trade a wrong focal length for a
wrong trajectory. Everything happens in a scratch folder (tmpfs when available) that is always
removed; one call is one trial.

A trial fails, with a reason, when SfM reconstructs nothing or leaves any frame unregistered:
the metrics compare whole trajectories, and dropping frames would flatter a bad video.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pycolmap

from pipeline.sfm import colmap_scene as cs

IMAGE_EXT = ".png"  # lossless, like triangulation: JPEG artefacts move keypoints


class SfmFailure(RuntimeError):
    """A trial SfM could not complete; the message is the reason recorded for it."""


@dataclass
class SfmResult:
    w2c: np.ndarray  # (N, 3, 4) world-to-camera per input frame, SfM's arbitrary world and scale
    num_points: int
    stats: dict[str, Any] = field(default_factory=dict)
    #: mean reprojection error of the model (pixels): a trial-quality signal for the consensus
    reproj_error: float = float("nan")
    #: frame 0's observations of the model's points: u, v (pixels) and z_cam (SfM units), for
    #: the published protocol's metric scale (median of metric depth / SfM depth on frame 0)
    frame0_obs: dict[str, np.ndarray] = field(default_factory=dict)


def write_frames(frames: Sequence[np.ndarray], image_dir: Path) -> list[str]:
    """RGB uint8 frames -> ``000000.png``...; names sort in frame order (database ids follow)."""
    image_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i, rgb in enumerate(frames):
        name = f"{i:06d}{IMAGE_EXT}"
        ok = cv2.imwrite(str(image_dir / name), cv2.cvtColor(np.ascontiguousarray(rgb),
                                                               cv2.COLOR_RGB2BGR),
                         [cv2.IMWRITE_PNG_COMPRESSION, 0])
        if not ok:
            raise OSError(f"cannot write scratch frame {image_dir / name}")
        names.append(name)
    return names


def _extraction(cfg: dict[str, Any], threads: int) -> pycolmap.FeatureExtractionOptions:
    opt = pycolmap.FeatureExtractionOptions()
    opt.num_threads = threads
    opt.use_gpu = False
    opt.max_image_size = -1  # frames arrive at the evaluation resolution; K matches them
    opt.sift.max_num_features = int(cfg["sift"]["max_num_features"])
    opt.sift.first_octave = int(cfg["sift"]["first_octave"])
    return opt


def _match(db_path: Path, cfg: dict[str, Any], seed: int, threads: int) -> None:
    m = cfg["matching"]
    mopt = pycolmap.FeatureMatchingOptions()
    mopt.num_threads = threads
    mopt.use_gpu = False
    mopt.sift.max_ratio = float(m["max_ratio"])
    mopt.sift.cross_check = True
    vopt = pycolmap.TwoViewGeometryOptions()
    vopt.min_num_inliers = int(m["min_num_inliers"])
    vopt.ransac.max_error = float(m["ransac_max_error"])
    vopt.ransac.random_seed = int(seed)
    vopt.ransac.num_threads = 1
    if m["mode"] == "exhaustive":
        pycolmap.match_exhaustive(db_path, mopt, pycolmap.ExhaustivePairingOptions(), vopt,
                                  pycolmap.Device.cpu)
    elif m["mode"] == "sequential":
        popt = pycolmap.SequentialPairingOptions()
        popt.overlap = int(m["overlap"])
        popt.quadratic_overlap = True
        popt.loop_detection = False
        popt.num_threads = threads
        pycolmap.match_sequential(db_path, mopt, popt, vopt, pycolmap.Device.cpu)
    else:
        raise ValueError(f"evaluate.sfm.matching.mode must be exhaustive|sequential, "
                         f"got {m['mode']!r}")


def _mapper_options(
    cfg: dict[str, Any], seed: int, threads: int
) -> pycolmap.IncrementalPipelineOptions:
    opt = pycolmap.IncrementalPipelineOptions()
    opt.num_threads = threads
    opt.random_seed = int(seed)
    opt.extract_colors = False
    opt.multiple_models = False  # one model: a split reconstruction is a failed trial
    opt.min_model_size = int(cfg["min_model_size"])
    opt.min_num_matches = int(cfg["matching"]["min_num_inliers"])
    opt.init_num_trials = int(cfg["init_num_trials"])
    # known intrinsics: the generated video was made for these; nothing may refine them
    opt.ba_refine_focal_length = False
    opt.ba_refine_principal_point = False
    opt.ba_refine_extra_params = False
    opt.mapper.num_threads = threads
    opt.mapper.random_seed = int(seed)
    opt.mapper.init_min_tri_angle = float(cfg["init_min_tri_angle"])
    opt.triangulation.random_seed = int(seed)
    return opt


def _global_options(cfg: dict[str, Any], seed: int, threads: int
                    ) -> pycolmap.GlobalPipelineOptions:
    """GLOMAP-style global mapping (rotation averaging, then global positioning), intrinsics
    held fixed like the incremental mapper's."""
    opt = pycolmap.GlobalPipelineOptions()
    opt.num_threads = threads
    opt.random_seed = int(seed)
    opt.multiple_models = False
    opt.min_model_size = int(cfg["min_model_size"])
    opt.min_num_matches = int(cfg["matching"]["min_num_inliers"])
    opt.mapper.num_threads = threads
    opt.mapper.random_seed = int(seed)
    ba = opt.mapper.bundle_adjustment
    ba.refine_focal_length = False
    ba.refine_principal_point = False
    ba.refine_extra_params = False
    ba.ceres.use_gpu = False
    return opt


def _map(db_path: Path, image_dir: Path, out_dir: Path, cfg: dict[str, Any], seed: int,
         threads: int) -> dict[int, pycolmap.Reconstruction]:
    """The mapper ``evaluate.sfm.mapper`` names: incremental (COLMAP) or global (GLOMAP)."""
    mapper = str(cfg["mapper"])
    if mapper == "incremental":
        return pycolmap.incremental_mapping(db_path, image_dir, out_dir,
                                            _mapper_options(cfg, seed, threads))
    if mapper == "global":
        if not hasattr(pycolmap, "global_mapping"):
            raise ValueError("evaluate.sfm.mapper=global needs pycolmap >= 3.12 (global_mapping)")
        return pycolmap.global_mapping(db_path, image_dir, out_dir,
                                       _global_options(cfg, seed, threads))
    raise ValueError(f"evaluate.sfm.mapper must be incremental|global, got {mapper!r}")


def frame_observations(rec: pycolmap.Reconstruction, image: Any) -> dict[str, np.ndarray]:
    """u, v (pixels) and camera depth z of every model point ``image`` observes."""
    R = np.asarray(image.cam_from_world().rotation.matrix())
    t = np.asarray(image.cam_from_world().translation)
    uv, xyz = [], []
    for p2d in image.points2D:
        if p2d.has_point3D():
            uv.append(np.asarray(p2d.xy, np.float64))
            xyz.append(np.asarray(rec.points3D[p2d.point3D_id].xyz, np.float64))
    if not uv:
        return {"u": np.zeros(0), "v": np.zeros(0), "z_cam": np.zeros(0)}
    uv_a, z = np.stack(uv), (np.stack(xyz) @ R.T + t)[:, 2]
    return {"u": uv_a[:, 0], "v": uv_a[:, 1], "z_cam": z}


def estimate_poses(
    frames: Sequence[np.ndarray],
    K: np.ndarray,
    cfg: dict[str, Any],
    seed: int,
    scratch_root: str | None = None,
    num_threads: int = 1,
) -> SfmResult:
    """One SfM trial on RGB frames (all the same size) with pixel intrinsics ``K``.

    ``cfg`` is ``evaluate.sfm``. Raises ``SfmFailure`` with a specific reason when the
    reconstruction is missing or incomplete.
    """
    n = len(frames)
    if n < 2:
        raise SfmFailure(f"needs >= 2 frames, got {n}")
    h, w = frames[0].shape[:2]
    threads = max(1, int(num_threads))
    t0 = time.perf_counter()
    with cs.scratch_dir(cs.scratch_root(scratch_root), "sfm_") as work:
        image_dir, db_path, out_dir = work / "images", work / "database.db", work / "sparse"
        names = write_frames(frames, image_dir)
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = "PINHOLE"
        reader.camera_params = ",".join(repr(float(x)) for x in (K[0, 0], K[1, 1], K[0, 2],
                                                                  K[1, 2]))
        pycolmap.Database.open(str(db_path)).close()
        pycolmap.import_images(db_path, image_dir, pycolmap.CameraMode.SINGLE, names, reader)
        pycolmap.extract_features(db_path, image_dir, names, pycolmap.CameraMode.SINGLE, reader,
                                  _extraction(cfg, threads), pycolmap.Device.cpu)
        _match(db_path, cfg, seed, threads)
        t_match = time.perf_counter()
        out_dir.mkdir()
        models = _map(db_path, image_dir, out_dir, cfg, seed, threads)
        t_map = time.perf_counter()
        if not models:
            raise SfmFailure(f"SfM reconstructed nothing from {n} frames at {w}x{h} "
                             "(no initial pair with enough verified matches)")
        rec = max(models.values(), key=lambda r: r.num_reg_images())
        by_name = {im.name: im for im in rec.images.values() if im.has_pose}
        missing = [i for i, name in enumerate(names) if name not in by_name]
        if missing:
            raise SfmFailure(
                f"SfM registered {n - len(missing)} of {n} frames "
                f"(unregistered: {', '.join(str(i) for i in missing[:8])}"
                f"{'...' if len(missing) > 8 else ''})"
            )
        cam = rec.camera(by_name[names[0]].camera_id)
        if not np.allclose(cam.params, [K[0, 0], K[1, 1], K[0, 2], K[1, 2]], rtol=0, atol=1e-6):
            raise RuntimeError("pycolmap changed the fixed intrinsics: refinement is on")
        w2c = np.stack([cs.w2c_from_rigid(by_name[name].cam_from_world()) for name in names])
        num_points = int(rec.num_points3D())
        reproj = float(rec.compute_mean_reprojection_error())
        obs0 = frame_observations(rec, by_name[names[0]])
    return SfmResult(
        w2c=w2c, num_points=num_points, reproj_error=reproj, frame0_obs=obs0,
        stats={"t_features_matching": t_match - t0, "t_mapping": t_map - t_match,
               "models": len(models)},
    )
