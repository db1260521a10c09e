"""Synthetic clip sets for the metric-scale ablation (``bench/bench_msa.py``).

Why: to measure what metric scale buys a camera-conditioned video model, the training clips
must carry *no* metric information in their written poses (as RealEstate10K's SLAM poses do
not), while the truth stays known. Every training clip is a different random room seen along
a RealEstate10K-like move (``pipeline.synthetic.scenes.TRAJECTORY_KINDS``: tens of centimetres
to metres of travel), written with its translations multiplied by a log-uniform random factor.
Test cases are held-out rooms (a disjoint seed range) with trajectories in metres; their
ground-truth video is rendered along the same poses the model is asked to follow.

Everything is a pure function of the settings (``conf/bench/msa.yaml``), so two runs with the
same settings see identical data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.synthetic.scenes import (
    Scene,
    intrinsics_matrix,
    make_scene,
    make_trajectory,
    render,
)


def training_definition(data: dict[str, Any], n_clips: int, seed: int) -> dict[str, Any]:
    """A sample definition (``data_manifests/sample.yaml`` format) of ``n_clips`` training clips.

    Kinds cycle through ``data.kinds`` (so every move type is equally present whatever the
    count); ``rel_scale = 10 ** U(rel_scale_log10)`` per clip, drawn from ``seed``.
    """
    rng = np.random.default_rng([int(seed), 0xAB1A])
    lo, hi = (float(x) for x in data["rel_scale_log10"])
    kinds = list(data["kinds"])
    base = int(data["train_seed_base"])
    clips = []
    for i in range(int(n_clips)):
        clips.append({
            "clip_id": f"msa_train_{i:04d}",
            "split": "train",
            "seed": base + 7 * i,  # make_trajectory uses seed + 1: keep rooms far apart
            "kind": kinds[i % len(kinds)],
            "rel_scale": float(10.0 ** rng.uniform(lo, hi)),
        })
    return {
        "defaults": {"n_frames": int(data["n_frames"]), "width": int(data["width"]),
                     "height": int(data["height"]), "fov_deg": float(data["fov_deg"])},
        "clips": clips,
    }


@dataclass
class TestCase:
    """A held-out room, a metric trajectory in it and its ground-truth frames."""

    name: str
    kind: str
    scene: Scene
    K: np.ndarray  # pixel intrinsics of ``frames`` (the rendered size)
    c2w: np.ndarray  # (F, 4, 4) metric camera-to-world relative to frame 0
    world_c2w0: np.ndarray  # (4, 4) frame 0's camera-to-world in the scene's world frame
    frames: np.ndarray  # (F, H, W, 3) uint8 renders along ``c2w``
    depth0: np.ndarray  # (H, W) exact z-depth of frame 0, metres


def make_test_case(data: dict[str, Any], test: dict[str, Any], index: int) -> TestCase:
    """Test case ``index``: room ``test_seed_base + 7 * index``, kind cycled from ``test.kinds``,
    rendered at the training frames' size (the model's input goes through the same resize)."""
    kinds = list(test["kinds"])
    kind = kinds[index % len(kinds)]
    seed = int(data["test_seed_base"]) + 7 * int(index)
    scene = make_scene(seed)
    w2c = make_trajectory(kind, int(test["n_frames"]), scene, seed + 1)
    width, height = int(data["width"]), int(data["height"])
    K = intrinsics_matrix(width, height, float(data["fov_deg"]))
    frames, depth0 = [], None
    for i, p in enumerate(w2c):
        rgb, depth = render(scene, K, p, width, height)
        frames.append(rgb)
        if i == 0:
            depth0 = depth
    c2w_world = np.linalg.inv(w2c)
    rel = np.linalg.inv(c2w_world[0])[None] @ c2w_world
    return TestCase(f"msa_test_{index:03d}_{kind}", kind, scene, K, rel, c2w_world[0],
                    np.stack(frames), depth0)
