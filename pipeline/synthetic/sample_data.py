"""The bundled synthetic sample: rendered clips in the RealEstate10K layout with exact depth.

Layout under a root (the one ``conf/dataset/sample.yaml`` points at)::

    <root>/<split>/<clip_id>.txt                       RealEstate10K pose file (relative scale)
    <root>/frames/<split>/<clip_id>/<timestamp>.png    RGB frames
    <root>/depth/<split>/<clip_id>/<timestamp>.npy     exact z-depth, float32 metres
    <root>/ground_truth.json                           clip_id -> true_scale
    <root>/metric_c2w.json                             clip_id -> per-frame metric c2w (4x4)

and, for a stress definition (any clip with ``pose_noise``, ``depth_noise``, ``texture``,
``rolling_shutter`` or a stress trajectory kind; see ``data_manifests/stress.yaml``)::

    <root>/depth_exact/<split>/<clip_id>/<timestamp>.npy   exact depth of every clip (``depth/``
                                                          then holds the noisy "model" depth)
    <root>/stress_truth.json                           clip_id -> requested and realised errors

Each clip's translations are multiplied by its own ``rel_scale`` before being written, exactly
as RealEstate10K's SLAM poses carry an unknown per-clip scale; ``true_scale = 1 / rel_scale``
is what the pipeline has to recover. Generation is keyed by a hash of the definition (and of
the renderer version), builds into a temp directory and renames it into place, so a crash never
leaves a half-written sample behind and a second call with the same definition does nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from omegaconf import OmegaConf

from pipeline.io import read_json, stable_hash, write_json_atomic
from pipeline.synthetic.scenes import (
    RENDERER_VERSION,
    WALL_CONTRAST,
    intrinsics_matrix,
    make_scene,
    make_trajectory,
    perturb_depth,
    perturb_poses,
    rolling_shutter_poses,
    rotation_angle_deg,
    row_time_offsets,
)
from pipeline.synthetic.scenes import render as render_frame

MARKER = ".sample_complete"  # holds the definition hash; written last, inside the temp dir

#: bump whenever a stress clip's output changes (noise models, stress kinds); part of the hash
#: of stress definitions only, so the bundled sample's hash (and cache) stays as it was
STRESS_VERSION = 1
STRESS_KINDS = ("rotation_pan", "slow_pan", "walk")
POSE_NOISE_KEYS = ("rot_deg", "trans_m", "drift_m", "drift_deg", "time_offset_frames", "seed")
DEPTH_NOISE_KEYS = ("frame_bias", "smooth", "edge_px", "seed")
ROLLING_SHUTTER_KEYS = ("readout_ms",)
INTRINSICS_ERROR_KEYS = ("focal",)


def _checked_noise(clip_id: str, what: str, value: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """A ``pose_noise`` / ``depth_noise`` mapping with known keys only (missing ones = 0)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"clip {clip_id}: {what} must be a mapping, got {value!r}")
    unknown = set(value) - set(keys)
    if unknown:
        raise ValueError(f"clip {clip_id}: unknown {what} keys {sorted(unknown)} (known: {keys})")
    return dict(value)


def wall_contrast(clip_id: str, texture: Any) -> float:
    """``texture``: ``normal`` / ``weak`` (``synthetic.WALL_CONTRAST``) or a contrast in (0, 1]."""
    if isinstance(texture, str):
        if texture not in WALL_CONTRAST:
            raise ValueError(
                f"clip {clip_id}: texture {texture!r} is not one of {sorted(WALL_CONTRAST)}"
            )
        return WALL_CONTRAST[texture]
    value = float(texture)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"clip {clip_id}: texture contrast {value} is not in (0, 1]")
    return value


@dataclass(frozen=True)
class _ClipSpec:
    """One clip's render parameters and stress options, as ``render_clip`` takes them.

    Stress options (all off by default, which renders exactly as before they existed):
    ``pose_noise`` (keys of ``synthetic.perturb_poses`` plus ``seed``) perturbs only the
    *written* poses, so frames, depth, ``metric_w2c`` and ``true_scale`` stay the truth;
    ``depth_noise`` (keys of ``synthetic.perturb_depth`` plus ``seed``) turns the ``depth/``
    files into a model-like estimate and writes the exact depth to ``depth_exact/``;
    ``texture`` weakens the walls' contrast. ``write_exact_depth`` writes ``depth_exact/``
    even for a clip without depth noise (a stress set keeps one complete exact tree).
    ``rolling_shutter`` (``readout_ms``: first to last row) renders every image row from the
    pose at its own readout time (``synthetic.row_time_offsets``: the frame time is the middle
    row's), while the written pose and ``metric_w2c`` stay the pose at the frame time, as a
    SLAM system reports it; the depth (``depth/`` and ``depth_exact/``) is rendered with the
    same per-row poses, i.e. the exact depth of what each pixel shows, as a depth network sees
    the rolling image. A zero readout renders exactly as without the key.
    ``intrinsics_error`` (``focal``: relative error) writes fx, fy times ``1 + focal`` into the
    pose file and the row (the frames are rendered with the true focal): a SLAM/calibration
    focal error, which nothing downstream corrects. What was realised is under the extra key
    ``stress`` of the row.
    """

    clip_id: str
    split: str
    seed: int
    kind: str
    n_frames: int
    width: int
    height: int
    rel_scale: float
    fov_deg: float
    frame_interval_us: int
    pose_noise: dict[str, Any]
    depth_noise: dict[str, Any]
    rolling: dict[str, Any]
    intr_err: dict[str, Any]
    write_exact_depth: bool

    def checked(self) -> _ClipSpec:
        """The spec with numbers of the right type and option mappings with known keys only;
        ``ValueError`` naming the clip and the bad value otherwise."""
        c = replace(self, seed=int(self.seed), n_frames=int(self.n_frames),
                    width=int(self.width), height=int(self.height),
                    rel_scale=float(self.rel_scale), fov_deg=float(self.fov_deg))
        if not (c.rel_scale > 0 and c.n_frames >= 1 and c.width >= 1 and c.height >= 1
                and 0 < c.fov_deg < 180):
            raise ValueError(
                f"clip {c.clip_id}: bad sample parameters (rel_scale={c.rel_scale}, "
                f"n_frames={c.n_frames}, size={c.width}x{c.height}, fov={c.fov_deg})"
            )
        c = replace(
            c, pose_noise=_checked_noise(c.clip_id, "pose_noise", c.pose_noise, POSE_NOISE_KEYS),
            depth_noise=_checked_noise(c.clip_id, "depth_noise", c.depth_noise,
                                       DEPTH_NOISE_KEYS),
            rolling=_checked_noise(c.clip_id, "rolling_shutter", c.rolling,
                                   ROLLING_SHUTTER_KEYS),
            intr_err=_checked_noise(c.clip_id, "intrinsics_error", c.intr_err,
                                    INTRINSICS_ERROR_KEYS))
        if not (np.isfinite(c.focal_err) and c.focal_err > -1):
            raise ValueError(f"clip {c.clip_id}: intrinsics_error.focal must be > -1, "
                             f"got {c.focal_err}")
        readout_ms = float(c.rolling.get("readout_ms", 0.0))
        if not (np.isfinite(readout_ms) and readout_ms >= 0):
            raise ValueError(f"clip {c.clip_id}: rolling_shutter.readout_ms must be >= 0, "
                             f"got {readout_ms}")
        if c.readout_frames > 0 and c.n_frames < 2:
            raise ValueError(f"clip {c.clip_id}: a rolling shutter needs at least 2 frames")
        return c

    @property
    def focal_err(self) -> float:
        return float(self.intr_err.get("focal", 0.0))

    @property
    def readout_frames(self) -> float:
        """The rolling shutter's readout time in frame intervals (0: global shutter)."""
        return float(self.rolling.get("readout_ms", 0.0)) * 1000.0 / float(self.frame_interval_us)

    @property
    def writes_exact_depth(self) -> bool:
        return bool(self.depth_noise or self.write_exact_depth)


def _stressed_poses(spec: _ClipSpec, poses: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """(the poses to write, the ``stress`` record so far): pose noise applied, the depth noise
    and rolling shutter records opened (filled per frame)."""
    written = poses
    stress: dict[str, Any] = {}
    if spec.pose_noise:
        try:
            written, realised = perturb_poses(poses, **spec.pose_noise)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"clip {spec.clip_id}: bad pose_noise {spec.pose_noise}: "
                             f"{exc}") from None
        stress["pose_noise"] = {"requested": spec.pose_noise, "realised": realised}
    if spec.depth_noise:
        stress["depth_noise"] = {"requested": spec.depth_noise, "realised": []}
    if spec.rolling:
        offsets = row_time_offsets(spec.height, spec.readout_frames)
        stress["rolling_shutter"] = {
            "requested": spec.rolling,
            "realised": {"readout_frames": spec.readout_frames,
                         "row_offset_frames": [float(offsets[0]), float(offsets[-1])],
                         "top_bottom_rot_deg": [], "top_bottom_centre_m": []},
        }
    return written, stress


def _written_intrinsics(spec: _ClipSpec, K: np.ndarray, stress: dict[str, Any]) -> list[float]:
    """Normalised fx, fy, cx, cy to write: the true ones unless a focal error is asked for
    (the frames are rendered with ``K`` either way; recorded in ``stress``)."""
    f = 1 + spec.focal_err
    intr = [K[0, 0] * f / spec.width, K[1, 1] * f / spec.height,
            K[0, 2] / spec.width, K[1, 2] / spec.height]
    if spec.intr_err:
        stress["intrinsics_error"] = {
            "requested": spec.intr_err,
            "realised": {"focal_written_px": K[0, 0] * f, "focal_true_px": K[0, 0]},
        }
    return intr


def _render_rgbd(spec: _ClipSpec, scene: Any, K: np.ndarray, poses: np.ndarray, i: int,
                 stress: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``i``'s RGB and exact depth; under a rolling shutter every row from its own pose
    (the realised top-to-bottom motion recorded in ``stress``)."""
    if spec.readout_frames <= 0:
        return render_frame(scene, K, poses[i], spec.width, spec.height)
    rows_w2c = rolling_shutter_poses(poses, i, spec.height, spec.readout_frames)
    rgb, depth = render_frame(scene, K, poses[i], spec.width, spec.height, row_w2c=rows_w2c)
    top, bottom = rows_w2c[0], rows_w2c[-1]
    realised_rs = stress["rolling_shutter"]["realised"]
    realised_rs["top_bottom_rot_deg"].append(
        float(rotation_angle_deg(top[:3, :3], bottom[:3, :3])))
    realised_rs["top_bottom_centre_m"].append(float(np.linalg.norm(
        top[:3, :3].T @ top[:3, 3] - bottom[:3, :3].T @ bottom[:3, 3])))
    return rgb, depth


def _write_rgbd(spec: _ClipSpec, i: int, rgb: np.ndarray, depth: np.ndarray,
                paths: tuple[Path, Path, Path], stress: dict[str, Any]) -> None:
    """Frame ``i``'s PNG, its exact depth (when kept) and its depth, noisy under depth noise;
    ``paths``: frame, depth and exact-depth file."""
    fp, dp, ep = paths
    if not cv2.imwrite(str(fp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {fp}")
    if spec.writes_exact_depth:
        np.save(ep, depth, allow_pickle=False)
    if spec.depth_noise:
        try:
            depth, realised = perturb_depth(depth, **spec.depth_noise, frame=i)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"clip {spec.clip_id}: bad depth_noise {spec.depth_noise}: {exc}") from None
        stress["depth_noise"]["realised"].append(realised)
    np.save(dp, depth, allow_pickle=False)


def _clip_dirs(out_root: Path, spec: _ClipSpec) -> tuple[Path, Path, Path]:
    """The clip's frame, depth and exact-depth folders (created as needed)."""
    frame_dir = out_root / "frames" / spec.split / spec.clip_id
    depth_dir = out_root / "depth" / spec.split / spec.clip_id
    frame_dir.mkdir(parents=True, exist_ok=True)
    depth_dir.mkdir(parents=True, exist_ok=True)
    exact_dir = out_root / "depth_exact" / spec.split / spec.clip_id
    if spec.writes_exact_depth:
        exact_dir.mkdir(parents=True, exist_ok=True)
    return frame_dir, depth_dir, exact_dir


def _write_pose_file(out_root: Path, spec: _ClipSpec, written: np.ndarray, intr: list[float],
                     timestamps: list[int], url: str) -> list[list[float]]:
    """The RealEstate10K pose file (translations in the clip's relative scale); returns the
    relative w2c rows it holds."""
    lines = [url]
    w2c_rel = []
    for ts, w2c in zip(timestamps, written):
        rel = w2c[:3, :4].copy()
        rel[:, 3] *= spec.rel_scale
        w2c_rel.append(rel.reshape(-1).tolist())
        nums = [*intr, 0.0, 0.0, *rel.reshape(-1).tolist()]
        lines.append(f"{ts} " + " ".join(repr(float(x)) for x in nums))
    pose_path = out_root / spec.split / f"{spec.clip_id}.txt"
    pose_path.parent.mkdir(parents=True, exist_ok=True)
    pose_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return w2c_rel


def render_clip(
    out_root: Path, clip_id: str, split: str, seed: int, kind: str, n_frames: int, width: int,
    height: int, rel_scale: float, fov_deg: float = 60.0, frame_interval_us: int = 33333,
    pose_noise: dict[str, Any] | None = None, depth_noise: dict[str, Any] | None = None,
    texture: str | float = "normal", write_exact_depth: bool = False,
    rolling_shutter: dict[str, Any] | None = None,
    intrinsics_error: dict[str, Any] | None = None,
    on_frame: Callable[[], None] | None = None, only_frames: Collection[int] | None = None,
) -> dict[str, Any]:
    """Render one clip into ``out_root``; returns its manifest row (pipeline.schema.MANIFEST).

    The row lets tests of later stages start from a clip without running ingest. Paths in it
    are absolute, as the manifest contract requires. ``w2c`` in the row and the pose file are
    in the relative scale; the metric poses are under the extra key ``metric_w2c`` (ignored by
    the Arrow schema, handy for tests). The stress options are described on ``_ClipSpec``.
    ``on_frame`` is called after each frame is written (progress of a render that takes
    minutes). ``only_frames`` renders and writes just those frame indices (the pose file and
    the row still hold every frame): a test of a stage that reads a few frames of a long clip
    need not render them all; per-frame ``stress`` records then cover those frames only.
    """
    out_root = Path(out_root).resolve()
    spec = _ClipSpec(clip_id, split, seed, kind, n_frames, width, height, rel_scale, fov_deg,
                     frame_interval_us, pose_noise, depth_noise, rolling_shutter,
                     intrinsics_error, write_exact_depth).checked()
    scene = make_scene(spec.seed, wall_contrast(clip_id, texture))
    poses = make_trajectory(kind, spec.n_frames, scene, spec.seed + 1)
    written, stress = _stressed_poses(spec, poses)
    K = intrinsics_matrix(spec.width, spec.height, spec.fov_deg)
    intr = _written_intrinsics(spec, K, stress)
    frame_dir, depth_dir, exact_dir = _clip_dirs(out_root, spec)
    timestamps = [int(frame_interval_us) * (i + 1) for i in range(spec.n_frames)]
    frame_paths, depth_paths = [], []
    for i, ts in enumerate(timestamps):
        paths = (frame_dir / f"{ts}.png", depth_dir / f"{ts}.npy", exact_dir / f"{ts}.npy")
        if only_frames is None or i in only_frames:
            _write_rgbd(spec, i, *_render_rgbd(spec, scene, K, poses, i, stress), paths, stress)
        frame_paths.append(str(paths[0]))
        depth_paths.append(str(paths[1]))
        if on_frame is not None:
            on_frame()
    url = f"synthetic://{clip_id}"
    return {
        "clip_id": clip_id, "split": split, "source_type": "images", "video_path": None,
        "frame_paths": frame_paths, "depth_paths": depth_paths, "depth_unit": 1.0,
        "timestamps_us": timestamps, "intrinsics": [float(x) for x in intr],
        "width": spec.width, "height": spec.height, "num_frames": spec.n_frames,
        "w2c": _write_pose_file(out_root, spec, written, intr, timestamps, url),
        "true_scale": 1.0 / spec.rel_scale, "url": url, "metric_w2c": poses, "stress": stress,
    }


def load_definition(definition: Any) -> dict[str, Any]:
    """The sample definition as plain containers (a YAML path, a dict or a DictConfig)."""
    if isinstance(definition, dict):
        return definition
    if OmegaConf.is_config(definition):
        return OmegaConf.to_container(definition, resolve=True)
    return OmegaConf.to_container(OmegaConf.load(Path(definition)), resolve=True)


def _clip_specs(defn: dict[str, Any]) -> list[dict[str, Any]]:
    defaults = dict(defn.get("defaults") or {})
    specs = []
    for clip in defn["clips"]:
        spec = {**defaults, **clip}
        missing = set(_REQUIRED) - spec.keys()
        if missing:
            raise ValueError(f"sample clip {clip!r}: missing {sorted(missing)}")
        unknown = spec.keys() - set(_REQUIRED) - set(_OPTIONAL)
        if unknown:
            raise ValueError(f"sample clip {clip!r}: unknown keys {sorted(unknown)}")
        specs.append(spec)
    ids = [s["clip_id"] for s in specs]
    if len(set(ids)) != len(ids):
        raise ValueError("sample definition repeats a clip_id")
    return specs


def is_stress(specs: list[dict[str, Any]]) -> bool:
    """Whether any clip uses a stress option or kind (then the stress outputs are written)."""
    return any(
        any(k in spec for k in _STRESS_KEYS) or spec.get("kind") in STRESS_KINDS for spec in specs
    )


def definition_hash(defn: dict[str, Any]) -> str:
    """Cache key of a rendered definition. ``STRESS_VERSION`` enters only for stress
    definitions, so the bundled sample keeps the hash (and the cached render) it always had."""
    key: dict[str, Any] = {"definition": defn, "renderer": RENDERER_VERSION}
    if is_stress(list(defn.get("clips") or []) + [dict(defn.get("defaults") or {})]):
        key["stress"] = STRESS_VERSION
    return stable_hash(key)


_REQUIRED = ("clip_id", "split", "seed", "kind", "n_frames", "width", "height", "rel_scale")
_STRESS_KEYS = ("pose_noise", "depth_noise", "texture", "rolling_shutter", "intrinsics_error")
_OPTIONAL = ("fov_deg", "frame_interval_us", *_STRESS_KEYS)


def _render_spec(
    out_root: Path, spec: dict[str, Any], stress: bool = False,
    on_frame: Callable[[], None] | None = None,
) -> tuple[str, float, list, dict[str, Any]]:
    kwargs = {k: spec[k] for k in _REQUIRED + _OPTIONAL if k in spec}
    row = render_clip(out_root, **kwargs, write_exact_depth=stress, on_frame=on_frame)
    c2w = [np.linalg.inv(p).tolist() for p in row["metric_w2c"]]
    info = {
        "kind": spec["kind"],
        "n_frames": int(spec["n_frames"]),
        "true_scale": row["true_scale"],
        "texture": spec.get("texture", "normal"),
        "wall_contrast": wall_contrast(row["clip_id"], spec.get("texture", "normal")),
        **row["stress"],
    }
    return row["clip_id"], row["true_scale"], c2w, info


def _frame_counter(
    total: int, on_progress: Callable[[int, int], None] | None
) -> Callable[[], None] | None:
    """One call per rendered frame -> ``on_progress(done, total)``; thread-safe (clips may
    render in threads)."""
    if on_progress is None:
        return None
    on_progress(0, total)  # the render starts now (its rate is measured from here)
    lock = threading.Lock()
    done = [0]

    def on_frame() -> None:
        with lock:
            done[0] += 1
            on_progress(done[0], total)

    return on_frame


def generate_sample(
    definition: Any, root: str | os.PathLike, workers: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Build the sample under ``root`` unless an identical one is already there.

    Returns clip_id -> true_scale. Safe to interrupt: everything is written to a sibling temp
    directory that replaces ``root`` only once complete. ``workers > 1`` renders that many clips at
    once in threads; the output is byte-identical either way. ``on_progress(frames done, frames
    in all)`` follows the render (minutes for the bundled sample); nothing is called when the
    sample is already there.
    """
    defn = load_definition(definition)
    digest = definition_hash(defn)
    root = Path(root).resolve()
    marker = root / MARKER
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == digest:
        return {k: float(v) for k, v in read_json(root / "ground_truth.json").items()}
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        specs = _clip_specs(defn)
        stress = is_stress(specs)
        on_frame = _frame_counter(sum(int(s["n_frames"]) for s in specs), on_progress)
        if workers > 1 and len(specs) > 1:
            # threads, not processes: numpy and OpenCV release the GIL in the heavy array work,
            # and a process pool would need the caller's __main__ guard (spawn) or an unsafe
            # fork of a threaded Ray driver
            with ThreadPoolExecutor(min(workers, len(specs))) as pool:
                results = list(
                    pool.map(_render_spec, [tmp] * len(specs), specs, [stress] * len(specs),
                             [on_frame] * len(specs))
                )
        else:
            results = [_render_spec(tmp, spec, stress, on_frame) for spec in specs]
        truth = {clip: scale for clip, scale, _, _ in results}
        metric = {clip: c2w for clip, _, c2w, _ in results}
        write_json_atomic(truth, tmp / "ground_truth.json")
        write_json_atomic(metric, tmp / "metric_c2w.json")
        if stress:
            write_json_atomic({clip: info for clip, _, _, info in results},
                              tmp / "stress_truth.json")
        (tmp / MARKER).write_text(digest + "\n", encoding="utf-8")
        if root.exists():  # stale (other definition or renderer): move aside, then drop
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, old / root.name)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            # another process finished the same sample first: theirs is as good as ours
            if not (marker.is_file() and marker.read_text(encoding="utf-8").strip() == digest):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return truth
