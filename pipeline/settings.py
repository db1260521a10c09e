"""Typed schemas of the configuration, checked when the config is composed (before any work).

Defaults live in ``conf/`` only (one place each); these dataclasses declare what a value may be:
its type, ``Literal`` choices and ``Range``s. ``validate`` walks a composed section against its
schema and raises one line naming the key and what is allowed. Keys a schema does not mention
are still type-checked against their default by ``pipeline.config`` (an int default accepts only
integers, and so on), and keys that exist nowhere are rejected with the closest suggestion.

A stage adds a schema for its own section with ``Stage.settings = {"section": Dataclass}``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union


@dataclass(frozen=True)
class Range:
    """Allowed interval: ``lo <= v`` (or ``<``), ``v <= hi`` (or ``<``); None = unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return True

    def text(self) -> str:
        lo = "" if self.lo is None else ("(" if self.lo_open else "[") + f"{self.lo:g}"
        hi = "" if self.hi is None else f"{self.hi:g}" + (")" if self.hi_open else "]")
        if self.lo is not None and self.hi is not None:
            return f"in {lo}, {hi}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"{'<' if self.hi_open else '<='} {self.hi:g}"


POS_INT = Annotated[int, Range(1)]
NONNEG_INT = Annotated[int, Range(0)]
POS_FLOAT = Annotated[float, Range(0, lo_open=True)]


# ---------------------------------------------------------------------- engine sections
@dataclass
class Shards:
    size: POS_INT
    max_factor: POS_INT


@dataclass
class Retry:
    max_attempts: POS_INT


@dataclass
class Log:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    progress_every_s: POS_FLOAT


@dataclass
class Models:
    hub_timeout_s: POS_FLOAT


@dataclass
class Ray:
    num_cpus: POS_INT | None
    num_gpus: NONNEG_INT | None
    object_store_memory: POS_INT | None
    max_in_flight: POS_INT | None
    scheduling_strategy: Literal["DEFAULT", "SPREAD"]
    forward_env: list


@dataclass
class Storage:
    connect_timeout_s: POS_FLOAT
    request_timeout_s: POS_FLOAT
    gcs_anonymous: bool
    lock_ttl_s: Annotated[float, Range(1)]


@dataclass
class Dataset:
    name: str
    layout: Literal["re10k", "rgbd", "nerfstudio", "colmap"]
    limit: POS_INT | None


@dataclass
class RgbdDataset(Dataset):
    clip_length: Annotated[int, Range(2)]
    clip_stride: POS_INT
    relative_scale: POS_FLOAT
    depth_unit: POS_FLOAT


@dataclass
class NerfstudioDataset(RgbdDataset):
    poses_metric: bool
    frame_interval_us: POS_INT


@dataclass
class ColmapDataset(Dataset):
    images_dir: str
    sparse_dir: str
    relative_scale: POS_FLOAT
    poses_metric: bool
    depth_unit: POS_FLOAT
    frame_interval_us: POS_INT


# ---------------------------------------------------------------------- stage sections
@dataclass
class Ingest:
    min_frames: Annotated[int, Range(2)]
    verify_frames: Literal["all", "ends"]
    rotation_tolerance: POS_FLOAT
    intrinsics_tolerance: POS_FLOAT


@dataclass
class Align:
    min_obs_per_frame: NONNEG_INT
    min_measured_frames: POS_INT
    min_track_len: POS_INT | None
    max_reproj_err: POS_FLOAT | None


@dataclass
class Report:
    enabled: bool
    bins: POS_INT
    dpi: POS_INT


@dataclass
class Curate:
    quantile: Annotated[float, Range(0, 0.5, hi_open=True)]
    compat_dtype: Literal["float16", "float32", "float64"]
    histogram_bins: POS_INT
    report: Report


@dataclass
class DepthModel:
    backend: Literal["da2_metric"]
    model: str
    max_depth: POS_FLOAT
    batch_size: POS_INT
    dtype: Literal["bfloat16", "float16", "float32"]
    cpu_dtype: Literal["bfloat16", "float16", "float32"]
    preprocess: Literal["auto", "processor", "device"]
    device: Literal["auto", "cuda", "cpu"]
    num_actors: POS_INT | None
    cpu_actors: POS_INT
    cpus_per_actor: POS_INT
    prefetch_workers: POS_INT
    prefetch_batches: POS_INT
    startup_timeout_s: POS_FLOAT
    max_restarts: NONNEG_INT


@dataclass
class DepthSensor:
    backend: Literal["sensor"]
    interpolation: Literal["bilinear", "nearest"]
    max_depth: POS_FLOAT
    cpus_per_task: POS_INT


@dataclass
class TrainDistributed:
    backend: Literal["local", "ray"]
    num_workers: POS_INT


@dataclass
class Train:
    backbone: Literal["builtin", "svd"]
    max_steps: POS_INT
    batch_size: POS_INT
    grad_accum: POS_INT
    lr: POS_FLOAT
    mixed_precision: Literal["bf16", "fp16", "no"]
    prediction_type: Literal["epsilon", "v_prediction", "sample"]
    camera: Literal["metric", "relative", "none"]
    checkpoint_every: POS_INT
    keep_checkpoints: POS_INT
    distributed: TrainDistributed


def section_schemas(cfg: dict[str, Any]) -> dict[str, type]:
    """Top-level key -> schema for this composed config (variants chosen by their selector)."""
    ds = cfg.get("dataset") or {}
    depth = cfg.get("depth") or {}
    return {
        "shards": Shards,
        "retry": Retry,
        "log": Log,
        "models": Models,
        "ray": Ray,
        "storage": Storage,
        "dataset": {"rgbd": RgbdDataset, "nerfstudio": NerfstudioDataset,
                    "colmap": ColmapDataset}.get(
            str(ds.get("layout")), Dataset),
        "ingest": Ingest,
        "align": Align,
        "curate": Curate,
        "depth": DepthSensor if depth.get("backend") == "sensor" else DepthModel,
        "train": Train,
    }


class SettingError(ValueError):
    """One line naming the key and what is allowed."""


def _show(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def _check(key: str, value: Any, tp: Any) -> None:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        _check(key, value, base)
        for m in meta:
            if isinstance(m, Range) and not m.ok(value):
                raise SettingError(f"{key} must be {m.text()}, got {_show(value)}")
        return
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return
        rest = [a for a in args if a is not type(None)]
        _check(key, value, rest[0] if len(rest) == 1 else Any)
        return
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise SettingError(f"{key} must be one of {', '.join(map(str, choices))}; "
                               f"got {_show(value)}")
        return
    if tp is Any:
        return
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SettingError(f"{key} must be a group of settings, got {_show(value)}")
        validate(value, tp, key)
        return
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    if not ok:
        if value is None:
            raise SettingError(f"{key} must be set (a {tp.__name__}), got null")
        raise SettingError(f"{key} must be {'an' if tp is int else 'a'} {tp.__name__}, "
                           f"got {_show(value)}")


def validate(section: dict[str, Any], schema: type, prefix: str) -> None:
    """Check the keys ``schema`` declares (a missing one is an error in the config files)."""
    hints = typing.get_type_hints(schema, include_extras=True)
    for f in dataclasses.fields(schema):
        key = f"{prefix}.{f.name}"
        if f.name not in section:
            raise SettingError(f"{key} is missing from the configuration")
        _check(key, section[f.name], hints[f.name])
