"""Atomic checkpoints that load with ``torch.load(weights_only=True)``.

Everything is stored as tensors and plain Python types: the RNG states of numpy and ``random``
are converted to tensors/ints (their native tuples hold numpy arrays, which the safe unpickler
refuses). A checkpoint is written to a temp name in the same directory and ``os.replace``d, so a
crash leaves either the previous checkpoint or the new one, never half a file.
"""

from __future__ import annotations

import io
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import storage
from pipeline.io import atomic_path

_NAME = re.compile(r"^step-(\d{8})\.pt$")


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
         n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        # one state per GPU visible when saving; the resuming process may see fewer (another
        # machine, a Ray worker with one GPU), and set_rng_state_all would then index a device
        # that does not exist. No trainer draw uses the CUDA generators, so restore what exists.
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def save_atomic(state: dict[str, Any], path: Any) -> Any:
    path = storage.path(path)  # on object storage: uploaded whole once written
    with atomic_path(path) as tmp:  # fsynced before the rename: a power loss leaves old or new
        torch.save(state, tmp)
    return path


def load(path: Any, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    src = io.BytesIO(storage.read_bytes(path)) if storage.is_uri(path) else path
    return torch.load(src, map_location=map_location, weights_only=True)


def checkpoint_path(ckpt_dir: Any, step: int) -> Any:
    return storage.path(ckpt_dir) / f"step-{step:08d}.pt"


def latest_checkpoint(ckpt_dir: Any) -> Any:
    d = storage.path(ckpt_dir)
    if not d.is_dir():
        return None
    found = sorted(p for p in d.iterdir() if _NAME.match(p.name))
    return found[-1] if found else None


def prune(ckpt_dir: str | Path, keep: int) -> None:
    found = sorted(p for p in storage.path(ckpt_dir).iterdir() if _NAME.match(p.name))
    for p in found[: max(0, len(found) - max(1, keep))]:
        p.unlink(missing_ok=True)
