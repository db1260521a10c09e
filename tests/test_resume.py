"""Resume: a driver killed with SIGKILL mid-stage, then re-run, gives the same manifest as an
uninterrupted run, and shards finished before the kill are not recomputed. Also: staleness
(config change) and force. The CLI subprocess joins the test cluster by address, as a user would
join a real cluster, and spreads shards over its two nodes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from pipeline.ledger import DONE, Ledger
from pipeline.runner import Runner, cut_shards
from tests.conftest import ROOT
from tests.helpers import cfg_for, shard_of, write_clip

N_CLIPS = 12


def _dataset(root: Path) -> None:
    for i in range(N_CLIPS):
        write_clip(root, f"clip{i:02d}", n=24, size=(320, 240))


def _cli(address: str, root: Path, work: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "pipeline", "run", "stage=ingest", "dataset=re10k",
            f"dataset.root={root}", f"paths.work_dir={work}", "shards.size=1",
            f"ray.address={address}", "progress=false", *extra]
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _done(work: Path) -> dict[str, float]:
    led = Ledger(work, "ingest")
    out = {}
    for p in sorted(led.dir.glob("*.json")) if led.dir.exists() else []:
        e = led.get(p.stem)
        if e is not None and e.status == DONE:
            out[e.shard_id] = e.finished_at
    return out


def _table(work: Path) -> pd.DataFrame:
    return pd.read_parquet(work / "ingest").sort_values("clip_id").reset_index(drop=True)


def test_sigkill_mid_stage_then_resume(tmp_path, ray_cluster):
    root = tmp_path / "data"
    _dataset(root)
    ref_work, work = tmp_path / "ref", tmp_path / "work"
    ref = _cli(ray_cluster, root, ref_work, "ray.scheduling_strategy=SPREAD")
    assert ref.wait(timeout=300) == 0, ref.stdout.read()

    proc = _cli(ray_cluster, root, work, "ray.max_in_flight=1")
    deadline = time.time() + 240
    while len(_done(work)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _done(work)
    assert 2 <= len(before) < N_CLIPS, f"kill landed outside the stage: {len(before)} done"

    again = _cli(ray_cluster, root, work)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    assert f"{N_CLIPS - len(before)} shards to run, {len(before)} done and fresh" in out
    after = _done(work)
    assert len(after) == N_CLIPS
    for shard, finished in before.items():
        assert after[shard] == finished, f"{shard} was recomputed"
    pd.testing.assert_frame_equal(_table(work), _table(ref_work))
    assert len(_table(work)) == N_CLIPS
    # spreading over the 2-node cluster joined by address actually used both nodes
    nodes = {Ledger(ref_work, "ingest").get(s).node for s in _done(ref_work)}
    assert len(nodes) == 2, nodes


def test_fresh_stale_and_force(tmp_path, ray_cluster):
    root, work = tmp_path / "data", tmp_path / "work"
    for i in range(3):
        write_clip(root, f"c{i}")
    Runner(cfg_for(root, work, "shards.size=1")).run("ingest")
    first = _done(work)
    Runner(cfg_for(root, work, "shards.size=1")).run("ingest")
    assert _done(work) == first  # nothing recomputed
    # a stage-config change makes every shard stale
    Runner(cfg_for(root, work, "shards.size=1", "ingest.verify_frames=ends")).run("ingest")
    second = _done(work)
    assert all(second[s] > first[s] for s in first)
    # an input change makes only its shard stale
    (root / "test" / "c2.txt").write_text((root / "test" / "c2.txt").read_text() + "\n")
    Runner(cfg_for(root, work, "shards.size=1", "ingest.verify_frames=ends")).run("ingest")
    third = _done(work)
    changed = shard_of(work, "c2")
    assert third[changed] > second[changed]
    assert all(third[s] == second[s] for s in second if s != changed)
    Runner(cfg_for(root, work, "shards.size=1", "ingest.verify_frames=ends", "force=true")).run(
        "ingest"
    )
    assert all(v > third[s] for s, v in _done(work).items())


def test_crashed_shard_is_recorded_and_retried(tmp_path, ray_cluster):
    root, work = tmp_path / "data", tmp_path / "work"
    for i in range(2):
        write_clip(root, f"c{i}")
    shard = next(iter(cut_shards(["c0"], 1, 1)))
    blocker = work / "ingest" / f"{shard}.parquet"
    blocker.mkdir(parents=True)  # the atomic rename onto a directory fails: the shard crashes
    summary = Runner(cfg_for(root, work, "shards.size=1")).run("ingest")
    entry = Ledger(work, "ingest").get(shard)
    assert entry.status == "failed" and "Error" in entry.error
    assert summary["pending"] and summary["kept"] == 1
    blocker.rmdir()
    summary = Runner(cfg_for(root, work, "shards.size=1")).run("ingest")
    assert Ledger(work, "ingest").get(shard).status == DONE
    assert summary["kept"] == 2 and not summary["pending"]


def test_status_does_not_count_entries_of_an_earlier_plan_as_done(tmp_path, ray_cluster):
    """After re-planning (another shards.size), a ledger entry whose clips differ from the plan's
    shard is recomputed by `run`, so `status` must show it pending, not done."""
    from pipeline.io import write_json_atomic
    from pipeline.runner import status

    root, work = tmp_path / "data", tmp_path / "work"
    for i in range(3):
        write_clip(root, f"c{i}")
    cfg = cfg_for(root, work, "shards.size=1", "shards.max_factor=3")
    Runner(cfg).run("ingest")
    assert status(cfg)["ingest"]["done"] == 3
    name = shard_of(work, "c0")
    # what a later run with another shards.size plans (killed before ingest ran again)
    write_json_atomic({"dataset": "re10k", "shards": {name: ["c0", "c1", "c2"]}},
                      work / "plan.json")
    st = status(cfg)["ingest"]
    assert (st["done"], st["pending"]) == (0, 1)
    assert "stale" in st["shard_errors"][name]
    write_json_atomic({"dataset": "re10k", "shards": {name: ["c0"]}}, work / "plan.json")
    assert status(cfg)["ingest"]["done"] == 1
    (work / "ingest" / f"{name}.parquet").unlink()
    assert status(cfg)["ingest"]["shard_errors"][name] == "stale: output missing"


def test_second_run_on_the_same_work_dir_is_refused(tmp_path, ray_cluster):
    """Two concurrent runs would overwrite each other's outputs and ledger entries: while one
    holds the work dir, another stops with a one-line error; afterwards runs proceed."""
    import fcntl

    import pytest

    from pipeline.errors import ConfigError

    root, work = tmp_path / "data", tmp_path / "work"
    write_clip(root, "c0")
    work.mkdir()
    with open(work / ".run.lock", "a+") as held:  # what a running driver holds
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="another `run` is using"):
            Runner(cfg_for(root, work)).run("ingest")
    assert Runner(cfg_for(root, work)).run("ingest")["kept"] == 1
    assert Runner(cfg_for(root, work)).run("ingest")["kept"] == 1  # released after each run


def test_video_replaced_at_the_same_path_makes_downstream_stale(tmp_path, ray_cluster):
    """A re-encoded video with the same frame count gives a byte-identical manifest; the
    triangulation of its shard must still be redone (ingest chains its inputs' digest)."""
    import cv2
    import numpy as np

    root, work = tmp_path / "data", tmp_path / "work"
    write_clip(root, "v0", frames="video")
    cfg = cfg_for(root, work, "triangulate.min_points=1")
    Runner(cfg).run("triangulate")
    shard = shard_of(work, "v0")
    man = (work / "ingest" / f"{shard}.parquet").read_bytes()
    first = Ledger(work, "triangulate").get(shard).finished_at
    Runner(cfg).run("triangulate")
    assert Ledger(work, "triangulate").get(shard).finished_at == first  # still fresh
    vid = root / "video_clips" / "test" / "vid0" / "v0.mp4"
    vw = cv2.VideoWriter(str(vid), cv2.VideoWriter_fourcc(*"mp4v"), 30, (32, 24))
    for i in range(4):
        vw.write(np.full((24, 32, 3), 40 * i, np.uint8))
    vw.release()
    Runner(cfg).run("triangulate")
    assert (work / "ingest" / f"{shard}.parquet").read_bytes() == man
    assert Ledger(work, "triangulate").get(shard).finished_at > first


def test_shard_boundaries_survive_added_and_removed_clips():
    """Boundaries come from the clip ids: adding or removing one clip changes one shard only,
    sizes average `size`, and no shard exceeds max_factor * size."""
    ids = [f"clip{i:05d}" for i in range(2000)]
    base = cut_shards(ids, 8, 4)
    sizes = [len(v) for v in base.values()]
    assert sum(sizes) == 2000 and max(sizes) <= 32
    assert 6 <= sum(sizes) / len(sizes) <= 10
    assert [c for s in sorted(base, key=lambda s: base[s][0]) for c in base[s]] == ids
    grown = cut_shards(sorted([*ids, "clip00999b"]), 8, 4)
    assert len(set(base) ^ set(grown)) <= 2  # the old shard out, its successor in
    assert sum(base[s] != grown.get(s) for s in base) == 1
    shrunk = cut_shards([c for c in ids if c != "clip01500"], 8, 4)
    assert sum(base[s] != shrunk.get(s) for s in base) == 1
    # size 1: every id hash is 0 mod 1, so every clip is its own shard, in id order
    assert list(cut_shards(ids[:5], 1, 4).values()) == [[c] for c in ids[:5]]
    # max_factor caps a shard whatever the hashes say
    assert max(len(v) for v in cut_shards(ids, 1000, 1).values()) <= 1000
    assert all(len(v) <= 8 for v in cut_shards(ids, 4, 2).values())
