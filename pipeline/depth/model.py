"""Metric depth at sub-pixel observations: Depth Anything V2 (transformers) and sensor depth.

Why these choices:
- The model is loaded through ``AutoModelForDepthEstimation``/``AutoImageProcessor`` from a hub
  id or a local directory with ``depth_estimation_type="metric"`` and ``max_depth`` forced: some
  hub configs spell the key ``depth_estimation``, which silently builds a relative (ReLU) head.
  The loaded head is then checked (final activation must be a Sigmoid, scale = ``max_depth``),
  and a checkpoint whose config *declares* a relative head is refused rather than forced.
- The prediction is mapped to the original image exactly as the processor's
  ``post_process_depth_estimation`` does (bicubic, ``align_corners=False``), on the device, and
  sampled there with bilinear ``grid_sample(align_corners=False)``. In that convention the
  normalised coordinate of a COLMAP pixel position ``u`` (pixel centre at +0.5) is simply
  ``2 u / W - 1``, i.e. array index ``u - 0.5``: no half-pixel shift to get wrong. Only the samples
  leave the GPU.
- Sensor depth has holes (0 = missing); bilinear interpolation would blend a zero into a real
  depth near every hole, so it interpolates only where all four neighbours are measured (or the
  caller picks ``nearest``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class NotMetricError(ValueError):
    """The checkpoint/model does not carry a metric-depth head: running it would be nonsense."""


# ---------------------------------------------------------------------- validity + sampling
def validity(depth: np.ndarray, max_depth: float) -> np.ndarray:
    """Usable depths: finite, > 0 and <= max_depth (a metric head saturates at max_depth)."""
    d = np.asarray(depth)
    with np.errstate(invalid="ignore"):
        return np.isfinite(d) & (d > 0) & (d <= max_depth)


def finalize_samples(depth: np.ndarray, max_depth: float) -> tuple[np.ndarray, np.ndarray]:
    """(depth as float32 with NaN where invalid, valid flags)."""
    d = np.asarray(depth, dtype=np.float32)
    ok = validity(d, max_depth)
    return np.where(ok, d, np.float32(np.nan)).astype(np.float32), ok


def bilinear_sample(img: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear value of a 2-D array at COLMAP pixel positions (u, v) (reference, float64).

    Array index = position - 0.5; positions within half a pixel of the border clamp to it, like
    ``grid_sample(padding_mode="border")``.
    """
    h, w = img.shape
    x = np.clip(np.asarray(u, np.float64) - 0.5, 0.0, w - 1.0)
    y = np.clip(np.asarray(v, np.float64) - 0.5, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), max(w - 2, 0))
    y0 = np.minimum(np.floor(y).astype(np.int64), max(h - 2, 0))
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    a = img.astype(np.float64)
    top = a[y0, x0] * (1 - fx) + a[y0, x1] * fx
    bot = a[y1, x0] * (1 - fx) + a[y1, x1] * fx
    return top * (1 - fy) + bot * fy


def sample_sensor(
    depth: np.ndarray, u: np.ndarray, v: np.ndarray, interpolation: str, max_depth: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sensor/ground-truth depth at (u, v) without ever mixing a hole into a measurement.

    ``bilinear``: valid only where every neighbour with a non-zero weight is measured (exact
    for smooth surfaces up to the interpolation error; a position on a pixel centre needs only
    that pixel); ``nearest``: the pixel that contains (u, v).
    """
    h, w = depth.shape
    u = np.asarray(u, np.float64)
    v = np.asarray(v, np.float64)
    measured = validity(depth, max_depth)
    if interpolation == "nearest":
        col = np.clip(np.floor(u).astype(np.int64), 0, w - 1)
        row = np.clip(np.floor(v).astype(np.int64), 0, h - 1)
        return finalize_samples(np.where(measured[row, col], depth[row, col], np.nan), max_depth)
    if interpolation != "bilinear":
        raise ValueError(f"unknown sensor interpolation '{interpolation}' (bilinear | nearest)")
    x = np.clip(u - 0.5, 0.0, w - 1.0)
    y = np.clip(v - 0.5, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), max(w - 2, 0))
    y0 = np.minimum(np.floor(y).astype(np.int64), max(h - 2, 0))
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    # a neighbour with zero weight (exactly on a pixel centre row/column) may be a hole
    all4 = (
        (measured[y0, x0] | ((1 - fx) * (1 - fy) == 0))
        & (measured[y0, x1] | (fx * (1 - fy) == 0))
        & (measured[y1, x0] | ((1 - fx) * fy == 0))
        & (measured[y1, x1] | (fx * fy == 0))
    )
    with np.errstate(invalid="ignore"):
        vals = bilinear_sample(np.where(measured, depth, 0.0), u, v)
    return finalize_samples(np.where(all4, vals, np.nan), max_depth)


def preview_map(depth: np.ndarray, width: int) -> np.ndarray:
    """Low-resolution float16 copy of a depth map for QA (area-averaged; NaN where invalid)."""
    import cv2

    h, w = depth.shape
    height = max(1, round(h * width / w))
    small = cv2.resize(depth.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    return small.astype(np.float16)


# ---------------------------------------------------------------------- model loading
def _declared_type(raw: dict[str, Any]) -> str | None:
    for key in ("depth_estimation_type", "depth_estimation"):
        if raw.get(key) is not None:
            return str(raw[key])
    return None


def check_checkpoint_config(raw: dict[str, Any], source: str) -> None:
    """Refuse checkpoints that are not metric before forcing the metric head onto them.

    Forcing ``depth_estimation_type="metric"`` onto a *relative* checkpoint would run without
    error and return meaningless metres. A config that declares ``relative`` is refused; one
    that declares nothing is accepted only if it carries a metric ``max_depth`` (relative
    checkpoints saved by transformers 4.x omit both keys, metric ones store max_depth 20/80).
    """
    if raw.get("model_type") not in (None, "depth_anything"):
        raise NotMetricError(
            f"{source}: model_type '{raw.get('model_type')}' is not depth_anything"
        )
    declared = _declared_type(raw)
    if declared is not None and declared != "metric":
        raise NotMetricError(f"{source}: checkpoint declares a '{declared}' depth head, not metric")
    if declared is None and (raw.get("max_depth") in (None, 1)):
        raise NotMetricError(
            f"{source}: checkpoint declares no metric head (no depth_estimation_type and no "
            "metric max_depth): probably a relative-depth checkpoint"
        )


def check_metric_head(model: Any, max_depth: float) -> None:
    """The loaded head must end in Sigmoid * max_depth; a ReLU head outputs relative depth."""
    import torch

    head = getattr(model, "head", None)
    act = getattr(head, "activation2", None)
    if not isinstance(act, torch.nn.Sigmoid):
        raise NotMetricError(
            f"depth head's final activation is {type(act).__name__ if act is not None else None}"
            ", not Sigmoid: this is a relative-depth head"
        )
    if not math.isclose(float(head.max_depth), float(max_depth), rel_tol=1e-6):
        raise NotMetricError(f"depth head max_depth {head.max_depth} != configured {max_depth}")


def model_source_problem(
    source: str, revision: str | None = None, local_files_only: bool = False,
    timeout_s: float = 10.0, marker: str = "config.json",
) -> str | None:
    """Why ``source`` (hub id or local directory) cannot be loaded here, or None if it can.

    Cheap and offline-first: a local directory needs its ``marker`` file (``config.json`` for a
    transformers checkpoint, ``model_index.json`` for a diffusers pipeline); a hub id is fine
    when that file is in the local Hugging Face cache, else the hub must answer within
    ``timeout_s`` (unless ``local_files_only`` or ``HF_HUB_OFFLINE`` forbid asking it).
    """
    import os

    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / marker).is_file():
            return f"{source} is a directory without {marker} (not a checkpoint of that kind)"
        return None
    if path.is_absolute() or source.startswith(".") or source.count("/") != 1:
        return f"{source} is not a local directory and not a hub id (org/name)"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source, marker, revision=revision)
    if isinstance(cached, str):
        return None
    if local_files_only or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return f"{source} is not in the local Hugging Face cache and hub access is off"
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(source, revision=revision, timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - any failure means: cannot download it now
        return (f"{source} is not in the local Hugging Face cache and the hub did not answer "
                f"({type(exc).__name__})")
    return None


def load_depth_model(
    source: str,
    max_depth: float,
    revision: str | None = None,
    local_files_only: bool = False,
) -> tuple[Any, Any]:
    """(model in eval mode on CPU, image processor) from a hub id or a local directory."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation, PretrainedConfig

    kw: dict[str, Any] = {"revision": revision, "local_files_only": local_files_only}
    raw, _ = PretrainedConfig.get_config_dict(source, **kw)
    check_checkpoint_config(raw, source)
    # transformers 5.23's strict config types max_depth as int; the head multiplies by a plain
    # attribute, so load with the integer part and set the exact value afterwards.
    model = AutoModelForDepthEstimation.from_pretrained(
        source,
        depth_estimation_type="metric",
        max_depth=int(max_depth),
        trust_remote_code=False,
        **kw,
    )
    if hasattr(model, "head") and hasattr(model.head, "max_depth"):
        model.head.max_depth = float(max_depth)
    check_metric_head(model, max_depth)
    processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=False, **kw)
    model.eval()
    return model, processor


# ---------------------------------------------------------------------- batched inference
@dataclass
class Item:
    """One frame to predict: where its samples go, and its preprocessed tensor."""

    key: Any  # (clip_id, frame_idx)
    pixel_values: np.ndarray  # 3 x h x w float32 (processor mode) or H x W x 3 uint8 (device)
    size: tuple[int, int]  # original (H, W)
    u: np.ndarray
    v: np.ndarray
    want_map: bool = False  # also return the full-resolution map (preview/tests)


@dataclass
class Launched:
    """A queued batch: its items and (host) samples, ready once ``event`` has fired."""

    items: list[Item]
    samples: Any  # 1-D float32 tensor on the host, all items' samples concatenated
    lengths: list[int]
    maps: list[Any]  # per item: full-resolution map (host tensor) or None
    event: Any  # torch.cuda.Event, or None on CPU


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class DepthPredictor:
    """A loaded model on one device: preprocess, forward (autocast), post-process, sample."""

    def __init__(
        self, model: Any, processor: Any, device: str, dtype: str, max_depth: float,
        batch_size: int, preprocess: str = "processor",
    ):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.processor = processor
        self.max_depth = float(max_depth)
        self.batch_size = int(batch_size)
        self.dtype = getattr(torch, dtype)
        self.autocast = self.dtype != torch.float32
        self.n_oom = 0
        if preprocess == "auto":
            preprocess = "device" if self.device.type == "cuda" else "processor"
        if preprocess not in ("processor", "device"):
            raise ValueError(f"unknown preprocess mode '{preprocess}' (auto|processor|device)")
        if preprocess == "device" and not self._device_path_supported():
            log.warning("depth: image processor settings not reproducible on the device; "
                        "using the processor itself")
            preprocess = "processor"
        self.mode = preprocess
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}

    def _device_path_supported(self) -> bool:
        p = self.processor
        return (
            bool(getattr(p, "do_resize", False)) and int(getattr(p, "resample", -1)) == 3
            and not getattr(p, "do_pad", False) and bool(getattr(p, "do_rescale", False))
            and bool(getattr(p, "do_normalize", False))
        )

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """Processor mode: the processor's CHW float32 output. Device mode: the uint8 frame
        itself (resize/normalise happen batched on the device, see ``_device_preprocess``)."""
        if self.mode == "device":
            return np.ascontiguousarray(rgb, dtype=np.uint8)
        out = self.processor(images=[rgb], return_tensors="np")
        return np.ascontiguousarray(out["pixel_values"][0], dtype=np.float32)

    def _target_size(self, h: int, w: int) -> tuple[int, int]:
        """The processor's output size for an h x w input (its own rule, asked once)."""
        if (h, w) not in self._sizes:
            probe = self.processor(images=[np.zeros((h, w, 3), np.uint8)], return_tensors="np")
            self._sizes[(h, w)] = tuple(probe["pixel_values"].shape[-2:])
        return self._sizes[(h, w)]

    def _device_preprocess(self, frames: Any) -> Any:
        """uint8 (B, H, W, 3) on the device -> normalised (B, 3, h, w) float32.

        Mirrors the processor: PIL's bicubic (a = -0.5, antialiased when shrinking) is what
        torch's ``antialias=True`` bicubic implements; PIL rounds to uint8 after resizing.
        Matches it to about one grey level (see tests for the tolerance).
        """
        torch = self.torch
        p = self.processor
        _, h, w, _ = frames.shape
        x = frames.permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(
            x, size=self._target_size(h, w), mode="bicubic", antialias=True, align_corners=False
        ).round_().clamp_(0, 255)
        mean = torch.tensor(p.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(p.image_std, device=x.device).view(1, 3, 1, 1)
        return (x * float(p.rescale_factor) - mean) / std

    def forward(self, pixel_values: Any) -> Any:
        """Raw batched forward -> (B, h, w) float32 on the device (the benchmark's reference)."""
        torch = self.torch
        with torch.inference_mode(), torch.autocast(
            device_type=self.device.type, dtype=self.dtype, enabled=self.autocast
        ):
            return self.model(pixel_values=pixel_values).predicted_depth.float()

    def to_device(self, batch: np.ndarray) -> Any:
        t = self.torch.from_numpy(batch)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def _host_to_device(self, arr: np.ndarray) -> Any:
        """Non-blocking upload: a plain ``.to(cuda)`` from pageable memory waits for the GPU
        to finish the queued forward, which would stall the pipeline."""
        return self.to_device(np.ascontiguousarray(arr))

    def _device_to_host(self, t: Any) -> Any:
        if self.device.type != "cuda":
            return t
        host = self.torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        return host

    def _post(self, pred: Any, items: Sequence[Item], uv: Any) -> Launched:
        """Queue, per item, the samples at (u, v) of the map post-processed to the original
        size; the samples of the whole batch come back in one non-blocking copy."""
        torch = self.torch
        F = torch.nn.functional
        samples, maps = [], []
        start = 0
        with torch.inference_mode():
            for i, it in enumerate(items):
                h, w = it.size
                full = F.interpolate(
                    pred[i][None, None], size=(h, w), mode="bicubic", align_corners=False
                )
                n = len(it.u)
                u, v = uv[0, start : start + n], uv[1, start : start + n]
                start += n
                grid = torch.stack([2.0 * u / w - 1.0, 2.0 * v / h - 1.0], dim=-1)[None, None]
                s = F.grid_sample(
                    full, grid, mode="bilinear", padding_mode="border", align_corners=False
                )
                samples.append(s.reshape(-1))
                maps.append(self._device_to_host(full[0, 0]) if it.want_map else None)
            flat = torch.cat(samples) if samples else torch.zeros(0, device=self.device)
            host = self._device_to_host(flat)
            event = None
            if self.device.type == "cuda":
                event = torch.cuda.Event()
                event.record()
        return Launched(list(items), host, [len(x) for x in samples], maps, event)

    def launch(
        self, items: Sequence[Item], forward: Callable[[Any], Any] | None = None
    ) -> list[Launched]:
        """Queue the forward + sampling of one same-shape group without waiting for the GPU.

        Collect with ``fetch`` after queueing the next group, so copying results back and the
        host-side bookkeeping overlap the next forward. CUDA out-of-memory (raised when the
        batch is queued) halves the batch and retries; the halved size is kept for the rest
        of the actor's life (memory does not come back).
        """
        forward = forward or self.forward
        out: list[Launched] = []
        start = 0
        while start < len(items):
            chunk = items[start : start + self.batch_size]
            try:
                batch = self.to_device(np.stack([it.pixel_values for it in chunk]))
                uv = self._host_to_device(np.stack([
                    np.concatenate([it.u for it in chunk]).astype(np.float32),
                    np.concatenate([it.v for it in chunk]).astype(np.float32),
                ]))
                if self.mode == "device":
                    batch = self._device_preprocess(batch)
                out.append(self._post(forward(batch), chunk, uv))
            except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if not _is_oom(exc) or len(chunk) == 1:
                    raise
                self.n_oom += 1
                self.batch_size = max(1, len(chunk) // 2)
                log.warning("depth: out of memory at batch %d, retrying with %d",
                            len(chunk), self.batch_size)
                if self.device.type == "cuda":
                    self.torch.cuda.empty_cache()
                continue
            start += len(chunk)
        return out

    @staticmethod
    def fetch(launched: Sequence[Launched]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Wait for queued groups; per item (samples, full-resolution map or None)."""
        results: list[tuple[np.ndarray, np.ndarray | None]] = []
        for job in launched:
            if job.event is not None:
                job.event.synchronize()
            flat = job.samples.numpy()
            ends = np.cumsum(job.lengths)
            for k, part in enumerate(np.split(flat, ends[:-1]) if len(ends) else []):
                m = job.maps[k]
                results.append((part.copy(), m.numpy() if m is not None else None))
        return results

    def run(
        self, items: Sequence[Item], forward: Callable[[Any], Any] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Predict one same-shape group and wait for it."""
        return self.fetch(self.launch(items, forward))
