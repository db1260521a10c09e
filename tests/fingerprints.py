"""Every stage's config fingerprint for a few configs: what ``tests/test_settings.py`` compares
with the values recorded before a settings change. Uses only what every version of the project
has (``load_config``, the registry, ``stable_hash``), so it runs on an older checkout too::

    cd /tmp && PYTHONPATH=/path/to/checkout python -m tests.fingerprints
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline import registry
from pipeline.config import load_config
from pipeline.io import stable_hash

ROOT = Path(__file__).resolve().parents[1]

#: the config overrides whose stage fingerprints were recorded
FINGERPRINT_SETS = {
    "sample": [],
    "re10k": ["dataset=re10k", "dataset.root=data"],
    "rgbd": ["dataset=rgbd", "dataset.root=data"],
    "nerfstudio": ["dataset=nerfstudio", "dataset.root=data"],
    "da2_metric": ["depth=da2_metric"],
    "svd": ["train=svd_320x512"],
    "builtin_256": ["train=builtin_256"],
    "eval_dataset": ["evaluate.source=dataset"],
    "eval_no_depth": ["evaluate.metric_depth=none"],
    "eval_videos": ["evaluate.videos=v", "evaluate.trajectories=t"],
    "edited": ["triangulate.frames.max_n=16", "align.min_track_len=3", "curate.quantile=0.05",
               "train.sampling.steps=5", "ingest.verify_frames=ends"],
}


def stage_fingerprints(cfg: dict[str, Any]) -> dict[str, str]:
    """Stage name -> hash of its name, version and ``config_view`` (what the runner's
    fingerprint takes from the config), with the project root and the current directory
    written as placeholders so the values do not depend on this machine."""
    cwd = os.getcwd()
    out = {}
    for name, stage in sorted(registry.stages().items()):
        text = json.dumps({"stage": name, "version": stage.version,
                           "config": stage.config_view(cfg)})
        out[name] = stable_hash(json.loads(text.replace(str(ROOT), "<ROOT>")
                                           .replace(cwd, "<CWD>")))
    return out


def recorded_values() -> dict[str, str]:
    """One hash per config of ``FINGERPRINT_SETS`` over its stages' fingerprints."""
    return {name: stable_hash(stage_fingerprints(load_config(overrides)))
            for name, overrides in FINGERPRINT_SETS.items()}


if __name__ == "__main__":
    print(json.dumps(recorded_values(), indent=1))
