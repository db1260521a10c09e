"""The bundled synthetic sample: rendered clips in the RealEstate10K layout with exact depth.

Layout under a root (the one ``conf/dataset/sample.yaml`` points at)::

    <root>/<split>/<clip_id>.txt                       RealEstate10K pose file (relative scale)
    <root>/frames/<split>/<clip_id>/<timestamp>.png    RGB frames
    <root>/depth/<split>/<clip_id>/<timestamp>.npy     exact z-depth, float32 metres
    <root>/ground_truth.json                           clip_id -> true_scale
    <root>/metric_c2w.json                             clip_id -> per-frame metric c2w (4x4)

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from omegaconf import OmegaConf

from pipeline.io import read_json, stable_hash, write_json_atomic
from pipeline.synthetic import RENDERER_VERSION, intrinsics_matrix, make_scene, make_trajectory
from pipeline.synthetic import render as render_frame

MARKER = ".sample_complete"  # holds the definition hash; written last, inside the temp dir


def render_clip(
    out_root: Path,
    clip_id: str,
    split: str,
    seed: int,
    kind: str,
    n_frames: int,
    width: int,
    height: int,
    rel_scale: float,
    fov_deg: float = 60.0,
    frame_interval_us: int = 33333,
) -> dict[str, Any]:
    """Render one clip into ``out_root``; returns its manifest row (pipeline.schema.MANIFEST).

    The row lets tests of later stages start from a clip without running ingest. Paths in it
    are absolute, as the manifest contract requires. ``w2c`` in the row and the pose file are
    in the relative scale; the metric poses are under the extra key ``metric_w2c`` (ignored by
    the Arrow schema, handy for tests).
    """
    out_root = Path(out_root).resolve()
    seed, n_frames, width, height = int(seed), int(n_frames), int(width), int(height)
    rel_scale, fov_deg = float(rel_scale), float(fov_deg)
    if not (rel_scale > 0 and n_frames >= 1 and width >= 1 and height >= 1 and 0 < fov_deg < 180):
        raise ValueError(
            f"clip {clip_id}: bad sample parameters (rel_scale={rel_scale}, n_frames={n_frames},"
            f" size={width}x{height}, fov={fov_deg})"
        )
    scene = make_scene(seed)
    poses = make_trajectory(kind, n_frames, scene, seed + 1)
    K = intrinsics_matrix(width, height, fov_deg)
    intr = [K[0, 0] / width, K[1, 1] / height, K[0, 2] / width, K[1, 2] / height]
    frame_dir = out_root / "frames" / split / clip_id
    depth_dir = out_root / "depth" / split / clip_id
    frame_dir.mkdir(parents=True, exist_ok=True)
    depth_dir.mkdir(parents=True, exist_ok=True)
    timestamps = [int(frame_interval_us) * (i + 1) for i in range(n_frames)]
    url = f"synthetic://{clip_id}"
    lines = [url]
    frame_paths, depth_paths, w2c_rel = [], [], []
    for ts, w2c in zip(timestamps, poses):
        rgb, depth = render_frame(scene, K, w2c, width, height)
        fp = frame_dir / f"{ts}.png"
        dp = depth_dir / f"{ts}.npy"
        if not cv2.imwrite(str(fp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {fp}")
        np.save(dp, depth, allow_pickle=False)
        frame_paths.append(str(fp))
        depth_paths.append(str(dp))
        rel = w2c[:3, :4].copy()
        rel[:, 3] *= rel_scale
        w2c_rel.append(rel.reshape(-1).tolist())
        nums = [*intr, 0.0, 0.0, *rel.reshape(-1).tolist()]
        lines.append(f"{ts} " + " ".join(repr(float(x)) for x in nums))
    pose_path = out_root / split / f"{clip_id}.txt"
    pose_path.parent.mkdir(parents=True, exist_ok=True)
    pose_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {
        "clip_id": clip_id,
        "split": split,
        "source_type": "images",
        "video_path": None,
        "frame_paths": frame_paths,
        "depth_paths": depth_paths,
        "depth_unit": 1.0,
        "timestamps_us": timestamps,
        "intrinsics": [float(x) for x in intr],
        "width": int(width),
        "height": int(height),
        "num_frames": int(n_frames),
        "w2c": w2c_rel,
        "true_scale": 1.0 / float(rel_scale),
        "url": url,
        "metric_w2c": poses,
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


def definition_hash(defn: dict[str, Any]) -> str:
    return stable_hash({"definition": defn, "renderer": RENDERER_VERSION})


_REQUIRED = ("clip_id", "split", "seed", "kind", "n_frames", "width", "height", "rel_scale")
_OPTIONAL = ("fov_deg", "frame_interval_us")


def _render_spec(out_root: Path, spec: dict[str, Any]) -> tuple[str, float, list]:
    kwargs = {k: spec[k] for k in _REQUIRED + _OPTIONAL if k in spec}
    row = render_clip(out_root, **kwargs)
    return row["clip_id"], row["true_scale"], [np.linalg.inv(p).tolist() for p in row["metric_w2c"]]


def generate_sample(definition: Any, root: str | os.PathLike, workers: int = 1) -> dict[str, float]:
    """Build the sample under ``root`` unless an identical one is already there.

    Returns clip_id -> true_scale. Safe to interrupt: everything is written to a sibling temp
    directory that replaces ``root`` only once complete. ``workers > 1`` renders that many clips at
    once in threads; the output is byte-identical either way.
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
        if workers > 1 and len(specs) > 1:
            # threads, not processes: numpy and OpenCV release the GIL in the heavy array work,
            # and a process pool would need the caller's __main__ guard (spawn) or an unsafe
            # fork of a threaded Ray driver
            with ThreadPoolExecutor(min(workers, len(specs))) as pool:
                results = list(pool.map(_render_spec, [tmp] * len(specs), specs))
        else:
            results = [_render_spec(tmp, spec) for spec in specs]
        truth = {clip: scale for clip, scale, _ in results}
        metric = {clip: c2w for clip, _, c2w in results}
        write_json_atomic(truth, tmp / "ground_truth.json")
        write_json_atomic(metric, tmp / "metric_c2w.json")
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
