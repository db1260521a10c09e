"""The pipeline on object storage (a real S3 API: moto's standalone server on 127.0.0.1) and the
shared-directory check of a multi-node cluster.

- The bundled sample's renderer, two clips of 12 frames, uploaded to a bucket; ingest -> curate
  with ``paths.work_dir=s3://...`` and ``dataset.root=s3://...`` on the 2-node test cluster:
  the recovered scales match the truth, no local ``s3:`` folder appears, and the curated prefix
  is read straight from the bucket by pandas and by Ray Data.
- kill -9 of the CLI during align and again during curate, then re-run: the curated objects are
  byte-identical to the uninterrupted run's, and after each kill the curated prefix is readable
  as one table (an object is visible only once complete). The killed driver's lease is taken
  over at once (its process is gone from this host).
- A missing bucket and wrong credentials give one line and exit 2 before any stage writes.
- A work dir that resolves to a different directory on one node is refused; a shared one passes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest
from omegaconf import OmegaConf

from pipeline import ray_utils, storage, work_lock
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.ledger import DONE, Ledger
from pipeline.runner import Runner
from tests.conftest import ROOT, S3_ENV

CLIPS = [
    {"clip_id": "s3_fwd", "split": "train", "seed": 81, "kind": "forward", "rel_scale": 0.5},
    {"clip_id": "s3_pan", "split": "test", "seed": 82, "kind": "pan", "rel_scale": 2.5},
]
#: what every Ray task of the test cluster must see (it was started before the S3 server)
FORWARD = "ray.forward_env=[" + ",".join([*S3_ENV, "AWS_ENDPOINT_URL"]) + "]"
LEASE_TTL_S = 2.0


def _overrides(bucket: str, work: str, definition: Path, address: str) -> list[str]:
    return [f"paths.work_dir=s3://{bucket}/{work}", f"dataset.root=s3://{bucket}/data",
            f"dataset.definition={definition}", "shards.size=1", "progress=false",
            f"ray.address={address}", FORWARD, f"storage.lock_ttl_s={LEASE_TTL_S}"]


def _fs() -> pafs.FileSystem:
    return storage.filesystem_for("s3://any")[0]


def _objects(bucket: str, prefix: str) -> dict[str, bytes]:
    fs = _fs()
    sel = pafs.FileSelector(f"{bucket}/{prefix}", recursive=True, allow_not_found=True)
    out = {}
    for info in fs.get_file_info(sel):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as fh:
                out[info.path.split(f"{bucket}/{prefix}/", 1)[1]] = fh.read()
    return out


@pytest.fixture(scope="module")
def s3_run(s3_server, ray_cluster, tmp_path_factory):
    import boto3

    bucket = f"ma-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    base = tmp_path_factory.mktemp("s3")
    defn = OmegaConf.to_container(OmegaConf.load(ROOT / "data_manifests" / "sample.yaml"))
    defn["defaults"].update({"n_frames": 12})
    defn["clips"] = CLIPS
    definition = base / "definition.yaml"
    OmegaConf.save(OmegaConf.create(defn), definition)
    cwd = os.getcwd()
    os.chdir(base)  # a work dir mistaken for a local path would appear here as 's3:'
    try:
        # the sample is rendered on first use and uploaded: dataset.root is in the bucket
        summary = Runner(load_config(_overrides(bucket, "ref", definition, ray_cluster))).run(
            "curate")
    finally:
        os.chdir(cwd)
    return {"bucket": bucket, "base": base, "definition": definition, "summary": summary}


def test_sample_end_to_end_on_s3(s3_run):
    bucket, base = s3_run["bucket"], s3_run["base"]
    assert s3_run["summary"]["exit_code"] == 0
    assert not (base / "s3:").exists() and not any(base.glob("s3*"))
    # the dataset itself is read from the bucket (the manifest names its objects)
    manifest = storage.read_table(f"s3://{bucket}/ref/ingest/"
                                  + next(k for k in _objects(bucket, "ref/ingest")))
    assert all(p.startswith(f"s3://{bucket}/data/") for p in manifest["frame_paths"][0].as_py())
    objs = _objects(bucket, "ref")
    for key in ("plan.json", "summary.json", "logs/run.log", "curated/_dataset.json",
                "curated/_compat/per_frame_scale.npz", "curated/_compat/realcam_vid.parquet",
                "curated/_report/report.html"):
        assert key in objs, f"missing {key}"
    assert not [k for k in objs if Path(k).name.startswith(".") and k != ".run.lock"]
    assert ".run.lock" not in objs  # released at the end
    led = Ledger(f"s3://{bucket}/ref", "curate")
    assert led.get("_global").status == DONE

    # pandas and Ray Data read the curated prefix straight from the bucket
    fs, key = storage.filesystem_for(f"s3://{bucket}/ref/curated")
    cur = pd.read_parquet(key, filesystem=fs).sort_values("clip_id")
    assert list(cur["clip_id"]) == sorted(c["clip_id"] for c in CLIPS)
    truth = {c["clip_id"]: 1.0 / c["rel_scale"] for c in CLIPS}  # rel_scale scales translations
    for r in cur.itertuples():  # known answer: exact depth recovers the scale within 0.5 %
        assert r.clip_scale == pytest.approx(truth[r.clip_id], rel=5e-3)
    import ray

    env = {k: os.environ[k] for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    ds = ray.data.read_parquet(key, filesystem=fs, runtime_env={"env_vars": env})
    rows = sorted(ds.take_all(), key=lambda r: r["clip_id"])
    assert [r["clip_id"] for r in rows] == list(cur["clip_id"])
    np.testing.assert_array_equal(np.asarray(rows[0]["frame_scale"]),
                                  np.asarray(cur.iloc[0]["frame_scale"]))


def _done(uri: str, stage: str) -> int:
    led = Ledger(uri, stage)
    return sum(1 for p in led.dir.glob("*.json") if (e := led.get(p.stem)) and e.status == DONE)


def test_kill9_during_align_and_curate_then_resume_on_s3(s3_run, ray_cluster):
    """The local kill -9 test (tests/test_e2e.py) against the bucket: upstream outputs and
    ledgers copied server-side from the reference, align and curate killed and resumed."""
    bucket = s3_run["bucket"]
    fs = _fs()
    for info in fs.get_file_info(pafs.FileSelector(f"{bucket}/ref", recursive=True)):
        rel = info.path.split(f"{bucket}/ref/", 1)[1]
        if info.type == pafs.FileType.File and rel.split("/")[0] in ("ingest", "triangulate",
                                                                       "depth", "ledger") \
                and not rel.startswith(("ledger/align", "ledger/curate")):
            fs.copy_file(info.path, f"{bucket}/killed/{rel}")
    uri = f"s3://{bucket}/killed"
    args = [sys.executable, "-m", "pipeline", "run", "stage=curate", "ray.max_in_flight=1",
            *_overrides(bucket, "killed", s3_run["definition"], ray_cluster)]
    env = dict(os.environ, RAY_AUTH_MODE="disabled")

    def kill_when(stage: str) -> None:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while _done(uri, stage) < 1 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # the killed driver's lease still stands, but its process is gone from this host: the
        # next run takes it over at once, saying so, instead of waiting for the expiry
        lease = work_lock.acquire(uri, LEASE_TTL_S)
        assert lease.note and "took over the run lock" in lease.note, lease.note
        lease.close()
        # whatever the kill left, the curated prefix reads as one table of complete objects
        curated = _objects(bucket, "killed/curated")
        if any(k.endswith(".parquet") for k in curated):
            fs_, key = storage.filesystem_for(f"{uri}/curated")
            pd.read_parquet(key, filesystem=fs_)

    kill_when("align")
    assert _done(uri, "align") < len(CLIPS) or _done(uri, "curate") < len(CLIPS)
    kill_when("curate")
    assert "curated/_dataset.json" not in _objects(bucket, "killed"), "kill landed after the end"
    final = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stdout + final.stderr
    ref, got = _objects(bucket, "ref/curated"), _objects(bucket, "killed/curated")
    shards = [k for k in ref if k.endswith(".parquet") and not k.startswith("_")]
    assert len(shards) == len(CLIPS)
    for k in shards + ["_compat/per_frame_scale.npz", "_compat/valid_clips.txt",
                       "_compat/realcam_vid.parquet"]:
        assert got[k] == ref[k], f"{k} differs after kill -9 and resume"
    for stage in ("ingest", "triangulate", "depth"):  # nothing upstream was recomputed
        for shard in Ledger(f"s3://{bucket}/ref", stage).dir.glob("*.json"):
            a = Ledger(uri, stage).get(shard.stem)
            assert a.finished_at == Ledger(f"s3://{bucket}/ref", stage).get(shard.stem).finished_at


def _cli_one_line(capsys, overrides: list[str]) -> str:
    from pipeline.cli import main

    assert main(["run", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_bucket_and_wrong_credentials_fail_before_any_stage(
    s3_run, capsys, monkeypatch
):
    bucket, definition = s3_run["bucket"], s3_run["definition"]
    ov = [f"dataset.root=s3://{bucket}/data", f"dataset.definition={definition}",
          "progress=false"]
    err = _cli_one_line(capsys, ["paths.work_dir=s3://no-such-bucket-ma/work", *ov])
    assert "bucket 'no-such-bucket-ma' does not exist" in err and "paths.work_dir" in err

    from moto import settings as moto_settings

    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks keys
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    err = _cli_one_line(capsys, [f"paths.work_dir=s3://{bucket}/wrong", *ov])
    assert "cannot access the bucket" in err and "ACCESS_DENIED" in err, err
    monkeypatch.undo()
    assert not _objects(bucket, "wrong"), "something was written before the check"


def test_unsupported_scheme_is_one_line(capsys):
    err = _cli_one_line(capsys, ["paths.work_dir=http://example.com/work"])
    assert "unsupported URI scheme 'http://'" in err


def test_shared_directory_check_on_two_nodes(ray_test_cluster, tmp_path):
    """A directory every node sees passes; a work dir that resolves differently on one node is
    refused. The node-local case is a real one: ``paths.work_dir=~/work`` on a cluster whose
    nodes have their own home directories (cloud VMs without an NFS home). Each node expands
    ``~`` itself, so a third node started with another ``HOME`` stands for such a machine."""
    ray_utils.check_shared_dir(str(tmp_path / "shared"))  # 2 nodes, one filesystem: passes
    name = f".metric-align-probe-test-{uuid.uuid4().hex[:8]}"
    home_dir = Path.home() / name
    try:
        ray_utils.check_shared_dir(f"~/{name}")  # same HOME on both nodes: still shared
        other_home = tmp_path / "other_home"
        other_home.mkdir()
        node = ray_test_cluster.add_node(num_cpus=1, num_gpus=0,
                                   object_store_memory=80 * 1024 * 1024,
                                   env_vars={"HOME": str(other_home)})
        try:
            with pytest.raises(ConfigError, match="is not shared by the cluster's 3 nodes"):
                ray_utils.check_shared_dir(f"~/{name}")
        finally:
            ray_test_cluster.remove_node(node)
    finally:
        if home_dir.is_dir():
            home_dir.rmdir()


def test_train_and_sample_write_to_the_bucket(s3_run):
    """The trainer's outputs (checkpoints, metrics, sample mp4 + JSON, summary) under an s3://
    work dir, trained on the curated shards of the bucket (frames read from the bucket); a
    second call resumes from the bucket's checkpoint instead of training again."""
    import copy

    from pipeline.formats.frames import read_video_rgb
    from pipeline.stage import GLOBAL_SHARD, ShardTask
    from stages.train import STAGE as TRAIN
    from tests.test_trainer import _default_cfg, train_cfg

    bucket = s3_run["bucket"]
    work = f"s3://{bucket}/trained"
    curated = sorted(f"s3://{bucket}/ref/curated/{k}"
                     for k in _objects(bucket, "ref/curated")
                     if k.endswith(".parquet") and not k.startswith("_"))  # not _compat/
    cfg = copy.deepcopy(_default_cfg())
    cfg["progress"] = False
    cfg["train"] = train_cfg(max_steps=2, checkpoint_every=1)
    cfg["train"]["sampling"].update(steps=2)
    cfg["paths"]["work_dir"] = work

    def task(restart: bool) -> ShardTask:
        return ShardTask(stage="train", shard_id=GLOBAL_SHARD, clip_ids=[], inputs={},
                         output=storage.join(work, TRAIN.output_file(cfg, GLOBAL_SHARD)),
                         cfg=cfg, work_dir=work, inputs_all={"curate": curated},
                         restart=restart)

    res = TRAIN.process_shard(task(restart=True))
    assert res.stats["step"] == 2 and res.stats["steps_run"] == 2
    objs = _objects(bucket, "trained/train")
    assert {"checkpoints/step-00000001.pt", "checkpoints/step-00000002.pt",
            "metrics.jsonl", "summary.json"} <= set(objs)
    assert [json_step(ln) for ln in objs["metrics.jsonl"].decode().splitlines()] == [1, 2]
    mp4 = next(k for k in objs if k.startswith("samples/") and k.endswith(".mp4"))
    assert len(read_video_rgb(f"{work}/train/{mp4}")) == cfg["train"]["data"]["num_frames"]
    again = TRAIN.process_shard(task(restart=False))
    assert again.stats["step"] == 2 and again.stats["steps_run"] == 0  # resumed, nothing to do


def json_step(line: str) -> int:
    import json

    return int(json.loads(line)["step"])
