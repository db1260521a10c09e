"""Reprojection of the condition frame along each frame's camera, read off the Plücker maps.

The built-in backbone's geometric prior (``builtin.warp_prior``): the condition image is warped
into every frame with a depth map the model predicts from the condition image, and the denoiser
refines that warp. Everything the warp needs is recovered from the Plücker maps the model already
receives, so no call site passes poses or intrinsics:

- a frame's camera centre ``c`` from its moments: every ray passes through ``c``, so
  ``m = c x d`` and ``(sum (I - d d^T)) c = sum d x m`` (least squares over the pixels);
- the condition frame is the one at the origin with the identity rotation: its normalised
  coordinates ``d_x / d_z`` depend on the column alone and ``d_y / d_z`` on the row alone;
- the intrinsics from that frame: ``d_x / d_z = (u - c_x) / f_x`` along a row.

The warp is backward (each target pixel looks up the condition image), solved by a few
fixed-point steps on the condition frame's depth: start with the depth at the same pixel, find
where the target ray reaches that depth, look the depth up there, repeat. Translations enter
the warp in the units of the poses; with metric poses the depth the model learns is metric,
which is what metric scale alignment buys a geometry-aware model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: below this |d_z| a ray is treated as parallel to the image plane (no valid reprojection)
_MIN_DZ = 1e-4
#: smallest positive depth a reprojected point may have in the condition camera
_MIN_DEPTH = 1e-3
#: sampling coordinates are clamped to this (grid units, the image spans -1..1): past the edge
#: border padding gives the edge value anyway, and huge coordinates (a ray grazing the
#: condition camera's plane, or a pose of enormous translation) would overflow the sampler's
#: integer pixel index
_GRID_LIMIT = 2.0


def camera_centres(plucker: torch.Tensor) -> torch.Tensor:
    """(..., 6, H, W) ``[o x d, d]`` -> (..., 3) camera centres (least squares over pixels)."""
    m = plucker[..., 0:3, :, :].flatten(-2).transpose(-1, -2)  # (..., P, 3)
    d = plucker[..., 3:6, :, :].flatten(-2).transpose(-1, -2)
    eye = torch.eye(3, dtype=d.dtype, device=d.device)
    A = (eye - d[..., :, None] * d[..., None, :]).sum(-3)  # (..., 3, 3)
    b = torch.linalg.cross(d, m, dim=-1).sum(-2)  # (..., 3)
    # a tiny ridge keeps an all-zero map (camera input off) solvable: its centre is 0
    A = A + 1e-9 * eye
    return torch.linalg.solve(A, b[..., None])[..., 0]


def normalised_coords(plucker: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d_x / d_z, d_y / d_z)`` per pixel, each (..., H, W)."""
    d = plucker[..., 3:6, :, :]
    dz = d[..., 2, :, :].clamp(min=_MIN_DZ)
    return d[..., 0, :, :] / dz, d[..., 1, :, :] / dz


def identity_frame(plucker: torch.Tensor, centres: torch.Tensor | None = None) -> torch.Tensor:
    """(B, F, 6, H, W) -> (B,) index of the frame with the identity pose (the condition frame).

    Two departures, each zero there and only there: the camera centre's distance from the
    origin, and the rotation's (its normalised grid stops being separable). Each is divided by
    its largest value over the clip's frames, so that a small rotation is not outweighed by a
    large translation or the other way round. ``centres``: ``camera_centres(plucker)`` where
    the caller has it already."""
    x, y = normalised_coords(plucker)
    sep = (x.var(dim=-2, unbiased=False).mean(-1) + y.var(dim=-1, unbiased=False).mean(-1)).sqrt()
    dist = (camera_centres(plucker) if centres is None else centres).norm(dim=-1)
    tiny = torch.finfo(plucker.dtype).tiny
    score = dist / (dist.amax(dim=1, keepdim=True) + tiny) + sep / (
        sep.amax(dim=1, keepdim=True) + tiny)
    return score.argmin(dim=1)


def intrinsics(plucker_identity: torch.Tensor) -> torch.Tensor:
    """(B, 6, H, W) Plücker map of an identity-pose camera -> (B, 4) ``fx, fy, cx, cy`` in pixels
    (pixel centres at +0.5, as ``trainer.plucker`` writes them)."""
    x, y = normalised_coords(plucker_identity)
    h, w = x.shape[-2:]
    xr, yc = x.mean(-2), y.mean(-1)  # (B, W), (B, H)
    fx = (w - 1) / (xr[:, -1] - xr[:, 0])
    fy = (h - 1) / (yc[:, -1] - yc[:, 0])
    cx = 0.5 - xr[:, 0] * fx
    cy = 0.5 - yc[:, 0] * fy
    return torch.stack([fx, fy, cx, cy], dim=-1)


def _to_grid(u: torch.Tensor, v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pixel coordinates (centres at +0.5) -> ``grid_sample`` coordinates (align_corners=False),
    finite and within +-``_GRID_LIMIT``."""
    g = torch.stack([2 * u / w - 1, 2 * v / h - 1], dim=-1)
    g = torch.nan_to_num(g, nan=_GRID_LIMIT, posinf=_GRID_LIMIT, neginf=-_GRID_LIMIT)
    return g.clamp(-_GRID_LIMIT, _GRID_LIMIT)


def reproject(plucker: torch.Tensor, depth: torch.Tensor, iterations: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each target pixel looks in the condition image.

    ``plucker`` (B, F, 6, H, W) relative to the condition frame; ``depth`` (B, 1, H, W) the
    condition frame's z-depth in the poses' units. Returns the sampling grid (B, F, H, W, 2) for
    ``grid_sample`` and a validity mask (B, F, 1, H, W) (the ray reaches the condition frame's
    surface in front of it and inside the image).
    """
    b, f, _, h, w = plucker.shape
    # the geometry in float64: a written translation thousands of times too large, divided by a
    # ray nearly parallel to the image plane, must not overflow (float32 did, to NaN gradients)
    out_dtype = depth.dtype
    depth = depth.double()
    dtype = depth.dtype
    pl = plucker.to(dtype)
    c = camera_centres(pl)  # (B, F, 3)
    cam = identity_frame(pl, c)
    k = intrinsics(pl[torch.arange(b, device=pl.device), cam])  # (B, 4)
    fx, fy, cx, cy = (k[:, i].view(b, 1, 1, 1) for i in range(4))
    d = pl[:, :, 3:6]  # (B, F, 3, H, W)
    dz = torch.where(d[:, :, 2].abs() < _MIN_DZ, torch.full_like(d[:, :, 2], _MIN_DZ),
                     d[:, :, 2])
    cz = c[:, :, 2, None, None]
    depth_f = depth.expand(b, f, h, w).reshape(b * f, 1, h, w)
    z = depth_f.view(b, f, h, w)
    for _ in range(max(int(iterations), 1)):
        s = (z - cz) / dz  # distance along the ray to the condition depth z
        X = c[:, :, :, None, None] + s[:, :, None] * d  # (B, F, 3, H, W)
        zc = X[:, :, 2].clamp(min=_MIN_DEPTH)
        u = fx * X[:, :, 0] / zc + cx
        v = fy * X[:, :, 1] / zc + cy
        grid = _to_grid(u, v, h, w)
        z = F.grid_sample(depth_f, grid.reshape(b * f, h, w, 2), mode="bilinear",
                          padding_mode="border", align_corners=False).view(b, f, h, w)
    inside = (grid.abs() <= 1).all(dim=-1)
    valid = inside & (s > 0) & (X[:, :, 2] > _MIN_DEPTH)
    return grid.to(out_dtype), valid[:, :, None].to(out_dtype)


def warp_condition(image: torch.Tensor, plucker: torch.Tensor, depth: torch.Tensor,
                   iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) condition image -> (B, F, C, H, W) its view from every frame's camera, and
    the validity mask (B, F, 1, H, W).

    Where a frame sees past the condition image's edge, the edge is stretched (border
    padding): a smooth continuation for the denoiser to fill in. Putting the condition image's
    own pixel there instead would paste unmoved content into a moved view, which is what a
    camera-following model must not learn."""
    b, f = plucker.shape[:2]
    grid, valid = reproject(plucker, depth, iterations)
    h, w = image.shape[-2:]
    src = image[:, None].expand(b, f, *image.shape[1:]).reshape(b * f, -1, h, w)
    warped = F.grid_sample(src, grid.reshape(b * f, h, w, 2).to(image.dtype), mode="bilinear",
                           padding_mode="border", align_corners=False).view(b, f, -1, h, w)
    return warped, valid
