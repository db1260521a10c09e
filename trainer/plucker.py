"""Plücker ray embedding: per pixel ``[o x d, d]`` in the condition camera's frame.

The moment ``o x d`` makes the embedding independent of where along the ray the origin is
taken, and with metric translations its magnitude carries the scene scale the model is meant
to learn. Pixel centres are at ``+0.5`` (the COLMAP convention of ``pipeline.schema``), so the
ray through pixel (i, j) passes through the continuous image point (j + 0.5, i + 0.5).
"""

from __future__ import annotations

import torch


def pixel_rays(K: torch.Tensor, c2w: torch.Tensor, height: int, width: int) -> tuple[
    torch.Tensor, torch.Tensor
]:
    """Ray origins and unit directions, each (..., H, W, 3), for pixel-unit ``K`` (..., 3, 3)
    and camera-to-world ``c2w`` (..., 4, 4) (leading dims broadcast)."""
    dtype = c2w.dtype if c2w.is_floating_point() else torch.float64
    K = K.to(dtype)
    c2w = c2w.to(dtype)
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=c2w.device) + 0.5,
        torch.arange(width, dtype=dtype, device=c2w.device) + 0.5,
        indexing="ij",
    )
    fx, fy = K[..., 0, 0], K[..., 1, 1]
    cx, cy = K[..., 0, 2], K[..., 1, 2]
    e = (...,) + (None, None)
    x = (u - cx[e]) / fx[e]
    y = (v - cy[e]) / fy[e]
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # (..., H, W, 3)
    R = c2w[..., :3, :3]
    d = torch.einsum("...ij,...hwj->...hwi", R, d_cam)
    d = d / d.norm(dim=-1, keepdim=True)
    o = c2w[..., None, None, :3, 3].expand_as(d)
    return o, d


def plucker_embedding(K: torch.Tensor, c2w: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., 6, H, W) channels-first ``[o x d, d]`` for each frame's camera."""
    o, d = pixel_rays(K, c2w, height, width)
    emb = torch.cat([torch.linalg.cross(o, d, dim=-1), d], dim=-1)
    return emb.movedim(-1, -3).contiguous()
