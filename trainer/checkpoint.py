"""Atomic checkpoints that load with ``torch.load(weights_only=True)``.

Everything is stored as tensors and plain Python types: the RNG states of numpy and ``random``
are converted to tensors/ints (their native tuples hold numpy arrays, which the safe unpickler
refuses). A checkpoint is written to a temp name in the same directory and ``os.replace``d, so a
crash leaves either the previous checkpoint or the new one, never half a file. A file damaged
afterwards (a full disk on copy, a truncated transfer) is skipped with a warning: readers take
the newest checkpoint that reads, and ``unreadable`` is the cheap check ``status`` uses.
"""

from __future__ import annotations

import io
import random
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import storage
from pipeline.io import atomic_path
from pipeline.log import log

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: ``status`` checks checkpoints (``checkpoints``,
# ``unreadable``) without paying for a torch import

_NAME = re.compile(r"^step-(\d{8})\.pt$")


def rng_state() -> dict[str, Any]:
    import torch

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
    import torch

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
    import torch

    path = storage.path(path)  # on object storage: uploaded whole once written
    with atomic_path(path) as tmp:  # fsynced before the rename: a power loss leaves old or new
        torch.save(state, tmp)
    return path


def load(path: Any, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    import torch

    src = io.BytesIO(storage.read_bytes(path)) if storage.is_uri(path) else path
    return torch.load(src, map_location=map_location, weights_only=True)


def checkpoint_path(ckpt_dir: Any, step: int) -> Any:
    return storage.path(ckpt_dir) / f"step-{step:08d}.pt"


def checkpoints(ckpt_dir: Any) -> list[Any]:
    """Every checkpoint file under ``ckpt_dir``, newest (highest step) first."""
    d = storage.path(ckpt_dir)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if _NAME.match(p.name)), reverse=True)


def unreadable(path: Any) -> str | None:
    """Why ``path`` cannot be a checkpoint, from its zip directory alone (torch.save writes a
    zip archive whose directory is at the end: a truncated file has none), or None. Reads a
    few kilobytes, not the weights."""
    try:
        with storage.path(path).open("rb") as fh, zipfile.ZipFile(fh) as zf:
            if not zf.namelist():
                return "empty archive"
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _skip(path: Any, why: str) -> None:
    log.warning(f"checkpoint {path} cannot be read ({why}); using the previous one")


def latest_checkpoint(ckpt_dir: Any) -> Any:
    """The newest checkpoint whose archive is intact (unreadable newer ones are skipped with a
    warning naming them), or None."""
    for p in checkpoints(ckpt_dir):
        why = unreadable(p)
        if why is None:
            return p
        _skip(p, why)
    return None


def load_latest(ckpt_dir: Any, map_location: str | torch.device = "cpu"
                ) -> tuple[Any, dict[str, Any]] | None:
    """(path, state) of the newest checkpoint that loads, or None when there is none: a damaged
    newest file falls back to the one before it, with a warning naming the bad file."""
    for p in checkpoints(ckpt_dir):
        why = unreadable(p)
        if why is None:
            try:
                return p, load(p, map_location)
            except Exception as exc:  # noqa: BLE001 - torch's reader raises RuntimeError & co
                why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        _skip(p, why)
    return None


def prune(ckpt_dir: str | Path, keep: int) -> None:
    found = sorted(p for p in storage.path(ckpt_dir).iterdir() if _NAME.match(p.name))
    for p in found[: max(0, len(found) - max(1, keep))]:
        p.unlink(missing_ok=True)
