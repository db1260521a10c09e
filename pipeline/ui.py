"""Trajectory designer: ``python -m pipeline ui [image=PATH | clip=CLIP_ID] [overrides]``.

A local web page (viser: point clouds, camera frustums, transform gizmos and GUI panels in the
browser over a websocket, the viewer nerfstudio uses) showing the condition image's metric point
cloud with a metre grid and a scale bar, the condition camera, and the camera path as keyframe
frustums joined by the interpolated path. Editing rules live in
``trainer.inference.designer.TrajectoryDesign``; this module only wires widgets to it and to the
project's preview renderer (``trainer.inference.preview``) and sampler
(``trainer.sampling.sample_to_mp4``).

Why viser: it ships point clouds, camera frustums, translate/rotate gizmos, GUI panels,
notifications and file upload in one pip package with a prebuilt web client (no Node build, no
torch or CUDA dependency), it is maintained (nerfstudio's viewer), and its callbacks are plain
Python, so the page calls the project's renderer and sampler directly. Gradio or a hand-written
three.js page would need the 3D scene, gizmos and the websocket sync written here.

A bad ``image=`` or ``clip=`` stops at start-up with one line and exit code 2, and a
non-loopback ``host=`` gets a warning line. Every later failure a user can cause (no depth, no
checkpoint, an unreadable upload, a bad edit) is shown in the page as one sentence (the status
line plus a notification); the page never dies.
"""

from __future__ import annotations

import base64
import copy
import io
import ipaddress
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from trainer.inference import preview as pv
from trainer.inference.designer import (
    TrajectoryDesign,
    euler_to_matrix,
    matrix_to_euler,
)
from trainer.inference.scene import PointCloud, intrinsics_from_normalised, point_cloud
from trainer.inference.trajectory import PRESETS, TrajectoryError, scene_depth

# display-only constants (no effect on any output file)
THUMB_SIDE = 128  # condition image drawn on its frustum, pixels (long side)
FLOOR_PERCENTILE = 95  # the grid sits at this percentile of the points' y (y down: the floor)
UNUSABLE_TINT = np.array([255, 0, 255])  # magenta over unusable pixels in the mask view
UNUSABLE_ALPHA = 0.6
NOTIFY_SECONDS = 10.0  # an error notification closes itself after this (the status line stays)
SHORT_KEYS = ("image", "clip", "port", "host")  # not depth: the depth backend group


class SceneError(RuntimeError):
    """The condition image or its depth cannot be loaded (one sentence for the page)."""


@dataclass
class Scene:
    """The condition image, its metric depth and intrinsics, and where they came from."""

    name: str
    image_path: Path
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres
    K: np.ndarray  # (3, 3) pixels
    depth_source: str

    @property
    def median_depth(self) -> float:
        return scene_depth(self.depth)


def expand_overrides(overrides: list[str]) -> list[str]:
    """``image=PATH`` -> ``ui.image=PATH`` (and clip, port, host): the short form the
    command line documents."""
    out = []
    for ov in overrides:
        key = ov.split("=", 1)[0]
        out.append(f"ui.{ov}" if key in SHORT_KEYS else ov)
    return out


# ------------------------------------------------------------------------------- scene
def _read_rgb(path: Path, what: str, cfg: dict[str, Any]) -> tuple[np.ndarray, tuple[int, int]]:
    """The condition image at its working size and its own (W, H), with the sample stage's size
    rules (``train.sampling.min_image_side`` / ``max_image_side``)."""
    s = cfg["train"]["sampling"]
    try:
        return pv.read_condition_image(path, int(s["min_image_side"]), int(s["max_image_side"]),
                                       what)
    except pv.ImageError as exc:
        raise SceneError(str(exc)) from None


def _depth_cfg(cfg: dict[str, Any]) -> dict[str, Any] | None:
    d = copy.deepcopy(cfg.get("depth") or {})
    if d.get("backend") != "da2_metric":
        return None
    d["local_files_only"] = bool(cfg["ui"]["depth_local_files_only"])
    return d


def _depth(rgb: np.ndarray, depth_file: str | None, dataset_file: Path | None,
           cfg: dict[str, Any], device: str,
           full_wh: tuple[int, int] | None = None) -> tuple[np.ndarray, str]:
    dcfg = _depth_cfg(cfg)
    if not (depth_file or dcfg or dataset_file):
        raise SceneError("no depth for this image: start the designer with depth=da2_metric "
                         "(Depth Anything V2 metric weights on disk) or ui.depth=FILE")
    try:
        return pv.condition_depth(rgb, depth_file, dataset_file, dcfg, device, full_wh)
    except pv.DepthUnavailable as exc:
        raise SceneError(str(exc)) from None
    except (OSError, ValueError) as exc:  # transformers: weights not on disk, bad checkpoint
        model = (dcfg or {}).get("model")
        raise SceneError(f"depth model {model} is not available locally ({type(exc).__name__}):"
                         " download it once or give ui.depth=FILE") from None


def find_clip(cfg: dict[str, Any], clip_id: str) -> tuple[Path, np.ndarray, Path | None]:
    """First frame, normalised intrinsics and dataset depth file of a RealEstate10K-layout clip
    (the bundled sample is rendered on first use, as ``run`` does)."""
    from pipeline.errors import ClipError
    from pipeline.formats.re10k import parse_pose_file

    ds = cfg["dataset"]
    if ds.get("layout") != "re10k":
        raise SceneError(f"clip={clip_id}: the designer reads RealEstate10K-layout datasets "
                         f"(dataset '{ds.get('name')}' is '{ds.get('layout')}'); use image=PATH")
    if ds.get("definition"):
        from pipeline.log import progress_callback
        from pipeline.synthetic.sample_data import generate_sample

        generate_sample(Path(ds["definition"]), Path(ds["root"]), on_progress=progress_callback(
            f"render {ds.get('name')}", "frames", bool(cfg.get("progress", True)),
            float(cfg["log"]["progress_every_s"]), emit=lambda m: print(m, flush=True)))
    root = Path(ds["root"])
    splits = [str(s) for s in ds.get("splits") or []]
    if not clip_id:
        want = str(cfg["ui"]["split"])
        folder = root / want
        files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
        if not files:
            raise SceneError(f"no clip in {folder}: give clip=CLIP_ID or image=PATH")
        clip_id = files[0].stem
    for split in splits:
        pose = root / split / f"{clip_id}.txt"
        if pose.is_file():
            break
    else:
        raise SceneError(f"clip {clip_id} not found: no pose file {root}/<split>/{clip_id}.txt "
                         f"(splits {', '.join(splits)})")
    ing = cfg["ingest"]
    try:
        pf = parse_pose_file(pose, clip_id, float(ing["rotation_tolerance"]),
                             float(ing["intrinsics_tolerance"]), 1)
    except ClipError as exc:
        raise SceneError(str(exc)) from None
    frames_root = Path(ds.get("frames_root") or root / "frames")
    exts = [str(e) for e in cfg["ingest"]["image_extensions"]]
    for folder in (frames_root / split / clip_id, frames_root / clip_id):
        cand = [folder / f"{int(pf.timestamps_us[0])}.{e}" for e in exts]
        hit = [c for c in cand if c.is_file()]
        if hit:
            frame = hit[0]
            break
    else:
        raise SceneError(f"clip {clip_id}: no image of its first frame under {frames_root} "
                         "(the designer reads image-folder clips)")
    row = {"clip_id": clip_id, "split": split, "frame_paths": [str(frame)]}
    depth_file = pv.dataset_depth_path(row, 0, ds.get("depth_root"))
    return frame, np.asarray(pf.intrinsics, dtype=np.float64), depth_file


def load_scene(cfg: dict[str, Any], device: str) -> Scene:
    """The condition image and its metric depth from ``ui.image`` or ``ui.clip``."""
    u = cfg["ui"]
    s = cfg["train"]["sampling"]
    if u.get("image"):
        path = Path(str(u["image"]))
        rgb, full_wh = _read_rgb(path, "image", cfg)
        h, w = rgb.shape[:2]
        try:
            K, _ = pv.image_intrinsics(path, w, h, s.get("intrinsics"), float(s["fov_deg"]))
        except ValueError as exc:
            raise SceneError(str(exc)) from None
        depth, src = _depth(rgb, str(u.get("depth") or "") or None, None, cfg, device, full_wh)
        return Scene(path.stem, path, rgb, depth, K, src)
    frame, intr, depth_file = find_clip(cfg, str(u.get("clip") or ""))
    rgb, full_wh = _read_rgb(frame, "frame", cfg)
    h, w = rgb.shape[:2]
    depth, src = _depth(rgb, str(u.get("depth") or "") or None, depth_file, cfg, device,
                        full_wh)
    return Scene(frame.parent.name, frame, rgb, depth, intrinsics_from_normalised(intr, w, h),
                 src)


def preview_scene(scene: Scene, max_side: int) -> tuple[PointCloud, np.ndarray, int, int]:
    """A point cloud and K at the preview resolution (long side ``max_side``): the designer's
    preview is fast feedback; the full-size cloud is what ``stage=sample`` renders."""
    h, w = scene.rgb.shape[:2]
    f = min(1.0, float(max_side) / max(h, w))
    ph, pw = max(1, round(h * f)), max(1, round(w * f))
    rgb = cv2.resize(scene.rgb, (pw, ph), interpolation=cv2.INTER_AREA)
    depth = cv2.resize(scene.depth, (pw, ph), interpolation=cv2.INTER_NEAREST)
    K = scene.K.copy()
    K[0] *= pw / w
    K[1] *= ph / h
    return point_cloud(rgb, depth, K), K, ph, pw


def gif_base64(frames: np.ndarray, fps: float) -> str:
    """(F, H, W, 3) uint8 -> base64 animated GIF: plays in every browser, unlike the mp4v files
    the project writes (which are kept for download)."""
    from PIL import Image

    ims = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    buf = io.BytesIO()
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:],
                duration=max(20, int(round(1000.0 / fps))), loop=0)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def read_mp4(path: str | Path) -> np.ndarray:
    """mp4 -> (F, H, W, 3) RGB uint8 (to show a generated video in the page)."""
    from pipeline.formats.frames import read_video_rgb

    frames = read_video_rgb(str(path))
    if not frames:
        raise OSError(f"cannot read video {path}")
    return np.stack(frames)


def free_port(host: str) -> int:
    """An unused TCP port on ``host`` (tests; users pick ``ui.port``)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------- app
class DesignerApp:
    """The viser server, its widgets and the design being edited."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        import viser

        self.cfg = cfg
        self.u = cfg["ui"]
        self.s = cfg["train"]["sampling"]
        dev = str(self.u.get("device") or "auto")
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev
        self.lock = threading.RLock()
        self.scene: Scene | None = None
        self.design = TrajectoryDesign(int(self.u["num_frames"]), float(self.u["duration_s"]))
        self.selected = 0
        self._syncing = False
        self.generating = False
        self.gen_progress = (0, 0)  # denoising steps done / total of the last generation
        self.last_preview: dict[str, np.ndarray] | None = None
        self.server = viser.ViserServer(host=str(self.u["host"]), port=int(self.u["port"]),
                                        label="metric-align trajectory designer", verbose=False)
        self.server.scene.set_up_direction("-y")  # OpenCV camera axes: y points down
        self._build_gui()

    @property
    def port(self) -> int:
        return int(self.server.get_port())

    @property
    def url(self) -> str:
        return f"http://{self.u['host']}:{self.port}"

    def out_dir(self) -> Path:
        name = self.scene.name if self.scene else "scene"
        d = Path(self.cfg["paths"]["work_dir"]) / str(self.u["out_subdir"]) / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    # --------------------------------------------------------------------------- messages
    def error(self, msg: str) -> None:
        """One sentence in the status line and as a red notification."""
        line = " ".join(str(msg).split())
        self.status.content = f"**Error:** {line}"
        for client in self.server.get_clients().values():
            client.add_notification("Error", line, color="red", auto_close_seconds=NOTIFY_SECONDS)

    def info(self, msg: str) -> None:
        self.status.content = msg

    def _guard(self, fn: Any) -> Any:
        """Wrap a callback: user errors and unexpected ones become a sentence in the page."""
        def run(*args: Any) -> None:
            try:
                with self.lock:
                    fn(*args)
            except (TrajectoryError, SceneError, ValueError, OSError) as exc:
                self.error(str(exc))
            except Exception as exc:  # noqa: BLE001 - a dead page helps nobody; log it too
                traceback.print_exc()
                self.error(f"{type(exc).__name__}: {exc}")
        return run

    # --------------------------------------------------------------------------- gui
    def _build_gui(self) -> None:
        g = self.server.gui
        self.status = g.add_markdown("Loading the scene...")
        self.upload = g.add_upload_button("Upload image", mime_type="image/*",
                                          hint="condition image; depth from the depth backend")
        with g.add_folder("Path"):
            self.preset = g.add_dropdown("Preset", PRESETS, initial_value=PRESETS[0])
            self.btn_preset = g.add_button("Apply preset")
            self.frames = g.add_number("Frames", int(self.u["num_frames"]), min=2, max=1000,
                                       step=1)
            self.duration = g.add_number("Duration (s)", float(self.u["duration_s"]), min=0.1,
                                         max=600.0, step=0.1)
        with g.add_folder("Keyframe"):
            self.sel = g.add_number("Selected keyframe", 0, min=0, max=0, step=1)
            self.pos = [g.add_number(f"{a} (m)", 0.0, step=0.01) for a in "XYZ"]
            self.rot = [g.add_number(f"{a} (deg)", 0.0, step=0.5)
                        for a in ("Yaw", "Pitch", "Roll")]
            self.focal = g.add_number("Focal scale", 1.0, min=0.1, max=10.0, step=0.05)
            self.btn_add = g.add_button("Add keyframe")
            self.btn_del = g.add_button("Delete keyframe")
            self.btn_up = g.add_button("Move earlier")
            self.btn_down = g.add_button("Move later")
        with g.add_folder("Preview and export"):
            self.btn_preview = g.add_button("Preview")
            self.show_mask = g.add_checkbox("Show usable mask", False)
            self.preview_html = g.add_html("")
            self.btn_export = g.add_button("Export")
            self.export_md = g.add_markdown("")
        with g.add_folder("Generate"):
            self.sns = g.add_checkbox("Noise shaping (SNS)", bool(self.s["noise_shaping"]))
            self.btn_gen = g.add_button("Generate")
            self.progress = g.add_progress_bar(0.0, visible=False, animated=True)
            self.gen_md = g.add_markdown("")
            self.gen_html = g.add_html("")
        self.upload.on_upload(lambda _: self._guard(self._uploaded)())
        self.btn_preset.on_click(lambda _: self._guard(self._apply_preset)())
        self.frames.on_update(lambda _: self._guard(self._timing)())
        self.duration.on_update(lambda _: self._guard(self._timing)())
        self.sel.on_update(lambda _: self._guard(self._select)(int(self.sel.value)))
        for h in (*self.pos, *self.rot, self.focal):
            h.on_update(lambda _: self._guard(self._from_inputs)())
        self.btn_add.on_click(lambda _: self._guard(self._add)())
        self.btn_del.on_click(lambda _: self._guard(self._delete)())
        self.btn_up.on_click(lambda _: self._guard(self._reorder)(-1))
        self.btn_down.on_click(lambda _: self._guard(self._reorder)(1))
        self.btn_preview.on_click(lambda _: self._guard(self._preview)())
        self.show_mask.on_update(lambda _: self._guard(self._show_preview)())
        self.btn_export.on_click(lambda _: self._guard(self._export)())
        self.btn_gen.on_click(lambda _: self._guard(self._generate)())

    # --------------------------------------------------------------------------- scene
    def load(self) -> bool:
        """Load the scene and draw it; on failure the page shows why (and stays usable)."""
        if not self.u.get("image") and self.cfg["dataset"].get("definition"):
            self.info("Loading the scene (a synthetic dataset is rendered on first use: a few "
                      "minutes)...")
        try:
            scene = load_scene(self.cfg, self.device)
        except SceneError as exc:
            self.error(str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - the page must stay up; the log has the trace
            traceback.print_exc()
            self.error(f"cannot load the scene: {type(exc).__name__}: {exc}")
            return False
        with self.lock:
            self.scene = scene
            self._draw_scene()
            self.design = TrajectoryDesign.from_preset(
                str(self.preset.value), int(self.frames.value), float(self.duration.value),
                scene.median_depth, dict(self.s["preset"]), int(self.u["preset_keyframes"]))
            self._redraw_keyframes()
            self._select(min(1, len(self.design.keyframes) - 1))
            h, w = scene.rgb.shape[:2]
            self.info(f"**{scene.name}** ({w}x{h}), depth: {scene.depth_source}, median "
                      f"{scene.median_depth:.2f} m. Grid: {float(self.u['grid_cell_m']):g} m "
                      f"cells, {float(self.u['grid_section_m']):g} m sections; red bar: "
                      f"{self._bar_m:g} m.")
        return True

    def _uploaded(self) -> None:
        """Save an uploaded image under the work dir and make it the condition image."""
        f = self.upload.value
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(f.name).name)
        if not f.content or not name.strip("._"):
            raise SceneError("the upload was empty")
        path = Path(self.cfg["paths"]["work_dir"]) / str(self.u["out_subdir"]) / "uploads" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f.content)
        self.u["image"], self.u["depth"] = str(path), ""
        self.info(f"Loading {name}...")
        self.load()

    def _draw_scene(self) -> None:
        sc = self.scene
        assert sc is not None
        d = sc.median_depth
        cloud = point_cloud(sc.rgb, sc.depth, sc.K)
        xyz, rgb = cloud.xyz.numpy(), cloud.rgb.numpy()
        cap = int(self.u["max_points"])
        if len(xyz) > cap:
            stride = int(np.ceil(len(xyz) / cap))
            xyz, rgb = xyz[::stride], rgb[::stride]
        v = self.server.scene
        v.add_point_cloud("/scene/points", points=xyz.astype(np.float32),
                          colors=(rgb * 255).astype(np.uint8),
                          point_size=float(self.u["point_size_frac"]) * d)
        floor = float(np.percentile(xyz[:, 1], FLOOR_PERCENTILE)) if len(xyz) else 0.0
        extent = float(np.ceil(float(self.u["grid_extent_frac"]) * d))
        v.add_grid("/scene/grid", width=extent, height=extent, plane="xz",
                   cell_size=float(self.u["grid_cell_m"]),
                   section_size=float(self.u["grid_section_m"]),
                   position=(0.0, floor, d))
        bar = float(10 ** np.floor(np.log10(max(d, 1e-3))))  # 1 m for a room, 0.1 m close up
        self._bar_m = bar
        p0 = np.array([-bar / 2, floor, 0.5 * d])
        v.add_line_segments("/scene/scale_bar",
                            points=np.array([[p0, p0 + [bar, 0, 0]]], dtype=np.float32),
                            colors=(230, 30, 30), line_width=6.0)
        v.add_label("/scene/scale_bar/label", f"{bar:g} m", position=tuple(p0 + [bar / 2, 0, 0]))
        h, w = sc.rgb.shape[:2]
        fov = 2 * np.arctan(h / (2 * sc.K[1, 1]))
        self._fov, self._aspect = float(fov), w / h
        side = max(h, w)
        small = cv2.resize(sc.rgb, (max(1, w * THUMB_SIDE // side),
                                    max(1, h * THUMB_SIDE // side)))
        v.add_camera_frustum("/scene/condition_camera", fov=self._fov, aspect=self._aspect,
                             scale=float(self.u["condition_frustum_frac"]) * d, image=small,
                             color=(40, 40, 40))
        # start beside, above and behind the condition camera: the path is not hidden behind
        # the condition image drawn on its frustum
        self.server.initial_camera.position = tuple(float(x) * d for x in self.u["view_from_frac"])
        self.server.initial_camera.look_at = (0.0, 0.0, float(self.u["view_at_frac"]) * d)
        self.server.initial_camera.up = (0.0, -1.0, 0.0)

    def _redraw_keyframes(self) -> None:
        """Gizmo + frustum per keyframe (1..n; 0 is the condition camera) and the path."""
        v = self.server.scene
        for h in getattr(self, "_kf_nodes", []):
            h.remove()  # a gizmo's frustum and label are its children: removed with it
        self._kf_nodes = []
        d = self.scene.median_depth if self.scene else 1.0
        for i, k in enumerate(self.design.keyframes):
            if i == 0:
                continue
            gz = v.add_transform_controls(f"/keyframes/k{i}",
                                          scale=float(self.u["gizmo_frac"]) * d,
                                          wxyz=k.wxyz, position=k.position)
            fr = v.add_camera_frustum(f"/keyframes/k{i}/frustum", fov=self._fov,
                                      aspect=self._aspect,
                                      scale=float(self.u["frustum_frac"]) * d,
                                      color=(30, 90, 230))
            v.add_label(f"/keyframes/k{i}/label", f"K{i}")  # a child of the gizmo
            gz.on_update(lambda h, i=i: self._guard(self._from_gizmo)(i, h.target))
            fr.on_click(lambda _, i=i: self._guard(self._select)(i))
            self._kf_nodes.append(gz)
        self._redraw_path()

    def _redraw_path(self) -> None:
        traj = self.design.trajectory()
        pts = traj.c2w[:, :3, 3].astype(np.float32)
        v = self.server.scene
        if len(pts) >= 2:
            v.add_spline_catmull_rom("/path", points=pts, color=(250, 170, 0), line_width=3.0)
        v.add_point_cloud("/path_frames", points=pts, colors=(250, 170, 0),
                          point_size=float(self.u["path_point_frac"])
                          * (self.scene.median_depth if self.scene else 1.0))

    # --------------------------------------------------------------------------- editing
    def _sync_inputs(self) -> None:
        """Show the selected keyframe in the number inputs (without feeding back)."""
        k = self.design.keyframes[self.selected]
        self._syncing = True
        try:
            self.sel.max = len(self.design.keyframes) - 1
            self.sel.value = self.selected
            for h, x in zip(self.pos, k.position):
                h.value = round(float(x), 4)
            for h, a in zip(self.rot, matrix_to_euler(k.c2w[:3, :3])):
                h.value = round(float(a), 3)
            self.focal.value = round(float(k.focal_scale), 4)
            fixed = self.selected == 0
            for h in (*self.pos, *self.rot, self.btn_del, self.btn_up, self.btn_down):
                h.disabled = fixed
        finally:
            self._syncing = False

    def _select(self, i: int) -> None:
        if self._syncing:
            return
        self.selected = int(np.clip(i, 0, len(self.design.keyframes) - 1))
        self._sync_inputs()

    def _from_inputs(self) -> None:
        if self._syncing:
            return
        i = self.selected
        if i == 0:
            self.design.move(0, focal_scale=float(self.focal.value))
        else:
            R = euler_to_matrix(*(float(h.value) for h in self.rot))
            self.design.move(i, position=[float(h.value) for h in self.pos], rotation=R,
                             focal_scale=float(self.focal.value))
            k = self.design.keyframes[i]
            node = self._gizmo(i)
            if node is not None:
                node.position, node.wxyz = k.position, k.wxyz
        self._redraw_path()

    def _gizmo(self, i: int) -> Any:
        for h in getattr(self, "_kf_nodes", []):
            if getattr(h, "name", "") == f"/keyframes/k{i}":
                return h
        return None

    def _from_gizmo(self, i: int, handle: Any) -> None:
        if i >= len(self.design.keyframes):
            return
        self.design.move(i, position=np.asarray(handle.position), wxyz=np.asarray(handle.wxyz))
        self.selected = i
        self._sync_inputs()
        self._redraw_path()

    def _add(self) -> None:
        d = self.scene.median_depth if self.scene else 1.0
        self.selected = self.design.add(self.selected, step_m=float(self.u["add_step_frac"]) * d)
        self._redraw_keyframes()
        self._sync_inputs()

    def _delete(self) -> None:
        self.design.delete(self.selected)
        self.selected = min(self.selected, len(self.design.keyframes) - 1)
        self._redraw_keyframes()
        self._sync_inputs()

    def _reorder(self, step: int) -> None:
        j = self.selected + step
        self.design.reorder(self.selected, j)
        self.selected = j
        self._redraw_keyframes()
        self._sync_inputs()

    def _timing(self) -> None:
        self.design.set_timing(int(self.frames.value), float(self.duration.value))
        self._redraw_path()

    def _apply_preset(self) -> None:
        if self.scene is None:
            raise SceneError("no scene loaded: presets are sized from its depth")
        self.design = TrajectoryDesign.from_preset(
            str(self.preset.value), int(self.frames.value), float(self.duration.value),
            self.scene.median_depth, dict(self.s["preset"]), int(self.u["preset_keyframes"]))
        self.selected = min(1, len(self.design.keyframes) - 1)
        self._redraw_keyframes()
        self._sync_inputs()

    # --------------------------------------------------------------------------- outputs
    def _preview(self) -> None:
        """Render the current path with the project's renderer; write mp4s; play in the page."""
        from trainer.sampling import write_mp4

        if self.scene is None:
            raise SceneError("no scene loaded: nothing to preview")
        t0 = time.perf_counter()
        cloud, K, h, w = preview_scene(self.scene, int(self.u["preview_max_side"]))
        traj = self.design.trajectory()
        prev = pv.render_preview(cloud.to(self.device), traj, K, h, w, int(self.s["splat_size"]),
                                 int(self.s["sns_edge_k"]), int(self.s["render_chunk_frames"]),
                                 float(self.s["render_depth_tol"]))
        frames = pv.to_uint8_frames(prev.render.image)
        mask = prev.usable.cpu().numpy()
        overlay = frames.copy()
        overlay[~mask] = ((1 - UNUSABLE_ALPHA) * overlay[~mask]
                          + UNUSABLE_ALPHA * UNUSABLE_TINT).astype(np.uint8)
        out = self.out_dir()
        write_mp4(frames, out / "preview.mp4", traj.fps)
        write_mp4(pv.mask_frames(prev.usable), out / "mask.mp4", traj.fps)
        self.last_preview = {"frames": frames, "overlay": overlay, "fps": np.array(traj.fps)}
        self._show_preview()
        cov = float(mask.mean())
        self.info(f"Preview: {len(frames)} frames {w}x{h} in {time.perf_counter() - t0:.1f} s, "
                  f"usable {100 * cov:.0f}% (`{out / 'preview.mp4'}`).")

    def _show_preview(self) -> None:
        if self.last_preview is None:
            return
        key = "overlay" if self.show_mask.value else "frames"
        b64 = gif_base64(self.last_preview[key], float(self.last_preview["fps"]))
        what = "usable mask (magenta: unusable)" if self.show_mask.value else "preview"
        self.preview_html.content = (
            f'<div><img id="preview-video" alt="{what}" style="width:100%" '
            f'src="data:image/gif;base64,{b64}"/><div>{what}</div></div>')

    def _export(self) -> Path:
        path = self.design.export(self.out_dir() / "trajectory.json")
        self.export_md.content = f"Exported `{path}`"
        self.info(f"Trajectory written to `{path}` ({self.design.num_frames} frames).")
        return path

    def _generate(self) -> None:
        tcfg, train_dir = self._generation_config()
        n = int(tcfg["data"]["num_frames"])
        gen_design = self._write_generation_inputs(tcfg, n)
        s = tcfg["sampling"]
        self.generating = True
        self.btn_gen.disabled = True
        self.progress.visible = True
        self.progress.value = 0.0
        self.gen_progress = (0, int(s["steps"]))
        t0 = time.perf_counter()
        sns = "on" if s["noise_shaping"] else "off"
        self.gen_md.content = f"Generating {n} frames (SNS {sns}): loading the model..."

        def progress(done: int, total: int) -> None:
            self.gen_progress = (done, total)
            self.progress.value = 100.0 * done / total
            self.gen_md.content = (f"Generating {n} frames (SNS {sns}): denoising step "
                                   f"{done}/{total}, {time.perf_counter() - t0:.0f} s")

        threading.Thread(target=self._run_generation,
                         args=(tcfg, train_dir, gen_design, sns, progress, t0),
                         daemon=True).start()

    def _generation_config(self) -> tuple[dict[str, Any], Path]:
        """A copy of the train config and its train dir, once generation can start: a scene
        is loaded, none is running, and a checkpoint exists (else a message says to train)."""
        from trainer import checkpoint as ckpt

        if self.scene is None:
            raise SceneError("no scene loaded: nothing to generate from")
        if self.generating:
            raise ValueError("a generation is already running")
        tcfg = copy.deepcopy(self.cfg["train"])
        train_dir = Path(self.cfg["paths"]["work_dir"]) / tcfg["out_subdir"]
        if ckpt.latest_checkpoint(train_dir / "checkpoints") is None:
            raise SceneError(f"no checkpoint under {train_dir / 'checkpoints'}: train first "
                             "(python -m pipeline run stage=train)")
        return tcfg, train_dir

    def _write_generation_inputs(self, tcfg: dict[str, Any], n: int) -> Any:
        """Write the sampler's inputs (trajectory retimed to ``n`` frames, depth, image) into
        the output folder and point ``tcfg["sampling"]`` at them; returns the retimed design."""
        out = self.out_dir()
        gen_design = copy.deepcopy(self.design)
        gen_design.set_timing(n, self.design.duration_s * n / self.design.num_frames)
        traj_path = gen_design.export(out / "generate_trajectory.json")
        depth_path = out / "depth.npy"
        np.save(depth_path, self.scene.depth.astype(np.float32), allow_pickle=False)
        image = self.scene.image_path
        if not self.cfg["ui"].get("image"):  # a clip frame: outputs named after the clip
            image = out / f"{self.scene.name}{image.suffix}"
            shutil.copyfile(self.scene.image_path, image)
        s = tcfg["sampling"]
        s.update(image=str(image), trajectory=str(traj_path),
                 trajectory_preset="", depth=str(depth_path), depth_model="",
                 noise_shaping=bool(self.sns.value), fps=float(gen_design.fps))
        if self.cfg["ui"].get("image") and self.s.get("intrinsics"):
            s["intrinsics"] = list(self.s["intrinsics"])
        elif not self.cfg["ui"].get("image"):  # a clip frame: its own calibration
            h, w = self.scene.rgb.shape[:2]
            K = self.scene.K
            s["intrinsics"] = [K[0, 0] / w, K[1, 1] / h, K[0, 2] / w, K[1, 2] / h]
        return gen_design

    def _run_generation(
        self, tcfg: dict[str, Any], train_dir: Path, gen_design: Any, sns: str,
        progress: Callable[[int, int], None], t0: float,
    ) -> None:
        """The generation thread: sample, show the result as a GIF (or the error), and give
        the page back its button whatever happened."""
        from trainer.sampling import sample_to_mp4

        try:
            res = sample_to_mp4(tcfg, train_dir, None, self.device,
                                on_step=lambda i, n: progress(i + 1, n))
            frames = read_mp4(res["mp4"])
            b64 = gif_base64(frames, float(gen_design.fps))
            self.gen_html.content = (f'<div><img id="generated-video" alt="generated" '
                                     f'style="width:100%" src="data:image/gif;base64,{b64}"/>'
                                     f"<div>generated (SNS {sns})</div></div>")
            self.gen_md.content = (f"Generated in {time.perf_counter() - t0:.0f} s: "
                                   f"`{res['mp4']}`")
        except Exception as exc:  # noqa: BLE001 - shown in the page, logged here
            traceback.print_exc()
            self.gen_md.content = ""
            self.error(f"generation failed: {exc}")
        finally:
            self.generating = False
            self.btn_gen.disabled = False
            self.progress.visible = False

    def stop(self) -> None:
        self.server.stop()


def check_start(cfg: dict[str, Any]) -> None:
    """``image=`` / ``clip=`` checked before the server starts (``SceneError``): a typo is one
    line in the terminal, not a page that opens on an error. Depth is left to the page, which
    can still take an uploaded image."""
    u = cfg["ui"]
    if u.get("image"):
        _read_rgb(Path(str(u["image"])), "image", cfg)
        return
    ds = cfg["dataset"]
    if ds.get("definition"):  # rendered on first use: never into a mistyped dataset.root
        from pipeline.formats.dataset import check_dataset

        check_dataset(cfg)
    if u.get("clip"):
        if ds.get("definition"):
            from pipeline.synthetic.sample_data import MARKER

            if not (Path(ds["root"]) / MARKER).is_file():
                print(f"trajectory designer: rendering dataset '{ds.get('name')}' on first use "
                      "(a few minutes)...", flush=True)
        frame, _, _ = find_clip(cfg, str(u["clip"]))
        _read_rgb(frame, "frame", cfg)


def network_warning(host: str) -> str | None:
    """Why serving on ``host`` is risky, or None for a loopback address: the page writes files
    and starts generation for whoever can open it (there is no login)."""
    h = host.strip().strip("[]")
    if h.lower() == "localhost":
        return None
    try:
        if ipaddress.ip_address(h).is_loopback:
            return None
    except ValueError:  # a host name: it may resolve to a network interface
        pass
    return (f"ui.host={host}: the designer is reachable from the network, and anyone who can "
            "open it can write files and start generation (127.0.0.1 plus `ssh -L` keeps it "
            "private)")


def check_local(cfg: dict[str, Any]) -> None:
    """The designer reads images, depth maps and checkpoints through libraries that take file
    names, and writes its exports beside them, so every place it uses must be local: an
    ``s3://`` value is one ``ConfigError`` line here, not a local folder named ``s3:``."""
    from pipeline import storage
    from pipeline.errors import ConfigError

    u, ds = cfg["ui"], cfg["dataset"]
    places = [("paths.work_dir", cfg["paths"]["work_dir"]), ("ui.image", u.get("image")),
              ("ui.depth", u.get("depth"))]
    if not u.get("image"):  # a clip of the dataset
        places += [(f"dataset.{k}", ds.get(k)) for k in ("root", "frames_root", "depth_root")]
    for key, value in places:
        if value and storage.is_uri(value):
            raise ConfigError(f"{key}={value}: the trajectory designer works on local files "
                              f"only; give a local {key} (a model trained on a bucket: copy "
                              "its train/checkpoints folder into a local paths.work_dir)")


class _Stopped(BaseException):
    """SIGTERM or SIGINT (Ctrl-C) arrived: the designer's normal end (not an ``Exception``, so
    no callback's error handling can swallow it)."""


#: the signals that stop the designer: Ctrl-C, and what service managers and ``kill`` send
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _raise_stopped(signum: int, _frame: Any) -> None:
    raise _Stopped(signum)


def _handle_stop_signals(handler: Any) -> dict[int, Any]:
    """Python handlers for the stop signals; returns the ones they replace. They replace the
    native handler COLMAP's logging installs when pycolmap is imported (it dumps a native stack
    trace on SIGTERM), and an inherited "ignore SIGINT" (a designer started in the background
    still stops on Ctrl-C). Signals can be handled only in the main thread: elsewhere (an
    embedding program) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig in STOP_SIGNALS:
        old = signal.getsignal(sig)
        signal.signal(sig, handler)
        previous[sig] = signal.SIG_DFL if old is None else old  # None: a native handler
    return previous


def main_ui(overrides: list[str]) -> int:
    """Entry of ``python -m pipeline ui``: load config, check ``image=`` / ``clip=`` (exit 2
    with one line when unusable), start the page, serve until Ctrl-C or SIGTERM, which stop it
    with one line and exit 0 (stopping is how a server ends; there is nothing to resume)."""
    from pipeline.config import load_config

    previous = _handle_stop_signals(_raise_stopped)
    app: DesignerApp | None = None
    try:
        cfg = load_config(expand_overrides(overrides))
        _handle_stop_signals(_raise_stopped)  # again: loading the stages imported pycolmap
        check_local(cfg)
        try:
            check_start(cfg)
        except SceneError as exc:
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
            return 2
        warning = network_warning(str(cfg["ui"]["host"]))
        if warning:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        app = DesignerApp(cfg)
        print(f"trajectory designer: {app.url}  (Ctrl-C to stop)", flush=True)
        app.load()
        threading.Event().wait()  # serve; a stop signal raises _Stopped here
    except (_Stopped, KeyboardInterrupt):
        pass
    finally:
        _handle_stop_signals(signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown
        try:
            if app is not None:
                app.stop()
        finally:
            for sig, handler in previous.items():  # the caller's own (tests call this too)
                signal.signal(sig, handler)
    print("trajectory designer stopped", flush=True)
    return 0
