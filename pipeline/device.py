"""The one device policy for torch work in this process (depth without Ray actors, training,
sampling): ``auto`` = CUDA when this process sees a GPU, else CPU; ``cuda`` insists on a GPU;
``cpu`` never uses one."""

from __future__ import annotations


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
