"""Align stage: per shard, every clip's metric scale factors and their uncertainty
(``pipeline.schema.ALIGN``, one row per clip).

The estimator and every output column are defined in ``pipeline/scale/factors.py``
(``clip_factors``); this module joins the shard's observations with their depth samples,
applies the optional observation filters of ``pipeline.settings.Align``, runs the estimator per
clip (a bad clip is recorded as failed with its reason) and writes the table atomically.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline import storage
from pipeline.io import write_parquet_atomic
from pipeline.registry import register
from pipeline.scale.factors import (
    ClipObservations,
    FactorSettings,
    camera_arrays,
    clip_factors,
    working_focal,
)
from pipeline.schema import ALIGN
from pipeline.settings import Settings
from pipeline.stage import Reads, ShardResult, ShardTask, Stage, for_each_clip

KEYS = ["clip_id", "frame_idx", "point_id"]


def join_observations(obs: pd.DataFrame, dep: pd.DataFrame) -> pd.DataFrame:
    """Observations with their depth samples; row order is the fast path (depth writes one
    sample per observation, in order), a key join the fallback for any other layout."""
    if len(obs) == len(dep) and all(
        np.array_equal(obs[k].to_numpy(), dep[k].to_numpy()) for k in KEYS
    ):
        out = obs.copy()
        out["depth"] = dep["depth"].to_numpy()
        out["valid"] = dep["valid"].to_numpy()
        return out
    # Triangulate writes unique (clip, frame, point) keys; outputs of older versions may repeat
    # one (two keypoints of a frame in one track). Keep the first of each on both sides so a
    # repeated key can never fail the shard's good clips.
    obs = obs.drop_duplicates(KEYS, keep="first")
    dep = dep.drop_duplicates(KEYS, keep="first")
    return obs.merge(dep[[*KEYS, "depth", "valid"]], on=KEYS, how="left", validate="one_to_one")


def _column(df: pd.DataFrame, name: str) -> np.ndarray:
    """A float column, NaN when an older upstream output lacks it (conditioning unknown)."""
    if name not in df:
        return np.full(len(df), np.nan)
    return df[name].to_numpy(dtype=np.float64, na_value=np.nan)


def _read(path: str, columns: list[str]) -> pd.DataFrame:
    names = set(storage.read_schema(path).names)
    return storage.read_table(path, columns=[c for c in columns if c in names]).to_pandas()


class AlignStage(Stage):
    name = "align"
    #: ``triangulate.image.max_long_side`` (the working focal) is read too; it reaches the
    #: fingerprint through triangulate's output, which it changes
    reads = Reads(upstream=("ingest", "triangulate", "depth"), config=("align",))
    version = 1

    def process_shard(self, task: ShardTask) -> ShardResult:
        settings = Settings(task.cfg)
        acfg = settings.align
        man = _read(task.inputs["ingest"], ["clip_id", "num_frames", "intrinsics", "width",
                                             "height", "w2c"])
        obs = _read(
            task.inputs["triangulate"],
            [*KEYS, "z_cam", "track_len", "reproj_err", "tri_angle", "u", "v"],
        )
        dep = _read(task.inputs["depth"], [*KEYS, "depth", "valid"])
        joined = join_observations(obs, dep)
        joined["valid"] = joined["valid"].eq(True).to_numpy()  # no depth sample -> invalid
        if acfg.min_track_len is not None and "track_len" in joined:
            joined["valid"] &= joined["track_len"].to_numpy() >= acfg.min_track_len
        if acfg.max_reproj_err is not None and "reproj_err" in joined:
            joined["valid"] &= joined["reproj_err"].to_numpy() <= float(acfg.max_reproj_err)
        groups = joined.groupby("clip_id", sort=False).indices
        n_frames = dict(zip(man["clip_id"], man["num_frames"], strict=True))
        focal = working_focal(man, settings.triangulate.image.max_long_side)
        factor_settings = FactorSettings.from_align(task.cfg["align"])
        cams = {r.clip_id: camera_arrays(r) for r in man.itertuples(index=False)}
        empty = np.zeros(0, dtype=np.int64)

        def one(clip_id: str, _: Any) -> dict[str, Any]:
            rows = groups.get(clip_id, empty)
            g = joined.iloc[rows]
            obs = ClipObservations(
                g["frame_idx"].to_numpy(),
                g["z_cam"].to_numpy(),
                g["depth"].to_numpy(dtype=np.float64, na_value=np.nan),
                g["valid"].to_numpy(dtype=bool),
                point_id=g["point_id"].to_numpy(),
                tri_angle=_column(g, "tri_angle"),
                ray_err=_column(g, "reproj_err") / focal[clip_id],
                uv=np.stack([_column(g, "u"), _column(g, "v")], axis=1),
            )
            return clip_factors(clip_id, int(n_frames[clip_id]), obs, factor_settings,
                                *cams[clip_id])

        clip_ids = sorted(n_frames)
        rows, failures = for_each_clip(((c, None) for c in clip_ids), one)
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=ALIGN), task.output)
        n_interp = sum(sum(r["frame_interpolated"]) for r in rows)
        return ShardResult(
            n_clips=len(clip_ids),
            n_ok=len(rows),
            failures=failures,
            stats={
                "frames": sum(r["num_frames"] for r in rows),
                "frames_interpolated": int(n_interp),
                "obs_valid": sum(r["num_obs_valid"] for r in rows),
                "obs_total": sum(r["num_obs_total"] for r in rows),
            },
        )


STAGE = register(AlignStage())
