"""RealEstate10K frames decoded straight from the clip's source video, at its pose timestamps.

An official pose file names a YouTube video (line 1) and gives, per pose, a timestamp in
microseconds into that video. With ``dataset.source_videos=DIR`` the clip's frames are read from
``DIR/<video_id>.<ext>`` without ever being written to disk: each pose maps to the frame whose
presentation time is nearest its timestamp (it must lie within half a frame period, else the
clip fails with the timestamp and the video's time range).

Times are read from the container's packets (demuxing only, no decoding: a 10-minute video is
probed in well under a second), so the mapping is exact even for variable frame rates, where a
frame index computed as ``time * fps`` would drift. Decoding uses PyAV: a seek lands on the
keyframe at or before a wanted frame and decodes forward to that frame's exact presentation
time, so no frame is ever "keyframe-snapped". A reader stays open between clips of the same
video in each thread (``SourceVideoReader.shared``): when a later request lies before the next
keyframe the decoder simply continues, so clips of one video processed in time order are
decoded in one forward pass.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import av
import numpy as np

from pipeline import storage
from pipeline.errors import ClipError

#: a frame is accepted when its presentation time is within this fraction of a frame period
#: of the pose timestamp (nearest frame; half a period is the most the nearest can be away)
HALF_PERIOD = 0.5
#: rounding slack on that test (microsecond timestamps against rational container times)
TIME_SLACK_S = 1e-6


def video_id_from_url(url: str, clip_id: str, pattern: str) -> str:
    """The video id of a pose file's URL line (``...watch?v=ID`` or ``youtu.be/ID``), checked
    against ``pattern`` so that it is a safe file name (no path separators, no ``..``)."""
    parsed = urlparse(url.strip())
    ids = parse_qs(parsed.query).get("v", [])
    if not ids and parsed.netloc.endswith("youtu.be"):
        ids = [parsed.path.strip("/")]
    if not ids:
        raise ClipError(clip_id, f"pose file URL {url!r} names no video (expected ...watch?v=ID)")
    vid = ids[0]
    if not re.fullmatch(pattern, vid) or ".." in vid:
        raise ClipError(clip_id, f"video id {vid!r} in URL {url!r} is not a safe file name "
                                 f"(allowed: {pattern})")
    return vid


def find_source_video(
    clip_id: str, root: str, video_id: str, extensions: Sequence[str]
) -> str:
    """``<root>/<video_id>.<ext>`` for the first extension that exists."""
    base = storage.path(root)
    for ext in extensions:
        p = base / f"{video_id}.{ext}"
        if p.is_file():
            return str(p)
    raise ClipError(clip_id, f"source video {video_id} not found: no "
                             f"{base}/{video_id}.{{{','.join(extensions)}}}")


@dataclass(frozen=True)
class FrameTable:
    """Presentation times of every frame of a video's first video stream (from its packets)."""

    pts: np.ndarray  # (n,) int64 presentation timestamps in stream time base, sorted
    keyframes: np.ndarray  # sorted pts of the keyframes (where a seek can start decoding)
    time_base: Fraction
    start_pts: int  # the stream's first presentation time: time 0 of the pose timestamps
    period_s: float  # nominal frame period
    width: int
    height: int

    def seconds(self, pts: np.ndarray) -> np.ndarray:
        return (pts - self.start_pts).astype(np.float64) * float(self.time_base)

    def describe(self) -> str:
        t = self.seconds(self.pts[[0, -1]])
        return (f"{len(self.pts)} frames covering {t[0] * 1e6:.0f}..{t[1] * 1e6:.0f} us, "
                f"one every {self.period_s * 1e6:.0f} us")


def probe(path: str, clip_id: str) -> FrameTable:
    """Demux (without decoding) the first video stream: every frame's pts and the keyframes."""
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError) as exc:
        raise ClipError(clip_id, f"cannot open video {path}: {exc}") from exc
    try:
        if not container.streams.video:
            raise ClipError(clip_id, f"video {path} has no video stream")
        stream = container.streams.video[0]
        pts, keys = [], []
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:  # the flush packet at the end
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
        if not pts:
            raise ClipError(clip_id, f"video {path} has no frames")
        all_pts = np.sort(np.asarray(pts, dtype=np.int64))
        tb = stream.time_base
        rate = stream.average_rate or stream.guessed_rate
        if rate:
            period = 1.0 / float(rate)
        elif len(all_pts) > 1:
            period = float(np.median(np.diff(all_pts))) * float(tb)
        else:
            raise ClipError(clip_id, f"video {path}: frame rate unknown")
        start = stream.start_time if stream.start_time is not None else int(all_pts[0])
        return FrameTable(
            pts=all_pts, keyframes=np.sort(np.asarray(keys or [all_pts[0]], np.int64)),
            time_base=tb, start_pts=int(start), period_s=period,
            width=int(stream.codec_context.width), height=int(stream.codec_context.height))
    except av.FFmpegError as exc:
        raise ClipError(clip_id, f"cannot read video {path}: {exc}") from exc
    finally:
        container.close()


def frames_at(
    table: FrameTable, timestamps_us: Sequence[int], clip_id: str, path: str,
    poses: Sequence[int] | None = None,
) -> np.ndarray:
    """Index (into ``table.pts``) of the frame nearest each timestamp; a ``ClipError`` naming
    the first timestamp with no frame within half a period, and the video's range. ``poses``:
    the clip's pose index of each timestamp (default 0, 1, ...), for that message."""
    t = np.asarray(timestamps_us, dtype=np.float64) * 1e-6
    times = table.seconds(table.pts)
    right = np.clip(np.searchsorted(times, t), 1, len(times) - 1) if len(times) > 1 else \
        np.zeros(len(t), dtype=np.int64)
    left = np.maximum(right - 1, 0)
    nearest = np.where(np.abs(times[left] - t) <= np.abs(times[right] - t), left, right)
    err = np.abs(times[nearest] - t)
    bad = np.nonzero(err > HALF_PERIOD * table.period_s + TIME_SLACK_S)[0]
    if bad.size:
        i = int(bad[0])
        pose = int(poses[i]) if poses is not None else i
        raise ClipError(
            clip_id,
            f"pose timestamp {int(timestamps_us[i])} us (pose {pose + 1} of the clip) has no "
            f"frame in source video {path} within half a frame period (nearest "
            f"{err[i] * 1e6:.0f} us away; the video has {table.describe()})"
            + (f"; {bad.size} timestamps out of range in all" if bad.size > 1 else ""))
    return nearest.astype(np.int64)


class SourceVideoReader:
    """An open source video that hands out frames by presentation time, decoding forward and
    seeking only when a keyframe lies between the decoder's position and the wanted frame."""

    #: each thread's open readers (a decoder is not thread-safe: the depth stage decodes
    #: clips on several prefetch threads)
    _local = threading.local()
    #: open readers kept per thread (each holds a demuxer and a decoder, a few MB)
    CACHE_SIZE = 2

    def __init__(self, path: str, clip_id: str):
        self.path = path
        self.table = probe(path, clip_id)
        try:
            self._container = av.open(path)
        except (av.FFmpegError, OSError) as exc:
            raise ClipError(clip_id, f"cannot open video {path}: {exc}") from exc
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._frames: Iterator[Any] | None = None
        self._pos: int | None = None  # pts of the last decoded frame
        self.decoded = 0  # frames decoded (the cost a caller can check)
        self.seeks = 0

    @classmethod
    def shared(cls, path: str, clip_id: str) -> SourceVideoReader:
        """This thread's open reader of ``path`` (a few kept; the oldest closed), so that the
        next clip of the same video continues where the previous one stopped."""
        try:
            st = Path(path).stat()
        except OSError as exc:  # removed since ingest: a reason for this clip, not a crash
            raise ClipError(clip_id, f"cannot read source video {path}: {exc}") from None
        key = f"{path}|{st.st_size}|{st.st_mtime_ns}"  # a replaced file is opened again
        cache = cls._cache()
        reader = cache.pop(key, None)
        if reader is None:
            reader = cls(path, clip_id)
        cache[key] = reader
        while len(cache) > cls.CACHE_SIZE:
            cache.popitem(last=False)[1].close()
        return reader

    @classmethod
    def _cache(cls) -> OrderedDict[str, SourceVideoReader]:
        if not hasattr(cls._local, "readers"):
            cls._local.readers = OrderedDict()
        return cls._local.readers

    @classmethod
    def close_all(cls) -> None:
        """Close this thread's readers."""
        cache = cls._cache()
        while cache:
            cache.popitem(last=False)[1].close()

    def close(self) -> None:
        self._container.close()

    def _seek(self, target: int) -> None:
        # seek to the keyframe at or before target, as known from the probe (the demuxer then
        # cannot land after the wanted frame); decoding restarts there
        k = int(np.searchsorted(self.table.keyframes, target, side="right")) - 1
        key = int(self.table.keyframes[max(k, 0)])
        self._container.seek(key, stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._pos = None
        self.seeks += 1

    def _needs_seek(self, target: int) -> bool:
        if self._frames is None or self._pos is None or target <= self._pos:
            return True
        # a keyframe in (pos, target]: jumping there skips decoding everything before it
        k = np.searchsorted(self.table.keyframes, self._pos, side="right")
        return k < len(self.table.keyframes) and self.table.keyframes[k] <= target

    def frames(self, pts_wanted: Sequence[int], clip_id: str) -> Iterator[tuple[int, Any]]:
        """Yield ``(pts, av.VideoFrame)`` for each wanted pts, in increasing order; a damaged
        stream is a ``ClipError`` (and the reader starts afresh for the next request)."""
        try:
            yield from self._frames_at(sorted(set(int(p) for p in pts_wanted)), clip_id)
        except av.FFmpegError as exc:
            self._frames = None
            raise ClipError(clip_id, f"cannot decode video {self.path}: {exc}") from exc

    def _frames_at(self, targets: list[int], clip_id: str) -> Iterator[tuple[int, Any]]:
        for target in targets:
            if self._needs_seek(target):
                self._seek(target)
            assert self._frames is not None
            for frame in self._frames:
                if frame.pts is None:
                    continue
                self.decoded += 1
                self._pos = int(frame.pts)
                if frame.pts == target:
                    yield target, frame
                    break
                if frame.pts > target:
                    raise ClipError(clip_id, f"video {self.path}: no frame decoded at pts "
                                             f"{target} (next is {frame.pts})")
            else:
                self._frames = None
                raise ClipError(clip_id, f"video {self.path} ended before pts {target}")


def decode_rows_frames(
    row: dict[str, Any], wanted: list[int], size: tuple[int, int] | None
) -> Iterator[tuple[int, np.ndarray]]:
    """``(frame_idx, RGB uint8)`` of a manifest row whose frames come from its source video:
    frame i is the video frame nearest ``timestamps_us[i]`` (mapped again here, from the
    video's packets, so the manifest needs no extra column)."""
    import cv2

    clip = str(row["clip_id"])
    path = str(row["video_path"])
    with storage.local_copy(path) as local:
        reader = SourceVideoReader.shared(str(Path(local)), clip)
        ts = [row["timestamps_us"][i] for i in wanted]
        idx = frames_at(reader.table, ts, clip, path, wanted)
        pts = reader.table.pts[idx]
        by_pts: dict[int, list[int]] = {}
        for i, p in zip(wanted, pts):
            by_pts.setdefault(int(p), []).append(i)
        # timestamps increase, so frames come out in the order of ``wanted``
        for p, frame in reader.frames(list(by_pts), clip):
            rgb = frame.to_ndarray(format="rgb24")
            if size is not None and (rgb.shape[1], rgb.shape[0]) != tuple(size):
                rgb = cv2.resize(rgb, tuple(size), interpolation=cv2.INTER_AREA)
            for i in by_pts[p]:
                yield i, rgb
        if storage.is_uri(path):  # the scratch copy goes away: its reader must too
            SourceVideoReader.close_all()
