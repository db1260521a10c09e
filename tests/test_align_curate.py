"""Align and curate against known answers: pose math, frame factors, quantile filter, outputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.geometry import poses as geo
from pipeline.scale.factors import _mad_rel, frame_factors
from pipeline.schema import ALIGN, CURATED, DEPTH_SAMPLES, MANIFEST, OBSERVATIONS
from pipeline.settings import Curate
from pipeline.stage import ClipError, ShardTask
from stages.align import STAGE as ALIGN_STAGE
from stages.curate import STAGE as CURATE_STAGE
from stages.curate import compute_cutoffs, filter_rule, quantile_cutoffs


# ----------------------------------------------------------------------------- helpers
def random_c2w(n: int, rng: np.random.Generator, spread: float = 2.0) -> np.ndarray:
    """Random rigid camera-to-world poses (proper rotations from QR)."""
    out = np.zeros((n, 4, 4))
    for i in range(n):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        if np.linalg.det(q) < 0:
            q[:, 0] *= -1
        out[i, :3, :3] = q
        out[i, :3, 3] = rng.normal(scale=spread, size=3)
        out[i, 3, 3] = 1.0
    return out


def w2c_rel_from_metric(c2w_metric: np.ndarray, true_scale: float) -> np.ndarray:
    """Relative-scale w2c (N, 12): the scene shrunk by true_scale (t_metric = t_rel * s)."""
    w2c = np.linalg.inv(c2w_metric)
    w2c[:, :3, 3] /= true_scale
    return geo.mat44_to_w2c(w2c)


def manifest_row(clip_id: str, w2c: np.ndarray, true_scale: float | None = None,
                 split: str = "test") -> dict[str, Any]:
    n = int(w2c.shape[0])
    return {
        "clip_id": clip_id, "split": split, "source_type": "images", "video_path": None,
        "frame_paths": [f"frames/{clip_id}/{i}.png" for i in range(n)], "depth_paths": [],
        "depth_unit": 1.0, "timestamps_us": [1000 * i for i in range(n)],
        "intrinsics": [0.5, 0.8, 0.5, 0.5], "width": 32, "height": 24, "num_frames": n,
        "w2c": w2c.tolist(), "true_scale": true_scale, "url": None,
    }


def align_row(clip_id: str, frame_scale: list[float], interp: list[bool] | None = None
              ) -> dict[str, Any]:
    fs = np.asarray(frame_scale, dtype=float)
    n = fs.size
    interp = interp or [False] * n
    meas = fs[~np.asarray(interp)]
    return {
        "clip_id": clip_id, "num_frames": n, "frame_scale": fs.tolist(),
        "frame_num_obs": [20] * n, "frame_spread": [0.01] * n, "frame_interpolated": interp,
        "scale_max": float(meas.max()), "scale_min": float(meas.min()),
        "scale_median": float(np.median(meas)), "scale_spread": _mad_rel(meas),
        "scale_range": float((meas.max() - meas.min()) / np.median(meas)),
        "num_frames_measured": int(meas.size), "num_obs_total": 20 * n,
        "num_obs_valid": 20 * n, "frame_scale_raw": fs.tolist(), "frame_shrinkage": [0.0] * n,
        "scale_sigma": 0.004, "scale_sigma_boot": 0.003, "scale_sigma_sys": 0.002,
        "scale_ci_low": float(np.median(meas)) * 0.992,
        "scale_ci_high": float(np.median(meas)) * 1.008, "scale_uncertainty": 0.008,
        "frame_tau": 0.0, "tri_angle_median": 5.0, "ray_err_median": 0.001,
        "num_points": 100 * n,
    }


def write(rows: list[dict[str, Any]], schema: pa.Schema, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


@pytest.fixture(scope="module")
def cfg() -> dict[str, Any]:
    return load_config(["progress=false"], strict=True)


class FakeCtx:
    """The slice of the runner's RunContext that prepare/finalize use."""

    def __init__(self, cfg: dict[str, Any], work_dir: Path, shards: dict[str, list[str]],
                 failures: dict[str, dict[str, str]] | None = None):
        self.cfg, self.work_dir, self.shards = cfg, work_dir, shards
        self.shard_ids = sorted(shards)
        self.failures = failures or {}
        self.lines: list[str] = []
        self.prepared: dict[str, dict[str, Any]] = {}

    def output_path(self, stage: str, shard_id: str) -> Path:
        d = "curated" if stage == "curate" else stage
        return self.work_dir / d / f"{shard_id}.parquet"

    def done_outputs(self, stage: str) -> list[Path]:
        return [p for s in self.shard_ids if (p := self.output_path(stage, s)).exists()]

    def clip_failures(self, stage: str) -> dict[str, str]:
        return dict(self.failures.get(stage, {}))

    def log(self, msg: str) -> None:
        self.lines.append(msg)


# ----------------------------------------------------------------------------- geometry
def test_rigid_inverse_and_storage_roundtrip() -> None:
    rng = np.random.default_rng(0)
    c2w = random_c2w(5, rng)
    w2c12 = geo.mat44_to_w2c(np.linalg.inv(c2w))
    assert np.allclose(geo.w2c_to_mat44(w2c12)[:, :3, :4].reshape(5, 12), w2c12)
    assert np.allclose(geo.c2w_from_w2c(w2c12), c2w, atol=1e-12)
    assert np.allclose(geo.rigid_inverse(c2w), np.linalg.inv(c2w), atol=1e-12)


def test_relative_poses_identity_composition_and_world_invariance() -> None:
    rng = np.random.default_rng(1)
    c2w = random_c2w(6, rng)
    rel = geo.relative_poses(c2w)
    assert np.allclose(rel[0], np.eye(4), atol=1e-12)
    for i in range(6):
        assert np.allclose(rel[i], np.linalg.inv(c2w[0]) @ c2w[i], atol=1e-12)
    # composition: pose of j seen from i is the same whichever reference frame we went through
    for i, j in [(1, 4), (5, 2)]:
        assert np.allclose(np.linalg.inv(rel[i]) @ rel[j], np.linalg.inv(c2w[i]) @ c2w[j],
                           atol=1e-10)
    # the arbitrary world frame of a clip disappears: c2w' = G c2w gives the same relative poses
    g = random_c2w(1, rng)[0]
    assert np.allclose(geo.relative_poses(g @ c2w), rel, atol=1e-10)
    rel3 = geo.relative_poses(c2w, ref=3)
    assert np.allclose(rel3[3], np.eye(4), atol=1e-12)


def test_known_scale_maps_back_to_metric() -> None:
    rng = np.random.default_rng(2)
    c2w_metric = random_c2w(7, rng)
    true_scale = 3.7
    w2c_rel = w2c_rel_from_metric(c2w_metric, true_scale)
    # relative-scale translations are the metric ones divided by the scale
    rel_rel = geo.relative_poses(geo.c2w_from_w2c(w2c_rel))
    rel_metric = geo.relative_poses(c2w_metric)
    assert np.allclose(rel_rel[:, :3, 3] * true_scale, rel_metric[:, :3, 3], atol=1e-10)
    assert np.allclose(rel_rel[:, :3, :3], rel_metric[:, :3, :3], atol=1e-12)
    got = geo.metric_relative_c2w(w2c_rel, true_scale)
    assert np.allclose(got, rel_metric, atol=1e-10)
    # per-frame scales multiply each frame's translation only
    s = np.arange(1, 8, dtype=float)
    scaled = geo.scale_translation(rel_rel, s)
    assert np.allclose(scaled[:, :3, 3], rel_rel[:, :3, 3] * s[:, None])
    assert np.allclose(scaled[:, :3, :3], rel_rel[:, :3, :3])


# ----------------------------------------------------------------------------- align
def synthetic_obs(scales: dict[int, float], n_in: int, n_out: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, ...]:
    """Per frame: n_in exact ratios (depth = z * s) and n_out gross outliers."""
    f, z, d = [], [], []
    for frame, s in scales.items():
        zz = rng.uniform(0.5, 5.0, size=n_in + n_out)
        dd = zz * s
        dd[n_in:] *= rng.choice([0.05, 20.0], size=n_out)
        f += [frame] * (n_in + n_out)
        z += zz.tolist()
        d += dd.tolist()
    return np.array(f), np.array(z), np.array(d), np.ones(len(f), dtype=bool)


def test_frame_factors_exact_with_outliers_interpolation_and_invalid() -> None:
    rng = np.random.default_rng(3)
    s = {i: 1.0 + 0.1 * i for i in range(8)}
    full = {i: s[i] for i in (0, 1, 2, 4, 5, 6)}
    f, z, d, v = synthetic_obs(full, n_in=11, n_out=4, rng=rng)
    # frame 3: only 2 observations (< min 5) with a wrong ratio; frame 7: none at all
    f = np.r_[f, 3, 3]
    z = np.r_[z, 1.0, 1.0]
    d = np.r_[d, 9.0, 9.0]
    v = np.r_[v, True, True]
    # invalid observations that must not count: NaN/zero/negative depth, bad z, flag, range
    bad_f = np.array([0, 0, 1, 1, 2, 2, 9, -1])
    bad_z = np.array([1.0, 1.0, -2.0, np.inf, 1.0, 0.0, 1.0, 1.0])
    bad_d = np.array([np.nan, 0.0, 5.0, 5.0, 1e6, 5.0, 5.0, 5.0])
    bad_v = np.array([True, True, True, True, False, True, True, True])
    f, z, d, v = np.r_[f, bad_f], np.r_[z, bad_z], np.r_[d, bad_d], np.r_[v, bad_v]
    perm = rng.permutation(f.size)  # order must not matter
    out = frame_factors("c", 8, f[perm], z[perm], d[perm], v[perm], min_obs_per_frame=5)

    fs = np.array(out["frame_scale"])
    for i in full:
        assert fs[i] == pytest.approx(s[i], rel=1e-12)
    assert fs[3] == pytest.approx((s[2] + s[4]) / 2, rel=1e-12)  # linear between neighbours
    assert fs[7] == pytest.approx(s[6], rel=1e-12)  # nearest at the end
    assert out["frame_interpolated"] == [False] * 3 + [True] + [False] * 3 + [True]
    assert out["frame_num_obs"] == [15, 15, 15, 2, 15, 15, 15, 0]
    assert out["num_obs_valid"] == 6 * 15 + 2
    assert out["num_obs_total"] == f.size
    assert out["scale_max"] == pytest.approx(s[6])
    assert out["scale_min"] == pytest.approx(s[0])
    assert out["scale_median"] == pytest.approx(np.median(list(full.values())))
    assert out["num_frames_measured"] == 6
    # 11 exact ratios + 4 outliers: the median and the MAD both ignore the outliers
    assert out["frame_spread"][0] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(out["frame_spread"][3]) and np.isnan(out["frame_spread"][7])
    meas = np.array(list(full.values()))
    expect_spread = np.median(np.abs(meas - np.median(meas))) / np.median(meas)
    assert out["scale_spread"] == pytest.approx(expect_spread)


def test_frame_factors_leading_gap_and_spread() -> None:
    rng = np.random.default_rng(4)
    f, z, d, v = synthetic_obs({2: 2.0, 5: 3.5}, n_in=6, n_out=0, rng=rng)
    out = frame_factors("c", 6, f, z, d, v, min_obs_per_frame=6)
    assert out["frame_scale"] == pytest.approx([2.0, 2.0, 2.0, 2.5, 3.0, 3.5])
    assert out["frame_interpolated"] == [True, True, False, True, True, False]
    assert _mad_rel(np.array([1.0, 2.0, 3.0, 4.0, 100.0])) == pytest.approx(1.0 / 3.0)


def test_frame_factors_zero_threshold_never_measures_empty_frames() -> None:
    # min_obs_per_frame = 0 used to mark frames without any ratio as measured: NaN factors,
    # NaN scale_max/min/median (curate then failed the clip or mis-sorted the cut-offs)
    f = np.array([1, 1, 1, 3, 3])
    z = np.ones(5)
    d = np.array([2.0, 2.0, 2.0, 4.0, 4.0])
    out = frame_factors("c", 5, f, z, d, np.ones(5, bool), min_obs_per_frame=0)
    assert out["frame_scale"] == pytest.approx([2.0, 2.0, 3.0, 4.0, 4.0])
    assert out["frame_interpolated"] == [True, False, True, False, True]
    assert out["num_frames_measured"] == 2
    assert out["scale_median"] == pytest.approx(3.0)
    assert (out["scale_min"], out["scale_max"]) == (2.0, 4.0)


def test_frame_factors_failures_are_specific() -> None:
    rng = np.random.default_rng(5)
    f, z, d, v = synthetic_obs({0: 1.0, 1: 1.0}, n_in=4, n_out=0, rng=rng)
    with pytest.raises(ClipError, match=r"no frame has >= 5 valid depth/point ratios "
                                        r"\(valid: 8 of 8 observations; best frame has 4\)"):
        frame_factors("c", 3, f, z, d, v, min_obs_per_frame=5)
    d_bad = np.full_like(d, np.nan)
    with pytest.raises(ClipError, match=r"valid: 0 of 8"):
        frame_factors("c", 3, f, z, d_bad, v, min_obs_per_frame=1)
    with pytest.raises(ClipError, match="no observations"):
        frame_factors("c", 3, f[:0], z[:0], d[:0], v[:0], min_obs_per_frame=1)
    with pytest.raises(ClipError, match=r"only 2 of 3 frames .* \(need 3"):
        frame_factors("c", 3, f, z, d, v, min_obs_per_frame=1, min_measured_frames=3)


def run_align_shard(tmp_path: Path, cfg: dict[str, Any], clips: list[str], n_frames: int,
                    obs: list[dict], dep: list[dict]) -> tuple[Path, Any]:
    """Write a shard's ingest (identity poses), triangulate and depth inputs, run align on it."""
    eye = np.tile(np.eye(4)[:3].reshape(12), (n_frames, 1))
    inputs = {
        "ingest": write([manifest_row(c, eye) for c in clips], MANIFEST,
                        tmp_path / "ingest" / "s.parquet"),
        "triangulate": write(obs, OBSERVATIONS, tmp_path / "triangulate" / "s.parquet"),
        "depth": write(dep, DEPTH_SAMPLES, tmp_path / "depth" / "s.parquet"),
    }
    out = tmp_path / "align" / "s.parquet"
    task = ShardTask("align", "s", clips, inputs, str(out), cfg, str(tmp_path))
    return out, ALIGN_STAGE.process_shard(task)


def test_align_process_shard(tmp_path: Path, cfg: dict[str, Any]) -> None:
    rng = np.random.default_rng(6)
    scales = {0: 1.5, 1: 1.6, 2: 1.7}
    obs, dep = [], []
    pid = 0
    for clip, sc in (("good", scales), ("bad", {0: 1.0, 1: 1.0, 2: 1.0})):
        f, z, d, _ = synthetic_obs(sc, n_in=12, n_out=3, rng=rng)
        for fi, zi, di in zip(f, z, d, strict=True):
            obs.append({"clip_id": clip, "frame_idx": int(fi), "point_id": pid, "u": 1.0,
                        "v": 1.0, "z_cam": float(zi), "track_len": 3, "reproj_err": 0.5})
            ok = clip == "good"
            dep.append({"clip_id": clip, "frame_idx": int(fi), "point_id": pid,
                        "depth": float(di) if ok else float("nan"), "valid": ok})
            pid += 1
    dep = dep[::-1]  # not row-aligned: exercises the key join
    out, res = run_align_shard(tmp_path, cfg, ["bad", "good", "none"], 3, obs, dep)
    assert (res.n_clips, res.n_ok) == (3, 1)
    assert set(res.failures) == {"bad", "none"}
    assert "valid: 0 of 45 observations" in res.failures["bad"]
    assert "no observations" in res.failures["none"]
    table = pq.read_table(out)
    assert table.schema.equals(ALIGN)
    row = table.to_pylist()[0]
    assert row["clip_id"] == "good"
    assert row["frame_scale_raw"] == pytest.approx([1.5, 1.6, 1.7], rel=1e-6)  # float32 depth
    # +-6% between frames is more than the real variation believed (align.shrinkage.max_tau):
    # the outer frames move toward the clip factor, keeping their order, the middle one stays
    fs, sh = row["frame_scale"], row["frame_shrinkage"]
    assert 1.5 < fs[0] < 1.6 - 0.005 and 1.6 + 0.005 < fs[2] < 1.7
    assert fs[1] == pytest.approx(1.6, rel=1e-6) and row["scale_median"] == pytest.approx(1.6)
    for i in (0, 2):
        assert 0.0 < sh[i] < 1.0
        clip = row["scale_median"]
        assert np.log(fs[i] / clip) == pytest.approx(
            (1 - sh[i]) * np.log(row["frame_scale_raw"][i] / clip), rel=1e-9)
    assert row["frame_num_obs"] == [15, 15, 15]


def test_clip_failed_in_depth_and_repeated_keys_keep_the_shards_good_clips(
        tmp_path: Path, cfg: dict[str, Any]) -> None:
    """Regression: a clip that failed in the depth stage has no depth rows, so the
    row-order fast path does not apply; the key join must not trip over a (clip, frame, point)
    key repeated by an older triangulate output, and every good clip of the shard is aligned."""
    rng = np.random.default_rng(8)
    obs, dep = [], []
    pid = 0
    for clip in ("good_a", "bad", "good_b"):
        f, z, d, _ = synthetic_obs({0: 2.0, 1: 2.0}, n_in=12, n_out=0, rng=rng)
        for fi, zi, di in zip(f, z, d, strict=True):
            obs.append({"clip_id": clip, "frame_idx": int(fi), "point_id": pid, "u": 1.0,
                        "v": 1.0, "z_cam": float(zi), "track_len": 2, "reproj_err": 0.5,
                        "tri_angle": 5.0})
            if clip != "bad":  # depth failed this clip: no samples at all
                dep.append({"clip_id": clip, "frame_idx": int(fi), "point_id": pid,
                            "depth": float(di), "valid": True})
            pid += 1
    obs.append(dict(obs[0]))  # a repeated key, as triangulate wrote before schema 2
    dep.append(dict(dep[0]))
    out, res = run_align_shard(tmp_path, cfg, ["bad", "good_a", "good_b"], 2, obs, dep)
    assert (res.n_clips, res.n_ok) == (3, 2) and set(res.failures) == {"bad"}
    rows = {r["clip_id"]: r for r in pq.read_table(out).to_pylist()}
    assert set(rows) == {"good_a", "good_b"}
    for r in rows.values():
        assert r["scale_median"] == pytest.approx(2.0, rel=1e-6)
        assert r["frame_num_obs"] == [12, 12]  # the repeated key counted once


# ----------------------------------------------------------------------------- filter
def test_quantile_filter_exact_clips_both_rules_both_tails() -> None:
    n = 50  # q = 0.02 -> k = floor(1.0) = 1 per tail (the float product must not drop to 0)
    ids = [f"c{i:02d}" for i in range(n)]
    smax = 10.0 + np.arange(n)  # c00 lowest, c49 highest
    smin = 5.0 + 0.01 * np.arange(n)
    smin[10], smin[20] = 1.0, 9.0  # other clips hold the scale_min tails
    df = pd.DataFrame({"clip_id": ids, "scale_max": smax, "scale_min": smin})
    cut = compute_cutoffs(df, 0.02)
    assert cut["scale_max"] == {"n": 50, "k": 1, "low": 11.0, "high": 58.0}
    assert cut["scale_min"]["low"] == pytest.approx(5.0) and cut["scale_min"]["k"] == 1
    dropped = {r["clip_id"]: filter_rule(r, cut) for r in df.to_dict("records")}
    dropped = {c: rule for c, rule in dropped.items() if rule}
    assert dropped == {"c00": "scale_max_low", "c49": "scale_max_high",
                       "c10": "scale_min_low", "c20": "scale_min_high"}


def test_uncertainty_rule_first_and_switchable() -> None:
    df = pd.DataFrame({"clip_id": ["a", "b", "c"], "scale_max": [1.0, 2.0, 3.0],
                       "scale_min": [1.0, 2.0, 3.0], "scale_uncertainty": [0.01, 0.2, np.nan]})
    cut = compute_cutoffs(df, 0.0, 0.05)
    assert cut["max_uncertainty"] == 0.05
    rules = {r["clip_id"]: filter_rule(r, cut) for r in df.to_dict("records")}
    # b is too uncertain; c has no interval (bootstrap off): kept, as in the seed recipe
    assert rules == {"a": None, "b": "uncertainty", "c": None}
    # checked before the quantile rules: a clip breaking both is counted as "uncertainty"
    cut_q = compute_cutoffs(pd.concat([df] * 20, ignore_index=True), 0.1, 0.05)
    assert filter_rule({"scale_max": 3.0, "scale_min": 3.0, "scale_uncertainty": 0.2},
                       cut_q) == "uncertainty"
    # exactly at the limit is kept; null turns the rule off
    assert filter_rule({"scale_max": 2.0, "scale_min": 2.0, "scale_uncertainty": 0.05},
                       cut) is None
    off = compute_cutoffs(df, 0.0, None)
    assert all(filter_rule(r, off) is None for r in df.to_dict("records"))
    with pytest.raises(ConfigError, match="max_uncertainty"):
        compute_cutoffs(df, 0.0, -1.0)


def test_quantile_filter_k_zero_ties_and_rank_rule() -> None:
    assert quantile_cutoffs(np.arange(49.0), 0.02) == {"n": 49, "k": 0, "low": 0.0,
                                                        "high": 48.0}
    cut = compute_cutoffs(pd.DataFrame({"scale_max": [1.0, 1e9, 3.0],
                                        "scale_min": [1e-9, 2.0, 3.0]}), 0.02)
    for r in ({"scale_max": 1e9, "scale_min": 1e-9}, {"scale_max": 1.0, "scale_min": 3.0}):
        assert filter_rule(r, cut) is None  # k = 0: extreme values are all kept
    # ties at a cut-off are kept: values 1, 1, 2..9 with k = 1 -> low cut-off 1, none below
    v = np.array([1.0, 1.0, 2, 3, 4, 5, 6, 7, 8, 9])
    c = quantile_cutoffs(v, 0.1)
    assert (c["low"], c["high"]) == (1.0, 8.0)
    assert int(((v < c["low"]) | (v > c["high"])).sum()) == 1
    assert quantile_cutoffs(np.arange(100.0), 0.29)["k"] == 29
    assert quantile_cutoffs(np.zeros(0), 0.02)["low"] is None
    with pytest.raises(ValueError):
        quantile_cutoffs(np.arange(3.0), 0.5)
    # a bad setting is a user error: the CLI prints ConfigErrors as one line, no traceback
    with pytest.raises(ConfigError, match="curate.quantile"):
        quantile_cutoffs(np.arange(3.0), -0.1)


# ----------------------------------------------------------------------------- curate
def build_dataset(tmp_path: Path) -> tuple[dict[str, list[str]], dict[str, float],
                                           dict[str, np.ndarray]]:
    """Two shards of manifest + align outputs; 10 clips with known scale, poses in metres."""
    rng = np.random.default_rng(7)
    shards = {"shard-00000": [f"k{i}" for i in range(5)],
              "shard-00001": [f"k{i}" for i in range(5, 10)]}
    truth, metric = {}, {}
    for shard, clips in shards.items():
        man, al = [], []
        for clip in clips:
            i = int(clip[1:])
            s = 0.5 + 0.25 * i
            c2w = random_c2w(4, rng)
            truth[clip], metric[clip] = s, c2w
            man.append(manifest_row(clip, w2c_rel_from_metric(c2w, s), s,
                                    split="train" if i % 2 else "test"))
            if clip == "k3":
                continue  # failed at align
            fs = [s, s * 1.001, s * 0.999, s]
            if clip == "k0":
                fs = [s * 0.1, s * 5, s, s]  # scale_min far too low (scale_max mid-range)
            if clip == "k8":
                fs = [s * 3, s * 3.001, s * 3, s * 3]  # highest scale_min, 2nd highest max
            if clip == "k9":
                fs = [s, s * 30, s, s]  # scale_max far too high
            al.append(align_row(clip, fs))
        write(man, MANIFEST, tmp_path / "ingest" / f"{shard}.parquet")
        write(al, ALIGN, tmp_path / "align" / f"{shard}.parquet")
    return shards, truth, metric


def run_curate(tmp_path: Path, cfg: dict[str, Any]
               ) -> tuple[FakeCtx, dict[str, float], dict[str, np.ndarray], dict[str, Any]]:
    """prepare + process_shard per shard + finalize, as the runner would call them."""
    shards, truth, metric = build_dataset(tmp_path)
    cfg = {**cfg, "curate": {**cfg["curate"], "quantile": 0.125}}  # n=9 aligned -> k=1
    ctx = FakeCtx(cfg, tmp_path, shards,
                  failures={"align": {"k3": "no frame has >= 10 valid depth/point ratios"}})
    extra = ctx.prepared["curate"] = CURATE_STAGE.prepare(ctx)
    filtered: dict[str, str] = {}
    results = {}
    for shard, clips in shards.items():
        task = ShardTask("curate", shard, clips,
                         {"ingest": str(ctx.output_path("ingest", shard)),
                          "align": str(ctx.output_path("align", shard))},
                         str(ctx.output_path("curate", shard)), cfg, str(tmp_path), extra)
        results[shard] = res = CURATE_STAGE.process_shard(task)
        filtered.update(res.filtered)
    CURATE_STAGE.finalize(ctx)
    return ctx, truth, metric, {"extra": extra, "filtered": filtered, "results": results}


def test_curate_prepare_process_finalize(tmp_path: Path, cfg: dict[str, Any]) -> None:
    ctx, truth, metric, run = run_curate(tmp_path, cfg)
    assert run["extra"]["cutoffs"]["scale_max"]["k"] == 1
    assert all(not r.failures for r in run["results"].values())
    kept = [c for s in ctx.shard_ids
            for c in pq.read_table(ctx.output_path("curate", s), columns=["clip_id"])
            .column(0).to_pylist()]
    # one clip per tail and rule: lowest scale_max k1, highest k9 (k8 is the high cut-off),
    # lowest scale_min k0, highest k8 (k9's min is below k8's)
    assert run["filtered"] == {"k1": "scale_max_low", "k9": "scale_max_high",
                               "k0": "scale_min_low", "k8": "scale_min_high"}
    assert sorted(kept) == ["k2", "k4", "k5", "k6", "k7"]

    # curated rows: identity first pose, metric translations, factors passed through
    df = pd.read_parquet(tmp_path / "curated")
    assert pq.read_schema(ctx.output_path("curate", "shard-00000")).equals(CURATED)
    assert pads.dataset(tmp_path / "curated", format="parquet").count_rows() == 5
    for r in df.itertuples():
        c2w = np.stack(r.c2w_metric).reshape(-1, 4, 4)
        assert (c2w[0] == np.eye(4)).all()  # the reference pose is exactly the identity
        assert np.allclose(c2w, geo.relative_poses(metric[r.clip_id]), atol=1e-9)
        assert r.clip_scale == pytest.approx(truth[r.clip_id], rel=1e-12)
        assert r.true_scale == truth[r.clip_id]
        assert len(r.frame_scale) == len(r.w2c) == r.num_frames == 4

    out = tmp_path / "curated"
    meta = json.loads((out / "_dataset.json").read_text())
    c = meta["counts"]
    assert (c["in"], c["kept"], c["filtered"]["total"], c["failed"]["total"]) == (10, 5, 4, 1)
    assert c["pending"] == 0 and c["sums_to_input"]
    assert c["failed"]["by_reason"] == {"align: no frame has >= # valid depth/point ratios": 1}
    assert c["filtered"]["by_rule"] == {"uncertainty": 0, "scale_max_low": 1,
                                        "scale_max_high": 1, "scale_min_low": 1,
                                        "scale_min_high": 1}
    assert meta["cutoffs"]["scale_min"]["k"] == 1
    assert meta["cutoffs"] == run["extra"]["cutoffs"]  # prepare's, passed on, not recomputed
    assert meta["distribution"]["kept"]["scale_median"]["n"] == 5
    npz = np.load(out / "_compat" / "per_frame_scale.npz", allow_pickle=False)
    assert sorted(npz.files) == sorted(kept)
    assert np.allclose(npz["k2"], [1.0, 1.001, 0.999, 1.0], rtol=1e-6)
    assert (out / "_compat" / "valid_clips.txt").read_text().split() == sorted(kept)
    assert (out / "_compat" / "valid_clips_train.txt").read_text().split() == ["k5", "k7"]
    for name in ("report.html", "report_factors.png", "report_outcomes.png",
                 "report_truth.png", "report_obs_per_frame.png", "report_spread.png"):
        assert (out / "_report" / name).stat().st_size > 0
    truth_rows = meta["true_scale_check"]["rows"]
    assert len(truth_rows) == 9
    assert meta["true_scale_check"]["max_abs_rel_err"] == pytest.approx(2.0)  # k8: 3x
    assert meta["true_scale_check"]["median_abs_rel_err"] == pytest.approx(0.0, abs=1e-12)
    assert any("recovered clip_scale vs true_scale" in line for line in ctx.lines)

    # finalize is deterministic: a second run writes identical bytes (resume promise)
    before = {p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    CURATE_STAGE.finalize(ctx)
    after = {p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert before == after


def test_finalize_needs_the_cutoffs_of_prepare(tmp_path: Path, cfg: dict[str, Any]) -> None:
    """finalize reports with the cut-offs prepare computed for the run; a context without
    them (prepare not run) is an error, not a silent recomputation."""
    ctx, *_ = run_curate(tmp_path, cfg)
    ctx.prepared.clear()
    with pytest.raises(RuntimeError, match="cut-offs from prepare"):
        CURATE_STAGE.finalize(ctx)


def test_curated_dir_reads_with_ray_data(tmp_path: Path, cfg: dict[str, Any],
                                         ray_cluster: str) -> None:
    """The curated directory (shards + _dataset.json + _compat/ + _report/) reads as one
    dataset with Ray Data alone, no project code."""
    import ray

    run_curate(tmp_path, cfg)
    ds = ray.data.read_parquet(str(tmp_path / "curated"))
    rows = sorted(ds.take_all(), key=lambda r: r["clip_id"])
    assert [r["clip_id"] for r in rows] == ["k2", "k4", "k5", "k6", "k7"]
    assert np.allclose(np.asarray(rows[0]["c2w_metric"][0], dtype=float), np.eye(4).ravel())


def test_cami2v_pickled_dict_export_is_opt_in(tmp_path):
    """The exact file CamI2V's loader expects (one pickled dict under arr_0), only on request.
    Reading it back needs allow_pickle: fine here, the test wrote it itself."""
    eye = np.eye(4).ravel().tolist()
    cur = pd.DataFrame({"clip_id": ["b", "a"], "split": ["train", "test"],
                        "frame_scale": [[1.0, 2.0], [3.0, 4.0, 5.0]], "num_frames": [2, 3],
                        "c2w_metric": [[eye] * 2, [eye] * 3], "clip_scale": [1.5, 4.0],
                        "intrinsics": [[0.5, 0.8, 0.5, 0.5]] * 2, "width": 32, "height": 24})
    ccfg = Curate(compat_dtype="float32", compat_cami2v_dict=True,
                  compat_realcam_vid="realcam_vid.parquet")
    CURATE_STAGE._export_compat(tmp_path, cur, ccfg)
    legacy = tmp_path / "per_frame_scale_cami2v.npz"
    table = np.load(legacy, allow_pickle=True)["arr_0"].item()
    assert sorted(table) == ["a", "b"]
    np.testing.assert_array_equal(table["a"], np.float32([3, 4, 5]))
    first = legacy.read_bytes()
    CURATE_STAGE._export_compat(tmp_path, cur, ccfg)
    assert legacy.read_bytes() == first  # deterministic bytes, like every other output
    CURATE_STAGE._export_compat(tmp_path, cur, dataclasses.replace(ccfg, compat_cami2v_dict=False))
    assert not legacy.exists()
    safe = np.load(tmp_path / "per_frame_scale.npz", allow_pickle=False)
    np.testing.assert_array_equal(safe["b"], np.float32([1, 2]))


def test_curated_dir_holds_only_current_done_shards(tmp_path: Path, cfg: dict[str, Any]) -> None:
    """A curated shard left by an earlier plan (e.g. another shards.size) must not stay in the
    directory that users read as one table: it would duplicate clips."""
    ctx, *_ = run_curate(tmp_path, cfg)
    out = tmp_path / "curated"
    n = len(pd.read_parquet(out))
    stale = out / "shard-00099.parquet"
    stale.write_bytes(ctx.output_path("curate", "shard-00000").read_bytes())
    assert len(pd.read_parquet(out)) > n  # the symptom: duplicate clips
    CURATE_STAGE.finalize(ctx)
    assert not stale.exists()
    df = pd.read_parquet(out)
    assert len(df) == n and df["clip_id"].is_unique


def test_realcam_vid_export_matches_curated(tmp_path: Path, cfg: dict[str, Any]) -> None:
    """_compat/realcam_vid.parquet: one row per kept clip whose poses are the inverse of the
    curated c2w_metric (metric, relative to frame 0), with the curated factors and the
    normalised intrinsics."""
    from pipeline.schema import REALCAM_VID

    _, truth, metric, _ = run_curate(tmp_path, cfg)
    table = pq.read_table(tmp_path / "curated" / "_compat" / "realcam_vid.parquet")
    assert table.schema.equals(REALCAM_VID)
    vid = table.to_pandas().set_index("clip_id")
    cur = pd.read_parquet(tmp_path / "curated").set_index("clip_id")
    assert list(vid.index) == sorted(cur.index) == ["k2", "k4", "k5", "k6", "k7"]
    for clip, r in vid.iterrows():
        c = cur.loc[clip]
        w2c = np.stack(r["w2c"]).reshape(-1, 4, 4)
        c2w = np.stack(c["c2w_metric"]).reshape(-1, 4, 4)
        assert r["num_frames"] == c["num_frames"] == len(w2c) == 4
        assert np.allclose(w2c, np.linalg.inv(c2w), atol=1e-12)
        assert np.allclose(w2c[0], np.eye(4), atol=1e-12)
        rel = geo.relative_poses(metric[clip])  # metres: the truth the clip was built from
        assert np.allclose(w2c, np.linalg.inv(rel), atol=1e-9)
        assert r["camera_scale"] == pytest.approx(
            np.linalg.norm(rel[:, :3, 3], axis=1).max(), rel=1e-9)
        assert r["align_factor"] == c["clip_scale"] == pytest.approx(truth[clip], rel=1e-12)
        assert list(r["frame_scale"]) == list(c["frame_scale"])
        # normalised: fx/W, fy/H, cx/W, cy/H of a 32x24 image with fx=16, fy=19.2, c=(16, 12)
        assert (r["width"], r["height"]) == (32, 24)
        px = np.asarray(r["intrinsics"]) * [r["width"], r["height"], r["width"], r["height"]]
        assert np.allclose(px, [16.0, 19.2, 16.0, 12.0])
        assert list(r["intrinsics"]) == list(c["intrinsics"])
        assert r["split"] == c["split"]
