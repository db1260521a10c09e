"""``python -m pipeline download``: fetch the source video of every RealEstate10K pose file.

Each pose file's URL line names a YouTube video; its id names the file,
``<download.output_dir>/<video_id>.<ext>``, which ``dataset.source_videos`` then decodes at the
pose timestamps. YouTube is reached through yt-dlp used as a library (video stream only, at
most ``download.max_height`` lines: the pipeline never needs sound, and a video-only stream
needs no ffmpeg merge). With ``download.url_template`` a mirror serves the files over plain
HTTP; they are fetched with ``urllib`` so that every HTTP status maps to one failure class and
an interrupted file resumes with a ``Range`` request.

The run is resumable: a finished file is skipped, a partial one (``.part``) is resumed or
redone and renamed into place only when complete. A ledger (JSON under the work dir) keeps
every video's last outcome, with failures classified as ``unavailable``, ``private``, ``geo``
(geo-blocked), ``network`` or ``other``; the next run retries network and other failures and
skips the permanent ones (``download.retry_permanent=true`` tries them too).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.errors import ClipError, ConfigError
from pipeline.io import read_json, write_json_atomic

log = logging.getLogger(__name__)

UNAVAILABLE, PRIVATE, GEO, NETWORK, OTHER = "unavailable", "private", "geo", "network", "other"
#: failures that another attempt cannot cure: skipped by the next run
PERMANENT = (UNAVAILABLE, PRIVATE, GEO)
#: HTTP statuses of a mirror, by class (others: 5xx and 429 are network, the rest other)
HTTP_CLASSES = {404: UNAVAILABLE, 410: UNAVAILABLE, 401: PRIVATE, 403: PRIVATE, 451: GEO}
#: yt-dlp's error texts, checked in this order (geo first: its text also says "available")
YTDLP_PATTERNS = (
    (GEO, ("in your country", "geo restrict", "geo-restrict", "geoblock")),
    (PRIVATE, ("private video", "sign in to confirm your age", "members-only",
               "requires payment")),
    (UNAVAILABLE, ("video unavailable", "has been removed", "is not available",
                   "account associated with this video has been terminated",
                   "does not exist", "http error 404", "http error 410")),
    (NETWORK, ("timed out", "timeout", "connection", "network is unreachable",
               "temporary failure in name resolution", "unable to download", "http error 5",
               "http error 429", "incompleteread", "errno")),
)
#: the ledger, under the work dir (``status`` reads it there)
LEDGER = "download/ledger.json"
HTTP_PARTIAL = 206
HTTP_RANGE_NOT_SATISFIABLE = 416
HTTP_SERVER_ERROR = 500
HTTP_TOO_MANY = 429


class DownloadFailure(Exception):
    """One video's failure: ``reason`` is one of the classes above."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Video:
    video_id: str
    url: str
    clips: list[str]


# ---------------------------------------------------------------------- which videos
def videos_of_dataset(cfg: dict[str, Any]) -> tuple[list[Video], dict[str, str]]:
    """Unique source videos of the dataset's pose files, and clip id -> problem for pose files
    whose URL line names no usable video (reported, never fetched)."""
    from pipeline.formats.dataset import discover_re10k
    from pipeline.formats.source_video import video_id_from_url

    ds = cfg["dataset"]
    videos: dict[str, Video] = {}
    problems: dict[str, str] = {}
    for clip_id, src in sorted(discover_re10k(cfg).items()):
        if src.get("problem"):
            problems[clip_id] = src["problem"]
            continue
        try:
            with Path(src["pose_file"]).open(encoding="utf-8") as fh:
                url = fh.readline().strip()
            vid = video_id_from_url(url, clip_id, str(ds["video_id_pattern"]))
        except (OSError, UnicodeDecodeError) as exc:
            problems[clip_id] = f"cannot read {src['pose_file']}: {exc}"
            continue
        except ClipError as exc:
            problems[clip_id] = exc.reason
            continue
        videos.setdefault(vid, Video(vid, url, [])).clips.append(clip_id)
    return list(videos.values()), problems


def existing_file(out_dir: Path, video_id: str, extensions: list[str]) -> Path | None:
    for ext in extensions:
        p = out_dir / f"{video_id}.{ext}"
        if p.is_file():
            return p
    return None


# ---------------------------------------------------------------------- plain HTTP (mirrors)
def classify_http(exc: BaseException) -> str:
    """Failure class of a mirror request's exception."""
    if isinstance(exc, urllib.error.HTTPError):
        if exc.code in HTTP_CLASSES:
            return HTTP_CLASSES[exc.code]
        return NETWORK if exc.code >= HTTP_SERVER_ERROR or exc.code == HTTP_TOO_MANY else OTHER
    if isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionError, OSError)):
        return NETWORK
    return OTHER


def fetch_http(url: str, dest: Path, timeout_s: float, chunk_bytes: int) -> None:
    """Stream ``url`` into ``dest`` atomically: into ``dest.part`` first (resumed with a
    ``Range`` request when the server honours it, else redone), renamed when complete."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout_s)  # noqa: S310 - http(s) only
    except urllib.error.HTTPError as exc:
        if exc.code != HTTP_RANGE_NOT_SATISFIABLE or not have:
            raise
        part.unlink()  # the partial file does not fit the server's file: start over
        resp = urllib.request.urlopen(urllib.request.Request(url), timeout=timeout_s)  # noqa: S310
        have = 0
    with resp:
        resumed = have and resp.status == HTTP_PARTIAL and resp.headers.get(
            "Content-Range", "").startswith(f"bytes {have}-")
        if resp.status == HTTP_PARTIAL and not resumed:  # a range we did not ask for
            part.unlink(missing_ok=True)
            raise DownloadFailure(NETWORK, f"{url}: answered bytes={have}- with "
                                           f"{resp.headers.get('Content-Range')!r}")
        length = resp.headers.get("Content-Length")
        expected = (have if resumed else 0) + int(length) if length is not None else None
        with part.open("ab" if resumed else "wb") as fh:
            while chunk := resp.read(chunk_bytes):
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    size = part.stat().st_size
    if expected is not None and size != expected:
        raise DownloadFailure(NETWORK, f"{url}: got {size} of {expected} bytes")
    os.replace(part, dest)


# ---------------------------------------------------------------------- YouTube (yt-dlp)
def classify_ytdlp(message: str) -> str:
    text = message.lower()
    for reason, needles in YTDLP_PATTERNS:
        if any(n in text for n in needles):
            return reason
    return OTHER


def ytdlp_options(dl: dict[str, Any], out_dir: Path, video_id: str) -> dict[str, Any]:
    """yt-dlp settings: best video-only stream up to ``max_height`` (the asked container
    first), resumable ``.part`` files, no retries of its own (this module retries)."""
    h, ext = int(dl["max_height"]), str(dl["ext"])
    return {
        "format": f"bv*[height<={h}][ext={ext}]/bv*[height<={h}]/b[height<={h}]",
        "outtmpl": str(out_dir / f"{video_id}.%(ext)s"),
        "continuedl": True,
        "noplaylist": True,
        "retries": 0,
        "fragment_retries": 0,
        "socket_timeout": float(dl["timeout_s"]),
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
    }


def fetch_youtube(video: Video, dl: dict[str, Any], out_dir: Path) -> None:
    import yt_dlp

    try:
        with yt_dlp.YoutubeDL(ytdlp_options(dl, out_dir, video.video_id)) as ydl:
            ydl.download([video.url])
    except yt_dlp.utils.DownloadError as exc:
        cause = exc.exc_info[1] if exc.exc_info else None
        if isinstance(cause, yt_dlp.utils.GeoRestrictedError):
            raise DownloadFailure(GEO, str(exc)) from None
        raise DownloadFailure(classify_ytdlp(str(exc)), str(exc)) from None


# ---------------------------------------------------------------------- one video
def fetch_one(video: Video, dl: dict[str, Any], out_dir: Path) -> Path:
    """Fetch one video, retrying network failures ``download.retries`` times."""
    attempts = int(dl["retries"])
    wait = float(dl["retry_wait_s"])
    template = dl.get("url_template")
    for attempt in range(1, attempts + 1):
        try:
            if template:
                url = str(template).format(video_id=video.video_id)
                ext = Path(urlparse(url).path).suffix.lstrip(".") or str(dl["ext"])
                dest = out_dir / f"{video.video_id}.{ext}"
                try:
                    fetch_http(url, dest, float(dl["timeout_s"]), int(dl["chunk_bytes"]))
                except DownloadFailure:
                    raise
                except Exception as exc:  # noqa: BLE001 - every failure is classified
                    raise DownloadFailure(classify_http(exc), f"{url}: {exc}") from None
                return dest
            fetch_youtube(video, dl, out_dir)
            found = existing_file(out_dir, video.video_id, _extensions(dl))
            if found is None:
                raise DownloadFailure(OTHER, "yt-dlp finished but wrote no video file")
            return found
        except DownloadFailure as exc:
            if exc.reason != NETWORK or attempt == attempts:
                raise
            log.info("%s: %s (attempt %d of %d), retrying", video.video_id, exc, attempt,
                     attempts)
            time.sleep(wait * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _extensions(dl: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys([str(dl["ext"]), *dl["_extensions"]]))


# ---------------------------------------------------------------------- the command
class Ledger:
    """video id -> last outcome, written atomically after every video (threads share it)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, dict[str, Any]] = read_json(path) if path.is_file() else {}
        self._lock = threading.Lock()

    def record(self, video_id: str, **entry: Any) -> None:
        with self._lock:
            old = self.entries.get(video_id, {})
            entry["attempts"] = int(old.get("attempts", 0)) + (entry.pop("tried", 0))
            entry["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.entries[video_id] = entry
            write_json_atomic(self.entries, self.path, allow_nan=False)


def run_download(cfg: dict[str, Any]) -> dict[str, Any]:
    """Fetch what is missing; returns counts (done, skipped, failed by reason)."""
    ds = cfg["dataset"]
    if ds.get("layout") != "re10k" or ds.get("definition"):
        raise ConfigError("download needs dataset=re10k (pose files whose first line is the "
                          f"video URL); dataset={ds.get('name')} has none")
    from pipeline.formats.dataset import check_dataset

    check_dataset(cfg)  # a mistyped dataset.root is one line
    dl = dict(cfg["download"])
    dl["_extensions"] = list(ds["source_video_extensions"])
    # null = <dataset.root>/source_videos, where dataset.source_videos is usually pointed
    target = str(dl["output_dir"] or f"{ds['root']}/source_videos")
    out_dir = Path(target).resolve()
    work_dir = str(cfg["paths"]["work_dir"])
    if "://" in target or "://" in work_dir:
        raise ConfigError("download writes to local folders: give a local dataset.root (or "
                          "download.output_dir) and paths.work_dir")
    ledger_path = ledger_file(work_dir)
    videos, problems = videos_of_dataset(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(ledger_path)
    todo, counts = [], Counter()
    counts_lock = threading.Lock()
    for v in videos:
        have = existing_file(out_dir, v.video_id, _extensions(dl))
        old = ledger.entries.get(v.video_id, {})
        if have is not None:
            counts["present"] += 1
            if old.get("status") != "done":
                ledger.record(v.video_id, status="done", file=have.name, clips=v.clips)
        elif old.get("reason") in PERMANENT and not dl["retry_permanent"]:
            counts[f"skipped ({old['reason']})"] += 1
        else:
            todo.append(v)

    def one(v: Video) -> None:
        try:
            path = fetch_one(v, dl, out_dir)
        except DownloadFailure as exc:
            with counts_lock:
                counts[f"failed ({exc.reason})"] += 1
            log.warning("%s: %s: %s", v.video_id, exc.reason, exc)
            ledger.record(v.video_id, status="failed", reason=exc.reason, message=str(exc),
                          clips=v.clips, tried=1)
            return
        with counts_lock:
            counts["downloaded"] += 1
        ledger.record(v.video_id, status="done", file=path.name, clips=v.clips, tried=1)

    with ThreadPoolExecutor(max_workers=int(dl["workers"])) as pool:
        list(pool.map(one, todo))
    return {"videos": len(videos), "counts": dict(counts), "bad_pose_files": problems,
            "output_dir": str(out_dir), "ledger": str(ledger_path)}


def ledger_file(work_dir: str) -> Path:
    return Path(work_dir).resolve() / LEDGER


def format_ledger(work_dir: str) -> str | None:
    """The ``status`` lines of the work dir's download ledger, or None when there is none."""
    path = ledger_file(work_dir)
    if not path.is_file():
        return None
    entries = read_json(path)
    done = sum(1 for e in entries.values() if e.get("status") == "done")
    failed = {k: e for k, e in entries.items() if e.get("status") != "done"}
    by_reason = Counter(e.get("reason", OTHER) for e in failed.values())
    lines = [f"download: {done} of {len(entries)} videos present, {len(failed)} failed"
             + (" (" + ", ".join(f"{r}: {n}" for r, n in sorted(by_reason.items())) + ")"
                if failed else "")]
    for vid, e in sorted(failed.items()):
        again = "skipped by the next download" if e.get("reason") in PERMANENT else \
            "retried by the next download"
        lines.append(f"  {vid} [{e.get('reason')}; {again}]: {e.get('message', '')}")
    return "\n".join(lines)


def main_download(cfg: dict[str, Any]) -> int:
    """The command: 0 when every video is present, 1 when some failed (see the ledger)."""
    result = run_download(cfg)
    for clip, problem in sorted(result["bad_pose_files"].items()):
        print(f"{clip}: {problem}")
    counts = ", ".join(f"{k}: {n}" for k, n in sorted(result["counts"].items()))
    print(f"download: {result['videos']} videos ({counts or 'nothing to do'}) in "
          f"{result['output_dir']}; ledger {result['ledger']}")
    failed = any(k.startswith(("failed", "skipped")) for k in result["counts"])
    return 1 if failed or result["bad_pose_files"] else 0
