"""``python -m pipeline download`` against a mirror on 127.0.0.1, then the pipeline on the
downloaded source videos.

Nothing reaches the internet: a local HTTP server (a thread) serves the videos; the YouTube path
(yt-dlp) is covered by its options and the classification of its error messages. The end-to-end
test writes real RealEstate10K frames into source videos at a known frame rate, with pose
timestamps at ``frame_index / fps``, downloads them (one video missing on the server), and
checks that triangulating from the videos, decoded at the timestamps, gives the same points as
triangulating from the frame folders.
"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline import download as dl
from pipeline.cli import main
from pipeline.runner import Runner
from tests.conftest import shared_path
from tests.helpers import cfg_for, pose_lines
from tests.test_source_video import ts_of, write_video


class Mirror:
    """Files of a folder over HTTP on 127.0.0.1 (``Range`` honoured when ``ranges``), with a
    request log and forced statuses per file name."""

    def __init__(self, folder: Path, ranges: bool = True):
        self.folder, self.ranges = folder, ranges
        self.requests: list[tuple[str, str | None]] = []
        self.status: dict[str, int] = {}
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                name = self.path.lstrip("/")
                rng = self.headers.get("Range")
                mirror.requests.append((name, rng))
                path = mirror.folder / name
                if name in mirror.status:
                    self.send_error(mirror.status[name])
                    return
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                if rng and mirror.ranges:
                    start = int(rng.split("=")[1].split("-")[0])
                    body = data[start:]
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    body = data
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def template(self, ext: str = "avi") -> str:
        # quoted for Hydra's override grammar (braces would start a dict)
        return f"download.url_template='http://127.0.0.1:{self.server.server_port}" \
               f"/{{video_id}}.{ext}'"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    m = Mirror(tmp_path / "mirror")
    m.folder.mkdir()
    yield m
    m.close()


def _pose_files(root: Path, videos: dict[str, str], n: int = 4) -> None:
    """One pose file per clip id -> video id, timestamps at ``ts_of(i)``."""
    (root / "test").mkdir(parents=True, exist_ok=True)
    for clip, vid in videos.items():
        lines = [" ".join([str(ts_of(i)), *ln.split()[1:]]) for i, ln in enumerate(pose_lines(n))]
        (root / "test" / f"{clip}.txt").write_text(
            f"https://www.youtube.com/watch?v={vid}\n" + "\n".join(lines) + "\n")


def _ledger(work: Path) -> dict[str, Any]:
    return json.loads((work / "download" / "ledger.json").read_text())


# ---------------------------------------------------------------------- failure classes
@pytest.mark.parametrize("exc, reason", [
    (urllib.error.HTTPError("u", 404, "Not Found", None, None), "unavailable"),
    (urllib.error.HTTPError("u", 410, "Gone", None, None), "unavailable"),
    (urllib.error.HTTPError("u", 403, "Forbidden", None, None), "private"),
    (urllib.error.HTTPError("u", 451, "Unavailable For Legal Reasons", None, None), "geo"),
    (urllib.error.HTTPError("u", 503, "Service Unavailable", None, None), "network"),
    (urllib.error.URLError("connection refused"), "network"),
    (TimeoutError("timed out"), "network"),
    (ValueError("unknown url type"), "other"),
])
def test_http_failure_classes(exc: BaseException, reason: str) -> None:
    assert dl.classify_http(exc) == reason


@pytest.mark.parametrize("message, reason", [
    ("ERROR: [youtube] QShWPZxTDoE: Private video. Sign in if you've been granted access",
     "private"),
    ("ERROR: [youtube] QShWPZxTDoE: Video unavailable. This video has been removed by the "
     "uploader", "unavailable"),
    ("ERROR: [youtube] QShWPZxTDoE: The uploader has not made this video available in your "
     "country", "geo"),
    ("ERROR: [youtube] QShWPZxTDoE: Unable to download webpage: <urlopen error [Errno -3] "
     "Temporary failure in name resolution>", "network"),
    ("ERROR: something new", "other"),
])
def test_ytdlp_failure_classes(message: str, reason: str) -> None:
    assert dl.classify_ytdlp(message) == reason


def test_ytdlp_options_cap_the_height(tmp_path: Path) -> None:
    from pipeline.config import load_config

    cfg = load_config(["dataset=re10k", f"dataset.root={tmp_path}", "download.max_height=480"])
    opts = dl.ytdlp_options(cfg["download"], tmp_path, "QShWPZxTDoE")
    assert "bv*[height<=480][ext=mp4]" in opts["format"] and "[height<=480]" in opts["format"]
    assert opts["outtmpl"] == str(tmp_path / "QShWPZxTDoE.%(ext)s") and opts["continuedl"]


# ---------------------------------------------------------------------- resume and retry
def test_partial_file_is_resumed_or_redone(tmp_path: Path, mirror: Mirror) -> None:
    data = np.random.default_rng(0).integers(0, 255, 200_000, dtype=np.uint8).tobytes()
    (mirror.folder / "v1.avi").write_bytes(data)
    url = f"http://127.0.0.1:{mirror.server.server_port}/v1.avi"
    dest = tmp_path / "out" / "v1.avi"
    dest.parent.mkdir()
    part = dest.with_name("v1.avi.part")
    part.write_bytes(data[:120_000])  # an interrupted download
    dl.fetch_http(url, dest, 5.0, 4096)
    assert dest.read_bytes() == data and not part.exists()
    assert mirror.requests[-1] == ("v1.avi", "bytes=120000-")  # only the rest was asked for
    mirror.ranges = False  # a server without Range support: the file is fetched again
    dest.unlink()
    part.write_bytes(b"x" * 5000)
    dl.fetch_http(url, dest, 5.0, 4096)
    assert dest.read_bytes() == data


def test_retry_redoes_network_failures_and_skips_permanent_ones(
        tmp_path: Path, mirror: Mirror) -> None:
    root, work = tmp_path / "data", tmp_path / "work"
    _pose_files(root, {"c_ok": "vidOk", "c_net": "vidNet", "c_gone": "vidGone",
                       "c_priv": "vidPriv", "c_geo": "vidGeo"})
    for vid in ("vidOk", "vidNet", "vidPriv", "vidGeo"):
        (mirror.folder / f"{vid}.avi").write_bytes(vid.encode() * 100)
    mirror.status.update({"vidNet.avi": 503, "vidPriv.avi": 403, "vidGeo.avi": 451})
    args = ["download", "dataset=re10k", f"dataset.root={root}", f"paths.work_dir={work}",
            mirror.template(), "download.retries=2", "download.retry_wait_s=0.01"]
    assert main(args) == 1
    ledger = _ledger(work)
    assert {k: v.get("reason") for k, v in ledger.items() if v["status"] != "done"} == {
        "vidNet": "network", "vidGone": "unavailable", "vidPriv": "private", "vidGeo": "geo"}
    assert ledger["vidOk"]["status"] == "done" and ledger["vidNet"]["attempts"] == 1
    assert sum(1 for name, _ in mirror.requests if name == "vidNet.avi") == 2  # retries=2
    assert (root / "source_videos" / "vidOk.avi").read_bytes() == b"vidOk" * 100
    # the network recovers: the next run fetches only the network failure
    del mirror.status["vidNet.avi"]
    mirror.requests.clear()
    assert main(args) == 1  # the permanent failures remain
    assert [name for name, _ in mirror.requests] == ["vidNet.avi"]
    assert _ledger(work)["vidNet"]["status"] == "done"
    assert _ledger(work)["vidNet"]["attempts"] == 2


# ---------------------------------------------------------------------- end to end
CLIPS = ("0bf152ef84195293", "0f68374b76390082")


def _points(obs: pd.DataFrame, row: pd.Series) -> np.ndarray:
    """World coordinates of every triangulated point (the mean over its observations of the
    back-projected pixel at its camera depth)."""
    fx, fy, cx, cy = row["intrinsics"]
    W, H = int(row["width"]), int(row["height"])
    w2c = np.asarray(row["w2c"].tolist()).reshape(-1, 3, 4)
    f = obs["frame_idx"].to_numpy()
    z = obs["z_cam"].to_numpy()
    x = (obs["u"].to_numpy() - cx * W) / (fx * W) * z
    y = (obs["v"].to_numpy() - cy * H) / (fy * H) * z
    cam = np.stack([x, y, z], axis=1)
    R, t = w2c[f, :, :3], w2c[f, :, 3]
    world = np.einsum("nji,nj->ni", R, cam - t)
    df = pd.DataFrame(world, columns=["x", "y", "z"]).assign(p=obs["point_id"].to_numpy())
    return df.groupby("p")[["x", "y", "z"]].mean().to_numpy()


def test_download_then_triangulate_from_source_videos_matches_frame_folders(
        tmp_path: Path, mirror: Mirror, ray_cluster) -> None:
    frames_src = shared_path("re10k_frames", "frames", "test")
    poses_src = shared_path("re10k_frames", "test")
    root = tmp_path / "data"
    (root / "test").mkdir(parents=True)
    for k, clip in enumerate((*CLIPS, "2c80f9eb0d3b2bb4")):
        vid = f"vid{k}_{clip[:6]}"
        jpgs = sorted((frames_src / clip).glob("*.jpg"))
        lines = (poses_src / f"{clip}.txt").read_text().splitlines()[1:]
        lines = [ln for ln in lines if ln.strip()]
        by_ts = {ln.split()[0]: ln for ln in lines}
        # the frames' own pose lines, re-timed to where each frame sits in the new video
        body = [" ".join([str(ts_of(i)), *by_ts[p.stem].split()[1:]]) for i, p in
                enumerate(jpgs)]
        (root / "test" / f"{clip}.txt").write_text(
            f"https://www.youtube.com/watch?v={vid}\n" + "\n".join(body) + "\n")
        if clip not in CLIPS:
            continue  # this one's video is missing on the mirror, and it has no frames
        write_video(mirror.folder / f"{vid}.avi", [cv2.imread(str(p)) for p in jpgs], "MJPG")
        folder = root / "frames" / "test" / clip
        folder.mkdir(parents=True)
        for i, p in enumerate(jpgs):
            (folder / f"{ts_of(i)}.jpg").symlink_to(p)

    work_v, work_f = tmp_path / "work-video", tmp_path / "work-frames"
    assert main(["download", "dataset=re10k", f"dataset.root={root}",
                 f"paths.work_dir={work_v}", mirror.template()]) == 1
    ledger = _ledger(work_v)
    missing = "vid2_2c80f9"
    assert ledger[missing]["status"] == "failed" and ledger[missing]["reason"] == "unavailable"
    assert sorted(p.name for p in (root / "source_videos").iterdir()) == [
        "vid0_0bf152.avi", "vid1_0f6837.avi"]

    results = {}
    for name, work, extra in (
            ("video", work_v, [f"dataset.source_videos={root / 'source_videos'}"]),
            ("frames", work_f, [])):
        summary = Runner(cfg_for(root, work, "progress=false", *extra)).run("triangulate")
        assert set(summary["failed"]) == {"2c80f9eb0d3b2bb4"}, summary["failed"]
        man = pd.read_parquet(work / "ingest").set_index("clip_id")
        obs = pd.read_parquet(work / "triangulate")
        results[name] = {c: _points(obs[obs["clip_id"] == c], man.loc[c]) for c in CLIPS}
    failed = Runner(cfg_for(root, work_v, "progress=false",
                            f"dataset.source_videos={root / 'source_videos'}")
                    ).run("ingest")["failed"]["2c80f9eb0d3b2bb4"]["reason"]
    assert f"source video {missing} not found" in failed
    for clip in CLIPS:
        pv, pf = results["video"][clip], results["frames"][clip]
        print(f"{clip}: {len(pv)} points from the video, {len(pf)} from the frames")
        # re-encoding moves pixels slightly, so SIFT finds slightly different features
        # (measured: 550 vs 524 and 997 vs 982 points)
        assert len(pv) == pytest.approx(len(pf), rel=0.08), clip
        extent = np.percentile(pf, 90, axis=0) - np.percentile(pf, 10, axis=0)
        for q in (10, 50, 90):
            np.testing.assert_allclose(np.percentile(pv, q, axis=0), np.percentile(pf, q, axis=0),
                                       atol=0.03 * float(np.linalg.norm(extent)), err_msg=clip)
    status = main_status(work_v)
    assert f"{missing} [unavailable; skipped by the next download]" in status


def main_status(work: Path) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["status", f"paths.work_dir={work}"])
    return out.getvalue()
