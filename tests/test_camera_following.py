"""A checkpoint trained here moves the camera the way it is asked, on a room it never saw.

The training clips are synthetic rooms seen along RealEstate10K-like moves, written as curated
rows (metric factors = the truth, so this tests the trainer, not the pipeline). The held-out
room's asked trajectories are in metres; the generated videos' cameras are fitted against
renders of the known room (``pipeline.evaluation.pose_fit``, the instrument of the MSA bench).
Trained the same way with ``train.camera: none`` the first asked walk came out at cosine 0.32
to the asked displacement, so the test does fail on a model that ignores the camera.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from test_trainer import train_cfg, write_curated

from pipeline.evaluation.pose_fit import FitSettings, PoseFitter
from pipeline.geometry.camera_metrics import relative_to_first
from pipeline.synthetic.ablation import make_test_case
from pipeline.synthetic.scenes import intrinsics_matrix, make_scene, make_trajectory, render
from trainer.data import adjust_intrinsics, resize_crop
from trainer.loop import train
from trainer.plucker import plucker_embedding
from trainer.sampling import ddim_sample, load_model, to_uint8

ROOT = Path(__file__).resolve().parents[1]
BENCH = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "bench" / "msa.yaml"),
                               resolve=True)
SIZE = (64, 48)  # rendered training frames (width, height)
HW = (32, 32)  # the model's frames
N_FRAMES = 10
TRAIN_KINDS = ("forward", "pan", "walk", "orbit")


def _training_clips(tmp: Path, n: int) -> list[str]:
    w, h = SIZE
    K = intrinsics_matrix(w, h, float(BENCH["data"]["fov_deg"]))
    rng = np.random.default_rng(5)
    specs = []
    for i in range(n):
        seed = 4242 + 7 * i
        scene = make_scene(seed)
        w2c = make_trajectory(TRAIN_KINDS[i % len(TRAIN_KINDS)], N_FRAMES, scene, seed + 1)
        d = tmp / "frames" / f"clip{i}"
        d.mkdir(parents=True)
        paths = []
        for j, p in enumerate(w2c):
            rgb, _ = render(scene, K, p, w, h)
            paths.append(str(d / f"{j:04d}.png"))
            cv2.imwrite(paths[-1], rgb[..., ::-1])
        specs.append({
            "clip_id": f"clip{i}", "c2w": np.linalg.inv(w2c), "width": w, "height": h,
            "rel_scale": float(10 ** rng.uniform(-1, 1)), "frame_paths": paths,
            "intrinsics": [K[0, 0] / w, K[1, 1] / h, K[0, 2] / w, K[1, 2] / h],
        })
    return [str(write_curated(tmp / "curated" / "shard-00000.parquet", specs))]


def _cfg(camera: str, steps: int) -> dict[str, Any]:
    cfg = train_cfg(max_steps=steps, lr=1e-3, camera=camera, prediction_type="sample",
                    batch_size=4, checkpoint_every=steps, keep_checkpoints=1)
    cfg["data"].update(num_frames=8, resolution=list(HW), stride_max=1, eval_stride=1)
    bench = dict(BENCH["train"]["builtin"])
    warp = {**cfg["builtin"]["warp_prior"], **bench.pop("warp_prior"), "enabled": True}
    cfg["builtin"].update(bench, warp_prior=warp)
    cfg["cpu_threads"] = 1
    return cfg


def _realised(model: torch.nn.Module, cfg: dict[str, Any], case: Any, c2w: np.ndarray
              ) -> np.ndarray:
    """The fitted (F, 4, 4) relative cameras of the video generated along ``c2w``."""
    H, W = case.frames.shape[1:3]
    K = adjust_intrinsics(case.K, W, H, HW)
    cond = torch.from_numpy(resize_crop(case.frames[0], HW)).permute(2, 0, 1).float() / 127.5 - 1
    pl = plucker_embedding(torch.from_numpy(K).expand(len(c2w), 3, 3), torch.from_numpy(c2w),
                           *HW).float()
    video = ddim_sample(model, cfg, cond[None], pl[None], 10, 1.0, 0.0, 0)
    frames = to_uint8(video[0])
    fitter = PoseFitter(case.scene, K, HW[1], HW[0], FitSettings.from_dict(BENCH["pose_fit"]))
    world, _ = fitter.fit_video(frames, case.world_c2w0)
    return relative_to_first(world)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("follow")
    files = _training_clips(tmp, 6)
    cfg = _cfg("metric", 100)
    train(cfg, files, tmp / "run", progress=False)
    model = load_model(cfg, sorted((tmp / "run" / "checkpoints").glob("step-*.pt"))[-1], "cpu")
    return {"model": model, "cfg": cfg}


def test_trained_checkpoint_moves_the_camera_the_asked_way(trained: dict[str, Any]) -> None:
    data = {**BENCH["data"], "width": SIZE[0], "height": SIZE[1]}
    case = make_test_case(data, {**BENCH["test"], "n_frames": 8, "kinds": ["walk"]}, 0)
    # asked: the case's own walk, and the same walk mirrored sideways (x -> -x)
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    mirrored = mirror @ case.c2w @ mirror
    for asked in (case.c2w, mirrored):
        fit = _realised(trained["model"], trained["cfg"], case, asked)
        a, b = fit[-1, :3, 3], asked[-1, :3, 3]
        cos = float(a @ b) / float(np.linalg.norm(a) * np.linalg.norm(b))
        assert cos > 0.7, f"realised displacement {a} against asked {b} (cos {cos:.2f})"
