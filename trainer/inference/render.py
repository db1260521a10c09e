"""Preview renderer: z-buffered forward splatting of a point cloud into a batch of cameras.

Every point is projected into every target camera (batched over frames, CPU or GPU) and covers
an ``s x s`` block of pixels around its projection (``splat_size``; 1 = the pixel containing
it); per pixel the nearest point wins (z-buffer). Pixels no point reaches are *invisible*
(holes: disocclusions and the outside of the condition view). As in RealCam-I2V, a pixel is
*usable* for noise shaping only if it is visible and so is every pixel of its ``k x k``
neighbourhood: next to a hole, splats from the foreground and background meet and the depth
there is least reliable. Pixels outside the image are not holes (the rule only looks at
pixels that exist).

Pixel convention: pixel (col, row) covers [col, col + 1) x [row, row + 1) with its centre at
+0.5 (``pipeline.schema``); a point projecting to (u, v) lands in pixel (floor(u), floor(v)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainer.inference.scene import PointCloud


@dataclass
class Render:
    """Batched render: ``image`` (F, 3, H, W) in [0, 1] (0 where invisible), ``depth``
    (F, H, W) camera z in metres (inf where invisible), ``visible`` (F, H, W) bool."""

    image: torch.Tensor
    depth: torch.Tensor
    visible: torch.Tensor


def render_points(
    cloud: PointCloud,
    c2w: torch.Tensor,
    K: torch.Tensor,
    height: int,
    width: int,
    splat_size: int,
    chunk_frames: int = 0,
    depth_tol: float = 0.0,
) -> Render:
    """Render ``cloud`` (condition-camera frame) into cameras ``c2w`` (F, 4, 4), relative to the
    condition camera, metres) with pixel intrinsics ``K`` ((3, 3) or (F, 3, 3)) at
    ``height x width``.

    ``depth_tol`` > 0 treats the points within that relative depth of a pixel's nearest one as
    the same surface and keeps, among them, the one projecting closest to the pixel centre, so
    overlapping splats of one surface do not shift it (0: plain z-buffer). Exact ties go to the
    highest point index: deterministic on CPU and GPU. ``chunk_frames`` > 0 renders that many
    frames per pass (memory grows as frames x points x splat_size^2); 0: all in one pass.
    """
    c2w = torch.as_tensor(c2w, dtype=torch.float64, device=cloud.xyz.device).reshape(-1, 4, 4)
    K = torch.as_tensor(K, dtype=torch.float64, device=cloud.xyz.device)
    K = K.expand(c2w.shape[0], 3, 3) if K.dim() == 2 else K
    step = int(chunk_frames)
    if 0 < step < c2w.shape[0]:
        parts = [_render_batch(cloud, c2w[i:i + step], K[i:i + step], height, width, splat_size,
                               depth_tol) for i in range(0, c2w.shape[0], step)]
        return Render(torch.cat([p.image for p in parts]), torch.cat([p.depth for p in parts]),
                      torch.cat([p.visible for p in parts]))
    return _render_batch(cloud, c2w, K, height, width, splat_size, depth_tol)


def _render_batch(cloud: PointCloud, c2w: torch.Tensor, K: torch.Tensor, height: int,
                  width: int, splat_size: int, depth_tol: float) -> Render:
    s = int(splat_size)
    if s < 1:
        raise ValueError(f"splat_size must be >= 1, got {splat_size}")
    device = cloud.xyz.device
    xyz = cloud.xyz.to(torch.float64)
    nf = c2w.shape[0]
    R = c2w[:, :3, :3]
    t = c2w[:, :3, 3]
    # camera coordinates: R^T (p - t), for every frame and point: (F, P, 3)
    pc = torch.einsum("fji,fpj->fpi", R, xyz[None] - t[:, None])
    z = pc[..., 2]
    front = z > 0
    zs = torch.where(front, z, torch.ones_like(z))
    x, y = pc[..., 0] / zs, pc[..., 1] / zs
    u = K[:, 0, 0, None] * x + K[:, 0, 1, None] * y + K[:, 0, 2, None]
    v = K[:, 1, 1, None] * y + K[:, 1, 2, None]
    off = (s - 1) / 2.0
    # first covered pixel: floor(u - (s - 1)/2) covers the s pixels nearest to u
    c0 = torch.floor(u - off).long()
    r0 = torch.floor(v - off).long()
    d = torch.arange(s, device=device)
    cols = (c0[..., None, None] + d[None, :]).expand(*c0.shape, s, s)   # (F, P, s, s)
    rows = (r0[..., None, None] + d[:, None]).expand(*r0.shape, s, s)
    keep = (front[..., None, None] & (cols >= 0) & (cols < width) & (rows >= 0)
            & (rows < height))
    fidx = torch.arange(nf, device=device).view(nf, 1, 1, 1).expand_as(cols)
    pidx = torch.arange(xyz.shape[0], device=device).view(1, -1, 1, 1).expand_as(cols)
    zz = z[..., None, None].expand_as(cols)
    # squared distance from the projection to the centre of each covered pixel
    dist = ((cols + 0.5 - u[..., None, None]) ** 2 + (rows + 0.5 - v[..., None, None]) ** 2)
    lin = (fidx * height + rows) * width + cols
    lin, zk, pk, dk = lin[keep], zz[keep], pidx[keep], dist[keep]
    n = nf * height * width
    zbuf = torch.full((n,), float("inf"), dtype=torch.float64, device=device)
    zbuf.scatter_reduce_(0, lin, zk, reduce="amin", include_self=True)
    # the front surface: points within depth_tol (relative) of the nearest one; among them the
    # one projecting closest to the pixel centre wins (overlapping splats of one surface then
    # do not shift it by up to a splat), exact ties to the highest point index
    cand = zk <= zbuf[lin] * (1.0 + float(depth_tol))
    lin, zk, pk, dk = lin[cand], zk[cand], pk[cand], dk[cand]
    dbuf = torch.full((n,), float("inf"), dtype=torch.float64, device=device)
    dbuf.scatter_reduce_(0, lin, dk, reduce="amin", include_self=True)
    win = dk == dbuf[lin]
    owner = torch.full((n,), -1, dtype=torch.long, device=device)
    owner.scatter_reduce_(0, lin[win], pk[win], reduce="amax", include_self=True)
    visible = owner >= 0
    img = torch.zeros((n, 3), dtype=cloud.rgb.dtype, device=device)
    img[visible] = cloud.rgb[owner[visible]]
    depth = torch.full((n,), float("inf"), dtype=torch.float64, device=device)
    depth[visible] = z.reshape(-1)[(owner[visible] + xyz.shape[0] *
                                    (torch.arange(n, device=device)[visible]
                                     // (height * width)))]
    return Render(
        image=img.view(nf, height, width, 3).permute(0, 3, 1, 2).contiguous(),
        depth=depth.view(nf, height, width).to(torch.float32),
        visible=visible.view(nf, height, width),
    )


def usable_mask(visible: torch.Tensor, k: int) -> torch.Tensor:
    """(..., H, W) bool -> usable: visible and no invisible pixel in the k x k neighbourhood
    (a binary erosion; ``k`` odd, 1 = visibility only). Outside the image counts as visible."""
    k = int(k)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"edge neighbourhood k must be an odd number >= 1, got {k}")
    if k == 1:
        return visible.clone()
    shape = visible.shape
    hole = (~visible).reshape(-1, 1, *shape[-2:]).float()
    near_hole = F.max_pool2d(hole, k, stride=1, padding=k // 2) > 0  # zero padding: no holes
    return (~near_hole).reshape(shape)


def latent_mask(mask: torch.Tensor, factor: int, margin: int = 0) -> torch.Tensor:
    """(..., H, W) pixel mask -> (..., H/factor, W/factor) latent-cell mask, conservatively:
    a cell is usable only if every pixel it covers is, and, with ``margin`` > 0, every cell
    within ``margin`` cells of it too (a VAE encoder mixes neighbouring cells)."""
    f = int(factor)
    shape = mask.shape
    h, w = shape[-2:]
    if h % f or w % f:
        raise ValueError(f"mask {h}x{w} is not a multiple of the latent factor {f}")
    bad = (~mask).reshape(-1, 1, h, w).float()
    bad = F.max_pool2d(bad, f, stride=f) if f > 1 else bad
    if margin > 0:
        bad = F.max_pool2d(bad, 2 * margin + 1, stride=1, padding=margin)
    return (bad == 0).reshape(*shape[:-2], h // f, w // f)


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR (dB, peak 1) of (F, 3, H, W) images in [0, 1] over the (F, H, W) mask;
    NaN for a frame with an empty mask."""
    m = mask[:, None].to(pred.dtype).expand_as(pred)
    se = ((pred - target) ** 2 * m).flatten(1).sum(1)
    cnt = m.flatten(1).sum(1)
    mse = se / cnt.clamp(min=1)
    psnr = 10 * torch.log10(1.0 / mse.clamp(min=1e-12))
    return torch.where(cnt > 0, psnr, torch.full_like(psnr, float("nan")))


def coverage(mask: torch.Tensor) -> torch.Tensor:
    """Per-frame fraction of pixels in the (F, H, W) mask."""
    return mask.flatten(1).float().mean(1)
