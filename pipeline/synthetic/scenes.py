"""Deterministic ray-caster of small textured indoor scenes with exact metric depth.

Why it exists: the bundled sample must exercise triangulation and alignment against a *known*
answer. A ray-caster gives the exact camera-space z of every pixel centre (COLMAP convention,
centre of pixel (col, row) at (col + 0.5, row + 0.5)), so the recovered per-frame scale can be
compared with the truth to a fraction of a percent; and it needs nothing but numpy and OpenCV.

World frame: x and z horizontal, **y points down** (so a camera with identity rotation stands
upright in OpenCV axes); the floor is the plane y = 0 and the ceiling y = -height. A scene is
a box room plus axis-aligned boxes standing on the floor and a few spheres.

Textures are procedural images anchored to each surface (so every view sees the same pattern,
which SIFT matching needs), mixing blobs, rectangles and noise at several scales with high
contrast. Colour is supersampled and the textures are mip-mapped (trilinear), which keeps
distant surfaces from aliasing into unmatchable noise; depth comes from the single ray through
the pixel centre, so it is exact there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

#: bump whenever the rendered output of a given seed changes (invalidates cached samples)
RENDERER_VERSION = 4

# Scene-generation ranges (metres). These shape the synthetic world, not the pipeline.
ROOM_WIDTH_RANGE = (4.0, 7.0)
ROOM_HEIGHT_RANGE = (2.5, 3.0)
TEXEL_SIZE = 0.006  # metres per texel at mip level 0
N_BOXES_RANGE = (3, 6)
N_SPHERES_RANGE = (1, 3)
OBJECT_RING = 1.4  # objects stand within this distance of a wall, leaving the centre free
SUPERSAMPLE = 2  # colour samples per pixel along each axis
LIGHT_DIR = np.array([0.35, 0.8, -0.5]) / np.linalg.norm([0.35, 0.8, -0.5])

# Trajectory constraints (metres).
WALL_CLEARANCE = 0.8  # camera centre to any wall
OBJECT_CLEARANCE = 0.6  # camera centre to any object's footprint
MIN_VIEW_DEPTH = 0.6  # no surface closer than this in any frame (no blurry close-ups)
MIN_MEDIAN_DEPTH = 1.6  # look into the room, not at a wall from up close
MIN_DEPTH_RATIO = 1.8  # max/min depth in view: more than one flat wall (a 3D scene)
EYE_HEIGHT_RANGE = (1.2, 1.7)
MAX_TRAJECTORY_TRIES = 2000

# Stress-set trajectory kinds (metres, degrees). The ranges are the hard cases real footage
# produced: a turn on the spot with little travel, long slow RealEstate10K-style
# pans, and forward walks with more travel than the bundled "forward" kind.
ROTATION_PAN_TRAVEL = (0.10, 0.25)  # camera-centre travel over the clip
ROTATION_PAN_TURN_DEG = (15.0, 30.0)  # rotation between first and last frame
ROTATION_PAN_MIN_MEDIAN_DEPTH = 3.0  # "the scene several metres away", at every frame
SLOW_PAN_TRAVEL = (0.4, 1.0)  # independent of n_frames: 300 frames move ~2-3 mm each
SLOW_PAN_TURN_DEG = (15.0, 35.0)
SLOW_PAN_EASE = 0.3  # share of the eased (start/stop) profile; the rest is constant speed
WALK_LENGTH = (1.8, 3.0)
WALK_TURN_DEG = 25.0  # the heading bends by up to this much along the walk
WALK_LOOK_SWAY_DEG = 6.0  # looking around while walking
WALK_STRIDE = 0.7  # metres per step: sets the head-bob frequency
WALK_BOB = 0.015  # head-bob amplitude
TRAJECTORY_KINDS = ("forward", "pan", "orbit", "rotation_pan", "slow_pan", "walk")

# Weak texture: contrast of the room surfaces about their mean colour (1 = normal).
WALL_CONTRAST = {"normal": 1.0, "weak": 0.12}


@dataclass
class Face:
    """An axis-aligned rectangle: ``normal_axis`` is constant, (u_axis, v_axis) span it."""

    normal_axis: int
    value: float
    u_axis: int
    v_axis: int
    u_range: tuple[float, float]
    v_range: tuple[float, float]
    normal: np.ndarray  # outward from the surface, towards where the viewer can be
    pyramid: list[np.ndarray]  # float32 HxWx3 in [0, 1], level 0 = TEXEL_SIZE


@dataclass
class Box:
    lo: np.ndarray
    hi: np.ndarray
    faces: list[int]  # indices into Scene.faces, order: axis*2 + (0: lo side, 1: hi side)


@dataclass
class Sphere:
    centre: np.ndarray
    radius: float
    pyramid: list[np.ndarray]  # lat-long texture, u wraps around


@dataclass
class Scene:
    seed: int
    room_lo: np.ndarray  # (3,)
    room_hi: np.ndarray  # (3,)
    faces: list[Face] = field(default_factory=list)
    room_faces: list[int] = field(default_factory=list)  # axis*2 + (0: lo wall, 1: hi wall)
    boxes: list[Box] = field(default_factory=list)
    spheres: list[Sphere] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Textures


def _draw_shapes(
    canvas: np.ndarray,
    rng: np.random.Generator,
    n: int,
    r_range: tuple[float, float],
    palette: np.ndarray,
) -> None:
    """Anti-aliased discs, rectangles and strokes with radii log-uniform in ``r_range``.

    Colours vary mostly in brightness around the surface's ``palette`` colour: SIFT sees only
    luminance, while a per-surface hue keeps walls and objects visually distinct.
    """
    radii = np.exp(rng.uniform(np.log(r_range[0]), np.log(r_range[1]), n))
    h, w = canvas.shape[:2]
    cx, cy = (rng.random((n, 2)) * [w, h]).T
    gain = rng.uniform(0.15, 1.7, (n, 1))
    colours = np.clip(palette * gain + rng.normal(0, 35, (n, 3)), 0, 255).astype(int)
    # 4th channel = coverage: where the shapes are, anti-aliased edges included
    colours = np.concatenate([colours, np.full((n, 1), 255)], axis=1).tolist()
    kinds = rng.random(n).tolist()
    ang = rng.uniform(0, np.pi, n)
    # all geometry precomputed as Python ints: the loop only calls OpenCV
    discs = np.stack([cx, cy, np.rint(radii)], axis=1).astype(int).tolist()
    rects = np.stack([cx - radii, cy - 0.6 * radii, cx + radii, cy + 0.6 * radii], axis=1)
    rects = rects.astype(int).tolist()
    dx, dy = 2 * radii * np.cos(ang), 2 * radii * np.sin(ang)
    segs = np.stack([cx - dx, cy - dy, cx + dx, cy + dy, np.maximum(1, radii / 4)], axis=1)
    segs = segs.astype(int).tolist()
    for kind, col, (x, y, r), (x0, y0, x1, y1), (a0, b0, a1, b1, th) in zip(
        kinds, colours, discs, rects, segs
    ):
        if kind < 0.55:
            cv2.circle(canvas, (x, y), r, col, -1, cv2.LINE_AA)
        elif kind < 0.9:
            cv2.rectangle(canvas, (x0, y0), (x1, y1), col, -1, cv2.LINE_AA)
        else:
            cv2.line(canvas, (a0, b0), (a1, b1), col, th, cv2.LINE_AA)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A high-contrast multi-scale pattern: shapes over layered value noise.

    Tuned by counting SIFT keypoints on rendered 320x240 frames: dense small shapes (radius
    <= 10 texels = 6 cm) give ~2300 per frame, large opaque ones alone only ~800 (flat
    interiors have no features). A sparse layer of large shapes keeps coarse structure, which
    SIFT's upper octaves and distant views need.
    """
    h, w = max(h, 8), max(w, 8)
    noise = np.zeros((h, w, 3), np.float32)
    amps = ((96, 0.5), (24, 0.35), (6, 0.35), (2, 0.35))
    for cell, amp in amps:
        grid = rng.random((h // cell + 2, w // cell + 2, 3), dtype=np.float32)
        noise += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    noise /= sum(a for _, a in amps)
    tint = rng.random(3).astype(np.float32)
    palette = 60 + 150 * tint
    canvas = np.zeros((h, w, 4), np.uint8)
    _draw_shapes(canvas, rng, int(h * w / 4000) + 3, (15.0, 60.0), palette)
    _draw_shapes(canvas, rng, int(h * w / 100) + 20, (2.5, 10.0), palette)
    shapes = canvas[..., :3].astype(np.float32) / 255.0
    alpha = canvas[..., 3:].astype(np.float32) * np.float32(0.6 / 255.0)
    gray = cv2.cvtColor(noise, cv2.COLOR_RGB2GRAY)[..., None]
    img = (0.5 * noise + 0.5 * gray) * (0.4 + 0.9 * tint)
    # shapes stay translucent so the fine noise shows through: no flat, featureless patches
    img = img * (1 - alpha) + alpha * shapes
    sub = img[::3, ::3].reshape(-1, 3)  # a subsample is plenty for the contrast stretch
    lo = np.percentile(sub, 2, axis=0)
    hi = np.percentile(sub, 98, axis=0)
    scale = np.maximum((hi - lo).max(), 1e-3)  # one stretch for all channels keeps the hue
    img = np.clip((img - lo.min()) / scale, 0, 1)
    return cv2.GaussianBlur(img, (0, 0), 0.7)


def _pyramid(img: np.ndarray) -> list[np.ndarray]:
    levels = [img]
    while min(levels[-1].shape[:2]) > 4:
        levels.append(cv2.pyrDown(levels[-1]))
    return levels


# ---------------------------------------------------------------------------------------------
# Scene construction


def _low_contrast(img: np.ndarray, contrast: float) -> np.ndarray:
    """Pull a texture towards its mean colour: a weakly textured (painted) wall.

    Applied after the texture is drawn, so the random stream, hence the room and its objects,
    is the same as with full contrast: only the walls' appearance changes.
    """
    mean = img.reshape(-1, 3).mean(axis=0)
    return (mean + np.float32(contrast) * (img - mean)).astype(np.float32)


def _add_face(
    scene: Scene,
    rng: np.random.Generator,
    axis: int,
    value: float,
    normal_sign: float,
    lo: np.ndarray,
    hi: np.ndarray,
    contrast: float = 1.0,
) -> int:
    u_axis, v_axis = [a for a in range(3) if a != axis]
    u_range = (float(lo[u_axis]), float(hi[u_axis]))
    v_range = (float(lo[v_axis]), float(hi[v_axis]))
    tw = int(np.ceil((u_range[1] - u_range[0]) / TEXEL_SIZE))
    th = int(np.ceil((v_range[1] - v_range[0]) / TEXEL_SIZE))
    normal = np.zeros(3)
    normal[axis] = normal_sign
    tex = _texture(rng, th, tw)
    if contrast != 1.0:
        tex = _low_contrast(tex, contrast)
    scene.faces.append(
        Face(
            axis,
            float(value),
            u_axis,
            v_axis,
            u_range,
            v_range,
            normal,
            _pyramid(tex),
        )
    )
    return len(scene.faces) - 1


def make_scene(seed: int, wall_contrast: float = 1.0) -> Scene:
    """A random room with objects; identical for identical ``seed`` (all randomness seeded).

    ``wall_contrast`` < 1 scales the contrast of the six room surfaces (walls, floor, ceiling)
    about their mean colour (see ``WALL_CONTRAST``); the geometry and the objects' textures are
    the same as at 1.0, so a weak-texture clip differs from its normal twin only on the walls.
    """
    if not 0.0 < wall_contrast <= 1.0:
        raise ValueError(f"scene {seed}: wall_contrast must be in (0, 1], got {wall_contrast}")
    rng = np.random.default_rng(seed)
    wx, wz = rng.uniform(*ROOM_WIDTH_RANGE, size=2)
    height = rng.uniform(*ROOM_HEIGHT_RANGE)
    room_lo = np.array([-wx / 2, -height, -wz / 2])
    room_hi = np.array([wx / 2, 0.0, wz / 2])
    scene = Scene(seed=seed, room_lo=room_lo, room_hi=room_hi)
    for axis in range(3):
        # the lo wall faces +axis (into the room), the hi wall faces -axis
        for value, sign in ((room_lo[axis], 1.0), (room_hi[axis], -1.0)):
            scene.room_faces.append(
                _add_face(scene, rng, axis, value, sign, room_lo, room_hi, wall_contrast)
            )
    _add_boxes(scene, rng, height)
    _add_spheres(scene, rng, wx, wz)
    return scene


def _box_bounds(scene: Scene, rng: np.random.Generator,
                height: float) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) corners of a random box standing on the floor in the ring near a wall."""
    room_lo, room_hi = scene.room_lo, scene.room_hi
    size = rng.uniform([0.3, 0.3, 0.3], [1.2, 1.4, 1.0])
    size[1] = min(size[1], height - 0.5)
    side = int(rng.integers(4))
    cx = rng.uniform(room_lo[0] + size[0] / 2 + 0.05, room_hi[0] - size[0] / 2 - 0.05)
    cz = rng.uniform(room_lo[2] + size[2] / 2 + 0.05, room_hi[2] - size[2] / 2 - 0.05)
    off = rng.uniform(0.05, OBJECT_RING - 0.5)
    if side == 0:
        cx = room_lo[0] + off + size[0] / 2
    elif side == 1:
        cx = room_hi[0] - off - size[0] / 2
    elif side == 2:
        cz = room_lo[2] + off + size[2] / 2
    else:
        cz = room_hi[2] - off - size[2] / 2
    lo = np.array([cx - size[0] / 2, -size[1], cz - size[2] / 2])
    hi = np.array([cx + size[0] / 2, 0.0, cz + size[2] / 2])
    return lo, hi


def _add_boxes(scene: Scene, rng: np.random.Generator, height: float) -> None:
    """Textured boxes near the walls, not overlapping (with a 10 cm gap), within 500 tries."""
    n_boxes = int(rng.integers(N_BOXES_RANGE[0], N_BOXES_RANGE[1] + 1))
    placed: list[tuple[np.ndarray, np.ndarray]] = []
    tries = 0
    while len(scene.boxes) < n_boxes and tries < 500:
        tries += 1
        lo, hi = _box_bounds(scene, rng, height)
        if any(
            np.all(lo[[0, 2]] < h[[0, 2]] + 0.1) and np.all(hi[[0, 2]] > lo2[[0, 2]] - 0.1)
            for lo2, h in placed
        ):
            continue
        placed.append((lo, hi))
        faces = []
        for axis in range(3):
            faces.append(_add_face(scene, rng, axis, lo[axis], -1.0, lo, hi))
            faces.append(_add_face(scene, rng, axis, hi[axis], 1.0, lo, hi))
        scene.boxes.append(Box(lo, hi, faces))


def _add_spheres(scene: Scene, rng: np.random.Generator, wx: float, wz: float) -> None:
    """Textured spheres on top of boxes or on the floor near a wall, not overlapping."""
    n_spheres = int(rng.integers(N_SPHERES_RANGE[0], N_SPHERES_RANGE[1] + 1))
    for _ in range(n_spheres):
        r = float(rng.uniform(0.15, 0.35))
        if scene.boxes and rng.random() < 0.6:  # rest it on top of a box
            b = scene.boxes[int(rng.integers(len(scene.boxes)))]
            c = np.array([(b.lo[0] + b.hi[0]) / 2, b.lo[1] - r, (b.lo[2] + b.hi[2]) / 2])
        else:  # on the floor near a wall
            ang = rng.uniform(0, 2 * np.pi)
            c = np.array([np.cos(ang) * (wx / 2 - r - 0.3), -r, np.sin(ang) * (wz / 2 - r - 0.3)])
        if any(np.all(np.abs(c - s.centre) < r + s.radius) for s in scene.spheres):
            continue
        # ~TEXEL_SIZE texels at the equator
        tw = int(np.ceil(2 * np.pi * r / TEXEL_SIZE))
        th = int(np.ceil(np.pi * r / TEXEL_SIZE))
        scene.spheres.append(Sphere(c, r, _pyramid(_texture(rng, th, tw))))


# ---------------------------------------------------------------------------------------------
# Ray casting


def _w2c_parts(w2c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w2c = np.asarray(w2c, dtype=np.float64)
    return w2c[:3, :3], w2c[:3, 3]


def cast(scene: Scene, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of rays ``origin + t * dirs`` (dirs (N,3), any length).

    ``origin`` is one point (3,) or one per ray (N, 3) (a rolling-shutter frame: every row seen
    from its own camera centre). Returns ``t`` (N,) and ``hit`` (N,) ids: ``>= 0`` face index,
    ``-1 - k`` sphere k. With ``dirs = R^T K^-1 [u, v, 1]`` the returned ``t`` is exactly the
    camera-space z.
    """
    o = np.asarray(origin, dtype=np.float64)
    per_ray = o.ndim == 2
    d = dirs
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        # room: leave through the wall each axis heads for
        pos = d > 0
        bound = np.where(pos, scene.room_hi, scene.room_lo)
        t_axes = (bound - o) * inv
        t_axes[~np.isfinite(t_axes)] = np.inf
        axis = np.argmin(t_axes, axis=1)
        t = t_axes[np.arange(len(d)), axis]
        room_ids = np.array(scene.room_faces)
        hit = room_ids[axis * 2 + pos[np.arange(len(d)), axis]]
        for box in scene.boxes:
            t1 = (box.lo - o) * inv
            t2 = (box.hi - o) * inv
            tmin = np.minimum(t1, t2)
            tmax = np.maximum(t1, t2)
            tmin = np.where(np.isnan(tmin), -np.inf, tmin)
            tmax = np.where(np.isnan(tmax), np.inf, tmax)
            ax = np.argmax(tmin, axis=1)
            tn = tmin[np.arange(len(d)), ax]
            tf = np.min(tmax, axis=1)
            ok = (tn <= tf) & (tn > 1e-9) & (tn < t)
            if ok.any():
                # entering through the hi side when travelling in -axis
                side = (d[np.arange(len(d)), ax] < 0).astype(np.int64)
                ids = np.array(box.faces)[ax * 2 + side]
                t = np.where(ok, tn, t)
                hit = np.where(ok, ids, hit)
        dd = np.einsum("ij,ij->i", d, d)
        for k, s in enumerate(scene.spheres):
            oc = o - s.centre
            if per_ray:
                b = np.einsum("ij,ij->i", d, oc)
                c = np.einsum("ij,ij->i", oc, oc) - s.radius**2
            else:  # the original expressions: global-shutter renders stay bit-identical
                b = d @ oc
                c = oc @ oc - s.radius**2
            disc = b * b - dd * c
            ts = (-b - np.sqrt(np.maximum(disc, 0))) / dd
            ok = (disc > 0) & (ts > 1e-9) & (ts < t)
            t = np.where(ok, ts, t)
            hit = np.where(ok, -1 - k, hit)
    return t, hit


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray, wrap_x: bool) -> np.ndarray:
    """Sample ``img`` at continuous texel coords (texel centres at +0.5)."""
    h, w = img.shape[:2]
    x = x - 0.5
    y = np.clip(y - 0.5, 0, h - 1)
    x0 = np.floor(x)
    y0 = np.minimum(np.floor(y), h - 2).astype(np.int64) if h > 1 else np.zeros(len(y), np.int64)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    x0 = x0.astype(np.int64)
    if wrap_x:
        xa, xb = x0 % w, (x0 + 1) % w
    else:
        xa = np.clip(x0, 0, w - 1)
        xb = np.clip(x0 + 1, 0, w - 1)
        fx = np.where((x0 < 0)[:, None], 0.0, fx)
    flat = img.reshape(-1, 3)  # 1-D gathers are markedly faster than 2-D fancy indexing
    r0 = y0 * w
    r1 = np.minimum(y0 + 1, h - 1) * w
    top = flat.take(r0 + xa, axis=0) * (1 - fx) + flat.take(r0 + xb, axis=0) * fx
    bot = flat.take(r1 + xa, axis=0) * (1 - fx) + flat.take(r1 + xb, axis=0) * fx
    return top * (1 - fy) + bot * fy


def _trilinear(
    pyr: list[np.ndarray], u: np.ndarray, v: np.ndarray, level: np.ndarray, wrap_u: bool
) -> np.ndarray:
    """Mip-mapped lookup; ``u, v`` in level-0 texels, ``level`` fractional."""
    level = np.clip(level, 0, len(pyr) - 1)
    l0 = np.floor(level).astype(np.int64)
    frac = (level - l0)[:, None]
    out = np.empty((len(u), 3), np.float64)
    for lv in np.unique(l0):
        m = l0 == lv
        s0 = 2.0**lv
        a = _bilinear(pyr[lv], u[m] / s0, v[m] / s0, wrap_u)
        if lv + 1 < len(pyr):
            s1 = 2.0 ** (lv + 1)
            b = _bilinear(pyr[lv + 1], u[m] / s1, v[m] / s1, wrap_u)
            out[m] = a * (1 - frac[m]) + b * frac[m]
        else:
            out[m] = a
    return out


def _shade(
    scene: Scene, o: np.ndarray, d: np.ndarray, t: np.ndarray, hit: np.ndarray, footprint: float
) -> np.ndarray:
    """Colour of each hit; ``footprint`` = sample spacing in radians (sets the mip level)."""
    p = o + d * t[:, None]
    dlen = np.linalg.norm(d, axis=1)
    ray_len = t * dlen
    col = np.zeros((len(t), 3))
    for fid in np.unique(hit):
        m = hit == fid
        if fid >= 0:
            f = scene.faces[fid]
            u = (p[m, f.u_axis] - f.u_range[0]) / TEXEL_SIZE
            v = (p[m, f.v_axis] - f.v_range[0]) / TEXEL_SIZE
            normal = np.broadcast_to(f.normal, (m.sum(), 3))
            pyr, wrap = f.pyramid, False
        else:
            s = scene.spheres[-1 - fid]
            q = (p[m] - s.centre) / s.radius
            normal = q
            u = (np.arctan2(q[:, 2], q[:, 0]) + np.pi) * s.radius / TEXEL_SIZE
            v = np.arccos(np.clip(q[:, 1], -1, 1)) * s.radius / TEXEL_SIZE
            pyr, wrap = s.pyramid, True
        cos = np.abs(np.einsum("ij,ij->i", normal, d[m])) / dlen[m]
        size = ray_len[m] * footprint / np.sqrt(np.maximum(cos, 0.05))
        level = np.log2(np.maximum(size / TEXEL_SIZE, 1e-6))
        tex = _trilinear(pyr, u, v, level, wrap)
        light = 0.55 + 0.45 * np.abs(normal @ LIGHT_DIR)
        col[m] = tex * light[:, None]
    return col


def render(
    scene: Scene,
    K: np.ndarray,
    w2c: np.ndarray,
    width: int,
    height: int,
    supersample: int = SUPERSAMPLE,
    row_w2c: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 (H, W, 3) and exact camera-space z depth float32 (H, W) in metres.

    ``K`` is in pixels with COLMAP's convention (pixel (col, row) centred at +0.5); ``w2c`` is
    metric, OpenCV axes, 3x4 or 4x4. ``row_w2c`` (H, 3 or 4, 4), when given, replaces ``w2c``
    row by row (a rolling shutter: sensor row r, all its sub-samples included, is exposed from
    ``row_w2c[r]``); the depth of a pixel is then its z in its own row's camera.
    """
    K = np.asarray(K, dtype=np.float64)
    Kinv = np.linalg.inv(K)
    cols, rows = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=float))
    if row_w2c is None:
        R, tvec = _w2c_parts(w2c)
        origin = -R.T @ tvec

        def rays(du: float, dv: float) -> np.ndarray:
            pix = np.stack([cols.ravel() + du, rows.ravel() + dv, np.ones(cols.size)], axis=1)
            return (pix @ Kinv.T) @ R  # = (R^T K^-1 pix)^T: camera z component is exactly 1
    else:
        row_w2c = np.asarray(row_w2c, dtype=np.float64)
        if row_w2c.shape[0] != height:
            raise ValueError(f"row_w2c has {row_w2c.shape[0]} poses for {height} rows")
        R_rows, t_rows = row_w2c[:, :3, :3], row_w2c[:, :3, 3]
        row_of = rows.ravel().astype(np.int64)
        R_pix = R_rows[row_of]  # (H*W, 3, 3) world-to-camera rotation of each pixel's row
        origin = -np.einsum("nji,nj->ni", R_rows, t_rows)[row_of]

        def rays(du: float, dv: float) -> np.ndarray:
            pix = np.stack([cols.ravel() + du, rows.ravel() + dv, np.ones(cols.size)], axis=1)
            return np.einsum("nj,njk->nk", pix @ Kinv.T, R_pix)

    t, _ = cast(scene, origin, rays(0.5, 0.5))
    depth = t.reshape(height, width).astype(np.float32)

    n = supersample
    offsets = (np.arange(n) + 0.5) / n
    footprint = 1.0 / (K[0, 0] * n)
    # all sub-samples in one batch: one pass over the surfaces instead of n * n
    d = np.concatenate([rays(du, dv) for dv in offsets for du in offsets])
    if row_w2c is not None:
        origin = np.tile(origin, (n * n, 1))
    ts, hs = cast(scene, origin, d)
    col = _shade(scene, origin, d, ts, hs, footprint).reshape(n * n, cols.size, 3).mean(axis=0)
    rgb = np.clip(col * 255.0 + 0.5, 0, 255).astype(np.uint8).reshape(height, width, 3)
    return rgb, depth


def render_many(
    scene: Scene,
    K: np.ndarray,
    w2cs: np.ndarray,
    width: int,
    height: int,
    supersample: int = SUPERSAMPLE,
) -> np.ndarray:
    """RGB float (N, H, W, 3) in [0, 1] of ``N`` cameras ``w2cs`` (N, 3 or 4, 4) in one batch.

    Why: a pose search renders many candidate cameras of one scene at a small size, where the
    per-call cost of ``render`` (one pass over the surfaces per call) dominates; here every
    candidate's rays go through a single ``cast`` and ``_shade``. Colours match ``render``
    (before its uint8 rounding) for the same camera.
    """
    K = np.asarray(K, dtype=np.float64)
    w2cs = np.asarray(w2cs, dtype=np.float64)
    Kinv = np.linalg.inv(K)
    n = int(supersample)
    offsets = (np.arange(n) + 0.5) / n
    cols, rows = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=float))
    pix = np.concatenate([
        np.stack([cols.ravel() + du, rows.ravel() + dv, np.ones(cols.size)], axis=1)
        for dv in offsets for du in offsets
    ]) @ Kinv.T  # (S * H * W, 3), camera frame
    R = w2cs[:, :3, :3]
    origins = -np.einsum("nji,nj->ni", R, w2cs[:, :3, 3])  # camera centres
    dirs = np.einsum("pj,njk->npk", pix, R).reshape(-1, 3)  # R^T K^-1 pix for every camera
    o = np.repeat(origins, len(pix), axis=0)
    ts, hs = cast(scene, o, dirs)
    col = _shade(scene, o, dirs, ts, hs, 1.0 / (K[0, 0] * n))
    col = col.reshape(len(w2cs), n * n, height, width, 3).mean(axis=1)
    return np.clip(col, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Trajectories


def intrinsics_matrix(width: int, height: int, fov_deg: float) -> np.ndarray:
    """Pinhole K with horizontal field of view ``fov_deg`` and square pixels."""
    fx = (width / 2) / np.tan(np.radians(fov_deg) / 2)
    return np.array([[fx, 0, width / 2], [0, fx, height / 2], [0, 0, 1.0]])


def look_w2c(centre: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """4x4 w2c of a camera at ``centre`` looking along ``forward`` with no roll (y down)."""
    f = forward / np.linalg.norm(forward)
    right = np.cross([0.0, 1.0, 0.0], f)
    right /= np.linalg.norm(right)
    down = np.cross(f, right)
    R_c2w = np.stack([right, down, f], axis=1)
    w2c = np.eye(4)
    w2c[:3, :3] = R_c2w.T
    w2c[:3, 3] = -R_c2w.T @ centre
    return w2c


def _dir(yaw: float, pitch: float) -> np.ndarray:
    """Viewing direction; positive pitch looks down (towards +y)."""
    return np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])


def camera_is_free(scene: Scene, c: np.ndarray) -> bool:
    """Inside the room, clear of walls, ceiling and objects (by footprint) with margins."""
    lo = scene.room_lo + WALL_CLEARANCE
    hi = scene.room_hi - WALL_CLEARANCE
    if np.any(c[[0, 2]] < lo[[0, 2]]) or np.any(c[[0, 2]] > hi[[0, 2]]):
        return False
    if c[1] < scene.room_lo[1] + 0.3 or c[1] > -0.3:
        return False
    for b in scene.boxes:
        if np.all(c[[0, 2]] > b.lo[[0, 2]] - OBJECT_CLEARANCE) and np.all(
            c[[0, 2]] < b.hi[[0, 2]] + OBJECT_CLEARANCE
        ):
            return False
    for s in scene.spheres:
        if np.linalg.norm((c - s.centre)[[0, 2]]) < s.radius + OBJECT_CLEARANCE:
            return False
    return True


def _view_is_good(scene: Scene, w2c: np.ndarray) -> bool:
    K = intrinsics_matrix(16, 12, 75.0)  # a coarse, slightly wider probe than any clip
    depth = render_depth(scene, K, w2c, 16, 12)
    lo, med, hi = float(depth.min()), float(np.median(depth)), float(depth.max())
    return lo >= MIN_VIEW_DEPTH and med >= MIN_MEDIAN_DEPTH and hi >= MIN_DEPTH_RATIO * lo


def render_depth(
    scene: Scene, K: np.ndarray, w2c: np.ndarray, width: int, height: int
) -> np.ndarray:
    """Exact z-depth at pixel centres only (no colour): cheap, used to vet trajectories."""
    R, tvec = _w2c_parts(w2c)
    origin = -R.T @ tvec
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    pix = np.stack([cols.ravel(), rows.ravel(), np.ones(cols.size)], axis=1)
    t, _ = cast(scene, origin, (pix @ np.linalg.inv(K).T) @ R)
    return t.reshape(height, width)


def _random_free_point(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    for _ in range(MAX_TRAJECTORY_TRIES):
        c = np.array(
            [
                rng.uniform(scene.room_lo[0], scene.room_hi[0]),
                -rng.uniform(*EYE_HEIGHT_RANGE),
                rng.uniform(scene.room_lo[2], scene.room_hi[2]),
            ]
        )
        if camera_is_free(scene, c):
            return c
    raise RuntimeError(f"scene {scene.seed}: no free camera position")


@dataclass(frozen=True)
class _Start:
    """Where a proposed move starts and how it is timed: the first camera centre, the pitch
    it keeps, the normalised time of every frame and its eased (smooth start and stop) value."""

    c0: np.ndarray
    pitch0: float
    s: np.ndarray
    ease: np.ndarray


#: a move: camera centres and viewing directions, or None when the draw is unusable
_Move = tuple[np.ndarray, list[np.ndarray]] | None


def _forward_move(st: _Start, scene: Scene, rng: np.random.Generator) -> _Move:
    """Walk straight ahead while turning a little, with some sway and bob."""
    yaw0 = rng.uniform(-np.pi, np.pi)
    length = rng.uniform(0.8, 1.8)
    dyaw = np.radians(rng.uniform(-12, 12))
    sway = rng.uniform(-0.1, 0.1)
    heading = _dir(yaw0, 0.0)
    right = np.cross([0.0, 1.0, 0.0], heading)
    centres = (
        st.c0
        + np.outer(st.ease * length, heading)
        + np.outer(np.sin(np.pi * st.s) * sway, right)
        + np.outer(0.02 * np.sin(4 * np.pi * st.s), [0, 1, 0])
    )
    return centres, [_dir(yaw0 + dyaw * e, st.pitch0) for e in st.ease]


def _turn_and_travel(rng: np.random.Generator, turn_deg: tuple[float, float],
                     travel: tuple[float, float], forward_share: float,
                     ) -> tuple[float, float, float, np.ndarray]:
    """(start yaw, signed turn, travel, unit travel direction) of a pan: the camera walks
    sideways towards the side it turns to (parallax as in a real pan), partly forward or
    back by up to ``forward_share``."""
    yaw0 = rng.uniform(-np.pi, np.pi)
    dyaw = np.radians(rng.uniform(*turn_deg)) * rng.choice([-1, 1])
    move = rng.uniform(*travel)
    right = np.cross([0.0, 1.0, 0.0], _dir(yaw0, 0.0))
    along = right * np.sign(dyaw) + forward_share * _dir(yaw0, 0.0) * rng.uniform(-1, 1)
    along /= np.linalg.norm(along)
    return yaw0, dyaw, move, along


def _pan_move(st: _Start, scene: Scene, rng: np.random.Generator) -> _Move:
    """Turn 25-50 degrees while walking sideways."""
    yaw0, dyaw, move, along = _turn_and_travel(rng, (25, 50), (0.5, 0.9), 0.3)
    centres = st.c0 + np.outer(st.ease * move, along)
    return centres, [_dir(yaw0 + dyaw * e, st.pitch0) for e in st.ease]


def _orbit_move(st: _Start, scene: Scene, rng: np.random.Generator) -> _Move:
    """Circle an object (a box or a sphere) at 1.2-3.5 m, looking at it."""
    n = len(st.s)
    targets = [(b.lo + b.hi) / 2 for b in scene.boxes] + [x.centre for x in scene.spheres]
    poi = targets[int(rng.integers(len(targets)))] if targets else np.zeros(3)
    off = st.c0 - poi
    radius = float(np.linalg.norm(off[[0, 2]]))
    if not 1.2 < radius < 3.5:
        return None
    arc = rng.uniform(0.8, 1.6) * rng.choice([-1, 1])
    ang0 = np.arctan2(off[2], off[0])
    angs = ang0 + st.ease * arc / radius
    centres = np.stack(
        [poi[0] + radius * np.cos(angs), np.full(n, st.c0[1]), poi[2] + radius * np.sin(angs)],
        axis=1,
    )
    return centres, [poi - c for c in centres]


def _rotation_pan_move(st: _Start, scene: Scene, rng: np.random.Generator) -> _Move:
    """A turn on the spot, looking across the room: little parallax, far scene."""
    n = len(st.s)
    yaw0, dyaw, move, along = _turn_and_travel(rng, ROTATION_PAN_TURN_DEG, ROTATION_PAN_TRAVEL,
                                               0.3)
    centres = st.c0 + np.outer(st.ease * move, along)
    dirs = [_dir(yaw0 + dyaw * e, st.pitch0) for e in st.ease]
    K = intrinsics_matrix(16, 12, 60.0)
    for i in sorted({0, n // 2, n - 1}):  # cheap probe: ends and middle
        w2c = look_w2c(centres[i], dirs[i])
        if np.median(render_depth(scene, K, w2c, 16, 12)) < ROTATION_PAN_MIN_MEDIAN_DEPTH:
            return None
    return centres, dirs


def _slow_pan_move(st: _Start, scene: Scene, rng: np.random.Generator) -> _Move:
    """Mostly constant speed with soft ends, whatever n: long clips have tiny steps."""
    prof = (1 - SLOW_PAN_EASE) * st.s + SLOW_PAN_EASE * st.ease
    yaw0, dyaw, move, along = _turn_and_travel(rng, SLOW_PAN_TURN_DEG, SLOW_PAN_TRAVEL, 0.5)
    centres = st.c0 + np.outer(prof * move, along)
    return centres, [_dir(yaw0 + dyaw * p, st.pitch0) for p in prof]


def _walk_move(st: _Start, scene: Scene, rng: np.random.Generator) -> _Move:
    """Walk forward along a gently bending path, looking where one goes (plus some sway)."""
    n, s, ease = len(st.s), st.s, st.ease
    yaw0 = rng.uniform(-np.pi, np.pi)
    length = rng.uniform(*WALK_LENGTH)
    turn = np.radians(rng.uniform(-WALK_TURN_DEG, WALK_TURN_DEG))
    sway = np.radians(rng.uniform(-WALK_LOOK_SWAY_DEG, WALK_LOOK_SWAY_DEG))
    fine = np.linspace(0.0, 1.0, 64 * max(n, 2))  # integrate the bending path finely
    fine_ease = 0.5 - 0.5 * np.cos(np.pi * fine)
    headings = np.stack([_dir(yaw0 + turn * e, 0.0) for e in fine_ease])
    steps = np.diff(fine_ease * length)[:, None] * (headings[1:] + headings[:-1]) / 2
    path = np.concatenate([np.zeros((1, 3)), np.cumsum(steps, axis=0)])
    idx = np.rint(s * (len(fine) - 1)).astype(int)
    bob = WALK_BOB * np.sin(2 * np.pi * ease * length / WALK_STRIDE)
    centres = st.c0 + path[idx] + np.outer(bob, [0.0, 1.0, 0.0])
    dirs = [
        _dir(yaw0 + turn * e + sway * np.sin(np.pi * x), st.pitch0) for e, x in zip(ease, s)
    ]
    return centres, dirs


#: the move of each trajectory kind (``TRAJECTORY_KINDS``)
_MOVES = {"forward": _forward_move, "pan": _pan_move, "orbit": _orbit_move,
          "rotation_pan": _rotation_pan_move, "slow_pan": _slow_pan_move, "walk": _walk_move}


def _propose(kind: str, n: int, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """One random draw of a ``kind`` move of ``n`` frames as (n, 4, 4) w2c; empty when the
    draw is unusable (``make_trajectory`` draws again)."""
    s = np.linspace(0.0, 1.0, n)
    ease = 0.5 - 0.5 * np.cos(np.pi * s)  # smooth start and stop, as a hand-held walk
    c0 = _random_free_point(scene, rng)
    pitch0 = np.radians(rng.uniform(0, 15))
    if kind not in _MOVES:
        raise ValueError(
            f"unknown trajectory kind {kind!r} ({', '.join(TRAJECTORY_KINDS)})"
        )
    move = _MOVES[kind](_Start(c0, pitch0, s, ease), scene, rng)
    if move is None:
        return np.empty((0, 4, 4))
    centres, dirs = move
    return np.stack([look_w2c(c, f) for c, f in zip(centres, dirs)])


def make_trajectory(kind: str, n_frames: int, scene: Scene, seed: int) -> np.ndarray:
    """(n, 4, 4) metric w2c poses of a RealEstate10K-like move inside ``scene``.

    Proposals are redrawn until every camera is clear of walls and objects, sees nothing
    closer than ``MIN_VIEW_DEPTH`` and looks into the room (``MIN_MEDIAN_DEPTH``,
    ``MIN_DEPTH_RATIO``): real-estate footage never bumps into furniture, close-ups would
    magnify the textures beyond what SIFT can match, and a lone flat wall is no 3D scene.
    """
    rng = np.random.default_rng(seed)
    for _ in range(MAX_TRAJECTORY_TRIES):
        poses = _propose(kind, n_frames, scene, rng)
        if len(poses) == 0:
            continue
        centres = np.stack([-p[:3, :3].T @ p[:3, 3] for p in poses])
        if not all(camera_is_free(scene, c) for c in centres):
            continue
        if not all(_view_is_good(scene, p) for p in poses):
            continue
        return poses
    raise RuntimeError(f"no valid {kind} trajectory in scene {scene.seed} (seed {seed})")


# ---------------------------------------------------------------------------------------------
# Stress models: what real inputs get wrong, applied with a known, recorded magnitude

#: drift is a random walk smoothed over this share of the clip: slow, as SLAM drift is
DRIFT_SMOOTH_FRACTION = 0.1
#: smooth depth-error field: random values on a grid this many cells across, upsampled
DEPTH_FIELD_CELLS = 4
#: neighbouring depths differing by more than this ratio make a discontinuity (an occlusion
#: edge, not a slanted surface) where a depth network smears
DEPTH_EDGE_REL_JUMP = 0.08


def rotvec_to_matrix(rv: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vectors (..., 3) in radians -> matrices (..., 3, 3)."""
    rv = np.asarray(rv, dtype=np.float64)
    theta = np.linalg.norm(rv, axis=-1)[..., None, None]
    k = rv / np.maximum(theta[..., 0], 1e-300)
    kx = np.zeros(rv.shape[:-1] + (3, 3))
    kx[..., 0, 1], kx[..., 0, 2] = -k[..., 2], k[..., 1]
    kx[..., 1, 0], kx[..., 1, 2] = k[..., 2], -k[..., 0]
    kx[..., 2, 0], kx[..., 2, 1] = -k[..., 1], k[..., 0]
    eye = np.broadcast_to(np.eye(3), kx.shape)
    return eye + np.sin(theta) * kx + (1 - np.cos(theta)) * (kx @ kx)


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotvec_to_matrix` for angles below pi (all this module needs)."""
    R = np.asarray(R, dtype=np.float64)
    cos = np.clip((np.trace(R, axis1=-2, axis2=-1) - 1) / 2, -1.0, 1.0)
    theta = np.arccos(cos)
    axis = np.stack(
        [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]],
        axis=-1,
    )
    sin = np.sin(theta)
    # theta / (2 sin theta) -> 1/2 as theta -> 0 (the skew part is then the rotation vector)
    factor = np.where(sin > 1e-12, theta / np.maximum(2 * sin, 1e-300), 0.5)
    return axis * factor[..., None]


def rotation_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    """Angle of ``Ra^T Rb`` in degrees (batched): how far apart two orientations are."""
    rel = np.swapaxes(Ra, -1, -2) @ Rb
    cos = np.clip((np.trace(rel, axis1=-2, axis2=-1) - 1) / 2, -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def _smooth_walk(rng: np.random.Generator, n: int, dims: int) -> np.ndarray:
    """A slow random walk (n, dims) starting at 0 with max |value| = 1 (zeros if n < 2)."""
    steps = rng.normal(size=(n, dims))
    if n < 2:
        return np.zeros((n, dims))
    sigma = max(1.0, DRIFT_SMOOTH_FRACTION * n)
    half = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    smooth = np.stack(
        [np.convolve(np.pad(steps[:, d], half, mode="reflect"), kernel, "valid")
         for d in range(dims)], axis=1,
    )
    walk = np.cumsum(smooth, axis=0)
    walk -= walk[0]
    peak = np.abs(walk).max() if dims == 1 else np.linalg.norm(walk, axis=1).max()
    return walk / peak if peak > 0 else walk


def _interpolate_poses(R: np.ndarray, c: np.ndarray, times: np.ndarray):
    """c2w rotations and centres at fractional frame ``times``: SLERP + linear.

    Outside [0, n-1] the first/last segment is extended at constant angular and linear
    velocity, as a pose stream running ahead of (or behind) the frames would continue.
    """
    n = len(R)
    k = np.clip(np.floor(times).astype(np.int64), 0, n - 2)
    f = times - k
    rel = matrix_to_rotvec(np.swapaxes(R[k], -1, -2) @ R[k + 1])
    R_t = R[k] @ rotvec_to_matrix(rel * f[:, None])
    c_t = c[k] + (c[k + 1] - c[k]) * f[:, None]
    return R_t, c_t


def perturb_poses(
    w2c: np.ndarray,
    rot_deg: float = 0.0,
    trans_m: float = 0.0,
    drift_m: float = 0.0,
    drift_deg: float = 0.0,
    time_offset_frames: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """SLAM-like errors on metric w2c poses (n, 4, 4): what the pose file should have said.

    In order: a time offset (the pose given for frame i is the true pose at time
    i + ``time_offset_frames``, SLERP + linear between frames); a slow drift (a smoothed random
    walk of the camera centre whose largest excursion over the clip is ``drift_m`` metres, and
    of the heading, a turn about the world vertical, peaking at ``drift_deg``; both zero at frame
    0, as SLAM drift accumulates from the start); and independent per-frame jitter, a rotation
    in the camera frame with RMS angle ``rot_deg`` and a centre offset with RMS length
    ``trans_m`` (isotropic Gaussians). The random draws do not depend on the magnitudes, so
    the same seed gives the same error shapes at any strength. Returns the noisy w2c and the
    realised errors per frame (for ``stress_truth.json``).
    """
    w2c = np.asarray(w2c, dtype=np.float64)
    n = len(w2c)
    values = [rot_deg, trans_m, drift_m, drift_deg, time_offset_frames]
    if not all(np.isfinite(v) for v in values) or min(values[:4]) < 0:
        raise ValueError(f"pose noise must be finite and non-negative (but the offset): {values}")
    if time_offset_frames != 0 and n < 2:
        raise ValueError("a time offset needs at least 2 frames to interpolate")
    R = np.swapaxes(w2c[:, :3, :3], 1, 2)  # c2w rotation
    c = -np.einsum("nij,nj->ni", R, w2c[:, :3, 3])  # camera centres
    rng = np.random.default_rng(seed)
    walk_pos = _smooth_walk(rng, n, 3)
    walk_yaw = _smooth_walk(rng, n, 1)[:, 0]
    jit_rot = rng.normal(scale=np.radians(rot_deg) / np.sqrt(3), size=(n, 3))
    jit_pos = rng.normal(scale=trans_m / np.sqrt(3), size=(n, 3))

    if time_offset_frames != 0:
        R_t, c_t = _interpolate_poses(R, c, np.arange(n) + float(time_offset_frames))
    else:
        R_t, c_t = R.copy(), c.copy()
    drift_pos = walk_pos * drift_m
    drift_yaw = np.radians(walk_yaw * drift_deg)
    R_n = rotvec_to_matrix(np.outer(drift_yaw, [0.0, 1.0, 0.0])) @ R_t @ rotvec_to_matrix(jit_rot)
    c_n = c_t + drift_pos + jit_pos
    if any(values):
        out = np.tile(np.eye(4), (n, 1, 1))
        out[:, :3, :3] = np.swapaxes(R_n, 1, 2)
        out[:, :3, 3] = -np.einsum("nij,nj->ni", out[:, :3, :3], c_n)
    else:  # zero noise: the input itself (the centre round trip would change the last bits)
        out = w2c.copy()
    realised = {
        "rot_jitter_deg": np.degrees(np.linalg.norm(jit_rot, axis=1)).tolist(),
        "trans_jitter_m": np.linalg.norm(jit_pos, axis=1).tolist(),
        "drift_pos_m": np.linalg.norm(drift_pos, axis=1).tolist(),
        "drift_yaw_deg": np.degrees(drift_yaw).tolist(),
        "time_offset_frames": float(time_offset_frames),  # exact: interpolation, no noise
        "rot_error_deg": rotation_angle_deg(R, R_n).tolist(),  # all effects, vs the truth
        "centre_error_m": np.linalg.norm(c_n - c, axis=1).tolist(),
    }
    return out, realised


def row_time_offsets(height: int, readout_frames: float) -> np.ndarray:
    """Capture time of each image row relative to the frame's time, in frames (H,).

    Convention: the frame time (its timestamp and the pose a SLAM system writes for it) is the
    middle of the readout; row r is read at ``(r / (H - 1) - 0.5) * readout_frames``, so the
    top row is ``readout_frames / 2`` early and the bottom row as late (``readout_frames`` =
    time from first to last row / frame period).
    """
    if height < 2:
        return np.zeros(height)
    return (np.arange(height) / (height - 1) - 0.5) * float(readout_frames)


def rolling_shutter_poses(
    w2c: np.ndarray, frame: int, height: int, readout_frames: float
) -> np.ndarray:
    """Per-row w2c (H, 4, 4) of frame ``frame`` of the metric trajectory ``w2c`` (n, 4, 4):
    row r sees from the pose at time ``frame + row_time_offsets(H, readout_frames)[r]``, the
    camera moving along the trajectory during the readout (SLERP + linear between frames,
    constant velocity beyond the ends, as ``_interpolate_poses``)."""
    w2c = np.asarray(w2c, dtype=np.float64)
    if len(w2c) < 2:
        raise ValueError("a rolling shutter needs at least 2 frames to interpolate")
    R = np.swapaxes(w2c[:, :3, :3], 1, 2)  # c2w rotation
    c = -np.einsum("nij,nj->ni", R, w2c[:, :3, 3])
    R_t, c_t = _interpolate_poses(R, c, int(frame) + row_time_offsets(height, readout_frames))
    out = np.tile(np.eye(4), (height, 1, 1))
    out[:, :3, :3] = np.swapaxes(R_t, 1, 2)
    out[:, :3, 3] = -np.einsum("nij,nj->ni", out[:, :3, :3], c_t)
    return out


def _field(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random field (H, W), zero mean and unit standard deviation."""
    cells_x = DEPTH_FIELD_CELLS
    cells_y = max(2, int(round(cells_x * height / max(width, 1))))
    grid = rng.normal(size=(cells_y + 1, cells_x + 1)).astype(np.float32)
    f = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float64)
    f -= f.mean()
    sd = f.std()
    return f / sd if sd > 0 else f


def depth_edges(depth: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood spans a depth jump above ``DEPTH_EDGE_REL_JUMP``."""
    d = depth.astype(np.float32)
    kernel = np.ones((3, 3), np.uint8)
    hi = cv2.dilate(d, kernel)
    lo = cv2.erode(d, kernel)
    return hi > lo * (1 + DEPTH_EDGE_REL_JUMP)


def perturb_depth(
    depth: np.ndarray,
    frame_bias: float = 0.0,
    smooth: float = 0.0,
    edge_px: int = 0,
    seed: int = 0,
    frame: int = 0,
) -> tuple[np.ndarray, dict[str, float]]:
    """A metric depth network's typical errors on exact depth (H, W) float32.

    Edge bleeding first: within ``edge_px`` pixels of a discontinuity (``depth_edges``) the
    depth is replaced by its box average over a (2 edge_px + 1)^2 window, so it ramps across
    the edge instead of jumping, as networks smear occlusion boundaries. Then a smooth
    multiplicative field ``exp(smooth * F)`` (F low-frequency, zero mean, unit std over the
    frame: ``smooth`` is the std of the log error) and a global per-frame factor
    ``exp(N(0, frame_bias))`` (lognormal). Randomness is keyed by (seed, frame), so frames can
    be rendered in any order. Returns the noisy depth and what was realised.
    """
    values = [frame_bias, smooth, edge_px]
    if not all(np.isfinite(v) for v in values) or min(values) < 0 or int(edge_px) != edge_px:
        raise ValueError(f"depth noise must be non-negative (edge_px an integer): {values}")
    rng = np.random.default_rng([int(seed), int(frame)])
    log_bias = float(rng.normal()) * frame_bias
    err = _field(rng, *depth.shape)
    out = depth.astype(np.float64)
    bled = 0.0
    if edge_px > 0:
        win = 2 * int(edge_px) + 1
        band = cv2.dilate(depth_edges(depth).astype(np.uint8), np.ones((win, win), np.uint8)) > 0
        smeared = cv2.blur(depth.astype(np.float32), (win, win), borderType=cv2.BORDER_REPLICATE)
        out[band] = smeared[band]
        bled = float(band.mean())
    out *= np.exp(smooth * err + log_bias)
    realised = {
        "bias": float(np.exp(log_bias)),
        "smooth_log_std": float(np.std(smooth * err)),
        "edge_fraction": bled,
    }
    return out.astype(np.float32), realised
