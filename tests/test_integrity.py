"""Integrity of results across runs: a dataset-wide step that fails is a failed run, the trained
model survives sampling options and a train run that cannot train, every file a stage reads
fingerprints it, a truncated checkpoint falls back to the previous one, and ``curated/`` always
reads as one table.

One small synthetic pipeline run (ingest -> curate, 3 clips of 12 frames), shared with the
end-to-end tests, is made once per test run; each test works on its own copy of that work dir.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.ledger import DONE, Ledger
from pipeline.runner import Runner, status
from pipeline.stage import GLOBAL_SHARD

#: settings that make training and sampling take about a second on the sample's 12-frame clips
TINY_TRAIN = ["train.max_steps=2", "train.checkpoint_every=1", "train.batch_size=1",
              "train.data.num_frames=4", "train.data.resolution=[16,16]",
              "train.data.num_workers=0", "train.builtin.latent_factor=2",
              "train.builtin.channels=[8,16]", "train.builtin.camera_channels=[8,16]",
              "train.builtin.heads=2", "train.builtin.temb_dim=16", "train.sampling.steps=2",
              "train.sampling.preview=false", "train.progress=false"]


@pytest.fixture(scope="module")
def base_run(sample_pipeline):
    """The shared ingest -> curate run of three sample clips; tests work on copies of it."""
    assert sample_pipeline["summary"]["exit_code"] == 0, sample_pipeline["summary"]["problems"]
    return sample_pipeline


@pytest.fixture
def work(base_run, tmp_path):
    """A private copy of the module's work dir (mtimes kept) and a config maker for it."""
    w = tmp_path / "work"
    shutil.copytree(base_run["work"], w)

    def cfg(*extra: str) -> dict:
        return load_config([f"paths.work_dir={w}", *base_run["common"], *extra])

    return w, cfg


# ---------------------------------------------------------------------- dataset-wide step
def test_curate_with_filtered_clips_finalizes_and_reports_done(work):
    w, cfg = work
    # q = 0.34 of 3 clips: k = 1 per tail, so the filter drops clips
    summary = Runner(cfg("curate.quantile=0.34")).run("curate")
    assert summary["filtered"], summary
    fin = Ledger(w, "curate").get(GLOBAL_SHARD)
    assert fin.status == DONE, fin.error
    assert fin.stats["filtered"] == len(summary["filtered"])
    assert summary["exit_code"] == 0, summary["problems"]
    st = status(cfg())["curate"]
    assert st["dataset_step"] == "done" and st["to_run"] == 0, st
    assert len(pd.read_parquet(w / "curated")) == 3 - len(summary["filtered"])


def test_failed_dataset_wide_step_fails_the_run(work, monkeypatch):
    from stages.curate import STAGE as CURATE

    w, cfg = work

    def broken(ctx):
        raise RuntimeError("report writer broke")

    monkeypatch.setattr(CURATE, "finalize", broken)
    summary = Runner(cfg("force=true")).run("curate")
    assert Ledger(w, "curate").get(GLOBAL_SHARD).status != DONE
    assert summary["exit_code"] == 1
    assert any("curate" in p for p in summary["problems"]), summary["problems"]


# ---------------------------------------------------------------------- the trained model
MODEL_FILES = ("checkpoints", "metrics.jsonl", "summary.json")


def _model_files(w) -> dict[str, tuple[int, int]]:
    """Every file of the trained model: name -> (size, mtime_ns)."""
    out = {}
    for name in MODEL_FILES:
        p = w / "train" / name
        for f in sorted([p] if p.is_file() else p.rglob("*")):
            if f.is_file():
                out[str(f.relative_to(w))] = (f.stat().st_size, f.stat().st_mtime_ns)
    return out


@pytest.fixture
def trained(work):
    w, cfg = work
    summary = Runner(cfg(*TINY_TRAIN)).run("train")
    assert summary["exit_code"] == 0, summary["problems"]
    before = _model_files(w)
    assert any(k.startswith("train/checkpoints/") for k in before), before
    return w, cfg, before


def test_sampling_options_leave_the_trained_model_alone(trained):
    from pipeline.errors import ConfigError

    w, cfg, before = trained
    summary = Runner(cfg(*TINY_TRAIN, "train.sampling.guidance_scale=3.0",
                         "train.sampling.after_train=false")).run("sample")
    assert summary["exit_code"] == 0, summary["problems"]
    assert summary["global_stages"]["sample"]["status"] == DONE
    assert _model_files(w) == before  # train was fresh: nothing retrained, nothing removed
    with pytest.raises(ConfigError, match="trajectory_preset"):
        Runner(cfg(*TINY_TRAIN, "train.sampling.trajectory_preset=nonsense")).run("sample")
    assert _model_files(w) == before


def test_train_that_cannot_train_keeps_the_model(trained):
    w, cfg, before = trained
    # the sample's clips have 12 frames: none qualifies for 13-frame training samples
    summary = Runner(cfg(*TINY_TRAIN, "train.data.num_frames=13")).run("train")
    assert summary["exit_code"] == 1
    entry = Ledger(w, "train").get(GLOBAL_SHARD)
    assert entry.status != DONE and "no curated clip" in entry.error, entry.error
    assert _model_files(w) == before


def test_model_trained_before_the_sampling_exclusion_stays_fresh(work, monkeypatch):
    """A work dir trained when train's fingerprint still held ``train.sampling``: the same
    command afterwards finds the model fresh instead of retraining it from scratch."""
    from stages.train import STAGE as TRAIN

    w, cfg = work
    monkeypatch.setattr(TRAIN, "config_exclude", ())
    assert Runner(cfg(*TINY_TRAIN)).run("train")["exit_code"] == 0
    before = _model_files(w)
    finished = Ledger(w, "train").get(GLOBAL_SHARD).finished_at
    monkeypatch.undo()
    summary = Runner(cfg(*TINY_TRAIN)).run("train")
    assert summary["exit_code"] == 0
    assert Ledger(w, "train").get(GLOBAL_SHARD).finished_at == finished  # not run again
    assert _model_files(w) == before


def test_config_view_leaves_out_excluded_paths():
    from pipeline.stage import stage_config_view

    cfg = {"train": {"lr": 1, "sampling": {"steps": 2}}, "other": 3}
    assert stage_config_view(cfg, ("train",)) == {"train": cfg["train"]}
    view = stage_config_view(cfg, ("train",), ("train.sampling", "train.nothing.here"))
    assert view == {"train": {"lr": 1}} and cfg["train"]["sampling"] == {"steps": 2}


# ---------------------------------------------------------------------- file inputs fingerprint
def _finished(w, stage: str) -> float | None:
    e = Ledger(w, stage).get(GLOBAL_SHARD)
    return e.finished_at if e is not None and e.status == DONE else None


def _reruns(w, stage: str, run) -> bool:
    """Run ``run()``; True when ``stage``'s task ran (again), False when it was fresh."""
    before = _finished(w, stage)
    summary = run()
    assert summary["exit_code"] == 0, summary["problems"]
    after = _finished(w, stage)
    assert after is not None
    return after != before


def _edit(path, data: bytes | None = None) -> None:
    """Rewrite a file (new content or the same bytes again) with a later mtime."""
    import os

    old = path.stat().st_mtime_ns
    path.write_bytes(path.read_bytes() + b"\n" if data is None else data)
    os.utime(path, ns=(old + 10**9, old + 10**9))


def test_sample_image_and_trajectory_files_fingerprint_the_sample(trained, tmp_path):
    import cv2
    import numpy as np

    w, cfg, _ = trained
    img, traj = tmp_path / "room.png", tmp_path / "path.txt"
    cv2.imwrite(str(img), np.full((24, 32, 3), 100, np.uint8))
    poses = np.tile(np.eye(4), (4, 1, 1))
    poses[:, 2, 3] = np.linspace(0, 0.3, 4)
    np.savetxt(traj, poses.reshape(4, 16))
    opts = [*TINY_TRAIN, f"train.sampling.image={img}", f"train.sampling.trajectory={traj}"]

    def run():
        return Runner(cfg(*opts)).run("sample")

    assert _reruns(w, "sample", run)
    assert not _reruns(w, "sample", run)  # unchanged: fresh
    cv2.imwrite(str(img), np.full((24, 32, 3), 200, np.uint8))  # the image edited in place
    assert _reruns(w, "sample", run)
    assert not _reruns(w, "sample", run)
    _edit(traj)  # the trajectory edited in place
    assert _reruns(w, "sample", run)
    assert not _reruns(w, "sample", run)


@pytest.fixture
def fake_evaluate(monkeypatch):
    """``evaluate`` without SfM: writes its metrics file and counts nothing else (the test is
    about when it runs, not what it computes)."""
    from pipeline.evaluation import camera_eval as ce
    from pipeline.io import write_json_atomic
    from stages.evaluate import STAGE as EVALUATE

    def run(ctx):
        metrics = {"clips": 1, "clips_with_sfm": 1, "sfm_success_rate": 1.0, "per_clip": {},
                   "failed_clips": {}, **{m: 0.0 for m in ce.ALL_METRICS}}
        write_json_atomic(metrics, ctx.work_dir / "evaluate" / "metrics.json")
        return metrics

    monkeypatch.setattr(EVALUATE, "run", run)


def test_evaluate_videos_and_trajectories_fingerprint_it(work, tmp_path, fake_evaluate):
    w, cfg = work
    videos, trajs = tmp_path / "videos", tmp_path / "trajectories"
    videos.mkdir()
    trajs.mkdir()
    (videos / "a.mp4").write_bytes(b"not really a video")
    (trajs / "a.txt").write_text(" ".join(["0"] * 16) + "\n")

    def run():
        return Runner(cfg(f"evaluate.videos={videos}",
                          f"evaluate.trajectories={trajs}")).run("evaluate")

    assert _reruns(w, "evaluate", run)
    assert not _reruns(w, "evaluate", run)
    _edit(videos / "a.mp4")  # a video replaced at the same path
    assert _reruns(w, "evaluate", run)
    assert not _reruns(w, "evaluate", run)
    _edit(trajs / "a.txt", (trajs / "a.txt").read_bytes())  # same bytes, rewritten later
    assert _reruns(w, "evaluate", run)
    (videos / "b.mp4").write_bytes(b"another")  # a video added
    assert _reruns(w, "evaluate", run)
    assert not _reruns(w, "evaluate", run)


def test_evaluate_model_source_fingerprints_checkpoint_curated_and_settings(work, fake_evaluate):
    w, cfg = work
    ckpts = w / "train" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "step-00000001.pt").write_bytes(b"weights")

    def run(*extra: str):
        return lambda: Runner(cfg("evaluate.source=model", *extra)).run("evaluate")

    assert _reruns(w, "evaluate", run())
    assert not _reruns(w, "evaluate", run())
    (ckpts / "step-00000002.pt").write_bytes(b"newer weights")  # training went on
    assert _reruns(w, "evaluate", run())
    assert not _reruns(w, "evaluate", run())
    _edit(ckpts / "step-00000002.pt")  # the checkpoint replaced
    assert _reruns(w, "evaluate", run())
    # the curated data it samples from
    assert Runner(cfg("curate.quantile=0.34")).run("curate")["exit_code"] == 0
    assert _reruns(w, "evaluate", run())
    assert not _reruns(w, "evaluate", run())
    # the triangulate and align settings that put SfM trajectories in metres
    tri, al = "triangulate.filters.min_track_len=3", "align.min_obs_per_frame=3"
    assert _reruns(w, "evaluate", run(tri))
    assert _reruns(w, "evaluate", run(tri, al))
    assert not _reruns(w, "evaluate", run(tri, al))


# ---------------------------------------------------------------------- truncated checkpoint
def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(trained, caplog):
    from trainer.sampling import sample_to_mp4

    w, cfg, _ = trained
    c = cfg(*TINY_TRAIN)
    ckpts = w / "train" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000001.pt", "step-00000002.pt"]
    _truncate(ckpts / "step-00000002.pt")
    files = sorted(str(p) for p in (w / "curated").glob("*.parquet"))
    with caplog.at_level("WARNING"):
        out = sample_to_mp4(c["train"], w / "train", files, "cpu")
    assert Path(out["checkpoint"]).name == "step-00000001.pt"
    assert Path(out["mp4"]).is_file()
    assert any("step-00000002.pt" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_status_and_run_see_a_truncated_latest_checkpoint(trained):
    w, cfg, _ = trained
    ckpts = w / "train" / "checkpoints"
    _truncate(ckpts / "step-00000002.pt")
    st = status(cfg())["train"]
    assert st["to_run"] == 1 and "step-00000002.pt" in st["shard_errors"][GLOBAL_SHARD], st
    # the same rule in run: training resumes from the previous checkpoint and redoes the step
    summary = Runner(cfg(*TINY_TRAIN, "train.sampling.after_train=false")).run("train")
    assert summary["exit_code"] == 0, summary["problems"]
    assert summary["global_stages"]["train"]["metrics"]["steps_run"] == 1
    from trainer import checkpoint as ckpt

    assert ckpt.load(ckpts / "step-00000002.pt")["step"] == 2
    assert status(cfg())["train"]["to_run"] == 0


# ---------------------------------------------------------------------- curated/ is one table
def test_stray_parquet_in_curated_is_moved_aside_on_the_next_run(work):
    w, cfg = work
    cur = w / "curated"
    stray = cur / "shard-deadbeef.parquet"
    stray.write_bytes(b"left by hand: not Parquet at all")
    leftover = cur / ".shard-0000.parquet.x1y2.tmp"  # a writer killed mid-write
    leftover.write_bytes(b"half")
    with pytest.raises(Exception):  # noqa: B017 - the symptom: the folder no longer reads
        pd.read_parquet(cur)
    summary = Runner(cfg()).run("curate")  # nothing else changed: every curate step is fresh
    assert summary["exit_code"] == 0, summary["problems"]
    assert len(pd.read_parquet(cur)) == 3
    assert not stray.exists() and not leftover.exists()
    moved = w / cfg()["curate"]["quarantine_dir"] / stray.name
    assert moved.read_bytes() == b"left by hand: not Parquet at all"
    assert not str(moved).startswith(str(cur) + "/")
