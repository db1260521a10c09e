"""The command line as a user meets it: help, one-line errors, status."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.cli import main
from tests.conftest import ROOT


def _cli(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=120,
    )


def test_help_lists_stages_and_overrides():
    out = _cli("run", "--help")
    assert out.returncode == 0
    for word in ("stage=", "dataset=", "depth=", "paths.work_dir", "ray.address", "force=true"):
        assert word in out.stdout


def test_unknown_stage_is_one_line_error(capsys):
    assert main(["run", "stage=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown stage 'nope'" in err[0] and "triangulate" in err[0]


def test_bad_override_and_missing_root_are_one_line(capsys):
    assert main(["run", "no_such_key=1"]) == 2
    assert main(["run", "dataset=re10k"]) == 2
    assert main(["run", "dataset=bogus"]) == 2
    assert main(["run", "justaword"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4
    assert "no_such_key" in err[0]
    assert "dataset.root" in err[1]
    assert "unknown dataset 'bogus'" in err[2] and "rgbd" in err[2]
    assert "key=value" in err[3]


def test_no_traceback_from_subprocess(tmp_path):
    out = _cli("run", "stage=nope", f"paths.work_dir={tmp_path}")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "unknown stage" in out.stderr


def test_status_before_any_run_says_so(tmp_path, capsys):
    assert main(["status", f"paths.work_dir={tmp_path}"]) == 2
    assert "nothing has run" in capsys.readouterr().err


def test_depth_default_follows_dataset():
    from pipeline.config import load_config

    assert load_config([])["depth"]["backend"] == "sensor"
    cfg = load_config(["dataset=re10k", "dataset.root=x"])
    assert cfg["depth"]["backend"] == "da2_metric"
    cfg = load_config(["dataset=re10k", "dataset.root=x", "depth=sensor"])
    assert cfg["depth"]["backend"] == "sensor"
    cfg = load_config(["dataset=rgbd", "dataset.root=x", "dataset.relative_scale=0.5"])
    assert cfg["dataset"]["relative_scale"] == 0.5 and os.path.isabs(cfg["dataset"]["root"])


def test_bad_integer_settings_are_config_errors(tmp_path):
    """dataset.limit=-1 used to drop the last clip silently (ids[:-1]); shards.size=abc ended in
    a traceback. Both are user mistakes: one-line ConfigError."""
    from pipeline.errors import ConfigError
    from pipeline.runner import Runner
    from tests.helpers import cfg_for, write_clip

    root = tmp_path / "data"
    for i in range(3):
        write_clip(root, f"c{i}", frames=None)
    for bad, key in (("dataset.limit=-1", "dataset.limit"), ("dataset.limit=0", "dataset.limit"),
                     ("shards.size=abc", "shards.size"), ("shards.size=0", "shards.size")):
        with pytest.raises(ConfigError, match=key):
            Runner(cfg_for(root, tmp_path / "w", bad)).plan()
    shards, _ = Runner(cfg_for(root, tmp_path / "w", "dataset.limit=2", "shards.size=1")).plan()
    assert sorted(shards.values()) == [["c0"], ["c1"]]


def test_relative_model_directory_becomes_absolute(tmp_path, monkeypatch):
    """depth.model / train.svd.pretrained accept a local directory; relative to the driver's
    cwd it would not resolve in Ray workers started elsewhere (`ray start` on a cluster)."""
    from pipeline.config import load_config

    (tmp_path / "models" / "da2").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(["depth=da2_metric", "depth.model=models/da2",
                       "train.svd.pretrained=models/da2"])
    assert cfg["depth"]["model"] == str(tmp_path / "models" / "da2")
    assert cfg["train"]["svd"]["pretrained"] == str(tmp_path / "models" / "da2")
    hub = "depth-anything/Depth-Anything-V2-Metric-Indoor-Large-hf"
    assert load_config(["depth=da2_metric", f"depth.model={hub}"])["depth"]["model"] == hub


def _record(monkeypatch, module, name: str) -> list:
    """Replace ``module.name`` by a recorder (what ran before the command stopped)."""
    calls: list = []
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append((a, k)))
    return calls


def test_missing_dataset_root_is_one_line_before_ray_models_or_rendering(
        tmp_path, monkeypatch, capsys):
    """A wrong dataset.root used to hide behind the depth-model check (re10k), to surface after
    Ray had started (rgbd) or never (sample: rendered into the wrong place, exit 0)."""
    from pipeline import ray_utils
    from pipeline.synthetic import sample_data

    ray_calls = _record(monkeypatch, ray_utils, "init_ray")
    render_calls = _record(monkeypatch, sample_data, "generate_sample")
    missing = tmp_path / "nonexistent" / "x"
    for dataset in ("re10k", "rgbd", "nerfstudio", "sample", "stress"):
        work = tmp_path / f"work_{dataset}"
        code = main(["run", f"dataset={dataset}", f"dataset.root={missing}",
                     f"paths.work_dir={work}", "models.hub_timeout_s=0.5"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (dataset, err)
        assert len(err) == 1 and "dataset.root" in err[0] and str(missing) in err[0], err
        assert "depth" not in err[0], (dataset, err)  # the dataset first, not the model
        assert not missing.parent.exists() and not work.exists(), dataset
    assert ray_calls == [] and render_calls == []


def test_synthetic_dataset_root_may_be_new(tmp_path):
    """The sample is rendered on first use: into the work dir by default (even before the work
    dir exists), or into a new folder of an existing directory."""
    from pipeline.config import load_config
    from pipeline.errors import ConfigError
    from pipeline.registry import source

    ingest = source()
    ingest.check_inputs(load_config([f"paths.work_dir={tmp_path / 'new' / 'work'}"]))
    ingest.check_inputs(load_config([f"dataset.root={tmp_path / 'fresh'}"]))
    with pytest.raises(ConfigError, match="does not exist"):
        ingest.check_inputs(load_config([f"dataset.root={tmp_path / 'no' / 'fresh'}"]))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        ingest.check_inputs(load_config(["dataset=rgbd", f"dataset.root={tmp_path / 'file'}"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no RGB-D sequence"):
        ingest.check_inputs(load_config(["dataset=rgbd", f"dataset.root={tmp_path / 'empty'}"]))
