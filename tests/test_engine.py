"""The engine contract: a toy stage registered from its own module runs, resumes and reports
like the real ones; failure kinds (input cached, error retried with a cap, non-zero exit);
global stages through fingerprint/ledger/force/status; `status` agrees with `run`; config
errors are one line before any output; regressions of earlier bugs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline import registry
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.ledger import DONE, Ledger
from pipeline.runner import Runner, status
from pipeline.stage import (
    ERROR,
    GLOBAL_SHARD,
    INPUT,
    ClipError,
    ShardResult,
    ShardTask,
    execute,
    for_each_clip,
    reason_key,
)
from tests.conftest import ROOT
from tests.helpers import shard_of, write_clip

N_FRAMES = {"a0": 3, "a1": 4, "a2": 5, "a3": 6}


@pytest.fixture
def toy(tmp_path):
    """The toy stages registered, their one settings file in a config folder of their own."""
    import ray.cloudpickle

    from tests import toy_stage

    registry.register(toy_stage.STAGE)
    registry.register(toy_stage.TOTAL)
    ray.cloudpickle.register_pickle_by_value(toy_stage)  # Ray workers need not import tests/
    conf = tmp_path / "conf_toy"
    (conf / "toy").mkdir(parents=True)
    (conf / "toy" / "default.yaml").write_text(
        "factor: 2\nbad_clips: []\nbuggy_clips: []\n")
    root = tmp_path / "data"
    for clip, n in N_FRAMES.items():
        write_clip(root, clip, n=n)
    work = tmp_path / "work"

    def cfg(*extra: str) -> dict:
        return load_config(["dataset=re10k", f"dataset.root={root}", f"paths.work_dir={work}",
                            "depth=sensor", "progress=false", "shards.size=1", *extra],
                           conf_dirs=[conf])

    yield cfg, work
    ray.cloudpickle.unregister_pickle_by_value(toy_stage)
    registry.unregister("toy")
    registry.unregister("toy_total")


def _finished(work: Path, stage: str) -> dict[str, float]:
    led = Ledger(work, stage)
    return {p.stem: led.get(p.stem).finished_at for p in sorted(led.dir.glob("*.json"))}


def _row(summary: dict, stage: str) -> dict:
    return next(r for r in summary["stages"] if r["stage"] == stage)


def test_toy_stage_registers_runs_resumes_and_reports(toy, ray_cluster):
    cfg, work = toy
    assert "toy" in registry.names() and "toy" not in registry.default_chain()
    summary = Runner(cfg()).run("toy")
    assert summary["exit_code"] == 0 and summary["kept"] == 4
    values = pd.read_parquet(work / "toy").set_index("clip_id")["value"].to_dict()
    assert values == {c: 2 * n for c, n in N_FRAMES.items()}  # known answer
    first = _finished(work, "toy")
    # resume: nothing recomputed
    again = Runner(cfg()).run("toy")
    assert _row(again, "toy")["run"] == 0 and _finished(work, "toy") == first
    # the stage's own settings fingerprint it: a changed factor re-runs every toy shard only
    Runner(cfg("toy.factor=3")).run("toy")
    assert all(_finished(work, "toy")[s] > first[s] for s in first)
    assert pd.read_parquet(work / "toy")["value"].sum() == 3 * sum(N_FRAMES.values())
    assert _row(Runner(cfg("toy.factor=3")).run("toy"), "ingest")["run"] == 0
    st = status(cfg("toy.factor=3"))
    assert st["toy"]["done"] == 4 and st["toy"]["to_run"] == 0
    # a typed setting of the new stage is checked at compose time, in one line
    with pytest.raises(ConfigError, match=r"toy.factor must be >= 1, got 0"):
        cfg("toy.factor=0")
    with pytest.raises(ConfigError, match=r"unknown key 'toy.facter' \(did you mean 'toy.factor'"):
        cfg("toy.facter=2")


def test_global_stage_fingerprint_force_and_status(toy, ray_cluster):
    cfg, work = toy
    s1 = Runner(cfg()).run("toy_total")
    out = work / "toy_total" / "total.json"
    import json

    got = json.loads(out.read_text())
    assert got == {"total": 2 * sum(N_FRAMES.values()), "shards": 4, "runs": 1}
    assert s1["global_stages"]["toy_total"]["status"] == DONE
    # fresh: not run again (a finished train re-run must not resume into a no-op "loss nan")
    s2 = Runner(cfg()).run("toy_total")
    assert _row(s2, "toy") and s2["global_stages"]["toy_total"]["status"] == DONE
    assert json.loads(out.read_text())["runs"] == 1
    e0 = Ledger(work, "toy_total").get(GLOBAL_SHARD)
    # force=true recomputes a global stage too, from scratch (restart, not resume)
    Runner(cfg("force=true")).run("toy_total")
    e1 = Ledger(work, "toy_total").get(GLOBAL_SHARD)
    assert e1.finished_at > e0.finished_at and e1.fingerprint == e0.fingerprint
    assert json.loads(out.read_text())["runs"] == 1
    # changed upstream data changes its fingerprint: it runs again, restarting
    Runner(cfg("toy.factor=5")).run("toy_total")
    e2 = Ledger(work, "toy_total").get(GLOBAL_SHARD)
    assert e2.fingerprint != e1.fingerprint and e2.finished_at > e1.finished_at
    assert json.loads(out.read_text())["total"] == 5 * sum(N_FRAMES.values())
    st = status(cfg("toy.factor=5"))["toy_total"]
    assert (st["done"], st["to_run"]) == (1, 0)


def test_failure_kinds_retry_cap_exit_code_and_status_agreement(toy, ray_cluster):
    cfg, work = toy
    bug = work / "toy_bug"
    work.mkdir(parents=True)
    bug.write_text("")
    args = ("toy.bad_clips=[a1]", "toy.buggy_clips=[a2]", "retry.max_attempts=2")
    s = Runner(cfg(*args)).run("toy")
    # the bad clip is an input failure, the buggy one an error; every good clip is kept
    assert s["failed"]["a1"]["kind"] == INPUT and s["failed"]["a2"]["kind"] == ERROR
    assert "RuntimeError: toy bug on a2" in s["failed"]["a2"]["reason"]
    assert set(pd.read_parquet(work / "toy")["clip_id"]) == {"a0", "a3"}
    assert s["exit_code"] == 1 and any("unexpected errors" in p for p in s["problems"])
    shard = shard_of(work, "a2")
    log_text = (work / "logs" / "toy" / f"{shard}.log").read_text()
    assert "Traceback" in log_text and "toy bug on a2" in log_text
    # status says exactly what run will do: only the shard with the error is to run
    st = status(cfg(*args))["toy"]
    assert (st["done"], st["errors"], st["to_run"]) == (3, 1, 1)
    assert "retried on the next run" in st["shard_errors"][shard]
    before = _finished(work, "toy")
    s = Runner(cfg(*args)).run("toy")
    assert _row(s, "toy")["run"] == st["to_run"] == 1
    after = _finished(work, "toy")
    assert [k for k in after if after[k] != before[k]] == [shard]
    # the cap (2 attempts) is reached: not retried again, but still a non-zero exit
    assert status(cfg(*args))["toy"]["to_run"] == 0
    s = Runner(cfg(*args)).run("toy")
    assert _row(s, "toy")["run"] == 0 and s["exit_code"] == 1
    # the bug is fixed; force=true retries it and the input failure stays an input failure
    bug.unlink()
    s = Runner(cfg(*args, "force=true")).run("toy")
    assert s["exit_code"] == 0 and set(s["failed"]) == {"a1"}
    assert set(pd.read_parquet(work / "toy")["clip_id"]) == {"a0", "a2", "a3"}
    # input failures are cached: no retry
    assert status(cfg(*args))["toy"]["to_run"] == 0


def test_every_clip_failing_is_a_non_zero_exit(toy, ray_cluster):
    cfg, _work = toy
    s = Runner(cfg("toy.bad_clips=[a0,a1,a2,a3]")).run("toy")
    assert s["kept"] == 0 and s["exit_code"] == 1 and s["problems"] == ["no clip survived toy"]


def test_for_each_clip_kinds():
    def fn(clip: str, _: None) -> str:
        if clip == "bad":
            raise ClipError(clip, "bad data")
        if clip == "bug":
            raise KeyError("oops")
        return clip

    ok, failures = for_each_clip(((c, None) for c in ("good", "bad", "bug")), fn)
    res = ShardResult(n_clips=3, n_ok=len(ok), failures=failures)
    assert ok == ["good"]
    assert res.failures["bad"] == "bad data" and res.failures["bug"].startswith("KeyError")
    assert (res.kind_of("bad"), res.kind_of("bug")) == (INPUT, ERROR)


def test_failure_reasons_aggregate():
    """Bug 5: 31 by_reason keys for 33 failures; reasons embed paths and ids, and the number
    masking mangled words (mp4 -> mp#, utf-8 -> utf#)."""
    reasons = {
        "clipA": "no frames found for clip clipA at /data/frames/test/clipA/ or /v/clipA.mp4",
        "clipB": "no frames found for clip clipB at /data/frames/test/clipB/ or /v/clipB.mp4",
        "x1": "frame 3 is 640x360, manifest says 320x240",
        "x2": "frame 17 is 1280x720, manifest says 640x480",
        "u1": "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 12",
        "u2": "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xfe in position 9",
    }
    keys = {reason_key(r, c) for c, r in reasons.items()}
    assert len(keys) == 3, keys
    assert "frame # is #x#, manifest says #x#" in keys
    assert any("utf-8" in k for k in keys) and not any("mp#" in k or "utf#" in k for k in keys)


def test_truncated_jpeg_fails_at_ingest(tmp_path, ray_cluster):
    """Bug 2: the decoder fills a truncated JPEG's missing rows with grey and only warns; the
    clip was curated without a word. Now it is an input failure naming the file."""
    import cv2

    from tests.helpers import cfg_for

    root, work = tmp_path / "data", tmp_path / "work"
    write_clip(root, "good", n=3)
    write_clip(root, "cut", n=3)
    frames = sorted((root / "frames" / "test" / "cut").glob("*.png"))
    img = np.random.default_rng(0).integers(0, 255, (24, 32, 3), np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    for f in frames:
        f.unlink()
        f.with_suffix(".jpg").write_bytes(buf.tobytes())
    data = buf.tobytes()
    frames[1].with_suffix(".jpg").write_bytes(data[: len(data) * 2 // 3])
    assert cv2.imread(str(frames[1].with_suffix(".jpg"))) is not None  # decodes "fine"
    s = Runner(cfg_for(root, work)).run("ingest")
    assert set(s["failed"]) == {"cut"} and s["failed"]["cut"]["kind"] == INPUT
    assert "truncated image (no JPEG end-of-image marker)" in s["failed"]["cut"]["reason"]
    assert str(frames[1].with_suffix(".jpg")) in s["failed"]["cut"]["reason"]
    assert s["kept"] == 1 and s["exit_code"] == 0


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_config_errors_are_one_line_before_any_output(tmp_path):
    """Bug 3: these were found after ingest..align had run, after the sample render, or never
    (max_factor <= 0 silently gave one-clip shards); the offline default model gave a
    150-line traceback after triangulation."""
    root = tmp_path / "data"
    write_clip(root, "c0")
    (tmp_path / "nomodel").mkdir()
    base = ["dataset=re10k", f"dataset.root={root}", "depth=sensor"]
    cases = [
        (["curate.quantile=0.7"], "curate.quantile must be in [0, 0.5), got 0.7"),
        (["shards.size=abc"], "shards.size must be an integer"),
        (["shards.max_factor=0"], "shards.max_factor must be >= 1, got 0"),
        (["shards.max_factor=-3"], "shards.max_factor must be >= 1, got -3"),
        (["shards.sise=2"], "unknown key 'shards.sise' (did you mean 'shards.size'?)"),
        (["stage=algin"], "did you mean 'align'?"),
        (["depth=da2_metric", "depth.model=depth-anything/Not-Cached-hf",
          "depth.local_files_only=true"], "not in the local Hugging Face cache"),
        (["depth=da2_metric", f"depth.model={tmp_path / 'nomodel'}"], "without config.json"),
    ]
    for i, (extra, msg) in enumerate(cases):
        work = tmp_path / f"w{i}"
        out = _cli("run", *base, *extra, f"paths.work_dir={work}")
        err = out.stderr.strip().splitlines()
        assert out.returncode == 2, (extra, out.stderr)
        assert len(err) == 1 and msg in err[0], (extra, err)
        assert not work.exists(), f"{extra}: something was written before the error"


def test_redirected_output_has_no_cursor_escapes_and_short_floats(toy, ray_cluster, capsys):
    """Bug 5: tqdm wrote cursor escapes into redirected logs; floats printed with 16 digits."""
    from pipeline.log import PlainProgress, progress
    from pipeline.summary import _fmt

    assert isinstance(progress(10, "x", "clips", True, 30.0), PlainProgress)  # not a TTY here
    cfg, _work = toy
    Runner(cfg()).run("toy_total")
    text = capsys.readouterr()
    assert "\r" not in text.out + text.err and "\x1b[" not in text.out + text.err
    assert _fmt(0.1 + 0.2) == "0.3"


def test_train_weights_are_checked_before_the_run(tmp_path):
    """The SVD backbone's weights are looked for before any stage runs, like depth.model."""
    from stages.train import STAGE as TRAIN

    (tmp_path / "svd").mkdir()
    cfg = load_config(["train=svd_320x512", f"train.svd.pretrained={tmp_path / 'svd'}"])
    with pytest.raises(ConfigError, match="without model_index.json"):
        TRAIN.check_ready(cfg)
    (tmp_path / "svd" / "model_index.json").write_text("{}")
    TRAIN.check_ready(cfg)  # a local diffusers folder: ready
    TRAIN.check_ready(load_config([]))  # built-in backbone: nothing to load


def test_ledger_reads_entries_written_before_the_contract(tmp_path):
    """An upgrade must not recompute a dataset: entries that kept the inputs digest, filtered
    clips and timings under magic stats keys are read into the typed fields (downstream
    fingerprints chain ``inputs_digest``)."""
    from pipeline.io import write_json_atomic

    led = Ledger(tmp_path, "ingest")
    write_json_atomic({"stage": "ingest", "shard_id": "s", "status": "done", "clip_ids": ["a"],
                       "fingerprint": "f", "output": "ingest/s.parquet", "attempts": 1,
                       "stats": {"inputs_digest": "d0", "filtered": {"a": "r"}, "_cpu_s": 1.5,
                                 "_node": "n1", "frames": 3}}, led.path("s"))
    e = led.get("s")
    assert (e.inputs_digest, e.filtered, e.cpu_s, e.node) == ("d0", {"a": "r"}, 1.5, "n1")
    assert e.failure_kinds == {} and e.errors == {}


def test_noop_rerun_starts_no_ray_and_reports_the_whole_command(tmp_path, ray_cluster,
                                                                 monkeypatch):
    """A re-run with everything done took most of a minute (Ray start, imports) and reported
    `wall time: 0.6 s`. Ray now starts only for a stage with tasks to run, and the wall time is
    the whole command's, from the process start."""
    import time

    from pipeline import ray_utils
    from pipeline.cli import main
    from pipeline.io import read_json

    root, work = tmp_path / "data", tmp_path / "work"
    write_clip(root, "c0", n=3)
    args = ["run", "stage=ingest", "dataset=re10k", f"dataset.root={root}", "depth=sensor",
            f"paths.work_dir={work}", "progress=false"]
    real, calls = ray_utils.init_ray, []
    monkeypatch.setattr(ray_utils, "init_ray", lambda cfg: (calls.append(cfg), real(cfg))[1])
    t0 = time.time()
    assert main(args) == 0 and len(calls) == 1  # ingest had a task to run: Ray was needed
    first = time.time() - t0
    assert main(args, started_at=t0) == 0 and len(calls) == 1, "a no-op run started Ray"
    # the wall time is the command's, from when it started (here: before the first run)
    assert read_json(work / "summary.json")["wall_s"] >= first
    # a fresh process: no Ray start, and the reported time is the time the command took
    t1 = time.monotonic()
    out = _cli(*args)
    elapsed = time.monotonic() - t1
    assert out.returncode == 0, out.stderr
    assert "Ray" not in out.stdout + out.stderr, out.stdout + out.stderr
    wall = read_json(work / "summary.json")["wall_s"]
    assert 0.7 * elapsed <= wall <= elapsed + 1.0, (wall, elapsed)


# ---------------------------------------------------------------------- executors on actors
def _pool_worker_class() -> type:
    """A pool actor (defined in a function: pickled by value, Ray workers need not import
    tests/): ``sleep`` seconds of work per shard, echoes its shard id, and shard ``die`` kills
    the actor process under it."""

    class Worker:
        def ready(self) -> bool:
            return True

        def process(self, task: ShardTask) -> Any:
            def run(t: ShardTask) -> ShardResult:
                if t.shard_id == "die":
                    os._exit(1)
                time.sleep(float(t.extra.get("sleep", 0.0)))
                return ShardResult(n_clips=1, n_ok=1, stats={"echo": t.shard_id})

            return execute(run, task, in_worker=True)

    return Worker


def _pool_task(tmp_path: Path, shard_id: str, sleep: float = 0.0) -> ShardTask:
    return ShardTask(stage="toy", shard_id=shard_id, clip_ids=[shard_id], inputs={},
                     output=str(tmp_path / f"{shard_id}.parquet"), cfg={},
                     work_dir=str(tmp_path), extra={"sleep": sleep})


def _drain(pool: Any, n: int) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    while len(out) < n:
        out += pool.next_done()
    return out


def test_actor_pool_records_each_result_for_its_own_shard(ray_cluster, tmp_path):
    """Ray's ActorPool hands results back as they finish, not in submission order: each one
    must still be recorded for its own shard, and every shard exactly once."""
    import ray

    from pipeline.pool import ShardActorPool

    remote = ray.remote(_pool_worker_class()).options(num_cpus=0)
    actors = [remote.remote() for _ in range(2)]
    ray.get([a.ready.remote() for a in actors])
    pool = ShardActorPool(actors)
    try:
        tasks = [_pool_task(tmp_path, "slow", 3.0), _pool_task(tmp_path, "fast"),
                 _pool_task(tmp_path, "next1"), _pool_task(tmp_path, "next2")]
        assert [pool.submit(t) for t in tasks] == [t.shard_id for t in tasks]
        done = _drain(pool, len(tasks))
    finally:
        pool.close()
    order = [key for key, _ in done]
    assert sorted(order) == sorted(t.shard_id for t in tasks)
    assert order.index("fast") < order.index("slow")  # out of submission order
    for key, outcome in done:
        assert outcome.ok, outcome.error
        assert outcome.shard_id == key and outcome.result.stats["echo"] == key


def test_actor_pool_takes_back_a_restarted_actor(ray_cluster, tmp_path):
    """An actor killed under a shard fails that shard (kept for the next run); once Ray has
    restarted it (``max_restarts``), it takes the next shards again: without being handed
    back, the pool would have dropped its only actor."""
    import ray

    from pipeline.pool import ShardActorPool

    remote = ray.remote(_pool_worker_class()).options(num_cpus=0, max_restarts=1,
                                                      max_task_retries=0)
    actor = remote.remote()
    pool = ShardActorPool([actor])
    try:
        pool.submit(_pool_task(tmp_path, "die"))
        [(key, outcome)] = pool.next_done()
        assert key == "die" and not outcome.ok and "Actor" in outcome.error
        deadline = time.monotonic() + 60
        while True:  # the restart takes a moment; calls meanwhile say it is restarting
            try:
                ray.get(actor.ready.remote(), timeout=10)
                break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                assert time.monotonic() < deadline, "the actor did not come back"
                time.sleep(0.5)
        for shard_id in ("x", "y"):
            pool.submit(_pool_task(tmp_path, shard_id))
        done = dict(_drain(pool, 2))
    finally:
        pool.close()
    assert sorted(done) == ["x", "y"]
    assert all(o.ok and o.result.stats["echo"] == k for k, o in done.items())


def test_actor_pool_with_a_dead_actor_fails_the_rest_without_hanging(ray_cluster, tmp_path):
    """No restarts left: every later shard fails at once with Ray's reason (as on a dead
    worker), none waits forever for an actor that will not come back."""
    import ray

    from pipeline.pool import ShardActorPool

    remote = ray.remote(_pool_worker_class()).options(num_cpus=0, max_restarts=0,
                                                      max_task_retries=0)
    pool = ShardActorPool([remote.remote()])
    try:
        for shard_id in ("die", "x", "y"):
            pool.submit(_pool_task(tmp_path, shard_id))
        done = dict(_drain(pool, 3))
    finally:
        pool.close()
    assert sorted(done) == ["die", "x", "y"]
    assert all(not o.ok and "Actor" in o.error for o in done.values())
