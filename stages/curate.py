"""Curate: dataset-wide quantile filter on frame factors, metric relative poses, curated Parquet.

A clip whose largest or smallest frame factor is extreme compared with the whole dataset almost
always hides a failure (depth network fooled by a mirror or a window, a degenerate
triangulation); the filter drops the tails of two distributions separately: clips' ``scale_max``
and clips' ``scale_min``, each at both ends.

Rank rule (exact, so small datasets behave predictably): with n aligned clips sorted by the
column and k = floor(q * n), the low cut-off is ``sorted[k]`` and the high one ``sorted[n-1-k]``
(0-based); a clip is dropped when its value is strictly below the low or strictly above the high
cut-off. With distinct values that removes exactly k clips per tail; ties at a cut-off are kept;
k = 0 removes nothing. A clip is recorded under the first rule it breaks, in the order
``scale_max_low, scale_max_high, scale_min_low, scale_min_high``.

Filtered clips are not failures: they go to ``ShardResult.filtered`` (clip -> rule).
``finalize`` writes ``_dataset.json``, the CamI2V/RealCam-I2V compatibility export and the
report beside the shards. Column definitions: ``docs_curated_columns.md``.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline import registry, storage
from pipeline.errors import ConfigError
from pipeline.geometry.poses import camera_extent, metric_relative_c2w, relative_metric_w2c
from pipeline.io import write_bytes_atomic, write_json_atomic, write_parquet_atomic
from pipeline.registry import register
from pipeline.schema import CURATED, REALCAM_VID, SCHEMA_VERSION
from pipeline.settings import Curate, Settings
from pipeline.stage import (
    ClipError,
    Reads,
    ShardResult,
    ShardTask,
    Stage,
    for_each_clip,
    reason_key,
)

FILTER_COLUMNS = ("scale_max", "scale_min")
UNCERTAINTY_RULE = "uncertainty"
#: a fixed zip timestamp keeps the export byte-identical across runs (resume must not differ)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


# ------------------------------------------------------------------------------ filter
def quantile_cutoffs(values: np.ndarray, q: float) -> dict[str, Any]:
    """Low/high cut-offs by the module's rank rule; ``None`` cut-offs for an empty dataset."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = int(v.size)
    if not 0.0 <= q < 0.5:
        # a user setting: ConfigError (a ValueError) makes the CLI print one line, no traceback
        raise ConfigError(f"curate.quantile must be in [0, 0.5), got {q}")
    k = int(math.floor(q * n + 1e-9))  # + eps: 0.02 * 50 must give 1, not 0.999...
    if n == 0:
        return {"n": 0, "k": 0, "low": None, "high": None}
    return {"n": n, "k": k, "low": float(v[k]), "high": float(v[n - 1 - k])}


def compute_cutoffs(
    aligned: pd.DataFrame, q: float, max_uncertainty: float | None = None
) -> dict[str, Any]:
    """Cut-offs for every filtered column over all aligned clips (JSON-able: becomes
    ``task.extra`` and part of each curate shard's fingerprint), plus the uncertainty limit."""
    if max_uncertainty is not None and not float(max_uncertainty) > 0:
        raise ConfigError(f"curate.max_uncertainty must be > 0 or null, got {max_uncertainty}")
    out: dict[str, Any] = {
        "q": float(q), "n_clips": int(len(aligned)),
        "max_uncertainty": None if max_uncertainty is None else float(max_uncertainty),
    }
    for col in FILTER_COLUMNS:
        vals = aligned[col].to_numpy() if len(aligned) else np.zeros(0)
        out[col] = quantile_cutoffs(vals, q)
    return out


def filter_rule(values: dict[str, float], cutoffs: dict[str, Any]) -> str | None:
    """The first rule a clip breaks, or None when it is kept.

    ``uncertainty`` comes first: a clip whose 95% interval is wider than
    ``curate.max_uncertainty`` has no trustworthy scale, whatever its value.
    NaN uncertainty (no bootstrap) counts as unknown and is kept, as in the seed recipe."""
    limit = cutoffs.get("max_uncertainty")
    if limit is not None:
        u = values.get("scale_uncertainty")
        if u is not None and u > limit:  # NaN compares False: kept
            return UNCERTAINTY_RULE
    for col in FILTER_COLUMNS:
        c = cutoffs[col]
        if c["low"] is None:
            continue
        if values[col] < c["low"]:
            return f"{col}_low"
        if values[col] > c["high"]:
            return f"{col}_high"
    return None


# ------------------------------------------------------------------------------ rows
def curated_row(man: dict[str, Any], al: dict[str, Any]) -> dict[str, Any]:
    """One kept clip: manifest fields, original w2c, metric relative c2w and the factors."""
    clip_id = man["clip_id"]
    n = int(man["num_frames"])
    w2c = np.asarray(man["w2c"], dtype=np.float64)
    if w2c.shape != (n, 12):
        raise ClipError(clip_id, f"manifest w2c has shape {w2c.shape}, expected ({n}, 12)")
    if len(al["frame_scale"]) != n:
        raise ClipError(
            clip_id, f"align has {len(al['frame_scale'])} frame factors for {n} frames"
        )
    if not np.isfinite(w2c).all():
        raise ClipError(clip_id, "manifest w2c contains non-finite values")
    clip_scale = float(al["scale_median"])
    if not (math.isfinite(clip_scale) and clip_scale > 0):
        raise ClipError(clip_id, f"clip factor {clip_scale} is not finite and positive")
    c2w = metric_relative_c2w(w2c, clip_scale, ref=0)
    return {
        "clip_id": clip_id,
        "split": man["split"],
        "source_type": man["source_type"],
        "video_path": man["video_path"],
        "frame_paths": man["frame_paths"],
        "timestamps_us": man["timestamps_us"],
        "intrinsics": man["intrinsics"],
        "width": man["width"],
        "height": man["height"],
        "num_frames": n,
        "w2c": man["w2c"],
        "c2w_metric": c2w.reshape(n, 16).tolist(),
        "frame_scale": al["frame_scale"],
        "frame_scale_raw": al["frame_scale_raw"],
        "frame_shrinkage": al["frame_shrinkage"],
        "clip_scale": clip_scale,
        "frame_interpolated": al["frame_interpolated"],
        "frame_num_obs": al["frame_num_obs"],
        "scale_max": al["scale_max"],
        "scale_min": al["scale_min"],
        "scale_spread": al["scale_spread"],
        "scale_uncertainty": al["scale_uncertainty"],
        "scale_ci_low": al["scale_ci_low"],
        "scale_ci_high": al["scale_ci_high"],
        "tri_angle_median": al["tri_angle_median"],
        "true_scale": man.get("true_scale"),
    }


def realcam_vid_row(cur: Any) -> dict[str, Any]:
    """One curated clip as a RealCam-Vid-style entry (schema ``REALCAM_VID``): metric
    world-to-camera poses relative to the first frame, the factors and normalised intrinsics,
    so a training loader needs no pose algebra of its own."""
    c2w = np.stack([np.asarray(m, dtype=np.float64) for m in cur.c2w_metric])
    return {
        "clip_id": cur.clip_id,
        "split": cur.split,
        "num_frames": int(cur.num_frames),
        "w2c": relative_metric_w2c(c2w).reshape(-1, 16).tolist(),
        "align_factor": float(cur.clip_scale),
        "frame_scale": [float(x) for x in cur.frame_scale],
        "camera_scale": camera_extent(c2w),
        "intrinsics": [float(x) for x in cur.intrinsics],
        "width": int(cur.width),
        "height": int(cur.height),
    }


def _g(v: float | None) -> str:
    """A cut-off for people: 6 significant digits (the exact value is in _dataset.json)."""
    return "none" if v is None else f"{v:.6g}"


def _read_many(paths: list[Path], columns: list[str] | None = None) -> pd.DataFrame:
    tables = [storage.read_table(p, columns=columns) for p in sorted(paths)]
    if not tables:
        return pd.DataFrame(columns=columns or [])
    return pa.concat_tables(tables).to_pandas()


def _norm_reason(reason: str, clip_id: str | None = None) -> str:
    """Group failure reasons that differ only in clip ids, paths and numbers."""
    return reason_key(reason, clip_id)


def _distribution(values: np.ndarray, qs: list[float], bins: int) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"n": 0}
    counts, edges = np.histogram(v, bins=bins)
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "quantiles": {f"{q:g}": float(np.quantile(v, q)) for q in qs},
        "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
    }


def write_npz_deterministic(
    arrays: dict[str, np.ndarray], path: Path, allow_pickle: bool = False
) -> None:
    """An ``np.load``-able .npz with fixed zip timestamps, written atomically.

    ``np.savez`` stamps each member with the current time, so two identical runs would differ
    byte for byte; resume promises identical outputs. ``allow_pickle`` only for the opt-in
    CamI2V dict layout (an object array): we write it, never read it.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            member = io.BytesIO()
            arr = arrays[key]
            arr = arr if arr.dtype == object else np.ascontiguousarray(arr)
            np.lib.format.write_array(member, arr, allow_pickle=allow_pickle)
            zf.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME), member.getvalue())
    write_bytes_atomic(buf.getvalue(), path)


def _side_dir(name: str) -> str:
    """Side outputs live in sub-directories that Parquet readers skip (prefix ``_`` or ``.``):
    ``pandas.read_parquet(curated_dir)`` and ``pyarrow.dataset`` would otherwise try to parse
    the .npz/.png/.html files as Parquet and fail."""
    name = str(name)
    if not name.startswith(("_", ".")) or "/" in name:
        raise ValueError(f"curate side-output directory '{name}' must be a plain name starting "
                         "with '_' so that Parquet readers of the curated directory skip it")
    return name


# ------------------------------------------------------------------------------ stage
def _prepared_cutoffs(ctx: Any, stage: str) -> dict[str, Any]:
    """The cut-offs ``prepare`` computed in this run (the runner keeps what each stage's
    ``prepare`` returned in ``ctx.prepared``)."""
    prepared = (getattr(ctx, "prepared", None) or {}).get(stage)
    if not prepared or "cutoffs" not in prepared:
        raise RuntimeError("curate's dataset-wide step needs the cut-offs from prepare()")
    return prepared["cutoffs"]


@dataclass
class _Outcomes:
    """Where every input clip ended: kept, filtered (clip -> rule), failed (clip -> stage and
    reason, first failing stage of the chain) or pending (no outcome yet)."""

    clips_in: set[str]
    kept: set[str]
    filtered: dict[str, str]
    failed: dict[str, dict[str, str]]
    pending: list[str]

    def counts(self) -> dict[str, Any]:
        """The ``counts`` block of ``_dataset.json``: totals, per rule, per stage and reason."""
        by_rule = {UNCERTAINTY_RULE: 0}
        by_rule.update({f"{c}_{t}": 0 for c in FILTER_COLUMNS for t in ("low", "high")})
        for rule in self.filtered.values():
            by_rule[rule] += 1
        by_stage: dict[str, int] = {}
        by_reason: dict[str, int] = {}
        for clip, f in self.failed.items():
            by_stage[f["stage"]] = by_stage.get(f["stage"], 0) + 1
            key = f"{f['stage']}: {_norm_reason(f['reason'], clip)}"
            by_reason[key] = by_reason.get(key, 0) + 1
        n = (len(self.kept), len(self.filtered), len(self.failed), len(self.pending))
        return {
            "in": len(self.clips_in),
            "kept": n[0],
            "filtered": {"total": n[1], "by_rule": by_rule},
            "failed": {"total": n[2], "by_stage": by_stage, "by_reason": by_reason},
            "pending": n[3],
            "sums_to_input": sum(n) == len(self.clips_in),
        }


def _outcomes(ctx: Any, stage: str, aligned: pd.DataFrame, curated: pd.DataFrame,
              manifest: pd.DataFrame, cut: dict[str, Any]) -> _Outcomes:
    """Every input clip's outcome from the ledgers' failures, the curated shards and the
    filter rules applied to the aligned clips."""
    failed: dict[str, dict[str, str]] = {}
    for up in registry.chain(stage):
        for clip, reason in sorted(ctx.clip_failures(up).items()):
            failed.setdefault(clip, {"stage": up, "reason": reason})
    shards = getattr(ctx, "shards", None)
    if shards is not None:
        clips_in = {c for s in ctx.shard_ids for c in shards[s]}
    else:
        clips_in = set(manifest["clip_id"]) | set(failed)
    kept = set(curated["clip_id"])
    filtered = {}
    for rec in aligned.to_dict("records"):
        rule = filter_rule(rec, cut)
        if rule is not None and rec["clip_id"] not in failed:
            filtered[rec["clip_id"]] = rule
    pending = sorted(clips_in - kept - set(filtered) - set(failed))
    return _Outcomes(clips_in, kept, filtered, failed, pending)


def _distributions(aligned: pd.DataFrame, kept: set[str], ccfg: Curate) -> dict[str, Any]:
    """Quantiles and histograms of the clip and frame factors, over all aligned clips and
    over the kept ones."""
    qs = [float(q) for q in ccfg.distribution_quantiles]
    bins = ccfg.histogram_bins
    kept_al = aligned[aligned["clip_id"].isin(kept)] if len(aligned) else aligned
    dist: dict[str, Any] = {}
    for name, frame in (("aligned", aligned), ("kept", kept_al)):
        dist[name] = {
            col: _distribution(frame[col].to_numpy() if len(frame) else [], qs, bins)
            for col in ("scale_max", "scale_min", "scale_median", "scale_spread")
        }
        if len(frame):
            fs = np.concatenate([np.asarray(x, float) for x in frame["frame_scale"]])
            no = np.concatenate([np.asarray(x, float) for x in frame["frame_num_obs"]])
            interp = np.concatenate(
                [np.asarray(x, bool) for x in frame["frame_interpolated"]]
            )
            dist[name]["frame_scale"] = _distribution(fs, qs, bins)
            dist[name]["frame_num_obs"] = _distribution(no, qs, bins)
            dist[name]["frames_interpolated_fraction"] = float(interp.mean())
    return dist


def _write_report(report_dir: Path, settings: Settings, aligned: pd.DataFrame,
                  cut: dict[str, Any], counts: dict[str, Any], truth: dict[str, Any]) -> None:
    """The HTML report with its figures (``pipeline.report``)."""
    from pipeline.report import make_report

    frame_obs = (
        np.concatenate([np.asarray(x, float) for x in aligned["frame_num_obs"]])
        if len(aligned) else np.zeros(0)
    )
    make_report(report_dir, aligned, cut, counts, frame_obs,
                settings.align.min_obs_per_frame, truth,
                dataclasses.asdict(settings.curate.report))


class CurateStage(Stage):
    name = "curate"
    output_dir = "curated"
    finalize_output = "_dataset.json"  # the dataset-wide step runs under the ledger
    reads = Reads(upstream=("ingest", "align"), config=("curate",))
    version = 1

    def prepare(self, ctx: Any) -> dict[str, Any]:
        out_dir = storage.path(ctx.work_dir) / self.output_dir
        if out_dir.is_dir():  # every run, even when the shards and the dataset step are fresh
            self._remove_stale_shards(ctx, out_dir)
        aligned = _read_many(ctx.done_outputs("align"), list(FILTER_COLUMNS))
        ccfg = Settings(ctx.cfg).curate
        cut = compute_cutoffs(aligned, float(ccfg.quantile), ccfg.max_uncertainty)
        ctx.log(
            f"[curate] {cut['n_clips']} aligned clips, q={cut['q']}: "
            + ", ".join(
                f"{c} in [{_g(cut[c]['low'])}, {_g(cut[c]['high'])}] (k={cut[c]['k']})"
                for c in FILTER_COLUMNS
            )
        )
        return {"cutoffs": cut}

    def process_shard(self, task: ShardTask) -> ShardResult:
        cut = task.extra.get("cutoffs")
        if cut is None:
            raise RuntimeError("curate needs the dataset-wide cut-offs from prepare()")
        manifest = {r["clip_id"]: r
                    for r in storage.read_table(task.inputs["ingest"]).to_pylist()}
        aligned = sorted(storage.read_table(task.inputs["align"]).to_pylist(),
                         key=lambda r: r["clip_id"])
        filtered: dict[str, str] = {}
        todo = []
        for al in aligned:
            rule = filter_rule(al, cut)
            if rule is None:
                todo.append((al["clip_id"], al))
            else:
                filtered[al["clip_id"]] = rule

        def one(clip_id: str, al: dict[str, Any]) -> dict[str, Any]:
            if clip_id not in manifest:
                raise ClipError(clip_id, "aligned clip missing from the manifest shard")
            return curated_row(manifest[clip_id], al)

        rows, failures = for_each_clip(todo, one)
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=CURATED), task.output)
        return ShardResult(
            n_clips=len(aligned), n_ok=len(rows), failures=failures,
            stats={"kept": len(rows)}, filtered=filtered,
        )

    # -------------------------------------------------------------------------- finalize
    def finalize(self, ctx: Any) -> dict[str, Any]:
        """``_dataset.json`` (counts, cut-offs, distributions, filtered / failed / pending
        clips, true-scale check), the compatibility export and the report. The cut-offs are the
        ones ``prepare`` computed for this run's shards (``ctx.prepared``): the same aligned
        clips, so recomputing them could only disagree."""
        settings = Settings(ctx.cfg)
        ccfg = settings.curate
        out_dir = storage.path(ctx.work_dir) / self.output_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_shards(ctx, out_dir)
        cut = _prepared_cutoffs(ctx, self.name)
        aligned = _read_many(ctx.done_outputs("align"))
        curated = _read_many(
            ctx.done_outputs("curate"),
            ["clip_id", "split", "frame_scale", "clip_scale", "true_scale", "num_frames",
             "c2w_metric", "intrinsics", "width", "height"],
        )
        manifest = _read_many(ctx.done_outputs("ingest"), ["clip_id", "split", "true_scale"])
        oc = _outcomes(ctx, self.name, aligned, curated, manifest, cut)
        counts = oc.counts()
        truth = self._truth_table(ctx, aligned, manifest, oc.kept, oc.filtered)
        self._export_compat(out_dir / _side_dir(ccfg.compat_dir), curated, ccfg)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "stage_version": self.version,
            "config": {k: ctx.cfg.get(k) for k in ("dataset", "triangulate", "depth", "align",
                                                   "curate")},
            "counts": counts,
            "cutoffs": cut,
            "distribution": _distributions(aligned, oc.kept, ccfg),
            "filtered": dict(sorted(oc.filtered.items())),
            "failed": dict(sorted(oc.failed.items())),
            "pending": oc.pending,
            "true_scale_check": truth,
        }
        if ccfg.report.enabled:
            _write_report(out_dir / _side_dir(ccfg.report.dir), settings, aligned, cut, counts,
                          truth)
        write_json_atomic(meta, out_dir / "_dataset.json")
        ctx.log(
            f"[curate] in {counts['in']}: kept {counts['kept']}, filtered {len(oc.filtered)} "
            f"{counts['filtered']['by_rule']}, failed {len(oc.failed)}, "
            f"pending {len(oc.pending)} -> {out_dir}"
        )
        return {"in": counts["in"], "kept": counts["kept"], "filtered": len(oc.filtered),
                "failed": len(oc.failed), "pending": len(oc.pending)}

    def _remove_stale_shards(self, ctx: Any, out_dir: Path) -> None:
        """The curated directory is read as one table by plain Parquet readers, so it must hold
        exactly the done shards of the current plan. Files left by an earlier plan (another
        ``shards.size``, a dataset that shrank) or by shards now failed or blocked would add
        duplicate or stale clips: they are removed (curated shards are cheap to rebuild from
        align's outputs). A Parquet file no curate run wrote (put there by hand, copied from
        elsewhere) is moved to ``curate.quarantine_dir`` instead, and temp files of a writer
        that was killed are removed (no writer runs now: the run lock is held)."""
        keep = {storage.path(p).resolve() for p in ctx.done_outputs(self.name)}
        ours = self._written_by_curate(ctx)
        for p in sorted(out_dir.glob("*.parquet")):
            if p.resolve() in keep:
                continue
            if p.name in ours:
                ctx.log(f"[curate] removing {p.name}: not a done shard of the current plan")
                p.unlink()
            else:
                dest = self._quarantine(ctx, p)
                ctx.log(f"[curate] moved {p.name} to {dest}: curated/ holds only the current "
                        "plan's done shards, and this file was not written by curate")
        for p in sorted(out_dir.glob(".*.tmp")):
            ctx.log(f"[curate] removing {p.name}: left by an interrupted write")
            p.unlink()

    def _written_by_curate(self, ctx: Any) -> set[str]:
        """File names of every curated shard the ledger knows of (any plan)."""
        from pipeline.io import read_json
        from pipeline.ledger import Ledger

        led = Ledger(ctx.work_dir, self.name)
        if not led.dir.is_dir():
            return set()
        names = set()
        for p in led.dir.glob("*.json"):
            try:
                names.add(Path(str(read_json(p).get("output") or "")).name)
            except (OSError, ValueError):
                continue  # an unreadable entry names no file
        return names

    def _quarantine(self, ctx: Any, src: Any) -> Any:
        """Move ``src`` into ``curate.quarantine_dir`` (outside curated/), never overwriting."""
        qdir = storage.path(ctx.work_dir) / Settings(ctx.cfg).curate.quarantine_dir
        qdir.mkdir(parents=True, exist_ok=True)
        dest, n = qdir / src.name, 1
        while dest.exists():
            dest, n = qdir / f"{src.stem}.{n}{src.suffix}", n + 1
        if storage.is_uri(src):
            dest.write_bytes(src.read_bytes())
            src.unlink()
        else:
            os.replace(src, dest)
        return dest

    def _truth_table(
        self, ctx: Any, aligned: pd.DataFrame, manifest: pd.DataFrame, kept: set[str],
        filtered: dict[str, str],
    ) -> dict[str, Any]:
        """Recovered clip factor vs the known scale, for synthetic/RGB-D clips that have one."""
        if not len(aligned) or not len(manifest):
            return {"n": 0, "rows": []}
        m = aligned[["clip_id", "scale_median"]].merge(
            manifest[["clip_id", "true_scale"]], on="clip_id"
        )
        m = m[m["true_scale"].notna()].sort_values("clip_id")
        rows = []
        for r in m.itertuples():
            rel = (r.scale_median - r.true_scale) / r.true_scale
            status = "kept" if r.clip_id in kept else filtered.get(r.clip_id, "not curated")
            rows.append({"clip_id": r.clip_id, "true_scale": float(r.true_scale),
                         "clip_scale": float(r.scale_median), "rel_err": float(rel),
                         "status": status})
        if not rows:
            return {"n": 0, "rows": []}
        errs = np.abs([r["rel_err"] for r in rows])
        max_rows = Settings(ctx.cfg).curate.truth_log_rows
        ctx.log(f"[curate] recovered clip_scale vs true_scale ({len(rows)} clips)")
        ctx.log(f"  {'clip_id':<28}{'true':>12}{'recovered':>12}{'rel err':>10}  status")
        for r in rows[:max_rows]:
            ctx.log(f"  {r['clip_id']:<28}{r['true_scale']:>12.6g}{r['clip_scale']:>12.6g}"
                    f"{100 * r['rel_err']:>9.3f}%  {r['status']}")
        if len(rows) > max_rows:
            ctx.log(f"  ... {len(rows) - max_rows} more in _dataset.json")
        ctx.log(f"  |rel err|: median {100 * np.median(errs):.3f}%, max {100 * errs.max():.3f}%")
        return {"n": len(rows), "median_abs_rel_err": float(np.median(errs)),
                "max_abs_rel_err": float(errs.max()), "rows": rows}

    def _export_compat(self, cdir: Path, curated: pd.DataFrame, ccfg: Curate) -> None:
        """CamI2V/RealCam-I2V drop-in files: clip -> per-frame factors, valid clip lists, and
        the RealCam-Vid-style table of metric relative poses (``realcam_vid_row``)."""
        cdir.mkdir(parents=True, exist_ok=True)
        dtype = np.dtype(ccfg.compat_dtype)
        cur = curated.sort_values("clip_id") if len(curated) else curated
        arrays = {r.clip_id: np.asarray(r.frame_scale, dtype=dtype) for r in cur.itertuples()}
        write_npz_deterministic(arrays, cdir / "per_frame_scale.npz")
        # one Parquet table, rows in clip order, no pandas metadata: byte-identical on re-runs
        rows = [realcam_vid_row(r) for r in cur.itertuples()]
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=REALCAM_VID),
                             cdir / ccfg.compat_realcam_vid)
        legacy = cdir / "per_frame_scale_cami2v.npz"
        if ccfg.compat_cami2v_dict:
            # CamI2V/RealCam-I2V read np.load(p, allow_pickle=True)["arr_0"].item(): one pickled
            # dict. Opt-in, because loading it needs allow_pickle (trust the file's origin).
            holder = np.empty((), dtype=object)
            holder[()] = dict(arrays)
            write_npz_deterministic({"arr_0": holder}, legacy, allow_pickle=True)
        elif legacy.exists():
            legacy.unlink()
        ids = list(cur["clip_id"]) if len(cur) else []
        write_bytes_atomic("".join(f"{c}\n" for c in ids).encode(), cdir / "valid_clips.txt")
        splits = sorted(set(cur["split"])) if len(cur) else []
        for old in cdir.glob("valid_clips_*.txt"):
            if old.stem[len("valid_clips_"):] not in splits:
                old.unlink()
        for split in splits:
            sel = cur.loc[cur["split"] == split, "clip_id"]
            write_bytes_atomic("".join(f"{c}\n" for c in sel).encode(),
                               cdir / f"valid_clips_{split}.txt")


STAGE = register(CurateStage())
