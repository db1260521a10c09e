"""The one device policy for torch work in this process (depth without Ray actors, training,
sampling): ``auto`` = CUDA when this process sees a GPU, else CPU; ``cuda`` insists on a GPU;
``cpu`` never uses one."""

from __future__ import annotations

from typing import Any


def choose_device(policy: str = "auto") -> str:
    import torch

    if policy not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device policy must be auto, cuda or cpu, got {policy!r}")
    has_cuda = torch.cuda.is_available()
    if policy == "cuda" and not has_cuda:
        raise RuntimeError("device 'cuda' was asked for but this process sees no GPU")
    if policy == "cpu" or not has_cuda:
        return "cpu"
    return "cuda"


def device_for(section: dict[str, Any]) -> str:
    """The device for a config section that may carry a ``device`` policy (``depth.device``):
    one helper, so the depth stage and the evaluation stage that loads the same depth model in
    its own process pick the same device for the same setting."""
    return choose_device(section.get("device") or "auto")
