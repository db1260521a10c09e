"""Typed schemas of the configuration: the one place for every setting's default, type and
allowed values, checked when the config is composed (before any work).

Each section is a keyword-only dataclass (``@schema``): one line per key, ``name: type = default``
with a ``#:`` comment saying what it does and why the default is what it is. ``Literal`` types
list the choices and ``Annotated[..., Range(...)]`` the allowed interval. ``register_defaults``
hands the defaults to Hydra, so the YAML files under ``conf/`` only compose and override them
(``conf/config.yaml`` starts from ``settings_defaults``; a depth option extends
``<option>_defaults``); a dataset file describes one dataset and states every key without a
default. ``validate`` walks a composed section against its schema and raises one line naming
the key, the value and what is allowed; a key no schema declares is refused.

Code reads settings through the typed view ``Settings(cfg)`` (attribute access). Stages that
live outside this module add schemas for their own sections with
``Stage.settings = {"section": Dataclass}``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union


@dataclass(frozen=True)
class Range:
    """Allowed interval: ``lo <= v`` (or ``<``), ``v <= hi`` (or ``<``); None = unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return True

    def text(self) -> str:
        lo = "" if self.lo is None else ("(" if self.lo_open else "[") + f"{self.lo:g}"
        hi = "" if self.hi is None else f"{self.hi:g}" + (")" if self.hi_open else "]")
        if self.lo is not None and self.hi is not None:
            return f"in {lo}, {hi}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"{'<' if self.hi_open else '<='} {self.hi:g}"


POS_INT = Annotated[int, Range(1)]
NONNEG_INT = Annotated[int, Range(0)]
POS_FLOAT = Annotated[float, Range(0, lo_open=True)]


NONNEG_FLOAT = Annotated[float, Range(0)]
FRACTION = Annotated[float, Range(0, 1)]
LOG_LEVEL = Annotated[int, Range(0, 3)]  # COLMAP (glog) threshold: 0 info, 1 warning, 2 error
DTYPE = Literal["bfloat16", "float16", "float32"]


def schema(cls: type) -> type:
    """A settings section: a keyword-only dataclass, so a key is one line, ``name: type = value``
    with its default, in any order."""
    return dataclass(kw_only=True)(cls)


# ---------------------------------------------------------------------- engine sections
@schema
class Paths:
    #: every stage writes under here; relative to the current directory, or s3://bucket/prefix
    #: (README: Running on a cluster); ~ = each node's home
    work_dir: str = "work"


@schema
class Storage:
    """Object storage (s3://, gs://); credentials never go here (AWS env/profile)."""

    #: a wrong endpoint fails the pre-flight after this long
    connect_timeout_s: POS_FLOAT = 10.0
    #: gs:// retries transient errors for this long (no per-request timeout)
    request_timeout_s: POS_FLOAT = 60.0
    #: true: read public gs:// buckets without Google credentials
    gcs_anonymous: bool = False
    #: S3 run lock: lease lifetime, renewed every third of it; a killed driver's lease is taken
    #: over by the next run after this long (at once from the driver's own host, where its pid is
    #: seen to be gone)
    lock_ttl_s: Annotated[float, Range(1)] = 120.0


@schema
class Shards:
    #: clips per shard on average: the unit of resume, retry and parallelism
    size: POS_INT = 4
    #: a shard never exceeds max_factor * size clips (boundaries come from clip-id hashes, so
    #: adding a clip changes only its own shard)
    max_factor: POS_INT = 4


@schema
class StageChoice:
    #: all = the data pipeline (ingest -> curate); or any registered stage (checked against the
    #: stage registry by ``pipeline.config.check``)
    name: str = "all"


@schema
class Retry:
    #: a shard that crashed or had clips hit unexpected errors is retried on later runs until it
    #: has been attempted this often (force=true resets)
    max_attempts: POS_INT = 3


@schema
class Models:
    #: before a run, model weights not cached locally are looked up on the Hugging Face hub; an
    #: unreachable hub fails the run after this long
    hub_timeout_s: POS_FLOAT = 10.0


@schema
class Log:
    #: console and <work_dir>/logs/run.log
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: without a terminal: one progress line per this many seconds
    progress_every_s: POS_FLOAT = 30.0


@schema
class Ray:
    #: null: start a local Ray; "auto" or "host:port": join a cluster
    address: str | None = None
    #: local Ray only; null = all cores
    num_cpus: POS_INT | None = None
    #: local Ray only; null = autodetect
    num_gpus: NONNEG_INT | None = None
    #: bytes, local Ray only; shards move paths, not frames
    object_store_memory: POS_INT | None = 200000000
    #: shard tasks submitted at once; null = 2 x cluster CPUs
    max_in_flight: POS_INT | None = None
    #: DEFAULT packs nodes; SPREAD spreads shards over nodes
    scheduling_strategy: Literal["DEFAULT", "SPREAD"] = "DEFAULT"
    #: names of driver environment variables given to every task (e.g. [AWS_ENDPOINT_URL]);
    #: credentials are better left to each node's env/profile
    forward_env: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- dataset (one file each)
# A dataset file under conf/dataset/ describes one dataset, so it states every key without a
# default here; ``layout`` picks the schema.
@schema
class Dataset:
    name: str
    layout: Literal["re10k", "rgbd", "nerfstudio", "colmap"]
    #: where the dataset lives (??? = must be given: dataset.root=PATH)
    root: str
    #: the dataset's usual depth backend, used unless depth=... is given
    default_depth: Literal["da2_metric", "sensor"]
    #: keep only the first N clips (sorted ids): smoke runs
    limit: POS_INT | None
    #: synthetic datasets: their definition file (relative to the project root), rendered into
    #: ``root`` on first use
    definition: str | None = None


@schema
class Re10kDataset(Dataset):
    splits: list[str]
    #: <frames_root>/[<split>/]<clip_id>/<timestamp>.png|jpg
    frames_root: str | None = None
    #: <videos_root>/[<split>/][<video_id>/]<clip_id>.mp4
    videos_root: str | None = None
    #: optional per-frame metric depth (.npy, metres)
    depth_root: str | None = None
    #: optional file (one clip id a line) restricting the clips
    clip_list: str | None = None
    #: <source_videos>/<video_id>.<ext> (video_id from the pose file's URL line): the whole
    #: source video decoded at the pose timestamps, instead of frames_root / videos_root
    source_videos: str | None = None
    #: source-video extensions, tried in this order
    source_video_extensions: list[str] = field(
        default_factory=lambda: ["mp4", "webm", "mkv", "avi"])
    #: a video id must match this (a safe file name)
    video_id_pattern: str = "^[A-Za-z0-9_-]{1,64}$"


@schema
class RgbdDataset(Dataset):
    split: str
    #: frames per clip; a shorter tail is dropped
    clip_length: Annotated[int, Range(2)]
    #: take every k-th frame inside a clip
    clip_stride: POS_INT
    #: translations are multiplied by this (emulates SfM's unknown scale)
    relative_scale: POS_FLOAT
    #: metres per unit of a depth image
    depth_unit: POS_FLOAT


@schema
class NerfstudioDataset(RgbdDataset):
    #: true: the poses are in metres, so true_scale = 1/relative_scale is recorded as the truth
    poses_metric: bool
    #: timestamps given to the ordered frames (30 fps capture)
    frame_interval_us: POS_INT


@schema
class ColmapDataset(Dataset):
    split: str
    #: relative to the scene folder
    images_dir: str
    #: relative to the scene folder: one model, or numbered sub-models 0/, 1/ ...
    sparse_dir: str
    #: optional <scene>/<depth_dir>/<image name without extension>.png|.npy, for depth=sensor
    depth_dir: str | None
    #: translations are multiplied by this (tests emulate an unknown scale)
    relative_scale: POS_FLOAT
    #: true: the model is in metres, so true_scale = 1/relative_scale is recorded as the truth
    poses_metric: bool
    #: metres per unit of a depth image
    depth_unit: POS_FLOAT
    #: timestamps given to the ordered frames (30 fps capture)
    frame_interval_us: POS_INT


# ---------------------------------------------------------------------- download
@schema
class Download:
    """``python -m pipeline download`` (docs/ingest.md): the source video of every pose file
    under dataset.root (dataset=re10k), for dataset.source_videos."""

    #: <output_dir>/<video_id>.<ext>; null = <dataset.root>/source_videos
    output_dir: str | None = None
    #: largest video height fetched from YouTube (frames are shrunk anyway)
    max_height: POS_INT = 720
    #: videos fetched at the same time (threads)
    workers: POS_INT = 4
    #: attempts per video in one run when the network fails
    retries: POS_INT = 3
    #: wait before the second attempt, doubled before each further one
    retry_wait_s: NONNEG_FLOAT = 2.0
    #: socket timeout of one request
    timeout_s: POS_FLOAT = 60.0
    #: e.g. http://mirror/{video_id}.mp4: a plain HTTP mirror instead of YouTube
    url_template: str | None = None
    #: container asked of YouTube; a mirror's file keeps its URL's extension
    ext: str = "mp4"
    #: bytes read per write while streaming a mirror's file
    chunk_bytes: POS_INT = 1048576
    #: true: try again videos the ledger marks unavailable/private/geo-blocked
    retry_permanent: bool = False


# ---------------------------------------------------------------------- stage sections
@schema
class Ingest:
    """Validation and discovery settings of stages/ingest.py."""

    #: safe file names only (no traversal)
    clip_id_pattern: str = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
    #: max |R R^T - I| entry, and |det R - 1|, for any pose
    rotation_tolerance: POS_FLOAT = 1.0e-3
    #: max change of a normalised intrinsic within one clip
    intrinsics_tolerance: POS_FLOAT = 1.0e-6
    #: fewer poses than this is a per-clip error
    min_frames: Annotated[int, Range(2)] = 2
    image_extensions: list[str] = field(default_factory=lambda: ["png", "jpg", "jpeg"])
    #: all: decode every frame at ingest | ends: first and last only
    verify_frames: Literal["all", "ends"] = "all"
    #: timestamps given to RGB-D frames (30 fps capture)
    rgbd_frame_interval_us: POS_INT = 33333


@schema
class TriangulateFrames:
    #: frames that take part (others: no observations)
    mode: Literal["all", "every_k", "max_n"] = "max_n"
    #: mode every_k: keep 0, k, 2k, ... and the last frame
    every_k: POS_INT = 1
    #: mode max_n: at most this many, evenly spread, first and last included (bounds the cost of
    #: long clips; skipped frames get interpolated factors). Fewer frames, longer baselines within
    #: the matching window: on the real clips longer than 32 frames 32 beat 64 on 5 and lost
    #: <= 0.15 pp on 3, at 40-60% less CPU (docs/accuracy.md); 16 lost 0.8-2.7 pp on whole
    #: sequences. Earlier, 64 vs 100: errors +0.60/+0.27% vs -2.83/+0.68%.
    max_n: Annotated[int, Range(2)] = 32


@schema
class TriangulateImage:
    #: shrink frames so the long side is at most this (0 = original size)
    max_long_side: NONNEG_INT = 640


@schema
class TriangulateSift:
    #: COLMAP default 8192; matching cost grows with it (2048 lost 6 pp on a real 25-frame
    #: kitchen clip with few points)
    max_num_features: POS_INT = 4096
    #: 0 = start at the working size; COLMAP's -1 upsamples 2x (~4x cost)
    first_octave: Annotated[int, Range(-1)] = 0
    num_octaves: POS_INT = 4
    #: COLMAP default (0.02 / octave_resolution)
    peak_threshold: POS_FLOAT = 0.006666666666666667
    max_num_orientations: POS_INT = 2
    upright: bool = False


@schema
class TriangulateMatching:
    #: sequential (window of neighbours) | exhaustive (all pairs)
    mode: Literal["sequential", "exhaustive"] = "sequential"
    #: 0 = the task's CPUs; with >1, COLMAP's matcher returns slightly different matches from run
    #: to run (1 is deterministic, same CPU-s)
    num_threads: NONNEG_INT = 1
    #: sequential: match each frame with this many following frames
    overlap: POS_INT = 10
    #: sequential: also frames i + 2^k (k < overlap): long baselines on slow clips, where
    #: neighbours alone see too little parallax
    quadratic_overlap: bool = True
    #: Lowe ratio test
    max_ratio: Annotated[float, Range(0, 1, lo_open=True)] = 0.8
    #: max descriptor distance (COLMAP default)
    max_distance: POS_FLOAT = 0.7
    cross_check: bool = True
    #: true: exact nearest neighbours, ~5x the CPU of the default index
    cpu_brute_force: bool = False
    max_num_matches: POS_INT = 32768
    #: ransac: COLMAP's two-view RANSAC, independent of the given poses (real SLAM poses are off
    #: by pixels) | poses: Sampson distance under the F known from the poses (exact poses only:
    #: synthetic data)
    verification: Literal["ransac", "poses"] = "ransac"
    #: poses: max Sampson distance, pixels at the working resolution
    max_epipolar_error: POS_FLOAT = 2.0
    #: ransac: COLMAP's two-view RANSAC threshold (pixels)
    ransac_max_error: POS_FLOAT = 4.0
    #: fixed seed for every COLMAP random choice: deterministic output
    ransac_seed: NONNEG_INT = 0
    #: pairs with fewer verified matches are ignored
    min_num_inliers: NONNEG_INT = 15


@schema
class TriangulateTriangulation:
    """COLMAP IncrementalTriangulator / mapper filters."""

    #: 0 = the task's CPUs; >1 lets the point refinement sum in varying order: last-bit z_cam
    #: differences between runs (~5% of the CPU)
    num_threads: NONNEG_INT = 1
    #: degrees, needed to create a point
    min_angle: NONNEG_FLOAT = 1.5
    create_max_angle_error: POS_FLOAT = 2.0
    continue_max_angle_error: POS_FLOAT = 2.0
    merge_max_reproj_error: POS_FLOAT = 4.0
    complete_max_reproj_error: POS_FLOAT = 4.0
    filter_max_reproj_error: POS_FLOAT = 4.0
    ignore_two_view_tracks: bool = True
    #: point-only refinement rounds (poses and intrinsics stay fixed)
    ba_max_refinements: NONNEG_INT = 5


@schema
class TriangulateFilters:
    """Applied to COLMAP's output, per observation / per point."""

    #: pixels at the working resolution; worse observations are dropped
    max_reproj_error: POS_FLOAT = 4.0
    #: observations per point left after the reprojection filter
    min_track_len: POS_INT = 2
    #: degrees: largest angle between any two rays of the point (depth noise grows as 1/angle;
    #: 2.0 beat 0 and 1.5 on redkitchen per frame)
    min_tri_angle: NONNEG_FLOAT = 2.0


@schema
class Triangulate:
    """Triangulation with fixed poses (pipeline/sfm/triangulation.py). Defaults chosen with
    bench/bench_accuracy.py on real RGB-D captures (../shared/data/rgbd, whole and 25-frame
    clips) and the synthetic stress set, against COLMAP's default configuration: see
    docs/accuracy.md for both sides and the CPU ratio."""

    #: Ray CPUs per shard task; COLMAP's num_threads follows it exactly
    num_cpus: POS_INT = 1
    #: parent of per-clip scratch (frames + database); auto: /dev/shm if writable, else the
    #: system temp folder
    scratch_dir: str = "auto"
    frames: TriangulateFrames = field(default_factory=TriangulateFrames)
    image: TriangulateImage = field(default_factory=TriangulateImage)
    sift: TriangulateSift = field(default_factory=TriangulateSift)
    matching: TriangulateMatching = field(default_factory=TriangulateMatching)
    triangulation: TriangulateTriangulation = field(default_factory=TriangulateTriangulation)
    filters: TriangulateFilters = field(default_factory=TriangulateFilters)
    #: a clip with fewer points fails with a reason (no usable scale)
    min_points: NONNEG_INT = 50
    #: COLMAP log threshold in workers: 0 info, 1 warning, 2 error
    log_level: LOG_LEVEL = 1


@schema
class DepthModel:
    """Depth Anything V2 metric (transformers), ``depth=da2_metric``. Change ``model`` to pick
    another checkpoint: ...-Metric-Indoor-{Small,Base,Large}-hf (max_depth 20) or
    ...-Metric-Outdoor-{Small,Base,Large}-hf (max_depth 80); a local directory works too."""

    backend: Literal["da2_metric"] = "da2_metric"
    #: hub id or local directory
    model: str = "depth-anything/Depth-Anything-V2-Metric-Indoor-Large-hf"
    #: hub revision (commit/tag) to pin; null = default branch
    revision: str | None = None
    #: true: never contact the hub (use the local HF cache / directory only)
    local_files_only: bool = False
    #: metres; forced into the metric head (20 indoor, 80 outdoor)
    max_depth: POS_FLOAT = 20.0
    #: images per forward; halved automatically on CUDA out-of-memory
    batch_size: POS_INT = 16
    #: autocast dtype on GPU
    dtype: DTYPE = "bfloat16"
    #: processor: the image processor, in the prefetch threads (reference); device: resize +
    #: normalise batched on the GPU (matches it to ~1 grey level, keeps a fast GPU fed); auto:
    #: device on GPU, processor on CPU
    preprocess: Literal["auto", "processor", "device"] = "auto"
    #: on CPU actors (bf16 autocast on CPU is slower on most machines)
    cpu_dtype: DTYPE = "float32"
    #: auto: one actor per GPU, CPU actors if the cluster has none; cuda; cpu
    device: Literal["auto", "cuda", "cpu"] = "auto"
    #: null: one per GPU (GPU) / cpu_actors (CPU fallback)
    num_actors: POS_INT | None = None
    #: actors when running on CPU (each uses cpus_per_actor cores)
    cpu_actors: POS_INT = 1
    #: Ray CPUs reserved per actor: decode/preprocess threads run in them
    cpus_per_actor: POS_INT = 2
    #: threads decoding + preprocessing frames while the model runs
    prefetch_workers: POS_INT = 2
    #: ready batches queued ahead of the model
    prefetch_batches: POS_INT = 2
    #: seconds: actors must be up (model loaded) by then, else a clear error
    startup_timeout_s: POS_FLOAT = 900
    #: actor restarts after a crash (reloads the model)
    max_restarts: NONNEG_INT = 1
    #: keep a low-resolution depth map of each clip's first processed frame
    preview: bool = True
    #: pixels; height follows the aspect ratio
    preview_width: POS_INT = 128


@schema
class DepthSensor:
    """The dataset's own metric depth (synthetic ground truth, RGB-D depth PNGs),
    ``depth=sensor``. Validation path and a real feature for posed RGB-D captures."""

    backend: Literal["sensor"] = "sensor"
    #: bilinear: interpolate only where every neighbouring pixel with a non-zero weight holds a
    #: measurement (else invalid), so holes (0 = missing) are never blended into a depth;
    #: nearest: the pixel containing (u, v); invalid where that pixel is a hole.
    interpolation: Literal["bilinear", "nearest"] = "bilinear"
    #: metres; larger sensor values are flagged invalid
    max_depth: POS_FLOAT = 100.0
    #: Ray CPUs per shard task
    cpus_per_task: POS_INT = 1
    #: keep a low-resolution depth map of each clip's first processed frame
    preview: bool = True
    #: pixels; height follows the aspect ratio
    preview_width: POS_INT = 128


#: ``depth=<option>`` -> its schema (the option's file under conf/depth/ only overrides it)
DEPTH_BACKENDS: dict[str, type] = {"da2_metric": DepthModel, "sensor": DepthSensor}


@schema
class AlignUncertainty:
    #: point-bootstrap replicates (0 = off: scale_sigma is NaN)
    bootstrap: NONNEG_INT = 200
    #: fixed: the same inputs give the same interval
    seed: NONNEG_INT = 0
    # The three gains were fitted with bench/bench_accuracy.py on the real RGB-D clips (whole and
    # 25-frame) and the stress set together: every clip off by more than 5% gets an interval
    # wider than curate.max_uncertainty, while the fewest good clips do (docs/accuracy.md).
    #: systematic term: gain * (reprojection residual / focal) / tri. angle
    gain: NONNEG_FLOAT = 0.7
    #: systematic floor (relative), in quadrature
    floor: NONNEG_FLOAT = 0.005
    #: frame-disagreement term: gain * sqrt(pi/2) * sd(log frame) / sqrt(n_eff)
    frames_gain: NONNEG_FLOAT = 0.5
    # Intrinsics term: |scale_focal_sensitivity| x hypot(focal_sigma, focal_check_gain x
    # max(0, |log(1 + focal_consistency)| - focal_check_tolerance)) (docs/output_columns.md,
    # "Intrinsics"). A 2% focal error moves a pan's scale by 6-12% and nothing else in the interval
    # sees it. The check (on by default) flags both 2%-focal-error stress clips (-6.2%, -10.6%;
    # without it both were kept at +-1.2-1.4%) and on the benchmark flags one more good real
    # clip (redkitchen-seq clip 200, -3.0%); a prior instead (focal_sigma 0.01, no check)
    # flagged 10 of 16 stress clips.
    #: prior sd of the relative focal-length error (0 = off; the sensitivity column is always
    #: written)
    focal_sigma: NONNEG_FLOAT = 0.0
    #: relative focal change of the sensitivity's central difference
    focal_step: POS_FLOAT = 0.02
    #: x the focal change that best fits the tracks under the fixed poses (focal_consistency;
    #: 0 = not computed, column NaN)
    focal_check_gain: NONNEG_FLOAT = 1.0
    #: focal check: relative range searched (+-)
    focal_search: POS_FLOAT = 0.15
    #: focal check: grid step before the parabola refinement
    focal_search_step: POS_FLOAT = 0.01
    #: focal check: reprojection error cap (px, original resolution)
    focal_cap_px: POS_FLOAT = 4.0
    #: focal check: the part of |log(1 + focal_consistency)| below this is the check's own noise
    #: and adds 0: 1.5x its bias on exact synthetic pans (+0.5%); 1% let the 2%-error rotation
    #: pan through
    focal_check_tolerance: NONNEG_FLOAT = 0.0075


@schema
class AlignShrinkage:
    #: false: frame_scale = the raw per-frame medians (the seed recipe)
    enabled: bool = True
    #: error sd (log) every frame factor carries from its own pose
    frame_sigma: POS_FLOAT = 0.04
    #: largest real frame-to-frame scale variation believed (log sd). 0.01: per-frame error
    #: p90 <= 2x the clip error on every kept real clip (0.03 missed it on 4 of 13: frames
    #: disagreeing through pose error, not scale); on the stress set's per-frame depth-bias clips
    #: (2.6% sd) the estimated tau is 0 at 0.03 as at 0.01, so nothing measured is lost
    max_tau: NONNEG_FLOAT = 0.01


@schema
class Align:
    """Per-frame factor = median(depth(u, v) / z_cam) over a frame's valid observations, the clip
    factor = median of the measured frame factors, with an uncertainty and shrunk frame factors
    (pipeline/scale/factors.py, pipeline/scale/stats.py). Defaults chosen with
    bench/bench_accuracy.py."""

    #: frames with fewer valid ratios get an interpolated factor (flagged)
    min_obs_per_frame: NONNEG_INT = 10
    #: a clip with fewer frames reaching min_obs_per_frame fails
    min_measured_frames: POS_INT = 1
    #: optional: ignore points seen in fewer frames (null = keep all)
    min_track_len: POS_INT | None = None
    #: optional: ignore observations with a larger reprojection error (px)
    max_reproj_err: POS_FLOAT | None = None
    uncertainty: AlignUncertainty = field(default_factory=AlignUncertainty)
    shrinkage: AlignShrinkage = field(default_factory=AlignShrinkage)


@schema
class CurateReport:
    #: report.html + PNGs
    enabled: bool = True
    #: under <work_dir>/curated/; the '_' prefix makes Parquet readers skip it
    dir: str = "_report"
    #: histogram bins in the plots
    bins: POS_INT = 40
    dpi: POS_INT = 100
    #: most frequent failure reasons shown; the rest are summed as "other"
    max_failure_bars: POS_INT = 15


@schema
class Curate:
    """Dataset-wide quantile filter, metric relative poses, curated Parquet + metadata + report."""

    #: per tail, on clips' scale_max and (separately) scale_min; k = floor(q*n)
    quantile: Annotated[float, Range(0, 0.5, hi_open=True)] = 0.02
    #: drop clips whose 95% scale interval is wider than +-5% (rule "uncertainty", checked
    #: first); null = off (the seed paper's exact recipe)
    max_uncertainty: POS_FLOAT | None = 0.05
    #: under <work_dir>: Parquet files found in curated/ that no curate run wrote are moved here
    #: (curated/ must read as one table)
    quarantine_dir: str = "curated_quarantine"
    #: CamI2V/RealCam-I2V export dir under <work_dir>/curated/ ('_': readers skip it)
    compat_dir: str = "_compat"
    #: dtype of the per-frame arrays in compat/per_frame_scale.npz
    compat_dtype: Literal["float16", "float32", "float64"] = "float32"
    #: also write _compat/per_frame_scale_cami2v.npz: the exact pickled-dict file CamI2V and
    #: RealCam-I2V load (np.load(p, allow_pickle=True)["arr_0"].item())
    compat_cami2v_dict: bool = False
    #: RealCam-Vid-style table under compat_dir: per kept clip metric w2c relative to frame 0,
    #: factors, normalised intrinsics
    compat_realcam_vid: str = "realcam_vid.parquet"
    distribution_quantiles: list[FRACTION] = field(default_factory=lambda: [
        0.0, 0.01, 0.02, 0.05, 0.25, 0.5, 0.75, 0.95, 0.98, 0.99, 1.0])
    #: histograms stored in _dataset.json
    histogram_bins: POS_INT = 40
    #: rows of the recovered-vs-true scale table printed on the driver
    truth_log_rows: NONNEG_INT = 50
    report: CurateReport = field(default_factory=CurateReport)


@schema
class TrainAdam:
    beta1: Annotated[float, Range(0, 1, hi_open=True)] = 0.9
    beta2: Annotated[float, Range(0, 1, hi_open=True)] = 0.999
    eps: POS_FLOAT = 1.0e-8
    weight_decay: NONNEG_FLOAT = 0.01


@schema
class TrainNoise:
    """diffusers DDPMScheduler settings."""

    num_train_timesteps: POS_INT = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: POS_FLOAT = 0.00085
    beta_end: POS_FLOAT = 0.012
    rescale_betas_zero_snr: bool = False
    #: used by the DDIM sampler
    timestep_spacing: Literal["leading", "trailing", "linspace"] = "trailing"
    #: DDIM clips its x0 estimate to +-range: right for pixel "latents" only
    clip_sample: bool = True
    clip_sample_range: POS_FLOAT = 1.0


@schema
class TrainCondDropout:
    """Per-sample probabilities of dropping a condition (classifier-free guidance)."""

    image: FRACTION = 0.1
    camera: FRACTION = 0.1


@schema
class TrainData:
    #: curated split to train on ("" = all)
    split: str = "train"
    num_frames: POS_INT = 16
    #: training stride uniform in 1..stride_max (clamped to what fits)
    stride_max: POS_INT = 10
    eval_stride: POS_INT = 8
    #: [height, width]: short-side resize + centre crop
    resolution: list[POS_INT] = field(default_factory=lambda: [32, 32])
    #: DataLoader worker processes
    num_workers: NONNEG_INT = 1


@schema
class TrainWarpPrior:
    """Geometric prior (trainer/warp.py): the condition frame reprojected to each frame with a
    depth the model learns from the condition image; x0 = that warp + network output. Off = the
    Plücker-only model."""

    enabled: bool = False
    #: depth head width (full and half resolution)
    depth_channels: list[POS_INT] = field(default_factory=lambda: [32, 64])
    #: what the untrained depth head predicts everywhere (poses' units)
    init_depth: POS_FLOAT = 2.5
    #: fixed-point steps of the backward warp
    iterations: POS_INT = 3
    #: the denoiser also sees where the warp is valid (the target ray reaches the condition
    #: frame's surface inside the image), folded like the latents: it can tell the reprojected
    #: content it should keep from the stretched edge it has to replace
    mask_input: bool = False
    #: weight of a photometric reprojection loss on the depth head: the mean absolute difference
    #: between the warped condition frame and each training frame where the warp is valid (the
    #: self-supervised depth loss of monocular depth learning). 0 = the depth head learns only
    #: through the denoising loss, which the denoiser's own correction of the warp weakens
    reprojection_weight: NONNEG_FLOAT = 0.0


@schema
class TrainBuiltin:
    #: space-to-depth factor: "latents" are the pixels folded f x f (32x32 -> 48x8x8)
    latent_factor: POS_INT = 4
    #: denoiser width per level
    channels: list[POS_INT] = field(default_factory=lambda: [64, 96])
    camera_channels: list[POS_INT] = field(default_factory=lambda: [32, 64])
    heads: POS_INT = 4
    temb_dim: POS_INT = 128
    #: x0 = condition frame + network output (prediction_type sample)
    residual_to_condition: bool = False
    warp_prior: TrainWarpPrior = field(default_factory=TrainWarpPrior)


@schema
class TrainSvd:
    #: hub id or local directory
    pretrained: str = "stabilityai/stable-video-diffusion-img2vid"
    #: the pipeline never downloads at run time
    local_files_only: bool = True
    #: SVD micro-conditioning (added_time_ids)
    fps: POS_INT = 7
    motion_bucket_id: NONNEG_INT = 127
    noise_aug_strength: NONNEG_FLOAT = 0.02
    #: one per UNet down block
    camera_channels: list[POS_INT] = field(default_factory=lambda: [64, 128, 256, 256])
    gradient_checkpointing: bool = True


@schema
class TrainDistributed:
    #: local (one process) | ray (Ray Train TorchTrainer on the cluster)
    backend: Literal["local", "ray"] = "local"
    #: Ray Train workers
    num_workers: POS_INT = 2
    #: auto: GPUs when the cluster has enough; true | false
    use_gpu: Literal["auto", True, False] = "auto"
    cpus_per_worker: POS_INT = 1
    #: RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (each checkpointed report waits it)
    health_check_interval_s: POS_FLOAT = 2.0
    #: Ray Train run under <out_dir>/ray/<run_name>: same name = resume
    run_name: str = "train"


@schema
class TrainPreset:
    """Preset sizes (trainer.inference.trajectory.preset_trajectory)."""

    #: forward move, fraction of the median scene depth
    dolly_frac: float = 0.5
    #: sideways move (right; negative = left), fraction of the depth
    pan_frac: float = 0.3
    #: angle around the scene centre (median depth on the optical axis)
    orbit_deg: float = 20.0
    #: final focal multiplier (optical zoom, camera static)
    zoom_factor: POS_FLOAT = 1.5


@schema
class TrainSampling:
    """DDIM generation: the settings of ``stage=sample`` (and of the sample after
    ``stage=train``)."""

    #: stage=train also writes one sampled mp4
    after_train: bool = True
    steps: POS_INT = 25
    eta: NONNEG_FLOAT = 0.0
    #: classifier-free guidance on the condition image (1 = off)
    guidance_scale: NONNEG_FLOAT = 1.5
    #: curated clip whose first frame and metric trajectory are used
    split: str = "test"
    #: "" = first clip of the split
    clip_id: str = ""
    #: optional external image instead of a curated clip ...
    image: str = ""
    #: trajectory file (trainer/inference/trajectory.py): .json (the documented format), c2w text
    #: (16 numbers a line, metres) or a RealEstate10K pose file; replaces a curated clip's own
    #: trajectory
    trajectory: str = ""
    #: metres per unit of a RealEstate10K pose file (0: the curated frame_scale of its first
    #: frame, clip id = file name)
    trajectory_scale: NONNEG_FLOAT = 0.0
    #: dolly | orbit | pan | zoom, sized from the scene depth (see preset); "" = none
    trajectory_preset: Literal["", "dolly", "orbit", "pan", "zoom"] = ""
    preset: TrainPreset = field(default_factory=TrainPreset)
    #: [fx/W, fy/H, cx/W, cy/H] of an external image; else EXIF focal, else fov_deg
    intrinsics: list[float] = field(default_factory=list)
    #: horizontal field of view of an external image without intrinsics or EXIF focal
    fov_deg: Annotated[float, Range(0, 180, lo_open=True, hi_open=True)] = 60.0
    #: an own condition image smaller than this (pixels, either side) is rejected: too little to
    #: condition on (upscaled, it is only a blur)
    min_image_side: POS_INT = 16
    #: an own image with a longer side is downscaled (area) to this first: depth, point cloud
    #: and preview memory grow with its pixels (x frames)
    max_image_side: POS_INT = 1024
    #: depth map of an external image (.npy metres / 16-bit PNG mm); else the depth backend
    #: (depth=da2_metric), or the dataset's (sensor)
    depth: str = ""
    #: Depth Anything V2 metric checkpoint (hub id or dir) for the condition image only (other
    #: settings: the defaults of ``DepthModel``); "" = as above
    depth_model: str = ""
    #: render <name>.preview.mp4 / .mask.mp4 when depth is available
    preview: bool = True
    #: scene-constrained noise shaping (RealCam-I2V SNS); needs depth
    noise_shaping: bool = False
    #: shape levels with t / num_train_timesteps >= this (paper: 0.9)
    sns_t_threshold: FRACTION = 0.9
    #: usable = visible and no invisible pixel in the k x k neighbourhood
    sns_edge_k: POS_INT = 3
    #: VAE backbones: also drop latent cells this close to an unusable one
    sns_latent_margin: NONNEG_INT = 1
    #: preview splat, pixels per side (1 = the pixel a point falls in; 2 closes the cracks a
    #: moving camera opens between pixels' points)
    splat_size: POS_INT = 2
    #: points within this relative depth of a pixel's nearest are one surface: the one
    #: projecting closest to the pixel centre wins
    render_depth_tol: NONNEG_FLOAT = 0.01
    #: frames per renderer pass (memory ~ frames x points x splat^2); 0 = all
    render_chunk_frames: NONNEG_INT = 0
    #: mean preview PSNR / coverage against real frames over this many
    qa_frames: NONNEG_INT = 8
    #: also write <name>.ply (the condition image's metric point cloud)
    save_point_cloud: bool = False
    fps: POS_INT = 8
    seed: NONNEG_INT = 0


@schema
class Train:
    """Camera-conditioned image-to-video diffusion on the curated shards (trainer/). The
    defaults are the built-in backbone at a tiny resolution: it trains from scratch on CPU in a
    few minutes on the bundled sample. Variants (conf/train/): train=builtin_256 (256x256),
    train=svd_320x512 (Stable Video Diffusion backbone, frozen, camera adapter only)."""

    backbone: Literal["builtin", "svd"] = "builtin"
    seed: NONNEG_INT = 0
    #: optimizer steps (~1.5 min on 2 free CPU cores for the bundled sample)
    max_steps: POS_INT = 500
    #: clips per micro-batch per worker
    batch_size: POS_INT = 2
    #: micro-batches per optimizer step
    grad_accum: POS_INT = 1
    lr: POS_FLOAT = 1.0e-4
    #: any diffusers.optimization.get_scheduler name
    lr_scheduler: str = "constant"
    warmup_steps: NONNEG_INT = 0
    adam: TrainAdam = field(default_factory=TrainAdam)
    max_grad_norm: POS_FLOAT = 1.0
    #: autocast applies on GPU only (CPU runs fp32)
    mixed_precision: Literal["bf16", "fp16", "no"] = "bf16"
    #: sample = x0 (builtin only); the svd backbone needs v_prediction
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    #: camera input: metric (poses x the curated frame factor) | relative (the clip's own
    #: SLAM-scale poses, factor ignored) | none (Plücker input zeroed at training and sampling:
    #: the no-camera ablation arm)
    camera: Literal["metric", "relative", "none"] = "metric"
    noise: TrainNoise = field(default_factory=TrainNoise)
    cond_dropout: TrainCondDropout = field(default_factory=TrainCondDropout)
    #: steps; the last step always checkpoints
    checkpoint_every: POS_INT = 100
    keep_checkpoints: POS_INT = 2
    #: <work_dir>/<out_subdir>/{checkpoints,metrics.jsonl,samples}
    out_subdir: str = "train"
    progress: bool = True
    #: torch intra-op threads when training on CPU (0 = torch's default)
    cpu_threads: NONNEG_INT = 1
    data: TrainData = field(default_factory=TrainData)
    builtin: TrainBuiltin = field(default_factory=TrainBuiltin)
    svd: TrainSvd = field(default_factory=TrainSvd)
    distributed: TrainDistributed = field(default_factory=TrainDistributed)
    sampling: TrainSampling = field(default_factory=TrainSampling)


@schema
class EvaluateImage:
    #: source=dataset/videos: frames shrunk to this long side (0 = as is); RealEstate10K test
    #: frames (576x320) stay as they are
    max_long_side: NONNEG_INT = 640


@schema
class EvaluateSift:
    """COLMAP's defaults: on the real clips of bench/bench_instrument.py (2x upsampling, ~2.5x
    the CPU of 4096 features at octave 0) the global mapper's TransErr_rel fell 0.17 -> 0.10
    (0bf152ef), 0.31 -> 0.26 (0f47577a), hololens 0.27 -> 0.16."""

    max_num_features: POS_INT = 8192
    #: -1: 2x upsampling before SIFT (COLMAP's default); 0: none (~2.5x less CPU)
    first_octave: Annotated[int, Range(-1)] = -1


@schema
class EvaluateMatching:
    #: exhaustive (all pairs: 120 for 16 frames) | sequential
    mode: Literal["exhaustive", "sequential"] = "exhaustive"
    #: sequential only
    overlap: POS_INT = 10
    #: Lowe ratio test
    max_ratio: Annotated[float, Range(0, 1, lo_open=True)] = 0.8
    #: verified matches for a pair to count
    min_num_inliers: NONNEG_INT = 15
    #: two-view RANSAC threshold (pixels), COLMAP's default
    ransac_max_error: POS_FLOAT = 4.0


@schema
class EvaluateSfm:
    """pycolmap SfM, intrinsics fixed."""

    #: global (GLOMAP-style: rotation averaging + global positioning, pycolmap.global_mapping) |
    #: incremental (COLMAP). On real RE10K clips incremental converged to a wrong model in 2 of
    #: 3 trials of 0c11dbe7 (RotErr ~2.6 vs 0.23); global: 3 of 3 right (0.16), see
    #: docs/evaluation_protocols.md
    mapper: Literal["global", "incremental"] = "global"
    #: COLMAP log threshold in workers: 0 info, 1 warning, 2 error
    log_level: LOG_LEVEL = 2
    sift: EvaluateSift = field(default_factory=EvaluateSift)
    matching: EvaluateMatching = field(default_factory=EvaluateMatching)
    #: smaller reconstructions are discarded by the mapper
    min_model_size: POS_INT = 3
    #: incremental: attempts at an initial pair (COLMAP default)
    init_num_trials: POS_INT = 200
    #: incremental: degrees, initial pair (COLMAP: 16). Frames of a short clip are close
    #: together: with 16 (and frames shrunk to 480 px) real RE10K clips failed or split: 0c9b371c
    #: 0 of 5 trials, 0bf152ef one 12.3 TransErr_rel outlier; with 4.0 at 576 px: 2 of 2 good
    #: trials each
    init_min_tri_angle: POS_FLOAT = 4.0


@schema
class EvaluateConsensus:
    """Which successful trials of a clip count (compared among themselves)."""

    #: none: all | majority: the largest group agreeing with one trial | best: the one with the
    #: lowest reprojection error
    mode: Literal["none", "majority", "best"] = "majority"
    #: majority: two trials agree within this mean angle per frame (rad)
    rot_tol: POS_FLOAT = 0.01
    #: ... and this mean TransErr_rel per frame
    trans_tol: POS_FLOAT = 0.02


@schema
class Evaluate:
    """Camera-control evaluation (stages/evaluate.py): SfM on videos vs the trajectory they
    follow, RotErr / TransErr / CamMC, relative and metric (RealCam-I2V protocol, after
    CamI2V)."""

    #: model: sample the trained model on test clips | dataset: the clips' own real frames
    #: (SfM's error floor) | videos: set videos + trajectories
    source: Literal["model", "dataset", "videos"] = "model"
    #: DIR of <name>.mp4 (any model's outputs); selects source=videos
    videos: str | None = None
    #: DIR of <name>.txt: 16 numbers a line, camera-to-world 4x4 in metres
    trajectories: str | None = None
    #: videos: horizontal field of view of the videos (square pixels, centred principal point),
    #: as trainer sampling assumes for images
    fov_deg: Annotated[float, Range(0, 180, lo_open=True, hi_open=True)] = 60.0
    #: curated/dataset split to evaluate ("" = all)
    split: str = "test"
    #: evaluate the first N clips (sorted ids); null = all
    num_clips: POS_INT | None = 8
    #: source=dataset: frames per clip, evenly spread, first and last kept
    num_frames: Annotated[int, Range(2)] = 16
    image: EvaluateImage = field(default_factory=EvaluateImage)
    #: project | cami2v: the published protocol exactly (see docs/evaluation_protocols.md;
    #: metric variant from SfM of both videos)
    protocol: Literal["project", "cami2v"] = "project"
    #: SfM trials per clip (SfM is random; the protocol averages them)
    trials: POS_INT = 5
    #: trial k uses seed + k (RANSAC and mapper seeds)
    seed: NONNEG_INT = 0
    #: Ray CPUs per trial task; COLMAP's threads follow it
    num_cpus: POS_INT = 1
    #: per-trial scratch (frames + database); auto: /dev/shm if writable
    scratch_dir: str = "auto"
    #: auto: the dataset's own depth files when a clip has them (source=dataset), else the depth
    #: model of the `depth` config group (depth=da2_metric); sensor | model | none force one
    metric_depth: Literal["auto", "sensor", "model", "none"] = "auto"
    sfm: EvaluateSfm = field(default_factory=EvaluateSfm)
    consensus: EvaluateConsensus = field(default_factory=EvaluateConsensus)


@schema
class Ui:
    """Trajectory designer: python -m pipeline ui [image=PATH | clip=CLIP_ID] [ui.port=N ...]
    (``image``, ``clip``, ``port`` and ``host`` are short for the ui.* keys below; the depth map
    of an image is ui.depth=FILE, since ``depth=`` picks the depth backend)."""

    #: local only: the page can start generation and write files
    host: str = "127.0.0.1"
    #: printed at start; viser takes the next free one if it is busy
    port: Annotated[int, Range(0, 65535)] = 8080
    #: own condition image (depth: `depth`, else depth=da2_metric)
    image: str = ""
    #: depth of `image` (.npy metres / 16-bit PNG mm)
    depth: str = ""
    #: a clip of the configured dataset (its first frame, its own depth); "" with no image = the
    #: first clip of `split` (bundled sample)
    clip: str = ""
    split: str = "test"
    #: under paths.work_dir: <name>/trajectory.json, preview.mp4, ...
    out_subdir: str = "ui"
    #: initial frame count of the designed path
    num_frames: Annotated[int, Range(2)] = 16
    #: initial playback duration (fps = frames / duration)
    duration_s: POS_FLOAT = 2.0
    #: keyframes a preset is sampled at (then editable)
    preset_keyframes: Annotated[int, Range(2)] = 4
    #: a keyframe added after the condition camera: this fraction of the median scene depth
    #: forward
    add_step_frac: POS_FLOAT = 0.1
    #: keyframe frustum size, fraction of the median scene depth
    frustum_frac: POS_FLOAT = 0.08
    #: the condition camera's frustum (with the image on it)
    condition_frustum_frac: POS_FLOAT = 0.12
    #: keyframe translate/rotate gizmo size, fraction of the depth
    gizmo_frac: POS_FLOAT = 0.2
    #: dots marking the path's frames, fraction of the depth
    path_point_frac: POS_FLOAT = 0.01
    #: grid side, fraction of the depth (rounded up to metres)
    grid_extent_frac: POS_FLOAT = 2.5
    #: initial viewpoint (x right, y down, z forward of the condition camera), fractions of the
    #: depth
    view_from_frac: list[float] = field(default_factory=lambda: [-1.0, -0.8, -0.5])
    #: ... looking at the point this far along the optical axis
    view_at_frac: float = 0.6
    #: point cloud shown in the browser (strided subsample above this)
    max_points: POS_INT = 150000
    #: displayed point size, fraction of the median scene depth
    point_size_frac: POS_FLOAT = 0.004
    #: preview render long side (pixels): fast feedback, not final quality
    preview_max_side: POS_INT = 320
    #: grid cells (metres); sections every grid_section_m
    grid_cell_m: POS_FLOAT = 0.1
    grid_section_m: POS_FLOAT = 1.0
    #: never download depth weights from the page: a clear message instead when they are not on
    #: disk
    depth_local_files_only: bool = True
    #: preview / generation device (auto = cuda when available)
    device: Literal["auto", "cuda", "cpu"] = "auto"


# ---------------------------------------------------------------------- the whole config
@schema
class Config:
    """Every section with a default, composed first (``conf/config.yaml`` lists it as
    ``settings_defaults``); ``dataset`` and ``depth`` come from their chosen option instead."""

    paths: Paths = field(default_factory=Paths)
    storage: Storage = field(default_factory=Storage)
    shards: Shards = field(default_factory=Shards)
    stage: StageChoice = field(default_factory=StageChoice)
    #: true: recompute the requested stage(s) even when done and fresh
    force: bool = False
    #: progress on the driver: a bar on a terminal, periodic lines otherwise
    progress: bool = True
    retry: Retry = field(default_factory=Retry)
    models: Models = field(default_factory=Models)
    log: Log = field(default_factory=Log)
    ray: Ray = field(default_factory=Ray)
    ingest: Ingest = field(default_factory=Ingest)
    triangulate: Triangulate = field(default_factory=Triangulate)
    align: Align = field(default_factory=Align)
    curate: Curate = field(default_factory=Curate)
    train: Train = field(default_factory=Train)
    evaluate: Evaluate = field(default_factory=Evaluate)
    ui: Ui = field(default_factory=Ui)
    download: Download = field(default_factory=Download)


#: name of the composed node holding ``Config``'s defaults (``conf/config.yaml``'s first entry)
DEFAULTS_NODE = "settings_defaults"


def defaults(schema: type) -> dict[str, Any]:
    """A schema's defaults as plain containers (what the YAML files used to spell out)."""
    return dataclasses.asdict(schema())


def register_defaults() -> None:
    """Put the schemas' defaults where Hydra composes from (its ConfigStore): ``Config`` as
    ``settings_defaults`` and each depth backend as ``depth/<option>_defaults``, which the
    option's file under ``conf/depth/`` extends. Idempotent."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name=DEFAULTS_NODE, node=defaults(Config))
    for option, schema_ in DEPTH_BACKENDS.items():
        cs.store(group="depth", name=f"{option}_defaults", node=defaults(schema_))


def section_schemas(cfg: dict[str, Any]) -> dict[str, Any]:
    """Top-level key -> schema (a section's dataclass, or a plain type for top-level values)
    for this composed config; ``dataset`` and ``depth`` by their selector."""
    ds = cfg.get("dataset") or {}
    depth = cfg.get("depth") or {}
    hints = _hints(Config)
    out: dict[str, Any] = {f.name: hints[f.name] for f in dataclasses.fields(Config)}
    out["dataset"] = {"rgbd": RgbdDataset, "nerfstudio": NerfstudioDataset,
                      "colmap": ColmapDataset}.get(
        str(ds.get("layout")), Re10kDataset)
    out["depth"] = DEPTH_BACKENDS.get(str(depth.get("backend")), DepthModel)
    return out


# ---------------------------------------------------------------------- typed access
@functools.cache
def _hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema, include_extras=True)


def _build(tp: Any, value: Any) -> Any:
    """``value`` (plain containers, already validated) as an instance of ``tp``."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _build(typing.get_args(tp)[0], value)
    if origin in (Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _build(rest[0] if len(rest) == 1 else Any, value)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = _hints(tp)
        return tp(**{f.name: _build(hints[f.name], value[f.name])
                     for f in dataclasses.fields(tp) if f.name in value})
    if origin is list and isinstance(value, list):
        (arg,) = typing.get_args(tp) or (Any,)
        return [_build(arg, v) for v in value]
    return value


class Settings:
    """Typed view of a composed config (the plain dicts tasks receive): ``Settings(cfg)
    .triangulate.frames.max_n``. Each section is built on first use, from the validated values,
    so a default lives only in its schema and a misspelt key is an AttributeError, not a
    silent ``None``. The plain dicts stay what fingerprints hash."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg

    def section(self, key: str) -> Any:
        return _build(section_schemas(self.cfg)[key], self.cfg[key])

    @functools.cached_property
    def paths(self) -> Paths:
        return self.section("paths")

    @functools.cached_property
    def storage(self) -> Storage:
        return self.section("storage")

    @functools.cached_property
    def shards(self) -> Shards:
        return self.section("shards")

    @functools.cached_property
    def force(self) -> bool:
        return bool(self.cfg.get("force", False))

    @functools.cached_property
    def progress(self) -> bool:
        return bool(self.cfg.get("progress", True))

    @functools.cached_property
    def retry(self) -> Retry:
        return self.section("retry")

    @functools.cached_property
    def models(self) -> Models:
        return self.section("models")

    @functools.cached_property
    def log(self) -> Log:
        return self.section("log")

    @functools.cached_property
    def ray(self) -> Ray:
        return self.section("ray")

    @functools.cached_property
    def dataset(self) -> Dataset:
        return self.section("dataset")

    @functools.cached_property
    def ingest(self) -> Ingest:
        return self.section("ingest")

    @functools.cached_property
    def triangulate(self) -> Triangulate:
        return self.section("triangulate")

    @functools.cached_property
    def depth(self) -> DepthModel | DepthSensor:
        return self.section("depth")

    @functools.cached_property
    def align(self) -> Align:
        return self.section("align")

    @functools.cached_property
    def curate(self) -> Curate:
        return self.section("curate")

    @functools.cached_property
    def train(self) -> Train:
        return self.section("train")

    @functools.cached_property
    def evaluate(self) -> Evaluate:
        return self.section("evaluate")

    @functools.cached_property
    def ui(self) -> Ui:
        return self.section("ui")


# ---------------------------------------------------------------------- checks
class SettingError(ValueError):
    """One line naming the key and what is allowed."""


def _show(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def _check(key: str, value: Any, tp: Any) -> None:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        _check(key, value, base)
        for m in meta:
            if isinstance(m, Range) and not m.ok(value):
                raise SettingError(f"{key} must be {m.text()}, got {_show(value)}")
        return
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return
        rest = [a for a in args if a is not type(None)]
        _check(key, value, rest[0] if len(rest) == 1 else Any)
        return
    if origin is Literal:
        choices = typing.get_args(tp)
        # 1 == True in Python: a choice matches only a value of its own kind
        if not any(c == value and isinstance(c, bool) == isinstance(value, bool)
                   for c in choices):
            shown = ", ".join("''" if c == "" else str(c).lower() if isinstance(c, bool)
                              else str(c) for c in choices)
            raise SettingError(f"{key} must be one of {shown}; got {_show(value)}")
        return
    if origin is list:
        if not isinstance(value, list):
            raise SettingError(f"{key} must be a list, got {_show(value)}")
        (arg,) = typing.get_args(tp) or (Any,)
        for i, item in enumerate(value):
            _check(f"{key}[{i}]", item, arg)
        return
    if tp is Any:
        return
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SettingError(f"{key} must be a group of settings, got {_show(value)}")
        validate(value, tp, key)
        return
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    if not ok:
        what = {bool: "true/false", int: "an integer", float: "a number",
                str: "a string"}.get(tp, f"a {tp.__name__}")
        raise SettingError(f"{key} must be {what}, got {'null' if value is None else _show(value)}")


def validate(section: dict[str, Any], schema: type, prefix: str) -> None:
    """Check a section against its schema: every key must be declared there (a key in a YAML
    file that no schema declares is refused, with the closest declared one), and a key without
    a default must be given."""
    hints = _hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    for name in section:
        if name not in hints:
            close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
            raise SettingError(
                f"unknown key '{prefix}.{name}'"
                + (f" (did you mean '{prefix}.{close[0]}'?)" if close else "")
                + f": not declared by {schema.__name__} in pipeline/settings.py")
    for f in dataclasses.fields(schema):
        key = f"{prefix}.{f.name}"
        if f.name not in section:
            if (f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING):
                raise SettingError(f"{key} is missing from the configuration")
            continue
        _check(key, section[f.name], hints[f.name])


def check_config(cfg: dict[str, Any], extra: dict[str, type] | None = None) -> None:
    """Every section of a composed config against its schema (``extra``: plug-in stages' own
    sections); raises ``SettingError`` naming the key, the value and what is allowed."""
    schemas = {**section_schemas(cfg), **(extra or {})}
    for key, tp in schemas.items():
        if key in cfg:
            _check(key, cfg[key], tp)
