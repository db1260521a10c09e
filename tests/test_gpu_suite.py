"""bench/gpu_suite.py in --quick mode on CPU: every section runs through the project's own code
paths with tiny shapes and writes figures that make sense; the budget guard stops cleanly.

The suite exists to be run once on a borrowed GPU with a few minutes of device time, so anything
that would break there (a section that crashes, a figure not written, a budget that does not
stop) must be caught here first.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _suite() -> Any:
    """The script imported as a module (it lives in bench/, which is not a package)."""
    if "gpu_suite" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "bench" / "gpu_suite.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["gpu_suite"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["gpu_suite"]


def _pos(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick(ray_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    gs = _suite()
    out = tmp_path_factory.mktemp("gpu_suite") / "figures.json"
    t = time.perf_counter()
    res = gs.main(["--quick", "--device", "cpu", "--out", str(out), "--budget-s", "600"])
    res["_wall_s"] = time.perf_counter() - t
    res["_file"] = json.loads(out.read_text())
    return res


def test_quick_runs_every_section_and_writes_the_json(quick: dict[str, Any]) -> None:
    gs = _suite()
    f = quick["_file"]
    assert f["meta"]["quick"] is True and f["meta"]["stopped_by_budget"] is False
    assert f["meta"]["device"] == "cpu" and f["meta"]["gpu"] is None
    for name in gs.SECTIONS:
        assert f[name]["status"] == "ok", (name, f[name].get("status"))
    assert set(f["meta"]["section_s"]) == set(gs.SECTIONS)


def test_quick_depth_figures(quick: dict[str, Any]) -> None:
    gs = _suite()
    P = gs.PROFILES["quick"]
    d = quick["_file"]["depth"]
    n_res = len(P["resolutions"])
    assert len(d["raw"]) == n_res * len(P["batches"]) * 2  # bf16 and fp32
    assert {r["dtype"] for r in d["raw"]} == {"bfloat16", "float32"}
    assert all(_pos(r["images_per_s"]) for r in d["raw"])
    assert len(d["stage"]) == n_res * len(P["batches"])
    for r in d["stage"]:
        assert _pos(r["images_per_s"]) and 0.0 < r["ratio_stage_raw"] < 20.0
        assert r["frames"] == P["stage_clips"] * P["stage_frames"]
        assert r["valid_fraction"] > 0.9 and r["oom_halvings"] == 0
        assert r["peak_mem_mb"] is None  # GPU memory only on CUDA
    assert d["best_stage"]["images_per_s"] == max(r["images_per_s"] for r in d["stage"])


def test_quick_parity_and_oom(quick: dict[str, Any]) -> None:
    f = quick["_file"]
    b = f["depth_parity"]["bf16_vs_fp32"]
    n = f["depth_parity"]["frames"] * f["depth_parity"]["points_per_frame"]
    assert b["n"] == n and 0 < b["median"] < 0.02 and b["median"] <= b["p99"] < 0.1
    q = f["depth_parity"]["device_vs_processor"]
    assert q["pixel_grey_levels"]["max"] <= 1.0 + 1e-3  # the documented ~1 grey level
    assert q["depth_rel"]["n"] == n and q["depth_rel"]["p99"] < 0.05
    o = f["depth_oom"]
    # simulated on CPU: fits 2.5x the reference batch of 1 -> 8 halves to 4, then to 2
    assert o["real_cuda_oom"] is False and o["start_batch"] == 8
    assert o["halvings"] == 2 and o["final_batch"] == 2
    assert o["complete"] and o["frames_out"] == o["frames_in"] == 8
    assert o["rel_diff_vs_reference"]["max"] < 1e-4  # the halved batches give the same depth


def test_quick_training_and_triangulation(quick: dict[str, Any]) -> None:
    f = quick["_file"]
    runs = f["svd_train"]["runs"]
    assert [r["gradient_checkpointing"] for r in runs] == [True, False]
    assert all(_pos(r["step_s"]) and math.isfinite(r["loss"]) for r in runs)
    assert f["svd_train"]["params_m"]["camera_adapter"] > 0
    bt = f["builtin_train"]
    assert _pos(bt["samples_per_s"]) and math.isclose(bt["samples_per_s"] * bt["step_s"],
                                                      bt["batch"], rel_tol=0.01)
    tr = f["triangulate"]
    assert tr["executor"] == "ray"  # the session's Ray cluster was reused
    assert [r["workers"] for r in tr["runs"]] == [1, 2]
    for r in tr["runs"]:
        assert r["failures"] == [] and r["obs"] > 0
        assert _pos(r["clips_per_s"]) and _pos(r["cpu_s_per_frame"])
    assert tr["runs"][0]["scaling_vs_1"] == 1.0
    assert tr["runs"][0]["obs"] == tr["runs"][1]["obs"]  # same clip set, deterministic COLMAP


def test_quick_optimisation_variants(quick: dict[str, Any]) -> None:
    o = quick["_file"]["depth_opts"]
    assert _pos(o["baseline"]["images_per_s"]) and o["attn_implementation"] == "sdpa"
    for name in ("attention_eager", "attention_sdpa", "channels_last"):
        assert _pos(o["variants"][name]["images_per_s"]), (name, o["variants"][name])
        assert _pos(o["variants"][name]["speedup"])
    assert "skipped" in o["variants"]["torch_compile"]


def test_budget_guard_stops_a_running_section_and_keeps_the_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gs = _suite()

    def endless(*args: Any) -> None:
        time.sleep(30)

    monkeypatch.setattr(gs, "run_builtin_train", endless)
    out = tmp_path / "partial.json"
    t = time.perf_counter()
    gs.main(["--quick", "--device", "cpu", "--out", str(out), "--budget-s", "1",
             "--sections", "builtin_train,triangulate"])
    assert time.perf_counter() - t < 10
    f = json.loads(out.read_text())
    assert f["meta"]["stopped_by_budget"] is True
    assert f["builtin_train"]["status"] == "stopped: budget"
    assert "triangulate" not in f  # never started


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        _suite().main(["--quick", "--out", str(tmp_path / "x.json"), "--sections", "depht"])


def test_projection_known_answer() -> None:
    """3600 frames at 2 images/s per GPU on 1 GPU take half an hour; triangulation uses the
    run with the most workers (1 CPU-second per frame) over 2 cores: half an hour too."""
    import argparse

    rates = {
        "depth": {"stage": [{"res": "480p", "images_per_s": 1.0},
                            {"res": "480p", "images_per_s": 2.0},
                            {"res": "720p", "images_per_s": 0.5},
                            {"res": "720p", "error": "out of memory"}]},
        "triangulate": {"runs": [{"workers": 1, "cpu_s_per_frame": 0.25},
                                 {"workers": 4, "cpu_s_per_frame": 1.0}]},
    }
    args = argparse.Namespace(re10k_clips=24, re10k_frames=150, node_cores=2, node_gpus=1,
                              node_cost_per_hour=30.0)
    pr = _suite().projection(rates, args)
    assert pr["frames"] == 3600
    assert pr["depth_hours"] == {"480p": {"images_per_s_per_gpu": 2.0, "hours": 0.5},
                                 "720p": {"images_per_s_per_gpu": 0.5, "hours": 2.0}}
    assert pr["triangulate"] == {"cpu_s_per_frame": 1.0, "hours": 0.5}
