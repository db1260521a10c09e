"""Trainer tests: data geometry against known answers, overfitting, exact resume, Ray Train, SVD.

Everything runs on tiny synthetic curated shards written here (PNG frames of a few tens of
pixels) and tiny randomly initialised models; nothing is downloaded.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.config import load_config
from pipeline.schema import CURATED
from trainer import checkpoint as ckpt
from trainer.data import (
    CuratedVideoDataset,
    adjust_intrinsics,
    load_curated,
    make_loader,
    relative_metric_c2w,
    select_frames,
)
from trainer.plucker import plucker_embedding

torch.set_num_threads(1)


# ------------------------------------------------------------------------------ fixtures
def rot(axis: str, deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


def metric_c2w_trajectory(n: int, seed: int) -> np.ndarray:
    """(n, 4, 4) metric camera-to-world poses: a curved walk with turning cameras."""
    rng = np.random.default_rng(seed)
    out = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        out[i, :3, :3] = rot("y", 3.0 * i + rng.normal()) @ rot("x", rng.normal(0, 2))
        out[i, :3, 3] = [0.08 * i + 0.3, 0.01 * rng.normal(), 0.12 * i - 1.0]
    return out


def write_curated(
    path: Path,
    clips: list[dict[str, Any]],
) -> Path:
    """A curated Parquet (pipeline.schema.CURATED) from clip specs with metric c2w poses."""
    rows = []
    for c in clips:
        c2w = c["c2w"]
        n = len(c2w)
        w2c = np.linalg.inv(c2w)[:, :3, :4].copy()
        w2c[:, :, 3] *= c["rel_scale"]  # relative-scale storage: t_rel = t_metric * rel_scale
        fs = c.get("frame_scale", [1.0 / c["rel_scale"]] * n)
        rel0 = np.linalg.inv(c2w[0])[None] @ c2w
        rows.append({
            "clip_id": c["clip_id"], "split": c.get("split", "train"), "source_type": "images",
            "video_path": None, "frame_paths": c["frame_paths"],
            "timestamps_us": [1000 * i for i in range(n)], "intrinsics": c["intrinsics"],
            "width": c["width"], "height": c["height"], "num_frames": n,
            "w2c": w2c.reshape(n, 12).tolist(), "c2w_metric": rel0.reshape(n, 16).tolist(),
            "frame_scale": [float(x) for x in fs], "clip_scale": float(np.median(fs)),
            "frame_interpolated": [False] * n, "frame_num_obs": [100] * n,
            "scale_max": float(max(fs)), "scale_min": float(min(fs)), "scale_spread": 0.0,
            "true_scale": 1.0 / c["rel_scale"],
        })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=CURATED), path)
    return path


def write_frames(d: Path, n: int, size: tuple[int, int], seed: int) -> list[str]:
    """Smooth colour patterns moving a little per frame (learnable, not noise)."""
    d.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rng = np.random.default_rng(seed)
    ph = rng.uniform(0, 6, 3)
    paths = []
    for i in range(n):
        img = np.stack(
            [127 + 100 * np.sin(0.25 * xx + 0.15 * yy + ph[k] + 0.2 * i * (k + 1)) for k in
             range(3)], -1,
        ).astype(np.uint8)
        p = d / f"{i:04d}.png"
        cv2.imwrite(str(p), img)
        paths.append(str(p))
    return paths


def clip_spec(tmp: Path, clip_id: str, n: int, seed: int, rel_scale: float,
              size: tuple[int, int] = (40, 30), split: str = "train") -> dict[str, Any]:
    return {
        "clip_id": clip_id, "split": split, "c2w": metric_c2w_trajectory(n, seed),
        "rel_scale": rel_scale, "width": size[0], "height": size[1],
        "intrinsics": [0.9, 1.2, 0.52, 0.47],
        "frame_paths": write_frames(tmp / "frames" / clip_id, n, size, seed),
    }


DATA_CFG = {"num_frames": 16, "stride_max": 10, "eval_stride": 8, "resolution": [16, 16],
            "num_workers": 0, "split": "train"}


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two shards, three train clips (one long enough for stride 10, one at 16 frames) and a
    too-short clip that the dataset must skip."""
    tmp = tmp_path_factory.mktemp("curated")
    a = write_curated(tmp / "curated" / "shard-00000.parquet", [
        clip_spec(tmp, "c_long", 160, 1, 0.37), clip_spec(tmp, "c_exact", 16, 2, 2.5)])
    b = write_curated(tmp / "curated" / "shard-00001.parquet", [
        clip_spec(tmp, "c_mid", 40, 3, 1.3), clip_spec(tmp, "c_short", 8, 4, 1.0),
        clip_spec(tmp, "c_test", 20, 5, 0.8, split="test")])
    return [str(a), str(b)]


@functools.lru_cache(maxsize=1)
def _default_cfg() -> dict[str, Any]:
    return load_config([])


def train_cfg(**over: Any) -> dict[str, Any]:
    """The repository's default train config, shrunk for tests."""
    cfg = copy.deepcopy(_default_cfg()["train"])
    cfg.update(
        max_steps=6, batch_size=2, checkpoint_every=2, progress=False,
        cond_dropout={"image": 0.0, "camera": 0.0},
    )
    cfg["data"].update(num_frames=4, resolution=[16, 16], num_workers=0, stride_max=3)
    cfg["builtin"].update(latent_factor=2, channels=[16, 32], camera_channels=[8, 16], heads=2,
                          temb_dim=32)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg


# ------------------------------------------------------------------------------ geometry
def test_plucker_matches_independent_rays() -> None:
    rng = np.random.default_rng(0)
    H, W = 5, 7
    K = np.array([[6.0, 0, 3.1], [0, 5.0, 2.4], [0, 0, 1]])
    c2w = metric_c2w_trajectory(3, 9)
    emb = plucker_embedding(torch.tensor(K).expand(3, 3, 3), torch.tensor(c2w), H, W).numpy()
    assert emb.shape == (3, 6, H, W)
    for f in range(3):
        w2c = np.linalg.inv(c2w[f])
        centre = -w2c[:3, :3].T @ w2c[:3, 3]  # camera centre from the world-to-camera pose
        for _ in range(6):
            i, j = int(rng.integers(H)), int(rng.integers(W))
            # two points on the pixel's ray at depths 1 and 3, mapped to the world
            p = np.linalg.solve(K, [j + 0.5, i + 0.5, 1.0])
            X1 = c2w[f] @ np.append(p * 1.0, 1)
            X3 = c2w[f] @ np.append(p * 3.0, 1)
            d = (X3 - X1)[:3] / np.linalg.norm((X3 - X1)[:3])
            np.testing.assert_allclose(emb[f, 3:, i, j], d, atol=1e-10)
            # the moment is the same for any point on the ray: use X1 instead of the centre
            np.testing.assert_allclose(emb[f, :3, i, j], np.cross(X1[:3], d), atol=1e-10)
            np.testing.assert_allclose(np.cross(centre, d), np.cross(X1[:3], d), atol=1e-10)


@pytest.mark.parametrize("out_hw", [(32, 32), (24, 40), (40, 24)])
def test_resize_crop_keeps_projection(tmp_path: Path, out_hw: tuple[int, int]) -> None:
    """A bright blob drawn where a 3D point projects lands where the adjusted K projects it."""
    W, H = 90, 66
    intr = [0.7, 0.95, 0.46, 0.55]
    K = np.array([[intr[0] * W, 0, intr[2] * W], [0, intr[1] * H, intr[3] * H], [0, 0, 1]])
    X = np.array([0.31, -0.22, 2.0])
    u, v = (K @ X)[:2] / X[2]
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    blob = np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 3.0**2))
    img = np.repeat((blob * 255).round().astype(np.uint8)[..., None], 3, -1)
    paths = []
    for i in range(16):
        p = tmp_path / f"{i}.png"
        cv2.imwrite(str(p), img)
        paths.append(str(p))
    spec = {"clip_id": "blob", "c2w": np.tile(np.eye(4), (16, 1, 1)), "rel_scale": 1.0,
            "width": W, "height": H, "intrinsics": intr, "frame_paths": paths}
    f = write_curated(tmp_path / "c.parquet", [spec])
    ds = CuratedVideoDataset(load_curated([f]), {**DATA_CFG, "resolution": list(out_hw)},
                             train=False, seed=0)
    s = ds[0]
    K2 = s["K"].double().numpy()
    np.testing.assert_allclose(K2, adjust_intrinsics(K, W, H, out_hw))
    u2, v2 = (K2 @ X)[:2] / X[2]
    w = (s["video"][0, 0].double().numpy() + 1) / 2
    w = np.where(w > 0.05, w, 0)
    yy2, xx2 = np.mgrid[0 : out_hw[0], 0 : out_hw[1]] + 0.5
    cu, cv_ = (w * xx2).sum() / w.sum(), (w * yy2).sum() / w.sum()
    assert abs(cu - u2) < 0.15 and abs(cv_ - v2) < 0.15, (cu, u2, cv_, v2)
    # and the projection moved: the crop really changed K
    assert abs(u2 - u) > 1.0


def test_dataset_translations_are_metric_relative_to_condition(curated: list[str],
                                                               tmp_path: Path) -> None:
    rows = load_curated(curated, "train")
    ds = CuratedVideoDataset(rows, DATA_CFG, train=True, seed=3)
    assert set(ds.skipped) == {"c_short"}
    specs = {c: metric_c2w_trajectory(n, s) for c, n, s in
             [("c_long", 160, 1), ("c_exact", 16, 2), ("c_mid", 40, 3)]}
    conds, strides = set(), set()
    for g in range(12):
        s = ds[g]
        row = ds.rows[int(s["clip_index"])]
        gt = specs[row["clip_id"]][s["frame_indices"].numpy()]
        c = int(s["cond_index"])
        want = np.linalg.inv(gt[c])[None] @ gt  # metric, relative to the condition frame
        np.testing.assert_allclose(s["c2w"].numpy(), want, atol=1e-5)
        np.testing.assert_allclose(s["c2w"][c].numpy(), np.eye(4), atol=1e-6)
        conds.add(c)
        strides.add(int(s["stride"]))
        assert s["video"].shape == (16, 3, 16, 16)
        assert -1.0 <= float(s["video"].min()) and float(s["video"].max()) <= 1.0
    assert len(conds) > 3 and len(strides) > 2  # random condition frames and strides


def test_condition_frame_factor_is_used() -> None:
    """With per-frame factors, translations scale by the *condition* frame's factor only."""
    c2w = metric_c2w_trajectory(20, 7)
    rel = 0.5
    w2c = np.linalg.inv(c2w)[:, :3, :4].copy()
    w2c[:, :, 3] *= rel
    fs = np.linspace(1.5, 2.5, 20)  # 1/rel = 2 at the middle only
    idx = list(range(2, 18))
    for cond in (0, 5, 15):
        out = relative_metric_c2w(w2c.reshape(20, 12), fs, idx, cond)
        gt = np.linalg.inv(c2w[idx[cond]])[None] @ c2w[idx]
        np.testing.assert_allclose(out[:, :3, :3], gt[:, :3, :3], atol=1e-9)
        np.testing.assert_allclose(out[:, :3, 3], gt[:, :3, 3] * rel * fs[idx[cond]], atol=1e-9)


def test_frame_selection_strides() -> None:
    assert select_frames(16, 16, 7, 0.5) == (list(range(16)), 1)
    idx, s = select_frames(40, 16, 10, 0.0)
    assert s == 2 and idx[-1] == 30  # largest stride that fits 40 frames
    idx, s = select_frames(200, 16, 8, 1.0)
    assert s == 8 and idx[-1] == 199
    with pytest.raises(ValueError):
        select_frames(15, 16, 1, 0.0)


def test_eval_mode_first_frame_stride8(curated: list[str]) -> None:
    ds = CuratedVideoDataset(load_curated(curated, "train"), DATA_CFG, train=False, seed=0)
    s = ds[0]  # c_exact (16 frames): stride clamps to 1
    assert int(s["cond_index"]) == 0 and int(s["stride"]) == 1
    s = ds[1]  # c_long: 160 frames, stride 8 from frame 0
    assert s["frame_indices"].tolist() == list(range(0, 121, 8))
    assert int(s["cond_index"]) == 0


def test_multiworker_loader_no_duplicates(curated: list[str]) -> None:
    ds = CuratedVideoDataset(load_curated(curated, "train"), DATA_CFG, train=True, seed=1)
    seen = []
    for rank in range(2):
        loader = make_loader(ds, 3, start=6, rank=rank, world=2, num_workers=2, count=9, seed=0)
        for b in loader:
            seen += b["sample_index"].tolist()
            # a sample is a function of its index only: recompute it in this process
            ref = ds[int(b["sample_index"][0])]
            assert torch.equal(ref["video"], b["video"][0])
            assert torch.equal(ref["c2w"], b["c2w"][0])
    assert sorted(seen) == list(range(6, 6 + 18))  # disjoint across ranks and workers
    # each epoch visits every clip exactly once
    clips = [ds.plan(g)["clip"] for g in range(3 * len(ds))]
    for e in range(3):
        assert sorted(clips[e * len(ds) : (e + 1) * len(ds)]) == list(range(len(ds)))


# ------------------------------------------------------------------------------ checkpoints
def test_rng_state_roundtrip_weights_only(tmp_path: Path) -> None:
    import random

    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    st = ckpt.rng_state()
    p = ckpt.save_atomic({"rng": st, "step": 3}, tmp_path / "x.pt")
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(ckpt.load(p)["rng"])  # weights_only=True inside
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not any(n.startswith(".") for n in os.listdir(tmp_path))  # no temp file left


def test_rng_state_resumes_with_fewer_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint saved with 2 visible GPUs resumes where only 1 is visible (another node, a
    Ray worker): only existing devices get a CUDA state instead of indexing a missing one."""
    import torch.cuda.random as cuda_random

    st = ckpt.rng_state()
    st["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
    restored: list[int] = []

    def fake_set(state: torch.Tensor, device: int | str = "cuda") -> None:
        idx = device if isinstance(device, int) else 0
        if idx >= 1:  # what torch.cuda.default_generators[idx] does for a missing device
            raise IndexError(f"no CUDA device {idx}")
        restored.append(idx)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", fake_set)
    monkeypatch.setattr(cuda_random, "set_rng_state", fake_set)  # used by set_rng_state_all
    ckpt.set_rng_state(st)
    assert restored == [0]


# ------------------------------------------------------------------------------ model + loop
def test_builtin_camera_branch_starts_at_zero_and_overfits(curated: list[str]) -> None:
    from trainer.loop import build_backbone, build_noise_scheduler, diffusion_loss, step_generator

    cfg = train_cfg()
    torch.manual_seed(0)
    model = build_backbone(cfg)
    ds = CuratedVideoDataset(load_curated(curated, "train"), cfg["data"], train=True, seed=0)
    batch = next(iter(make_loader(ds, 2, start=0, count=2)))
    sched = build_noise_scheduler(cfg)
    # zero-initialised camera projections: the camera cannot change the output at step 0
    z = torch.randn(2, 4, 12, 8, 8)
    cond = model.condition(batch["video"][:, 0])
    t = torch.tensor([10, 500])
    with torch.no_grad():
        a = model(z, t, cond, batch["plucker"])
        b = model(z, t, cond, torch.randn_like(batch["plucker"]))
    assert torch.equal(a, b)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(80):
        loss = diffusion_loss(model, sched, batch, step_generator(0, 0, 0, 0), cfg,
                              torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] * 5 <= losses[0], (losses[0], losses[-1])
    # after training, the camera does change the prediction
    with torch.no_grad():
        a = model(z, t, cond, batch["plucker"])
        b = model(z, t, cond, torch.randn_like(batch["plucker"]))
    assert not torch.allclose(a, b)


def _losses(path: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, path.read_text().splitlines())]


def test_stop_and_resume_matches_uninterrupted(curated: list[str], tmp_path: Path) -> None:
    from trainer.loop import train

    cfg = train_cfg(cond_dropout={"image": 0.3, "camera": 0.3})
    cfg["data"]["num_workers"] = 1
    full = train(cfg, curated, tmp_path / "full", progress=False)
    assert full["step"] == 6
    part = train(cfg, curated, tmp_path / "part", stop_at=3, progress=False)
    assert part["step"] == 3
    assert ckpt.latest_checkpoint(tmp_path / "part" / "checkpoints").name == "step-00000003.pt"
    rest = train(cfg, curated, tmp_path / "part", progress=False)
    assert rest["steps_run"] == 3 and rest["step"] == 6
    a = _losses(tmp_path / "full" / "metrics.jsonl")
    b = _losses(tmp_path / "part" / "metrics.jsonl")
    assert [s for s, _ in b] == list(range(1, 7))
    assert a == b  # bit-identical on CPU
    sa = ckpt.load(ckpt.latest_checkpoint(tmp_path / "full" / "checkpoints"))
    sb = ckpt.load(ckpt.latest_checkpoint(tmp_path / "part" / "checkpoints"))
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k])
    # a finished run resumes to a no-op
    again = train(cfg, curated, tmp_path / "full", progress=False)
    assert again["steps_run"] == 0
    # keep_checkpoints prunes old files
    assert len(list((tmp_path / "full" / "checkpoints").glob("step-*.pt"))) == 2


def test_grad_accumulation_steps_once_per_accum(curated: list[str], tmp_path: Path) -> None:
    """accum=2: two micro-batches per optimizer step (Adam's step counter counts updates)."""
    from trainer.loop import train

    cfg = train_cfg(max_steps=2, batch_size=1, grad_accum=2, checkpoint_every=10)
    out = train(cfg, curated, tmp_path / "acc", progress=False)
    assert out["step"] == 2
    rows = [json.loads(x) for x in (tmp_path / "acc" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["lr"] == 1e-4 for r in rows)
    st = ckpt.load(ckpt.latest_checkpoint(tmp_path / "acc" / "checkpoints"))
    assert all(float(v["step"]) == 2 for v in st["optimizer"]["state"].values())


# ------------------------------------------------------------------------------ Ray Train
def test_ray_train_two_cpu_workers_and_resume(ray_cluster: str, curated: list[str],
                                              tmp_path: Path) -> None:
    from trainer.ray_train import fit

    cfg = train_cfg(max_steps=3, checkpoint_every=2)
    cfg["distributed"].update(num_workers=2, use_gpu=False, health_check_interval_s=0.05)
    out = fit(cfg, curated, tmp_path / "ray")
    assert out["step"] == 3 and out["workers"] == 2 and np.isfinite(out["loss"])
    assert Path(out["checkpoint"]).name == "step-00000003.pt"
    # same run name and storage: the second fit continues from step 3, not from scratch
    cfg["max_steps"] = 5
    out2 = fit(cfg, curated, tmp_path / "ray")
    assert out2["step"] == 5
    steps = [s for s, _ in _losses(tmp_path / "ray" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5]
    # every step consumed 2 ranks x batch 2 = 4 global samples: the loop ran with world 2
    # (that the ranks' samples are disjoint is checked in test_multiworker_loader_no_duplicates)
    rows = [json.loads(x) for x in (tmp_path / "ray" / "metrics.jsonl").read_text().splitlines()]
    assert all(round(r["samples_per_s"] * r["step_s"], 6) == 4 for r in rows)


# ------------------------------------------------------------------------------ stage + sampling
def _global_task(stage: Any, cfg: dict[str, Any], work_dir: Path, curated: list[str],
                 restart: bool = False) -> Any:
    """The task the runner gives a global stage: every done curated shard in ``inputs_all``."""
    from pipeline.stage import GLOBAL_SHARD, ShardTask

    return ShardTask(
        stage=stage.name, shard_id=GLOBAL_SHARD, clip_ids=[], inputs={},
        output=str(work_dir / stage.output_file(cfg, GLOBAL_SHARD)), cfg=cfg,
        work_dir=str(work_dir), inputs_all={"curate": list(curated)}, restart=restart,
    )


def test_train_stage_leaves_checkpoint_and_mp4(curated: list[str], tmp_path: Path) -> None:
    from stages.sample import STAGE as SAMPLE
    from stages.train import STAGE as TRAIN

    assert TRAIN.name == "train" and TRAIN.upstream == ("curate",) and TRAIN.kind == "global"
    cfg = copy.deepcopy(_default_cfg())
    cfg["progress"] = False
    cfg["train"] = train_cfg(max_steps=2)
    cfg["train"]["sampling"].update(steps=3, guidance_scale=2.0)
    res = TRAIN.process_shard(_global_task(TRAIN, cfg, tmp_path, curated))
    out = json.loads((tmp_path / "train" / "summary.json").read_text())
    assert res.stats["step"] == 2 and res.n_clips == 4
    assert out["step"] == 2 and out["n_clips"] == 4 and out["skipped_clips"] == {}
    assert (tmp_path / "train" / "checkpoints" / "step-00000002.pt").exists()
    mp4 = Path(out["sample"]["mp4"])
    assert mp4.name == "c_test.mp4"  # first clip of the test split
    cap = cv2.VideoCapture(str(mp4))
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n += 1
        assert frame.shape == (16, 32, 3)  # generated | reference, side by side
    cap.release()
    assert n == 4
    # stage=sample with an external image and a metric trajectory file
    img = tmp_path / "img.png"
    cv2.imwrite(str(img), np.full((30, 50, 3), 128, np.uint8))
    traj = tmp_path / "traj.txt"
    poses = metric_c2w_trajectory(5, 0)
    np.savetxt(traj, poses.reshape(5, 16))
    cfg["train"]["sampling"].update(image=str(img), trajectory=str(traj))
    SAMPLE.process_shard(_global_task(SAMPLE, cfg, tmp_path, curated))
    out = json.loads((tmp_path / "train" / "samples" / "sample.json").read_text())
    assert Path(out["mp4"]).name == "img.mp4" and out["frames"] == 4
    # a restart (changed curated data, force) removes the old run instead of resuming it
    cfg["train"]["sampling"]["after_train"] = False
    again = TRAIN.process_shard(_global_task(TRAIN, cfg, tmp_path, curated))
    assert again.stats["steps_run"] == 0  # same task: resumes the finished run, trains nothing
    again = TRAIN.process_shard(_global_task(TRAIN, cfg, tmp_path, curated, restart=True))
    assert again.stats["steps_run"] == 2  # restart: trained from step 0 again
    steps = [json.loads(x)["step"] for x in
             (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


class Oracle(torch.nn.Module):
    """A denoiser that knows the clean latent ``x0``: its exact eps / v prediction."""

    def __init__(self, x0: torch.Tensor, sched: Any, pred_type: str) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.x0, self.sched, self.pred_type = x0, sched, pred_type

    def condition(self, img: torch.Tensor, generator: Any = None) -> dict[str, Any]:
        return {}

    def latent_shape(self, f: int, h: int, w: int) -> tuple[int, ...]:
        return (f, 3, h, w)

    def model_timesteps(self, t: torch.Tensor, s: Any) -> torch.Tensor:
        return t

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def forward(self, z: torch.Tensor, t: torch.Tensor, *args: Any) -> torch.Tensor:
        a = self.sched.alphas_cumprod[t.long()].view(-1, 1, 1, 1, 1).to(z)
        eps = (z - a.sqrt() * self.x0) / (1 - a).sqrt()
        if self.pred_type == "epsilon":
            return eps
        if self.pred_type == "sample":
            return self.x0.expand_as(z)
        return a.sqrt() * eps - (1 - a).sqrt() * self.x0


def test_ddim_sampler_recovers_known_clean_latent() -> None:
    """With an oracle denoiser that knows x0, DDIM must land on x0 (checks the scheduler
    wiring, timestep handling and the eps/v conversions, independent of training)."""
    from trainer.loop import build_noise_scheduler
    from trainer.sampling import ddim_sample

    x0 = torch.rand(1, 3, 3, 4, 4) * 2 - 1
    for pred_type in ("epsilon", "v_prediction", "sample"):
        cfg = train_cfg(prediction_type=pred_type)
        oracle = Oracle(x0, build_noise_scheduler(cfg), pred_type)
        calls: list[tuple[int, int]] = []  # progress of the render, one call per step
        out = ddim_sample(oracle, cfg, torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 6, 4, 4),
                          steps=10, guidance_scale=1.0,
                          on_step=lambda i, n, calls=calls: calls.append((i, n)))
        torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)
        assert calls == [(i, 10) for i in range(10)]


# ------------------------------------------------------------------------------ SVD path
def tiny_svd(cfg: dict[str, Any]):  # noqa: ANN201
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from trainer.svd_backbone import SVDBackbone

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64), addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24, layers_per_block=1, cross_attention_dim=16,
        num_attention_heads=(2, 4), num_frames=4,
    )
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        block_out_channels=(32, 32), layers_per_block=1, latent_channels=4,
    )
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
        image_size=16, patch_size=8, projection_dim=16,
    ))
    return SVDBackbone(unet, vae, enc, cfg)


def test_svd_backbone_training_step(curated: list[str], tmp_path: Path) -> None:
    from trainer.loop import build_noise_scheduler, diffusion_loss, step_generator

    cfg = train_cfg(backbone="svd", prediction_type="v_prediction",
                    cond_dropout={"image": 0.5, "camera": 0.0})
    cfg["svd"].update(camera_channels=[8, 16], gradient_checkpointing=True)
    model = tiny_svd(cfg["svd"])
    model.train()
    sched = build_noise_scheduler(cfg)
    # c_noise is EDM's log(sigma)/4 for the DDPM step's sigma = s/a
    t = torch.tensor([0, 500, 999])
    abar = sched.alphas_cumprod[t].double()
    torch.testing.assert_close(torch.exp(4 * model.model_timesteps(t, sched).double()),
                               ((1 - abar) / abar).sqrt(), rtol=1e-5, atol=0)
    ds = CuratedVideoDataset(load_curated(curated, "train"), cfg["data"], train=True, seed=0)
    batch = next(iter(make_loader(ds, 2, start=0, count=2)))
    base = {k: v.clone() for k, v in model.unet.state_dict().items()}
    cond = model.condition(batch["video"][:, 0], generator=torch.Generator().manual_seed(0))
    assert cond["latent"].shape == (2, 4, 8, 8) and cond["embeds"].shape == (2, 1, 16)
    z = torch.randn(2, 4, 4, 8, 8)
    tt = model.model_timesteps(torch.tensor([100, 700]), sched)
    with torch.no_grad():
        a = model(z, tt, cond, batch["plucker"])
        b = model(z, tt, cond, None)
    assert torch.equal(a, b)  # zero-init adapter: base SVD output unchanged at step 0
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    loss = diffusion_loss(model, sched, batch, step_generator(0, 0, 0, 0), cfg,
                          torch.device("cpu"))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in model.unet.parameters())
    proj_grads = [p.grad for p in model.camera.proj.parameters()]
    assert all(g is not None for g in proj_grads) and any(g.abs().sum() > 0 for g in proj_grads)
    opt.step()
    for k, v in model.unet.state_dict().items():
        assert torch.equal(v, base[k])
    with torch.no_grad():
        a = model(z, tt, cond, batch["plucker"])
    assert not torch.allclose(a, b)  # the trained adapter now steers the frozen UNet
    assert set(model.trainable_state_dict()) == set(model.camera.state_dict())
    # sampling decodes through the temporal VAE decoder
    from trainer.sampling import ddim_sample

    model.eval()
    vid = ddim_sample(model, cfg, batch["video"][:1, 0], batch["plucker"][:1], steps=2,
                      guidance_scale=1.5)
    assert vid.shape == (1, 4, 3, 16, 16)
    # loading from a local directory in the diffusers layout (how real weights are given)
    from trainer.loop import build_backbone

    model.unet.save_pretrained(tmp_path / "svd" / "unet")
    model.vae.save_pretrained(tmp_path / "svd" / "vae")
    model.image_encoder.save_pretrained(tmp_path / "svd" / "image_encoder")
    cfg["svd"]["pretrained"] = str(tmp_path / "svd")
    loaded = build_backbone(cfg)
    loaded.load_trainable_state_dict(model.trainable_state_dict())
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(z, tt, cond, batch["plucker"]),
                                   model(z, tt, cond, batch["plucker"]))


def test_train_variant_configs_compose() -> None:
    for name, hw, backbone in (("builtin_256", [256, 256], "builtin"),
                               ("svd_320x512", [320, 512], "svd")):
        cfg = load_config([f"train={name}"])["train"]
        assert cfg["data"]["resolution"] == hw and cfg["backbone"] == backbone
        assert cfg["lr"] == 1e-4 and cfg["data"]["num_frames"] == 16


def test_dataset_reads_video_sources(tmp_path: Path) -> None:
    """Clips stored as one mp4 decode through pipeline.formats.frames like image folders do."""
    n, size = 18, (40, 30)
    path = tmp_path / "clip.mp4"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, size)
    for i in range(n):
        vw.write(np.full((size[1], size[0], 3), 15 * i, np.uint8))
    vw.release()
    spec = clip_spec(tmp_path, "vid", n, 3, 1.0, size=size)
    f = write_curated(tmp_path / "v.parquet", [spec])
    table = pq.read_table(f).to_pylist()
    table[0].update(source_type="video", video_path=str(path), frame_paths=[])
    pq.write_table(pa.Table.from_pylist(table, schema=CURATED), f)
    ds = CuratedVideoDataset(load_curated([f]), DATA_CFG, train=True, seed=0)
    s = ds[0]
    assert s["video"].shape == (16, 3, 16, 16)
    # frame i is grey 15 * i (mp4v shifts levels a little): frames come from the right indices
    means = (s["video"].mean(dim=(1, 2, 3)) + 1) * 127.5
    np.testing.assert_allclose(means.numpy(), 15 * s["frame_indices"].numpy(), atol=6)


# ------------------------------------------------------------------------------ camera input
def _prediction_spread(model: torch.nn.Module, batch: dict[str, Any],
                       cfg: dict[str, Any]) -> float:
    """How much the prediction moves when the Plücker input is replaced (0 = camera ignored)."""
    from trainer.loop import camera_input

    torch.manual_seed(1)
    z = torch.randn(2, *model.latent_shape(4, 16, 16))
    cond = model.condition(batch["video"][:, 0])
    t = torch.tensor([100, 700])
    with torch.no_grad():
        a = model(z, t, cond, camera_input(batch["plucker"], cfg))
        b = model(z, t, cond, camera_input(torch.flip(batch["plucker"], dims=[1]), cfg))
    return float((a - b).abs().max())


@pytest.mark.parametrize("camera", ["metric", "relative", "none"])
def test_trained_checkpoint_uses_camera_input(curated: list[str], tmp_path: Path,
                                              camera: str) -> None:
    """A briefly trained checkpoint's prediction must depend on the camera (the zero-initialised
    camera branch has to leave zero), except for ``train.camera: none``, whose Plücker input is
    zeroed at training and sampling. Fails if the camera input is ever dropped on the way."""
    from trainer.loop import train
    from trainer.sampling import load_model

    cfg = train_cfg(max_steps=3, lr=1e-3, camera=camera)
    train(cfg, curated, tmp_path, progress=False)
    model = load_model(cfg, ckpt.latest_checkpoint(tmp_path / "checkpoints"), "cpu")
    ds = CuratedVideoDataset(load_curated(curated, "train"), cfg["data"], train=False, seed=0)
    batch = next(iter(make_loader(ds, 2, start=0, count=2)))
    spread = _prediction_spread(model, batch, cfg)
    if camera == "none":
        assert spread == 0.0
    else:
        assert spread > 1e-4, f"camera input has no effect on the prediction ({spread})"


def test_relative_camera_keeps_written_translations(curated: list[str]) -> None:
    """``camera: relative`` trains on the clip's own (unknown-scale) poses: the same sample as
    ``metric`` divided by the condition frame's factor, rotations unchanged."""
    rows = load_curated(curated, "train")
    met = CuratedVideoDataset(rows, DATA_CFG, train=True, seed=3, camera="metric")
    rel = CuratedVideoDataset(rows, DATA_CFG, train=True, seed=3, camera="relative")
    for g in range(4):
        a, b = met[g], rel[g]
        row = met.rows[int(a["clip_index"])]
        f = row["frame_scale"][int(a["frame_indices"][int(a["cond_index"])])]
        np.testing.assert_allclose(b["c2w"][:, :3, :3], a["c2w"][:, :3, :3], atol=1e-6)
        np.testing.assert_allclose(b["c2w"][:, :3, 3] * f, a["c2w"][:, :3, 3], rtol=1e-5,
                                   atol=1e-6)
        assert torch.equal(a["video"], b["video"])
    with pytest.raises(ValueError, match="camera"):
        CuratedVideoDataset(rows, DATA_CFG, train=True, seed=3, camera="metres")


def test_sample_prediction_trains_toward_clean_latent(curated: list[str]) -> None:
    """``prediction_type: sample`` (x0) regresses the clean latent: the loss target is z0."""
    from trainer.loop import build_backbone, build_noise_scheduler, diffusion_loss, step_generator

    cfg = train_cfg(prediction_type="sample")
    model = build_backbone(cfg)
    sched = build_noise_scheduler(cfg)
    ds = CuratedVideoDataset(load_curated(curated, "train"), cfg["data"], train=True, seed=0)
    batch = next(iter(make_loader(ds, 2, start=0, count=2)))
    z0 = model.encode_video(batch["video"])

    class Oracle(torch.nn.Module):  # predicts z0 exactly: the x0 objective must be 0
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *a: Any, **k: Any) -> torch.Tensor:
            return z0

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.inner, name)

    loss = diffusion_loss(Oracle(), sched, batch, step_generator(0, 0, 0, 0), cfg,
                          torch.device("cpu"))
    assert float(loss) == 0.0


def test_residual_to_condition_starts_at_the_condition_frame() -> None:
    """``builtin.residual_to_condition``: an untrained model predicts the condition frame in
    every frame (x0), and the option refuses an objective other than ``sample``."""
    from trainer.loop import build_backbone

    cfg = train_cfg(prediction_type="sample", builtin={"residual_to_condition": True})
    model = build_backbone(cfg)
    img = torch.rand(2, 3, 16, 16) * 2 - 1
    cond = model.condition(img)
    z = torch.randn(2, *model.latent_shape(4, 16, 16))
    with torch.no_grad():
        out = model.decode(model(z, torch.tensor([5, 900]), cond, torch.randn(2, 4, 6, 16, 16)))
    torch.testing.assert_close(out, img[:, None].expand_as(out))
    with pytest.raises(ValueError, match="residual_to_condition"):
        build_backbone(train_cfg(prediction_type="epsilon",
                                 builtin={"residual_to_condition": True}))


def test_non_finite_gradient_skips_the_step_and_keeps_the_weights(
        curated: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One step whose gradient is NaN (a pose of enormous translation, say) must not turn the
    weights into NaN for good: the optimizer step is skipped and training goes on."""
    import trainer.loop as loop

    real = loop.diffusion_loss
    calls = {"n": 0}

    def poisoned(*a: Any, **k: Any) -> torch.Tensor:
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(loop, "diffusion_loss", poisoned)
    cfg = train_cfg(max_steps=4, checkpoint_every=4, lr=1e-3)
    loop.train(cfg, curated, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [np.isfinite(r["grad_norm"]) for r in rows] == [True, False, True, True]
    state = ckpt.load(ckpt.latest_checkpoint(tmp_path / "checkpoints"))["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert np.isfinite(rows[-1]["loss"])
