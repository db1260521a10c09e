"""The command line as a user meets it: help, one-line errors, status."""

from __future__ import annotations

import os
import subprocess
import sys

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
