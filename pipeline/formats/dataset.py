"""Datasets on disk or in a bucket -> manifest rows: discovery and strict per-clip validation.

Discovery (``discover_re10k`` / ``discover_rgbd`` / ``discover_nerfstudio``: file listings and
nerfstudio's ``transforms.json``, cheap, on the driver) finds each clip's inputs and describes
them as JSON (paths, sizes, mtimes: the ingest shard's fingerprint). ``re10k_row`` /
``rgbd_row`` / ``nerfstudio_row`` parse and check one clip (pose file, frames or video, depth,
intrinsics) and build its ``pipeline.schema.MANIFEST`` row; every problem is a
``ClipError`` naming the clip and the file, so one bad clip never hides the others. The ingest
stage (``stages/ingest.py``) only shards the clips and writes the rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline import storage
from pipeline.errors import ClipError
from pipeline.formats import colmap as colmap_format
from pipeline.formats import frames as frame_io
from pipeline.formats import nerfstudio as ns_format
from pipeline.formats import rgbd as rgbd_format
from pipeline.formats.re10k import check_rotation, parse_pose_file
from pipeline.io import read_json


def _stat(path: Any) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _video_index(ds: dict[str, Any]) -> dict[str, list[tuple[str | None, Path]]]:
    """File name -> (split or None, path) of every mp4 in the documented places,
    ``<videos_root>/[<split>/][<video_id>/]<clip_id>.mp4``, from one listing of each folder
    on the driver (a glob per clip would list the same folders once per clip)."""
    index: dict[str, list[tuple[str | None, Path]]] = {}
    if not ds.get("videos_root"):
        return index
    root = storage.path(ds["videos_root"])
    splits = set(ds["splits"])
    if not root.is_dir():
        return index
    for top in sorted(root.iterdir()):
        if top.is_file() and top.suffix == ".mp4":
            index.setdefault(top.name, []).append((None, top))
        elif top.is_dir():
            split = top.name if top.name in splits else None
            for p in sorted(top.glob("*.mp4")):
                index.setdefault(p.name, []).append((split, p))
            if split is not None:  # <split>/<video_id>/<clip_id>.mp4
                for p in sorted(top.glob("*/*.mp4")):
                    index.setdefault(p.name, []).append((split, p))
    return index


def _frame_sources_stat(
    ds: dict[str, Any], split: str, clip_id: str, videos: list[str]
) -> list[Any]:
    """Size/mtime of the clip's frame folder(s), video(s) and depth folder(s), so that frames
    added, removed or replaced after a run (e.g. after a ``no frames found`` failure) make its
    shard stale. A folder's mtime changes when files are added to it or removed from it."""
    candidates: list[Any] = [storage.path(v) for v in videos]
    if ds.get("frames_root"):
        fr = storage.path(ds["frames_root"])
        candidates += [fr / split / clip_id, fr / clip_id]
    if ds.get("depth_root"):
        dr = storage.path(ds["depth_root"])
        candidates += [dr / split / clip_id, dr / clip_id]
    return [[str(c), *_stat(c)] for c in candidates if c.exists()]


# ---------------------------------------------------------------------- start-up check
def check_dataset(cfg: dict[str, Any]) -> None:
    """The dataset's places exist, checked at start-up (file listings only, no Ray, no model):
    a mistyped ``dataset.root`` is one ``ConfigError`` line in a second, not a failure after
    Ray has started, behind a model check, or a sample rendered into a place nobody meant.

    A synthetic dataset (one with a ``definition``) is rendered on first use into its root, so
    a root that does not exist yet is fine inside the work dir (created by the run) or as a new
    folder of an existing directory; anything else is a typo. A bucket's root was checked by
    the run's pre-flight (bucket and credentials); its prefix is listed at discovery.
    """
    from pipeline.errors import ConfigError

    ds = cfg["dataset"]
    value = str(ds["root"])
    if storage.is_uri(value):
        return
    root = storage.path(value)
    if ds.get("definition"):
        _check_synthetic_root(cfg, value, root)
        return
    if not root.exists():
        raise ConfigError(f"dataset.root={value} does not exist")
    if not root.is_dir():
        raise ConfigError(f"dataset.root={value} is not a directory")
    clip_list = ds.get("clip_list")
    if clip_list and not storage.is_uri(str(clip_list)) and not storage.path(clip_list).is_file():
        raise ConfigError(f"dataset.clip_list={clip_list} does not exist")
    _check_layout_has_clips(ds, value, root)


def _check_synthetic_root(cfg: dict[str, Any], value: str, root: Any) -> None:
    """A synthetic dataset's root: an existing directory, or a place it can be rendered into
    (inside the work dir, or a new folder of an existing directory)."""
    from pipeline.errors import ConfigError

    ds = cfg["dataset"]
    if root.exists():
        if not root.is_dir():
            raise ConfigError(f"dataset.root={value} is not a directory")
        return
    work = storage.path(str(cfg["paths"]["work_dir"]))
    inside_work = not storage.is_uri(str(work)) and root.is_relative_to(work)
    if not (inside_work or root.parent.is_dir()):
        raise ConfigError(
            f"dataset.root={value} does not exist, nor does {root.parent}: the "
            f"{ds.get('name')} dataset is rendered there on first use, so give a new folder "
            "in an existing directory (or leave dataset.root unset to render it into the "
            "work dir)")


def _check_layout_has_clips(ds: dict[str, Any], value: str, root: Any) -> None:
    """The existing root holds what its ``dataset.layout`` reads (sequences, scenes, COLMAP
    models or split folders of pose files), so a root one level off is named at start-up."""
    from pipeline.errors import ConfigError

    if ds["layout"] == "rgbd":
        if not rgbd_format.sequence_dirs(root):
            raise ConfigError(
                f"dataset.root={value}: no RGB-D sequence in it or its sub-folders (a sequence "
                "folder holds frame-XXXXXX.color.*, .depth.png, .pose.txt and "
                "camera-intrinsics.txt)")
        return
    if ds["layout"] == "nerfstudio":
        if not ns_format.scene_dirs(root):
            raise ConfigError(
                f"dataset.root={value}: no {ns_format.TRANSFORMS} in it or its sub-folders "
                "(give one nerfstudio scene folder, or a folder of scene folders)")
        return
    if ds["layout"] == "colmap":
        if not colmap_format.scene_dirs(root, str(ds["sparse_dir"])):
            raise ConfigError(
                f"dataset.root={value}: no COLMAP model in it or its sub-folders (a scene "
                f"folder holds {ds['sparse_dir']}/ with cameras and images .bin or .txt, "
                f"directly or in numbered sub-folders, and {ds['images_dir']}/)")
        return
    splits = [str(s) for s in ds["splits"]]
    if not any((root / s).is_dir() for s in splits):
        raise ConfigError(
            f"dataset.root={value} has no {' or '.join(f'{s}/' for s in splits)} folder of "
            "pose files (<root>/<split>/<clip_id>.txt)")


# ---------------------------------------------------------------------- discovery
def discover_re10k(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    ds = cfg["dataset"]
    root = storage.path(ds["root"])
    if not root.is_dir():
        from pipeline.errors import ConfigError

        raise ConfigError(f"dataset.root {root} is not a directory")
    wanted: set[str] | None = None
    if ds.get("clip_list"):
        wanted = {
            line.strip()
            for line in storage.path(ds["clip_list"]).read_text().splitlines()
            if line.strip() and not line.startswith("#")
        }
    found: dict[str, list[tuple[str, Any]]] = {}
    for split in ds["splits"]:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for path in sorted(split_dir.glob("*.txt")):
            if wanted is not None and path.stem not in wanted:
                continue
            found.setdefault(path.stem, []).append((split, path))
    sources: dict[str, dict[str, Any]] = {}
    video_index = {} if ds.get("source_videos") else _video_index(ds)
    for clip_id, hits in found.items():
        split, path = hits[0]
        videos = [
            str(p) for sp, p in video_index.get(f"{clip_id}.mp4", []) if sp in (split, None)
        ]
        if ds.get("source_videos"):
            videos = _source_video_of(ds, path)
        src: dict[str, Any] = {
            "layout": "re10k",
            "split": split,
            "pose_file": str(path),
            "stat": _stat(path),
            "videos": videos,
            "frames_stat": _frame_sources_stat(ds, split, clip_id, videos),
        }
        if len(hits) > 1:
            src["problem"] = "duplicate clip id: " + ", ".join(str(p) for _, p in hits)
        sources[clip_id] = src
    if wanted is not None:
        for clip_id in sorted(wanted - set(found)):
            sources[clip_id] = {
                "layout": "re10k",
                "split": "?",
                "problem": f"listed in {ds['clip_list']} but no pose file under {root}",
            }
    return sources


def _source_video_of(ds: dict[str, Any], pose_file: Any) -> list[str]:
    """The source video a pose file's URL line names, if present: its size/mtime joins the
    clip's fingerprint (a video downloaded or replaced later makes the clip stale). Problems
    (unreadable file, bad URL, no video) are reported by ``re10k_row`` with the clip's name."""
    from pipeline.formats import source_video as sv

    try:
        with storage.path(pose_file).open("r", encoding="utf-8") as fh:
            url = fh.readline()
        vid = sv.video_id_from_url(url, "", str(ds["video_id_pattern"]))
        return [sv.find_source_video("", ds["source_videos"], vid,
                                     list(ds["source_video_extensions"]))]
    except (OSError, UnicodeDecodeError, ClipError):
        return []


def clip_windows(ds: dict[str, Any]) -> Callable[[int], list[list[int]]]:
    """``n -> [frame indices of each clip]`` for ``dataset.clip_length`` frames taken every
    ``clip_stride``: consecutive, non-overlapping clips; a shorter tail is dropped."""
    length, stride = int(ds["clip_length"]), int(ds["clip_stride"])
    if length < 2 or stride < 1:
        from pipeline.errors import ConfigError

        raise ConfigError("dataset.clip_length must be >= 2 and dataset.clip_stride >= 1")
    span = length * stride

    def windows(n: int) -> list[list[int]]:
        return [list(range(start, start + span, stride))
                for start in range(0, n - span + 1, span)]

    return windows


def discover_rgbd(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    ds = cfg["dataset"]
    root = storage.path(ds["root"])
    windows = clip_windows(ds)
    sources: dict[str, dict[str, Any]] = {}
    for seq in rgbd_format.sequence_dirs(root):
        frames = rgbd_format.list_frames(seq)
        numbers = [n for n, _ in frames]
        colour = dict(frames)
        intr = seq / "camera-intrinsics.txt"
        for idx in windows(len(numbers)):
            picked = [numbers[i] for i in idx]
            clip_id = f"{seq.name}_{picked[0]:06d}"
            # every input file's size/mtime: a folder's mtime misses a file edited in place
            # (a corrected camera-intrinsics.txt or pose must make the clip stale)
            files = [intr] + [
                f for n in picked
                for f in (colour[n], seq / f"frame-{n:06d}.depth.png",
                          seq / f"frame-{n:06d}.pose.txt")
            ]
            sources[clip_id] = {
                "layout": "rgbd",
                "split": ds["split"],
                "seq": str(seq),
                "frame_numbers": picked,
                "files_stat": [_stat(f) if f.exists() else None for f in files],
            }
    return sources


def discover_nerfstudio(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each scene's frames (natural file-name order) cut into clips of ``clip_length``.

    ``transforms.json`` is read here, on the driver, since the clip count depends on it; a
    scene whose file cannot be read becomes one failing clip named after the scene."""
    ds = cfg["dataset"]
    root = storage.path(ds["root"])
    windows = clip_windows(ds)
    sources: dict[str, dict[str, Any]] = {}
    for scene in ns_format.scene_dirs(root):
        transforms = scene / ns_format.TRANSFORMS
        try:
            frames = ns_format.ordered_frames(ns_format.read_transforms(scene, scene.name))
        except ClipError as exc:
            sources[scene.name] = {"layout": "nerfstudio", "split": ds["split"],
                                   "problem": exc.reason, "stat": _stat(transforms)}
            continue
        for picked in windows(len(frames)):
            start = picked[0]
            files = [ns_format.resolve(scene, str(frames[i][key]))
                     for i in picked for key in ("file_path", "depth_file_path")
                     if frames[i].get(key)]
            # every input's size/mtime: transforms.json and each frame and depth file
            sources[f"{scene.name}_{start:06d}"] = {
                "layout": "nerfstudio",
                "split": ds["split"],
                "scene": str(scene),
                "frame_indices": picked,
                "stat": _stat(transforms),
                "files_stat": [_stat(f) if f.exists() else None for f in files],
            }
    return sources


def discover_colmap(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One clip per COLMAP model (see ``pipeline.formats.colmap``); the size/mtime of the
    model's files and of every file in the image (and depth) folder fingerprint it."""
    ds = cfg["dataset"]
    root = storage.path(ds["root"])
    sources: dict[str, dict[str, Any]] = {}
    for scene in colmap_format.scene_dirs(root, str(ds["sparse_dir"])):
        folders = [scene / str(ds["images_dir"])]
        if ds.get("depth_dir"):
            folders.append(scene / str(ds["depth_dir"]))
        inputs = [[str(p), *_stat(p)] for f in folders if f.is_dir()
                  for p in sorted(f.iterdir()) if p.is_file()]
        for clip_id, model in colmap_format.scene_models(scene, str(ds["sparse_dir"])):
            files = sorted(p for p in model.iterdir() if p.is_file())
            sources[clip_id] = {
                "layout": "colmap",
                "split": ds["split"],
                "scene": str(scene),
                "model": str(model),
                "stat": [[p.name, *_stat(p)] for p in files],
                "files_stat": inputs,
            }
    return sources


def render_synthetic(definition: Path, root: str, generate: Any) -> None:
    """Render a synthetic dataset on first use. A bucket ``root`` is rendered in the node's
    temp dir and uploaded; its marker file (the definition's digest) is uploaded last, so an
    interrupted upload is redone by the next run."""
    if not storage.is_uri(root):
        generate(definition, root)
        return
    import tempfile

    from pipeline.synthetic.sample_data import MARKER, definition_hash, load_definition

    marker = storage.path(root) / MARKER
    digest = definition_hash(load_definition(definition))
    if marker.is_file() and marker.read_text().strip() == digest:
        return
    with tempfile.TemporaryDirectory(dir=storage.scratch_root()) as tmp:
        local = Path(tmp) / "data"
        generate(definition, local)
        (local / MARKER).rename(Path(tmp) / MARKER)
        storage.upload_tree(local, root)
        marker.upload(Path(tmp) / MARKER)




# ---------------------------------------------------------------------- RealEstate10K
def _find_image_frames(
    clip_id: str, folder: Any, timestamps: np.ndarray, exts: list[str]
) -> list[str]:
    by_stem: dict[str, Any] = {}
    for p in folder.iterdir():
        if p.suffix.lower().lstrip(".") in exts:
            by_stem[p.stem] = p
    paths = []
    for ts in timestamps:
        p = by_stem.get(str(int(ts)))
        if p is None:
            raise ClipError(
                clip_id,
                f"frame count {len(by_stem)} != pose count {len(timestamps)}: "
                f"no image for timestamp {int(ts)} in {folder}",
            )
        paths.append(str(p))
    if len(by_stem) != len(timestamps):
        raise ClipError(
            clip_id, f"frame count {len(by_stem)} != pose count {len(timestamps)} in {folder}"
        )
    return paths


def _image_size_checked(
    clip_id: str, paths: list[str], verify: str
) -> tuple[int, int]:
    """Decode frames (all, or first and last) so unreadable files fail at ingest, not later."""
    check = paths if verify == "all" else [paths[0], paths[-1]]
    size = None
    for p in check:
        img = frame_io.decode_image_checked(p)
        if isinstance(img, str):
            raise ClipError(clip_id, img)
        hw = img.shape[:2]
        if size is None:
            size = hw
        elif hw != size:
            raise ClipError(clip_id, f"frame {p} is {hw[1]}x{hw[0]}, expected {size[1]}x{size[0]}")
    assert size is not None
    return int(size[1]), int(size[0])


def _video_info(clip_id: str, path: Any, verify: str) -> tuple[int, int, int]:
    with storage.local_copy(path) as local:  # a bucket's video: one node-local scratch copy
        cap = cv2.VideoCapture(local)
        if not cap.isOpened():
            raise ClipError(clip_id, f"cannot open video {path}")
        try:
            w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        finally:
            cap.release()
        if verify == "all":
            n = frame_io.video_frame_count(local)
    if w <= 0 or h <= 0 or n <= 0:
        raise ClipError(clip_id, f"video {path} has no decodable frames")
    return w, h, n


def _source_video_checked(
    clip_id: str, ds: dict[str, Any], url: str, timestamps: np.ndarray, verify: str
) -> tuple[str, int, int]:
    """The clip's source video (``<source_videos>/<video_id>.<ext>``), its width and height.

    Every timestamp must have a frame within half a frame period (read from the packets, no
    decoding); the frames are then decoded (all, or the first and last) so that a damaged
    video fails here, once, instead of in every stage that reads it."""
    from pipeline.formats import source_video as sv

    vid = sv.video_id_from_url(url, clip_id, str(ds["video_id_pattern"]))
    path = sv.find_source_video(clip_id, ds["source_videos"], vid,
                                list(ds["source_video_extensions"]))
    with storage.local_copy(path) as local:
        table = sv.probe(local, clip_id)
        sv.frames_at(table, timestamps, clip_id, path)
        n = len(timestamps)
        check = list(range(n)) if verify == "all" else sorted({0, n - 1})
        row = {"clip_id": clip_id, "video_path": local, "timestamps_us": timestamps.tolist()}
        for _ in sv.decode_rows_frames(row, check, None):
            pass
    if table.width <= 0 or table.height <= 0:
        raise ClipError(clip_id, f"video {path} has no frame size")
    return path, table.width, table.height


def _depth_files(
    clip_id: str, depth_root: str | None, split: str, timestamps: np.ndarray
) -> list[str]:
    if not depth_root:
        return []
    for folder in (storage.path(depth_root) / split / clip_id,
                   storage.path(depth_root) / clip_id):
        if folder.is_dir():
            paths = [folder / f"{int(t)}.npy" for t in timestamps]
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise ClipError(clip_id, f"depth file missing: {missing[0]}")
            return [str(p) for p in paths]
    return []


def re10k_row(clip_id: str, src: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    ds, ing = cfg["dataset"], cfg["ingest"]
    split = src["split"]
    poses = parse_pose_file(
        storage.path(src["pose_file"]), clip_id, float(ing["rotation_tolerance"]),
        float(ing["intrinsics_tolerance"]), int(ing["min_frames"]),
    )
    n = len(poses.timestamps_us)
    exts = [e.lower() for e in ing["image_extensions"]]
    frames_root = storage.path(ds["frames_root"]) if ds.get("frames_root") else None
    videos_root = storage.path(ds["videos_root"]) if ds.get("videos_root") else None
    video_path = None
    frame_paths: list[str] = []
    folders = [frames_root / split / clip_id, frames_root / clip_id] if frames_root else []
    folder = next((f for f in folders if f.is_dir()), None)
    # found by discovery, with one listing for the whole dataset (see _video_index)
    videos = [storage.path(v) for v in src.get("videos", []) if storage.path(v).is_file()]
    source_type = "images"
    if ds.get("source_videos"):  # whole source videos, decoded at the pose timestamps
        source_type = "source_video"
        video_path, width, height = _source_video_checked(
            clip_id, ds, poses.url, poses.timestamps_us, ing["verify_frames"])
    elif folder is not None:
        frame_paths = _find_image_frames(clip_id, folder, poses.timestamps_us, exts)
        width, height = _image_size_checked(clip_id, frame_paths, ing["verify_frames"])
    elif videos:
        if len(videos) > 1:
            raise ClipError(clip_id, "several videos match: " + ", ".join(map(str, videos)))
        video_path = str(videos[0])
        source_type = "video"
        width, height, n_video = _video_info(clip_id, videos[0], ing["verify_frames"])
        if n_video != n:
            raise ClipError(
                clip_id, f"frame count {n_video} != pose count {n} in video {video_path}"
            )
    else:
        where = []
        if frames_root:
            where.append(f"{frames_root / split / clip_id}/")
        if videos_root:
            where.append(f"{videos_root}/[{split}/][<video_id>/]{clip_id}.mp4")
        raise ClipError(clip_id, f"no frames found for clip {clip_id} at {' or '.join(where)}")
    return {
        "clip_id": clip_id,
        "split": split,
        "source_type": source_type,
        "video_path": video_path,
        "frame_paths": frame_paths,
        "depth_paths": _depth_files(clip_id, ds.get("depth_root"), split, poses.timestamps_us),
        "depth_unit": 1.0,
        "timestamps_us": poses.timestamps_us.tolist(),
        "intrinsics": poses.intrinsics.tolist(),
        "width": width,
        "height": height,
        "num_frames": n,
        "w2c": poses.w2c.reshape(n, 12).tolist(),
        "true_scale": _true_scale(cfg, clip_id),
        "url": poses.url,
    }


@functools.lru_cache(maxsize=4)
def _ground_truth(path: str, mtime_ns: int) -> dict[str, Any]:
    """One read per file version, not one per clip (the mtime keys the cache)."""
    data = read_json(path)
    return data.get("true_scale", data)


def _true_scale(cfg: dict[str, Any], clip_id: str) -> float | None:
    """Ground truth shipped beside a synthetic dataset (``ground_truth.json``), if any."""
    gt = storage.path(cfg["dataset"]["root"]) / "ground_truth.json"
    if not gt.is_file():
        return None
    value = _ground_truth(str(gt), gt.stat().st_mtime_ns).get(clip_id)
    return float(value) if value is not None else None


# ---------------------------------------------------------------------- RGB-D folders
def rgbd_row(clip_id: str, src: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    ds, ing = cfg["dataset"], cfg["ingest"]
    seq = storage.path(src["seq"])
    rel = float(ds["relative_scale"])
    if not rel > 0:
        raise ClipError(clip_id, f"dataset.relative_scale must be > 0, got {rel}")
    K = rgbd_format.read_intrinsics(seq, clip_id)
    colour = {n: p for n, p in rgbd_format.list_frames(seq)}
    frame_paths, depth_paths, w2c = [], [], []
    for num in src["frame_numbers"]:
        stem = f"frame-{num:06d}"
        depth = seq / f"{stem}.depth.png"
        pose = seq / f"{stem}.pose.txt"
        for p in (depth, pose):
            if not p.is_file():
                raise ClipError(clip_id, f"missing {p}")
        c2w = rgbd_format.read_pose(pose, clip_id)
        R, t = c2w[:3, :3], c2w[:3, 3]
        check_rotation(clip_id, R, float(ing["rotation_tolerance"]), str(pose))
        m = np.concatenate([R.T, (-R.T @ t * rel)[:, None]], axis=1)
        frame_paths.append(str(colour[num]))
        depth_paths.append(str(depth))
        w2c.append(m.reshape(12).tolist())
    width, height = _image_size_checked(clip_id, frame_paths, ing["verify_frames"])
    dw, dh = _image_size_checked(clip_id, [depth_paths[0]], "ends")
    if (dw, dh) != (width, height):
        raise ClipError(clip_id, f"depth is {dw}x{dh} but colour is {width}x{height}")
    interval = int(ing["rgbd_frame_interval_us"])
    return {
        "clip_id": clip_id,
        "split": src["split"],
        "source_type": "images",
        "video_path": None,
        "frame_paths": frame_paths,
        "depth_paths": depth_paths,
        "depth_unit": float(ds["depth_unit"]),
        "timestamps_us": [int(n) * interval for n in src["frame_numbers"]],
        "intrinsics": [K[0, 0] / width, K[1, 1] / height, K[0, 2] / width, K[1, 2] / height],
        "width": width,
        "height": height,
        "num_frames": len(frame_paths),
        "w2c": w2c,
        "true_scale": 1.0 / rel,
        "url": f"file://{seq.name}",
    }


# ---------------------------------------------------------------------- nerfstudio scenes
def _depth_size(clip_id: str, path: Any) -> tuple[int, int]:
    """Width, height of one depth file (a PNG decoded, a .npy's header read)."""
    if str(path).endswith(".npy"):
        import io

        try:
            d = np.load(io.BytesIO(storage.path(path).read_bytes()), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ClipError(clip_id, f"cannot read depth {path}: {exc}") from exc
        if d.ndim != 2:
            raise ClipError(clip_id, f"depth {path} has shape {d.shape}, expected H x W")
        return int(d.shape[1]), int(d.shape[0])
    return _image_size_checked(clip_id, [str(path)], "ends")


def _check_image_sizes(
    clip_id: str, frame_paths: list[str], verify: str, size: tuple[int, int], declared: str
) -> None:
    """The images have the camera's size (all of them, or the first and last, as
    ``ingest.verify_frames`` says): the intrinsics are normalised by it. ``declared`` names
    where the size comes from in the message."""
    w, h = size
    check = frame_paths if verify == "all" else [frame_paths[0], frame_paths[-1]]
    for p in check:
        width, height = _image_size_checked(clip_id, [p], "ends")
        if (width, height) != (w, h):
            raise ClipError(clip_id, f"image size mismatch: {p} is {width}x{height} but "
                                     f"{declared}")


def _depth_unit(
    clip_id: str, depth_paths: list[str], unit: float, size: tuple[int, int]
) -> float:
    """Metres per depth unit of the clip's depth files (``unit`` for images, 1 for .npy, which
    is in metres), after checking they are of one kind and of the images' size."""
    if not depth_paths:
        return unit
    w, h = size
    kinds = {p.endswith(".npy") for p in depth_paths}
    if len(kinds) > 1:
        raise ClipError(clip_id, "depth files mix .npy and images within the clip")
    unit = 1.0 if kinds == {True} else unit  # .npy depth is in metres
    dw, dh = _depth_size(clip_id, depth_paths[0])
    if (dw, dh) != (w, h):
        raise ClipError(clip_id, f"depth {depth_paths[0]} is {dw}x{dh} but the image is "
                                 f"{w}x{h}")
    return unit


def nerfstudio_row(clip_id: str, src: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """Manifest row of one clip of a nerfstudio scene (see ``pipeline.formats.nerfstudio``).

    The manifest holds one camera per clip, so per-frame intrinsics must agree within the clip;
    the images must have the size ``transforms.json`` declares, since the intrinsics are
    normalised by it. Translations are multiplied by ``dataset.relative_scale``;
    ``true_scale = 1 / relative_scale`` is recorded only with ``dataset.poses_metric=true``
    (poses known to be in metres, e.g. an RGB-D or LiDAR capture), as SfM poses have none."""
    ds, ing = cfg["dataset"], cfg["ingest"]
    scene = storage.path(src["scene"])
    rel = float(ds["relative_scale"])
    if not rel > 0:
        raise ClipError(clip_id, f"dataset.relative_scale must be > 0, got {rel}")
    tol = float(ing["rotation_tolerance"])
    meta = ns_format.read_transforms(scene, clip_id)
    frames = ns_format.ordered_frames(meta)
    transforms = scene / ns_format.TRANSFORMS
    if max(src["frame_indices"]) >= len(frames):
        raise ClipError(clip_id, f"{transforms} has fewer frames than at discovery: run again")
    picked = [frames[i] for i in src["frame_indices"]]
    frame_paths, depth_paths, w2c, cams = _nerfstudio_frames(
        clip_id, scene, meta, picked, rel, tol)
    if depth_paths and len(depth_paths) != len(frame_paths):
        raise ClipError(clip_id, f"{transforms}: only {len(depth_paths)} of the clip's "
                                 f"{len(frame_paths)} frames have a depth_file_path")
    fx, fy, cx, cy, w, h = cams[0]
    _check_nerfstudio_cameras(clip_id, cams, frame_paths, float(ing["intrinsics_tolerance"]))
    _check_image_sizes(clip_id, frame_paths, ing["verify_frames"], (w, h),
                       f"{transforms} says w={w}, h={h}")
    return _image_clip_row(
        clip_id, src["split"], ds, (frame_paths, depth_paths, w2c),
        [int(i) for i in src["frame_indices"]], [fx / w, fy / h, cx / w, cy / h], (w, h),
        scene, rel)


def _nerfstudio_frames(
    clip_id: str, scene: Any, meta: dict[str, Any], picked: list[dict[str, Any]],
    rel: float, tol: float,
) -> tuple[list[str], list[str], list[list[float]], list[Any]]:
    """Image paths, depth paths, scaled w2c rows and cameras of the clip's frames, each file
    checked to exist and each pose to be a rotation."""
    transforms = scene / ns_format.TRANSFORMS
    frame_paths, depth_paths, w2c, cams = [], [], [], []
    for fr in picked:
        where = f"{transforms} frame {fr['file_path']}"
        image = ns_format.resolve(scene, fr["file_path"])
        if not image.is_file():
            raise ClipError(clip_id, f"missing image {image} ({where})")
        cams.append(ns_format.camera(meta, fr, clip_id, where))
        c2w = ns_format.c2w_opencv(fr, clip_id, where, tol)
        R, t = c2w[:3, :3], c2w[:3, 3]
        w2c.append(np.concatenate([R.T, (-R.T @ t * rel)[:, None]], axis=1).reshape(12).tolist())
        frame_paths.append(str(image))
        if fr.get("depth_file_path"):
            depth = ns_format.resolve(scene, str(fr["depth_file_path"]))
            if not depth.is_file():
                raise ClipError(clip_id, f"missing depth {depth} ({where})")
            depth_paths.append(str(depth))
    return frame_paths, depth_paths, w2c, cams


def _check_nerfstudio_cameras(
    clip_id: str, cams: list[Any], frame_paths: list[str], itol: float
) -> None:
    """Every frame's camera matches the first one's (normalised intrinsics within ``itol``,
    same size): the manifest holds one camera per clip."""
    fx, fy, cx, cy, w, h = cams[0]
    for cam, path in zip(cams, frame_paths):
        norm = np.array([cam[0] / cam[4], cam[1] / cam[5], cam[2] / cam[4], cam[3] / cam[5]])
        ref = np.array([fx / w, fy / h, cx / w, cy / h])
        if cam[4:] != (w, h) or np.abs(norm - ref).max() > itol:
            raise ClipError(clip_id, f"intrinsics change within the clip at {path} (the "
                                     "pipeline takes one camera per clip)")


# ---------------------------------------------------------------------- COLMAP models
def colmap_row(clip_id: str, src: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """Manifest row of one COLMAP model: its registered images in name order, one pinhole
    camera (per-image cameras must agree within ``ingest.intrinsics_tolerance`` once
    normalised), images of the camera's size, translations times ``dataset.relative_scale``;
    ``true_scale`` only with ``dataset.poses_metric=true``, as for nerfstudio scenes."""
    ds, ing = cfg["dataset"], cfg["ingest"]
    scene, model = storage.path(src["scene"]), storage.path(src["model"])
    rel = float(ds["relative_scale"])
    tol = float(ing["rotation_tolerance"])
    rec = colmap_format.read_model(model, clip_id)
    images = colmap_format.ordered_images(rec)
    if len(images) < int(ing["min_frames"]):
        raise ClipError(clip_id, f"COLMAP model {model} has {len(images)} registered images, "
                                 f"need at least {ing['min_frames']}")
    image_dir = scene / str(ds["images_dir"])
    depth_dir = scene / str(ds["depth_dir"]) if ds.get("depth_dir") else None
    frame_paths, depth_paths, w2c, cams = _colmap_frames(
        clip_id, rec, images, model, (image_dir, depth_dir), rel, tol)
    ref = np.asarray(cams[0][:4])
    _check_colmap_cameras(clip_id, cams, frame_paths, float(ing["intrinsics_tolerance"]))
    w, h = cams[0][4:]
    _check_image_sizes(clip_id, frame_paths, ing["verify_frames"], (w, h),
                       f"the COLMAP camera is {w}x{h}")
    return _image_clip_row(
        clip_id, src["split"], ds, (frame_paths, depth_paths, w2c),
        list(range(len(frame_paths))), [float(x) for x in ref], (w, h), scene, rel)


def _image_clip_row(
    clip_id: str, split: str, ds: dict[str, Any], files: tuple[list[str], list[str], list[Any]],
    frame_numbers: list[int], intrinsics: list[float], size: tuple[int, int], scene: Any,
    rel: float,
) -> dict[str, Any]:
    """The manifest row of a clip of image files with poses (nerfstudio, COLMAP): timestamps
    at ``dataset.frame_interval_us`` per frame number, the depth unit checked."""
    frame_paths, depth_paths, w2c = files
    w, h = size
    interval = int(ds["frame_interval_us"])
    return {
        "clip_id": clip_id,
        "split": split,
        "source_type": "images",
        "video_path": None,
        "frame_paths": frame_paths,
        "depth_paths": depth_paths,
        "depth_unit": _depth_unit(clip_id, depth_paths, float(ds["depth_unit"]), (w, h)),
        "timestamps_us": [i * interval for i in frame_numbers],
        "intrinsics": intrinsics,
        "width": w,
        "height": h,
        "num_frames": len(frame_paths),
        "w2c": w2c,
        "true_scale": 1.0 / rel if ds["poses_metric"] else None,
        "url": f"file://{scene.name}",
    }


def _colmap_frames(
    clip_id: str, rec: Any, images: list[Any], model: Any, dirs: tuple[Any, Any | None],
    rel: float, tol: float,
) -> tuple[list[str], list[str], list[list[float]], list[tuple[Any, ...]]]:
    """Image paths, depth paths (when ``dirs`` has a depth folder), scaled w2c rows and
    normalised cameras ``(fx/w, fy/h, cx/w, cy/h, w, h)`` of the model's images, each file
    checked to exist and each pose to be finite and a rotation."""
    image_dir, depth_dir = dirs
    frame_paths, depth_paths, w2c, cams = [], [], [], []
    for im in images:
        where = f"{model} image {im.name!r}"
        path = image_dir / im.name
        if not path.is_file():
            raise ClipError(clip_id, f"missing image {path} ({where})")
        cam = rec.cameras[im.camera_id]
        fx, fy, cx, cy = colmap_format.camera_pinhole(cam, clip_id, where)
        w, h = int(cam.width), int(cam.height)
        cams.append((fx / w, fy / h, cx / w, cy / h, w, h))
        m = colmap_format.w2c(im)
        if not np.all(np.isfinite(m)):
            raise ClipError(clip_id, f"{where}: non-finite pose")
        check_rotation(clip_id, m[:, :3], tol, where)
        m[:, 3] *= rel
        w2c.append(m.reshape(12).tolist())
        frame_paths.append(str(path))
        if depth_dir is not None:
            depth_paths.append(_colmap_depth_file(clip_id, depth_dir, im.name, where))
    return frame_paths, depth_paths, w2c, cams


def _colmap_depth_file(clip_id: str, depth_dir: Any, name: str, where: str) -> str:
    """The depth file of image ``name``: ``<depth_dir>/<stem>.png``, else ``.npy``."""
    stem = Path(name).with_suffix("")
    found = [depth_dir / f"{stem}.{ext}" for ext in ("png", "npy")
             if (depth_dir / f"{stem}.{ext}").is_file()]
    if not found:
        raise ClipError(clip_id, f"missing depth {depth_dir / stem}.png|.npy ({where})")
    return str(found[0])


def _check_colmap_cameras(
    clip_id: str, cams: list[tuple[Any, ...]], frame_paths: list[str], itol: float
) -> None:
    """Every image's normalised camera matches the first one's within ``itol`` (same size):
    the manifest holds one camera per clip."""
    ref = np.asarray(cams[0][:4])
    for cam, path in zip(cams, frame_paths):
        if cam[4:] != cams[0][4:] or np.abs(np.asarray(cam[:4]) - ref).max() > itol:
            raise ClipError(clip_id, f"camera changes within the model at {path} (the "
                                     "pipeline takes one camera per clip)")
