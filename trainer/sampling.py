"""DDIM sampling: a clip from one image and a metric camera trajectory, written as mp4.

The trajectory is a list of camera-to-world poses in metres relative to the first (condition)
frame, the same convention the dataset trains on, so a trajectory measured in the real world
(or taken from a curated clip) can be replayed at its true scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from diffusers import DDIMScheduler

from pipeline import storage
from pipeline.io import atomic_path
from trainer import checkpoint as ckpt
from trainer.data import (
    CuratedVideoDataset,
    adjust_intrinsics,
    load_curated,
    resize_crop,
)
from trainer.inference.sns import NoiseShaping
from trainer.loop import build_backbone, build_noise_scheduler, camera_input
from trainer.plucker import plucker_embedding


@torch.no_grad()
def ddim_sample(
    model: torch.nn.Module,
    tcfg: dict[str, Any],
    cond_image: torch.Tensor,
    plucker: torch.Tensor,
    steps: int,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    seed: int = 0,
    shaping: NoiseShaping | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """(B, 3, H, W) image in [-1, 1] + (B, F, 6, H, W) Plücker -> (B, F, 3, H, W) in [-1, 1].

    Classifier-free guidance is on the image condition (the model was trained with it dropped
    at ``cond_dropout.image``); the camera stays on in both branches. ``shaping`` turns on
    scene-constrained noise shaping (``trainer.inference.sns``); without it the sampler is
    exactly the plain one (same draws, same result). ``train.camera: none`` zeroes the Plücker
    input, as in training. ``on_step(i, n)`` is called after each of
    the ``n`` denoising steps (progress for a render that takes a while).
    """
    device = next(model.parameters()).device
    ddim = DDIMScheduler.from_config(build_noise_scheduler(tcfg).config)
    ddim.set_timesteps(int(steps), device=device)
    b, f = plucker.shape[:2]
    h, w = cond_image.shape[-2:]
    gen = torch.Generator().manual_seed(int(seed))
    cond_image = cond_image.to(device)
    plucker = camera_input(plucker, tcfg).to(device)
    cond = model.condition(cond_image, generator=gen)
    z = torch.randn((b, *model.latent_shape(f, h, w)), generator=gen).to(device)
    z = z * ddim.init_noise_sigma
    ones = torch.ones(b, device=device)
    n_steps = len(ddim.timesteps)
    for i, t in enumerate(ddim.timesteps):
        if shaping is not None:
            z = shaping.at_level(z, t, ddim)
        tt = model.model_timesteps(t.expand(b).to(device), ddim)
        pred = model(z, tt, cond, plucker, ones, ones)
        if guidance_scale != 1.0:
            unc = model(z, tt, cond, plucker, torch.zeros_like(ones), ones)
            pred = unc + guidance_scale * (pred - unc)
        z = ddim.step(pred, t, z, eta=eta, generator=gen if eta > 0 else None).prev_sample
        if on_step is not None:
            on_step(i, n_steps)
    if shaping is not None:
        z = shaping.at_clean(z, ddim)
    return model.decode(z)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [-1, 1] -> (F, H, W, 3) uint8."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def write_mp4(frames: np.ndarray, path: str | Path, fps: float) -> Path:
    """RGB uint8 (F, H, W, 3) -> mp4 (mp4v), atomically (temp name then rename)."""
    path = storage.path(path)
    h, w = frames.shape[1:3]
    with atomic_path(path, suffix=".mp4") as tmp:  # the encoder picks the container by name
        vw = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
        if not vw.isOpened():
            raise OSError(f"cannot open a video writer for {tmp}")
        try:
            for fr in frames:
                vw.write(cv2.cvtColor(np.ascontiguousarray(fr), cv2.COLOR_RGB2BGR))
        finally:
            vw.release()
    return path


def load_trajectory(path: str | Path) -> np.ndarray:
    """Lines of 16 numbers (row-major c2w, metres) -> (N, 4, 4) relative to the first pose."""
    mats = np.loadtxt(path, dtype=np.float64, ndmin=2).reshape(-1, 4, 4)
    return np.linalg.inv(mats[0])[None] @ mats


def check_sampling_inputs(tcfg: dict[str, Any]) -> None:
    """Read the own condition image and trajectory file of ``train.sampling`` now: a bad one
    stops the run on the driver with one ``ConfigError`` line, before any stage runs, instead of
    failing the sample shard (with a traceback in its log) after training. Called by
    ``stages.train.check_sampling`` once the settings themselves are checked."""
    from pipeline.errors import ConfigError
    from trainer.inference import preview as pv
    from trainer.inference.trajectory import TrajectoryError
    from trainer.inference.trajectory import load_trajectory as load_traj

    s = tcfg["sampling"]
    if s.get("image"):
        try:
            pv.read_condition_image(s["image"], int(s["min_image_side"]), int(s["max_image_side"]))
        except pv.ImageError as exc:
            raise ConfigError(f"train.sampling.image: {exc}") from None
    if s.get("trajectory"):
        scale = float(s.get("trajectory_scale") or 0.0)
        try:  # a RealEstate10K file's own scale may come from the curated data: checked later
            load_traj(s["trajectory"], re10k_scale=scale if scale > 0 else 1.0)
        except TrajectoryError as exc:
            raise ConfigError(f"train.sampling.trajectory: {exc}") from None


def load_model(tcfg: dict[str, Any], checkpoint_path: str | Path, device: str,
               state: dict[str, Any] | None = None) -> torch.nn.Module:
    """The model of a checkpoint (``state``: that checkpoint already loaded)."""
    model = build_backbone(tcfg)
    state = ckpt.load(checkpoint_path) if state is None else state
    model.load_trainable_state_dict(state["model"])
    return model.to(device).eval()


def load_latest_model(tcfg: dict[str, Any], ckpt_dir: Any, device: str
                      ) -> tuple[Any, torch.nn.Module]:
    """(path, model) of the newest checkpoint that loads (a damaged newest one falls back to
    the previous with a warning); ``FileNotFoundError`` when none does."""
    found = ckpt.load_latest(ckpt_dir)
    if found is None:
        raise FileNotFoundError(f"no readable checkpoint under {ckpt_dir}: run stage=train first")
    path, state = found
    return path, load_model(tcfg, path, device, state)


def scene_inputs(cfg: dict[str, Any]) -> dict[str, Any]:
    """What ``sample_to_mp4`` needs of the rest of the run config to find the condition image's
    depth: the depth backend section and the dataset's depth folder (if any).

    ``train.sampling.depth_model`` picks a Depth Anything V2 metric checkpoint for the condition
    image alone, with the other settings at their defaults (``pipeline.settings.DepthModel``):
    switching the run's ``depth`` group instead would make the whole depth stage stale and
    recompute it.
    """
    depth_cfg = cfg.get("depth")
    model = ((cfg.get("train") or {}).get("sampling") or {}).get("depth_model")
    if model:
        from pipeline.settings import DepthModel, defaults

        depth_cfg = defaults(DepthModel)
        depth_cfg["model"] = str(model)
    return {"depth_cfg": depth_cfg,
            "depth_root": (cfg.get("dataset") or {}).get("depth_root")}


def _write_png(rgb: np.ndarray, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:  # the encoder picks the format by name
        if not cv2.imwrite(str(tmp), cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {tmp}")
    return path


@dataclass
class _Source:
    """The condition of one sample: the image (at its own resolution, with its pixel K and
    where K came from) and, for a curated clip, its own trajectory, real frames and the
    model-ready tensors of its first frames."""

    name: str
    rgb0: np.ndarray
    K0: np.ndarray
    k_src: str
    cond: torch.Tensor
    full_wh: tuple[int, int] | None = None
    own_traj: Any = None
    real_full: np.ndarray | None = None
    dataset_file: Any = None
    plucker: torch.Tensor | None = None
    reference: torch.Tensor | None = None


def _image_source(s: dict[str, Any], hw: tuple[int, int]) -> _Source:
    """``sampling.image`` as the condition (it needs a trajectory file or preset)."""
    from trainer.inference import preview as pv

    if not (s.get("trajectory") or s.get("trajectory_preset")):
        raise ValueError("sampling.image needs sampling.trajectory (a trajectory file) or "
                         "sampling.trajectory_preset (dolly|orbit|pan|zoom)")
    rgb0, full_wh = pv.read_condition_image(s["image"], int(s["min_image_side"]),
                                            int(s["max_image_side"]))
    h0, w0 = rgb0.shape[:2]
    K0, k_src = pv.image_intrinsics(s["image"], w0, h0, s.get("intrinsics"),
                                    float(s["fov_deg"]))
    img = resize_crop(rgb0, hw)
    cond = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 127.5 - 1
    return _Source(Path(str(s["image"])).stem, rgb0, K0, k_src, cond, full_wh=full_wh)


def _clip_source(tcfg: dict[str, Any], data_files: list[str | Path] | None,
                 all_rows: list[dict[str, Any]], depth_root: str | None) -> _Source:
    """The first curated clip of ``sampling.split`` (any split when that one is empty, or
    ``sampling.clip_id``): its first frame, metric trajectory and real frames."""
    from pipeline.formats.frames import read_frames
    from trainer.data import pixel_intrinsics, relative_metric_c2w
    from trainer.inference import preview as pv
    from trainer.inference.trajectory import Trajectory

    s = tcfg["sampling"]
    rows = load_curated(data_files or [], s["split"] or None)
    if not rows:  # fall back to any split: a tiny dataset may have no test clip
        rows = all_rows
    if s.get("clip_id"):
        rows = [r for r in rows if r["clip_id"] == s["clip_id"]]
    ds = CuratedVideoDataset(rows, tcfg["data"], train=False, seed=int(tcfg["seed"]))
    item = ds[0]
    row = ds.rows[0]
    idx = [int(i) for i in item["frame_indices"]]
    frames = read_frames(row, idx)
    rgb0 = frames[idx[0]]
    h0, w0 = rgb0.shape[:2]
    own_traj = Trajectory(
        relative_metric_c2w(row["w2c"], np.asarray(row["frame_scale"]), idx, 0),
        np.ones(len(idx)),
        source={"kind": "curated", "clip_id": row["clip_id"], "frame_indices": idx},
    )
    return _Source(
        row["clip_id"], rgb0, pixel_intrinsics(row["intrinsics"], w0, h0), "curated clip",
        item["video"][:1], own_traj=own_traj, real_full=np.stack([frames[i] for i in idx]),
        dataset_file=pv.dataset_depth_path(row, idx[0], depth_root),
        plucker=item["plucker"][None], reference=item["video"],
    )


def _condition_depth(s: dict[str, Any], src: _Source, depth_cfg: dict[str, Any] | None,
                     device: str) -> tuple[np.ndarray | None, str | None, str]:
    """(depth, its source, why skipped) of the condition image, when a preview, noise shaping
    or a preset needs it; missing depth is an error only for the latter two."""
    from trainer.inference import preview as pv

    shaping_on = bool(s["noise_shaping"])
    depth, depth_src, skipped = None, None, "train.sampling.preview=false"
    if bool(s["preview"]) or shaping_on or s.get("trajectory_preset"):
        try:
            depth, depth_src = pv.condition_depth(src.rgb0, s.get("depth") or None,
                                                  src.dataset_file, depth_cfg, device,
                                                  src.full_wh)
        except pv.DepthUnavailable as exc:
            if shaping_on or s.get("trajectory_preset"):
                raise
            skipped = str(exc)
    return depth, depth_src, skipped


def _report(s: dict[str, Any], src: _Source, checkpoint_path: Any, traj: Any,
            K_model: np.ndarray, hw: tuple[int, int]) -> dict[str, Any]:
    """The sample's JSON record before the preview: trajectory, intrinsics, SNS, sampler."""
    h0, w0 = src.rgb0.shape[:2]
    return {
        "name": src.name,
        "checkpoint": str(checkpoint_path),
        "trajectory": traj.to_dict(),
        "intrinsics": {"source": src.k_src, "condition_image": src.K0.tolist(),
                       "condition_size_wh": [w0, h0],
                       "original_size_wh": list(src.full_wh or (w0, h0)),
                       "model": K_model.tolist(),
                       "model_size_hw": list(hw)},
        "sns": {"noise_shaping": bool(s["noise_shaping"]),
                "t_threshold": float(s["sns_t_threshold"]),
                "edge_k": int(s["sns_edge_k"]), "latent_margin": int(s["sns_latent_margin"]),
                "splat_size": int(s["splat_size"]),
                "render_depth_tol": float(s["render_depth_tol"])},
        "sampler": {"steps": int(s["steps"]), "eta": float(s["eta"]), "seed": int(s["seed"]),
                    "guidance_scale": float(s["guidance_scale"])},
    }


def _write_qa(s: dict[str, Any], src: _Source, cloud: Any, traj: Any, rkw: dict[str, Any],
              sdir: Path) -> tuple[dict[str, Any], Path]:
    """The preview at the clip's resolution against its real frames: the QA numbers and a
    PNG strip (real | preview | usable mask) of the last frame of the first QA frames."""
    from trainer.inference import preview as pv

    h0, w0 = src.rgb0.shape[:2]
    real_full = src.real_full
    qa_prev = pv.render_preview(cloud, traj, src.K0, h0, w0, int(s["splat_size"]),
                                int(s["sns_edge_k"]), **rkw)
    qa = pv.qa_against_real(qa_prev, real_full, int(s["qa_frames"]))
    k = qa["first_frames"] - 1
    strip = np.concatenate([real_full[k],
                            pv.to_uint8_frames(qa_prev.render.image[k:k + 1])[0],
                            pv.mask_frames(qa_prev.usable[k:k + 1])[0]], axis=1)
    return qa, _write_png(strip, sdir / f"{src.name}.qa.png")


def _write_preview(model: torch.nn.Module, s: dict[str, Any], src: _Source, traj: Any,
                   K_model: np.ndarray, hw: tuple[int, int], depth: np.ndarray,
                   depth_src: str | None, device: str, report: dict[str, Any], sdir: Path,
                   ) -> tuple[Any, dict[str, str]]:
    """Point cloud of the condition image, its preview along the trajectory (mp4, usable mask,
    QA against real frames, PLY) and the noise shaping it gives; fills ``report``. Returns
    (shaping or None, written paths by kind)."""
    from trainer.inference import preview as pv
    from trainer.inference.scene import point_cloud, save_ply
    from trainer.inference.sns import prepare_shaping

    shaping, out = None, {}
    cloud = point_cloud(src.rgb0, depth, src.K0).to(device)
    rkw = {"chunk_frames": int(s["render_chunk_frames"]),
           "depth_tol": float(s["render_depth_tol"])}
    prev = pv.render_preview(cloud, traj, K_model, *hw, int(s["splat_size"]),
                             int(s["sns_edge_k"]), **rkw)
    if bool(s["noise_shaping"]):
        shaping = prepare_shaping(model, (prev.render.image * 2 - 1)[None], prev.usable[None],
                                  float(s["sns_t_threshold"]), int(s["sns_latent_margin"]),
                                  int(s["seed"]))
        report["sns"]["latent_mask_coverage"] = [
            round(float(x), 4) for x in shaping.mask[0, :, 0].flatten(1).mean(1).tolist()]
    report["preview"] = {
        "depth_source": depth_src,
        "scene_depth_m": float(np.median(depth[np.isfinite(depth) & (depth > 0)])),
        "points": len(cloud),
        "mask_coverage_model": [round(float(x), 4) for x in
                                prev.usable.flatten(1).float().mean(1).tolist()],
    }
    out["preview"] = str(write_mp4(pv.to_uint8_frames(prev.render.image),
                                   sdir / f"{src.name}.preview.mp4", float(s["fps"])))
    out["mask"] = str(write_mp4(pv.mask_frames(prev.usable), sdir / f"{src.name}.mask.mp4",
                                float(s["fps"])))
    if src.real_full is not None:
        report["preview"]["qa_vs_real"], qa_png = _write_qa(s, src, cloud, traj, rkw, sdir)
        out["qa_png"] = str(qa_png)
    if bool(s["save_point_cloud"]):
        out["ply"] = str(save_ply(cloud, sdir / f"{src.name}.ply"))
    return shaping, out


def _fit_trajectory(s: dict[str, Any], src: _Source, depth: np.ndarray | None, n: int,
                    curated_scale: dict[str, float], hw: tuple[int, int],
                    ) -> tuple[Any, np.ndarray, torch.Tensor]:
    """(trajectory of ``n`` frames, model-resolution K, Plücker input). A trajectory file or
    preset replaces a curated clip's own, and then its real frames no longer apply (cleared
    in ``src``)."""
    from trainer.inference import preview as pv

    chosen = pv.choose_trajectory(s, depth, n, curated_scale)
    if chosen is not None and src.own_traj is not None:
        src.reference, src.real_full, src.plucker = None, None, None
    traj = (chosen or src.own_traj).fit(n)
    if src.real_full is not None:
        src.real_full = src.real_full[:n]
    h0, w0 = src.rgb0.shape[:2]
    K_model = adjust_intrinsics(src.K0, w0, h0, hw)
    plucker = src.plucker
    if plucker is None:
        plucker = plucker_embedding(torch.from_numpy(traj.intrinsics(K_model)),
                                    torch.from_numpy(traj.c2w), *hw).float()[None]
    return traj, K_model, plucker


def sample_to_mp4(
    tcfg: dict[str, Any],
    out_dir: str | Path,
    data_files: list[str | Path] | None,
    device: str = "cpu",
    checkpoint_path: str | Path | None = None,
    depth_cfg: dict[str, Any] | None = None,
    depth_root: str | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Generate one clip with the latest checkpoint and write ``<out_dir>/samples/<name>.*``.

    Source: ``sampling.image`` with ``sampling.trajectory`` (file) or
    ``sampling.trajectory_preset``, otherwise the first frame and metric trajectory of a curated
    clip (the generated frames are written next to the real ones, left and right, for a visual
    check; a trajectory file or preset replaces the clip's own). When the condition image's
    depth is available (``trainer.inference.preview``), the preview along the trajectory and its
    usable mask are written too, with a JSON of the trajectory, intrinsics, SNS settings and,
    for a curated clip's own trajectory, per-frame preview PSNR and coverage against its real
    frames (clip resolution); ``sampling.noise_shaping`` shapes the early denoising steps by
    that preview (``trainer.inference.sns``).
    """
    from pipeline.io import write_json_atomic

    s = tcfg["sampling"]
    out_dir = storage.path(out_dir)
    if checkpoint_path:
        model = load_model(tcfg, checkpoint_path, device)
    else:
        checkpoint_path, model = load_latest_model(tcfg, out_dir / "checkpoints", device)
    hw = (int(tcfg["data"]["resolution"][0]), int(tcfg["data"]["resolution"][1]))
    n = int(tcfg["data"]["num_frames"])
    all_rows = load_curated(data_files or [])
    curated_scale = {r["clip_id"]: float(r["frame_scale"][0]) for r in all_rows}
    src = (_image_source(s, hw) if s.get("image")
           else _clip_source(tcfg, data_files, all_rows, depth_root))
    depth, depth_src, skipped = _condition_depth(s, src, depth_cfg, device)
    traj, K_model, plucker = _fit_trajectory(s, src, depth, n, curated_scale, hw)
    sdir = out_dir / "samples"
    sdir.mkdir(parents=True, exist_ok=True)
    report = _report(s, src, checkpoint_path, traj, K_model, hw)
    shaping, out = None, {}
    if depth is not None:
        shaping, out = _write_preview(model, s, src, traj, K_model, hw, depth, depth_src,
                                      device, report, sdir)
    else:
        report["preview"] = {"skipped": skipped}
    video = ddim_sample(
        model, tcfg, src.cond, plucker, int(s["steps"]), float(s["guidance_scale"]),
        float(s["eta"]), int(s["seed"]), shaping=shaping, on_step=on_step,
    )[0].cpu()
    frames_u8 = to_uint8(video)
    if src.reference is not None:
        frames_u8 = np.concatenate([frames_u8, to_uint8(src.reference[:n])], axis=2)
    path = write_mp4(frames_u8, sdir / f"{src.name}.mp4", float(s["fps"]))
    json_path = sdir / f"{src.name}.json"
    report["outputs"] = {"mp4": path.name, **{k: Path(v).name for k, v in out.items()}}
    write_json_atomic(report, json_path, allow_nan=False)  # strict: other tools read it
    return {"mp4": str(path), "frames": int(len(frames_u8)), "checkpoint": str(checkpoint_path),
            "source": src.name, "json": str(json_path), **out}
