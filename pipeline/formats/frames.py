"""Decoding a clip's frames from its source (one mp4, one image file per frame, or the
whole source video decoded at the pose timestamps: ``pipeline.formats.source_video``).

Stages receive a manifest row and ask for a subset of frame indices, optionally resized; the
decoder reads a video once, sequentially (seeking in long-GOP mp4s is slow and, with some
codecs, inexact), and keeps only the requested frames.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np

from pipeline import storage
from pipeline.errors import ClipError

#: how an image file ends when it was written completely (after trailing padding is stripped)
_END_MARKERS = {b"\xff\xd8": (b"\xff\xd9", "JPEG end-of-image marker"),
                b"\x89PNG": (b"IEND\xaeB`\x82", "PNG IEND chunk")}


def truncation_problem(data: bytes) -> str | None:
    """Why an encoded JPEG/PNG is cut short, or None. Decoders fill a truncated JPEG's missing
    rows with grey and only warn on stderr, so the file's end marker is checked explicitly."""
    for magic, (end, what) in _END_MARKERS.items():
        if data.startswith(magic) and not data.rstrip(b"\x00\r\n ").endswith(end):
            return f"truncated image (no {what})"
    return None


def decode_image_checked(path: str) -> np.ndarray | str:
    """The stored image (no EXIF rotation) or a one-line reason it cannot be trusted."""
    try:
        data = storage.read_bytes(path)  # a local file or an object, streamed per frame
    except OSError as exc:
        return f"unreadable frame {path}: {exc.strerror or exc}"
    problem = truncation_problem(data)
    if problem:
        return f"{problem}: {path}"
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        return f"unreadable frame {path}"
    return img


def video_frame_count(path: str) -> int:
    """Number of decodable frames (counted by decoding: container metadata can lie)."""
    with storage.local_copy(path) as local:
        cap = cv2.VideoCapture(local)
        if not cap.isOpened():
            return -1
        n = 0
        try:
            while cap.grab():
                n += 1
        finally:
            cap.release()
    return n


def _resize(img: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or (img.shape[1], img.shape[0]) == tuple(size):
        return img
    return cv2.resize(img, tuple(size), interpolation=cv2.INTER_AREA)


def iter_frames(
    row: dict[str, Any], indices: Sequence[int] | None = None, size: tuple[int, int] | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(frame_idx, RGB uint8 HxWx3)`` for the requested indices, in increasing order.

    ``size`` is ``(width, height)``; resizing uses area interpolation. Raises ``ClipError``
    naming the clip and file when a frame is missing or unreadable.
    """
    clip = row["clip_id"]
    n = int(row["num_frames"])
    wanted = sorted(set(range(n) if indices is None else (int(i) for i in indices)))
    if wanted and (wanted[0] < 0 or wanted[-1] >= n):
        raise ClipError(clip, f"frame index out of range 0..{n - 1}")
    if row["source_type"] == "source_video":  # the whole source video, at the pose timestamps
        from pipeline.formats.source_video import decode_rows_frames

        yield from decode_rows_frames(row, wanted, size)
    elif row["source_type"] == "video":
        path = row["video_path"]
        # a video in a bucket is copied once to the node's scratch dir for the decoder
        with storage.local_copy(path) as local:
            yield from _video_frames(clip, path, local, wanted, n, size)
    else:
        paths = row["frame_paths"]
        for idx in wanted:
            # stored pixel layout, as ingest measured width/height (IMREAD_UNCHANGED) and as
            # COLMAP sees the file: an EXIF rotation would swap W and H against the manifest
            bgr = _imread(paths[idx], cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            if bgr is None:
                raise ClipError(clip, f"cannot read frame {idx} at {paths[idx]}")
            yield idx, _resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size)


def _imread(path: str, flags: int) -> np.ndarray | None:
    """``cv2.imread`` for a local file; an object is fetched and decoded in memory."""
    if not storage.is_uri(path):
        return cv2.imread(path, flags)
    try:
        data = storage.read_bytes(path)
    except OSError:
        return None
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


def _video_frames(
    clip: str, path: str, local: str, wanted: list[int], n: int, size: tuple[int, int] | None
) -> Iterator[tuple[int, np.ndarray]]:
    cap = cv2.VideoCapture(local)
    if not cap.isOpened():
        raise ClipError(clip, f"cannot open video {path}")
    try:
        want = set(wanted)
        idx = 0
        last = wanted[-1] if wanted else -1
        while idx <= last:
            if not cap.grab():
                raise ClipError(clip, f"video {path} ended at frame {idx}, expected {n}")
            if idx in want:
                ok, bgr = cap.retrieve()
                if not ok:
                    raise ClipError(clip, f"cannot decode frame {idx} of {path}")
                yield idx, _resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size)
            idx += 1
    finally:
        cap.release()


def decode_order(row: dict[str, Any]) -> tuple[str, int]:
    """Sort key putting the clips of one source video together, in time order (a stable sort
    leaves every other kind of clip where it was)."""
    if row["source_type"] != "source_video" or not row["timestamps_us"]:
        return ("", 0)
    return (str(row["video_path"]), int(row["timestamps_us"][0]))


def read_frames(
    row: dict[str, Any], indices: Sequence[int] | None = None, size: tuple[int, int] | None = None
) -> dict[int, np.ndarray]:
    return dict(iter_frames(row, indices, size))


def read_depth(row: dict[str, Any], frame_idx: int) -> np.ndarray:
    """Metric depth (metres, float32, 0 = missing) of one frame from the dataset's own files."""
    clip = row["clip_id"]
    paths = row.get("depth_paths") or []
    if len(paths) == 0:
        raise ClipError(clip, "no sensor/ground-truth depth recorded for this clip")
    path = paths[frame_idx]
    if path.endswith(".npy"):
        try:
            src = io.BytesIO(storage.read_bytes(path)) if storage.is_uri(path) else path
            d = np.load(src, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ClipError(clip, f"cannot read depth {path}: {exc}") from exc
    else:
        d = _imread(path, cv2.IMREAD_UNCHANGED)
        if d is None:
            raise ClipError(clip, f"cannot read depth {path}")
    return d.astype(np.float32) * np.float32(row["depth_unit"])


def read_video_rgb(path: str) -> list[np.ndarray]:
    """Every frame of a video file as RGB uint8 arrays (a generated or user-given mp4), in
    order; an unreadable file gives an empty list (callers report it with their context)."""
    out = []
    try:
        ctx = storage.local_copy(path)
        local = ctx.__enter__()
    except OSError:
        return out
    try:
        cap = cv2.VideoCapture(local)
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            cap.release()
    finally:
        ctx.__exit__(None, None, None)
    return out
