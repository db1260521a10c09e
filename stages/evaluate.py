"""Stage ``evaluate``: how well videos follow their cameras (RotErr, TransErr, CamMC).

Dataset-wide (the runner calls ``run(ctx)``). It gathers the clips to score from one of three
sources, runs ``evaluate.trials`` seeded SfM trials per clip as Ray tasks, and writes
``<work>/evaluate/per_clip.parquet`` (one row per clip and trial) and ``metrics.json`` (the
protocol's means), then prints a table. The logic lives in
``pipeline.evaluation.camera_eval`` (trials, metric scale, aggregation),
``pipeline.sfm.incremental`` and ``pipeline.geometry.camera_metrics``; this module only collects
inputs and writes outputs.

Sources (``evaluate.source``):
- ``model``: the latest train checkpoint samples each curated test clip from its first frame and
  metric trajectory (``trainer.sampling``); videos and trajectories are kept under
  ``<work>/evaluate/generated/`` (re-scorable with ``source=videos``).
- ``dataset``: the clips' own frames against their own poses, the ground-truth row of every
  paper (what SfM itself recovers from real footage).
- ``videos``: ``evaluate.videos=DIR evaluate.trajectories=DIR``, one mp4 and one trajectory file
  per clip with the same name, from any model.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import ray_utils, storage
from pipeline.errors import ConfigError
from pipeline.evaluation import camera_eval as ce
from pipeline.formats.frames import read_video_rgb
from pipeline.io import write_json_atomic, write_parquet_atomic
from pipeline.log import log, progress
from pipeline.registry import register
from pipeline.settings import Settings
from pipeline.stage import GLOBAL, ClipError, Reads, ShardResult, ShardTask, Stage

#: what to try when no clip could be measured, by source
NOTHING_HINT = {
    "model": "an untrained or briefly trained model generates noise, which SfM cannot "
             "reconstruct: train longer (train.max_steps) and re-run, or measure SfM on the "
             "dataset's own frames with evaluate.source=dataset",
    "videos": "SfM needs a static, textured scene seen from a moving camera: check the videos "
              "and that evaluate.fov_deg matches them",
    "dataset": "the frames may be too few, too small or without texture for SfM "
               "(evaluate.num_frames, evaluate.image.max_long_side)",
}
#: the trials' own output (COLMAP) goes here: the stage's log file, not the console
trial_log = logging.getLogger(__name__)

ROW_SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("trial", pa.int32()), ("seed", pa.int64()),
    ("success", pa.bool_()), ("reason", pa.string()), ("num_frames", pa.int32()),
    ("sfm_points", pa.int64()), ("scale_factor", pa.float64()), ("metric_reason", pa.string()),
    ("t_sfm_s", pa.float64()), ("reproj_error", pa.float64()), ("kept", pa.bool_()),
    ("set_aside", pa.string()), ("row", pa.string()),
    *[(k, pa.float64()) for k in ce.ALL_METRICS],
])


def _source(ecfg: dict[str, Any]) -> str:
    if ecfg.get("videos") or ecfg.get("trajectories"):
        if not (ecfg.get("videos") and ecfg.get("trajectories")):
            raise ValueError("evaluate.videos and evaluate.trajectories must be given together")
        return "videos"
    src = str(ecfg["source"])
    if src not in ("model", "dataset", "videos"):
        raise ValueError(f"evaluate.source must be model|dataset|videos, got {src!r}")
    if src == "videos":
        raise ValueError("evaluate.source=videos needs evaluate.videos=DIR "
                         "evaluate.trajectories=DIR")
    return src


def _limit(items: list[Any], ecfg: dict[str, Any]) -> list[Any]:
    n = ecfg.get("num_clips")
    return items if n is None else items[: int(n)]


def _resize_all(frames: list[np.ndarray], max_long_side: int) -> tuple[list[np.ndarray], float,
                                                                       float]:
    """Frames shrunk to the evaluation size; returns (frames, sx, sy) with new = old * s."""
    import cv2

    from pipeline.sfm.triangulation import working_size

    h, w = frames[0].shape[:2]
    nw, nh = working_size(w, h, int(max_long_side))
    if (nw, nh) == (w, h):
        return frames, 1.0, 1.0
    out = [cv2.resize(f, (nw, nh), interpolation=cv2.INTER_AREA) for f in frames]
    return out, nw / w, nh / h


# ---------------------------------------------------------------------------- depth
class DepthProvider:
    """Metric depth maps per clip, or the reason there are none (never a made-up value)."""

    def __init__(self, cfg: dict[str, Any], ecfg: dict[str, Any], source: str):
        self.cfg = cfg
        self.mode = str(ecfg["metric_depth"])
        if self.mode not in ("auto", "sensor", "model", "none"):
            raise ValueError(f"evaluate.metric_depth must be auto|sensor|model|none, "
                             f"got {self.mode!r}")
        self.source = source
        self._predictor: Any = None
        self._model_reason: str | None = None

    def _sensor_settings(self) -> dict[str, Any]:
        """Interpolation and range of sensor depth: the `depth` group's sensor file (one place
        for those defaults), whichever backend the run uses."""
        if self.cfg["depth"].get("backend") == "sensor":
            return self.cfg["depth"]
        from pipeline.settings import DepthSensor, defaults

        return defaults(DepthSensor)

    def _model(self) -> tuple[Any, str | None]:
        if self._predictor is None and self._model_reason is None:
            dcfg = self.cfg["depth"]
            if dcfg.get("backend") != "da2_metric":
                self._model_reason = (
                    f"no metric depth: no depth model configured (depth backend is "
                    f"'{dcfg.get('backend')}'; use depth=da2_metric depth.model=HUB_ID_OR_DIR)")
            else:
                from pipeline.device import device_for
                from stages.depth import build_predictor

                try:
                    self._predictor = build_predictor(dcfg, device_for(dcfg))
                except Exception as exc:  # noqa: BLE001 - offline hub, missing dir, not metric
                    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                    self._model_reason = (
                        f"no metric depth: Depth Anything V2 '{dcfg['model']}' cannot be loaded "
                        f"(no model weights available offline?): {line}")
        return self._predictor, self._model_reason

    def maps(self, frames: np.ndarray, row: dict[str, Any] | None,
             indices: list[int] | None) -> tuple[ce.DepthMaps | None, str | None]:
        """(depth maps, None) or (None, reason)."""
        if self.mode == "none":
            return None, "metric depth disabled (evaluate.metric_depth=none)"
        has_files = row is not None and len(row.get("depth_paths") or []) > 0
        use_sensor = self.mode == "sensor" or (self.mode == "auto" and has_files)
        if use_sensor:
            if not has_files:
                return None, "no metric depth: the clip has no depth files"
            from pipeline.formats.frames import read_depth

            s = self._sensor_settings()
            maps = [read_depth(row, i) for i in indices]
            h, w = frames.shape[1:3]
            H, W = maps[0].shape
            return ce.DepthMaps(maps, (W / w, H / h), f"sensor-{s['interpolation']}",
                                float(s["max_depth"])), None
        predictor, reason = self._model()
        if predictor is None:
            return None, reason
        from pipeline.depth.model import Item

        empty = np.zeros(0, np.float32)
        items = [Item(key=i, pixel_values=predictor.preprocess(f), size=f.shape[:2], u=empty,
                      v=empty, want_map=True) for i, f in enumerate(frames)]
        out = predictor.run(items)
        maps = [np.asarray(m, np.float32) for _, m in out]
        return ce.DepthMaps(maps, (1.0, 1.0), "model", float(self.cfg["depth"]["max_depth"])), None


# ---------------------------------------------------------------------------- sources
def dataset_clips(ctx: Any, ecfg: dict[str, Any], depth: DepthProvider,
                  failures: dict[str, str]) -> list[tuple[ce.EvalClip, Any, str | None]]:
    """The dataset's own frames (``evaluate.num_frames`` spread over each clip) and poses."""
    from pipeline.formats import frames as frame_io
    from pipeline.geometry.poses import pixel_K
    from pipeline.sfm.triangulation import select_frames, working_size

    rows: list[dict[str, Any]] = []
    for p in ctx.done_outputs("ingest"):
        rows.extend(storage.read_table(p).to_pylist())
    if ecfg.get("split"):
        rows = [r for r in rows if r.get("split") == ecfg["split"]]
    rows = _limit(sorted(rows, key=lambda r: r["clip_id"]), ecfg)
    out = []
    for row in rows:
        clip = row["clip_id"]
        try:
            idx = select_frames(int(row["num_frames"]),
                                {"mode": "max_n", "max_n": int(ecfg["num_frames"])})
            w, h = working_size(int(row["width"]), int(row["height"]),
                                int(ecfg["image"]["max_long_side"]))
            frames = np.stack([f for _, f in frame_io.iter_frames(row, idx, (w, h))])
            w2c = np.asarray(row["w2c"], np.float64).reshape(-1, 3, 4)[idx]
            gt = ce.cm.c2w_from_w2c34(w2c)
            metric = row.get("true_scale") is not None
            if metric:
                gt[:, :3, 3] *= float(row["true_scale"])
            ec = ce.EvalClip(clip, frames, pixel_K(row["intrinsics"], w, h), gt, metric)
            dm, reason = depth.maps(frames, row, idx)
            if reason is None and not metric:
                reason = "ground-truth poses have no metric scale (relative poses only)"
        except ClipError as exc:
            failures[clip] = exc.reason
            continue
        out.append((ec, dm, reason))
    return out


def video_clips(ecfg: dict[str, Any], depth: DepthProvider,
                failures: dict[str, str]) -> list[tuple[ce.EvalClip, Any, str | None]]:
    """``evaluate.videos`` / ``evaluate.trajectories``: one mp4 and one .txt per clip."""

    vdir, tdir = storage.path(ecfg["videos"]), storage.path(ecfg["trajectories"])
    for d, what in ((vdir, "videos"), (tdir, "trajectories")):
        if not d.is_dir():
            raise FileNotFoundError(f"evaluate.{what}: {d} is not a directory")
    videos = _limit(sorted(vdir.glob("*.mp4")), ecfg)
    if not videos:
        raise FileNotFoundError(f"evaluate.videos: no .mp4 file in {vdir}")
    out = []
    for path in videos:
        clip = path.stem
        traj = tdir / f"{clip}.txt"
        if not traj.is_file():
            failures[clip] = f"no trajectory file {traj} for video {path}"
            continue
        try:
            c2w = ce.read_trajectory(traj)
        except ValueError as exc:
            failures[clip] = str(exc)
            continue
        frames = read_video_rgb(str(path))
        if len(frames) != len(c2w):
            failures[clip] = (f"video {path} has {len(frames)} frames, trajectory {traj} has "
                              f"{len(c2w)} poses")
            continue
        frames, _, _ = _resize_all(frames, int(ecfg["image"]["max_long_side"]))
        h, w = frames[0].shape[:2]
        K = ce.fov_intrinsics(w, h, float(ecfg["fov_deg"]))
        stack = np.stack(frames)
        dm, reason = depth.maps(stack, None, None)
        out.append((ce.EvalClip(clip, stack, K, c2w, True), dm, reason))
    return out


def model_clips(ctx: Any, ecfg: dict[str, Any], depth: DepthProvider,
                failures: dict[str, str], real: list[tuple[ce.EvalClip, Any, str | None]]
                ) -> list[tuple[ce.EvalClip, Any, str | None]]:
    """Sample the latest checkpoint on curated test clips; keep the mp4s and trajectories.
    ``real`` receives each clip's real frames (the video the model was asked to produce, at the
    same size, with the same cameras): the ground-truth row scored beside the model."""
    import torch

    from stages.train import default_device
    from trainer import checkpoint as ckpt
    from trainer.data import CuratedVideoDataset, load_curated
    from trainer.sampling import ddim_sample, load_latest_model, to_uint8, write_mp4

    tcfg = ctx.cfg["train"]
    files = [str(p) for p in ctx.done_outputs("curate")]
    if not files:
        raise RuntimeError("no curated shard is done: run stage=curate first (see `status`)")
    ckpt_dir = storage.path(ctx.work_dir) / tcfg["out_subdir"] / "checkpoints"
    if ckpt.latest_checkpoint(ckpt_dir) is None:
        raise FileNotFoundError(f"no readable checkpoint under {ckpt_dir}: run stage=train "
                                "first (or evaluate.source=dataset / evaluate.videos=DIR)")
    rows = load_curated(files, ecfg.get("split") or None)
    if not rows:
        raise ValueError(f"no curated clip in split '{ecfg.get('split')}' (evaluate.split)")
    ds = CuratedVideoDataset(_limit(rows, ecfg), tcfg["data"], train=False,
                             seed=int(tcfg["seed"]))
    failures.update(ds.skipped)
    device = default_device()
    path, model = load_latest_model(tcfg, ckpt_dir, device)
    s = tcfg["sampling"]
    gen_dir = storage.path(ctx.work_dir) / "evaluate" / "generated"
    out = []
    bar = progress(len(ds), "evaluate sampling", "clips", bool(ctx.cfg.get("progress", True)),
                   float(ctx.cfg["log"]["progress_every_s"]))
    for i in range(len(ds)):
        clip = ds.rows[i]["clip_id"]
        item = ds[i]
        with torch.no_grad():
            video = ddim_sample(model, tcfg, item["video"][:1], item["plucker"][None],
                                int(s["steps"]), float(s["guidance_scale"]), float(s["eta"]),
                                int(s["seed"]))[0].cpu()
        frames = to_uint8(video)
        c2w = item["c2w"].double().numpy()
        write_mp4(frames, gen_dir / "videos" / f"{clip}.mp4", float(s["fps"]))
        ce.write_trajectory(c2w, gen_dir / "trajectories" / f"{clip}.txt")
        dm, reason = depth.maps(frames, None, None)
        K = item["K"].double().numpy()
        out.append((ce.EvalClip(clip, frames, K, c2w, True), dm, reason))
        real_frames = to_uint8(item["video"])
        rdm, rreason = depth.maps(real_frames, None, None)
        real.append((ce.EvalClip(clip + ce.REAL_SUFFIX, real_frames, K, c2w, True), rdm,
                     rreason))
        bar.update(1)
    bar.close()
    ctx.log(f"[evaluate] sampled {len(out)} clips with {path.name} -> {gen_dir}")
    return out


# ---------------------------------------------------------------------------- stage
def _log_trial_output(result: dict[str, Any]) -> None:
    """What COLMAP printed in a trial, into the stage's log file (the task's log handler)."""
    text = str(result.pop("log", "") or "").strip()
    if text:
        trial_log.info("clip %s trial %s (seed %s), SfM output:\n%s", result.get("clip_id"),
                       result.get("trial"), result.get("seed"), text)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _gather_clips(
    ctx: Any, failures: dict[str, str], real: list[tuple[ce.EvalClip, Any, str | None]]
) -> tuple[str, list[tuple[ce.EvalClip, Any, str | None]]]:
    """The source and its clips to score (``failures`` gets the clips that could not be
    read, ``real`` the real clips a model was asked to follow); a missing checkpoint, folder
    or setting, or no clip at all, is one ``ConfigError`` line."""
    cfg = ctx.cfg
    ecfg = cfg["evaluate"]
    try:  # a missing checkpoint, folder or setting is the user's to fix: one line, no trace
        source = _source(ecfg)
        depth = DepthProvider(cfg, ecfg, source)
        if source == "dataset":
            clips = dataset_clips(ctx, ecfg, depth, failures)
        elif source == "videos":
            clips = video_clips(ecfg, depth, failures)
        else:
            clips = model_clips(ctx, ecfg, depth, failures, real)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"evaluate: {exc}") from None
    if not clips:
        raise ConfigError("evaluate: no clip to evaluate"
                          + (f" ({len(failures)} failed, e.g. "
                             f"{next(iter(failures.items()))})" if failures else ""))
    return source, clips


def _run_sfm_trials(
    ctx: Any, s: Settings, source: str, clips: list[tuple[ce.EvalClip, Any, str | None]],
    real: list[tuple[ce.EvalClip, Any, str | None]],
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, tuple[ce.EvalClip, Any, str | None]],
           dict[str, list[str | None]]]:
    """``evaluate.trials`` seeded SfM trials of every clip (generated and real) as Ray tasks:
    the results by clip, the clips by id, and each trial's consensus verdict (None = kept)."""
    import ray

    cfg = ctx.cfg
    ecfg = cfg["evaluate"]
    protocol = s.evaluate.protocol
    trials = s.evaluate.trials
    threads = s.evaluate.num_cpus
    scratch = None if s.evaluate.scratch_dir == "auto" else s.evaluate.scratch_dir
    tri_cfg = ce.triangulation_config(cfg["triangulate"], threads)
    # the published protocol averages every successful trial; its metric scale comes from
    # SfM's own frame-0 points, so no triangulation with fixed poses is needed
    ccfg = dataclasses.asdict(s.evaluate.consensus)
    if protocol != "project":
        ccfg["mode"] = "none"
    remote = ray.remote(ce.run_trial).options(
        num_cpus=threads, max_retries=0, name="evaluate-trial",
        **ray_utils.task_options(cfg))
    all_clips = clips + real
    by_id = {c.clip_id: (c, dm, why) for c, dm, why in all_clips}
    refs = {c.clip_id: ray.put(c.frames) for c, _, _ in all_clips}
    ctx.log(f"[evaluate] source={source} protocol={protocol}: {len(clips)} clips"
            + (f" and their {len(real)} real videos" if real else "")
            + f" x {trials} SfM trials")

    def submit(clip: ce.EvalClip, trial: int, seed: int) -> Any:
        need_scale = protocol == "project" and by_id[clip.clip_id][2] is None
        return remote.remote(clip.clip_id, refs[clip.clip_id], clip.K, trial, seed,
                             ecfg["sfm"], tri_cfg if need_scale else None, scratch, threads)

    results = _trials_with_progress(s, [c for c, _, _ in all_clips], submit)
    asides = {cid: ce.consensus(res, ccfg) for cid, res in results.items()}
    return results, by_id, asides


def _trials_with_progress(
    s: Settings, clips: list[ce.EvalClip], submit: Callable[[ce.EvalClip, int, int], Any]
) -> dict[str, list[dict[str, Any]]]:
    """Run every clip's trials through Ray, a progress bar counting the ok and failed ones."""
    import ray

    trials = s.evaluate.trials
    bar = progress(len(clips) * trials, "evaluate SfM", "trials",
                   s.progress, float(s.log.progress_every_s))
    counts = {"ok": 0, "failed": 0}

    def on_result(result: dict[str, Any]) -> None:
        counts["ok" if result.get("success") else "failed"] += 1
        bar.set_postfix(**counts)
        bar.update(1)

    try:
        return ce.run_trials(
            clips, submit,
            lambda rs: ray.wait(rs, num_returns=1), ray.get, trials, s.evaluate.seed,
            on_result=on_result)
    finally:
        bar.close()


def _reference(
    clip_id: str, source: str, results: dict[str, list[dict[str, Any]]],
    by_id: dict[str, tuple[ce.EvalClip, Any, str | None]],
    asides: dict[str, list[str | None]], real_ids: set[str],
) -> ce.Reference:
    """The ground-truth video of a clip (cami2v's metric variant): for source=dataset
    the clip's own frames, for source=model the real clip the model was asked for."""
    gt_id = clip_id if source == "dataset" or clip_id in real_ids else \
        clip_id + ce.REAL_SUFFIX
    if gt_id not in results:
        return ce.Reference(None, "no ground-truth video (the published metric variant "
                                  "runs SfM on it; evaluate.videos has none)")
    _, gdm, gwhy = by_id[gt_id]
    return ce.cami2v_reference(results[gt_id], [a is None for a in asides[gt_id]], gdm,
                               gwhy if gdm is None else None)


def _score_rows(
    cfg: dict[str, Any], protocol: str, source: str, results: dict[str, list[dict[str, Any]]],
    by_id: dict[str, tuple[ce.EvalClip, Any, str | None]],
    asides: dict[str, list[str | None]], real_ids: set[str],
) -> list[dict[str, Any]]:
    """One row per clip and trial, scored by the protocol (the trials' SfM output goes to the
    stage's log), marked kept or set aside and as a model or ground-truth row."""
    rows = []
    for clip_id, res in results.items():
        clip, dm, why = by_id[clip_id]
        for r in res:
            _log_trial_output(r)
        ref = _reference(clip_id, source, results, by_id, asides, real_ids) \
            if protocol == "cami2v" else None
        for r, aside in zip(res, asides[clip_id], strict=True):
            if ref is None:
                row = ce.score_trial(clip, r, dm, why, cfg["align"])
            else:
                row = ce.score_trial_cami2v(clip, r, dm, why if dm is None else None, ref)
            rows.append({**row, "reproj_error": float(r.get("reproj_error", math.nan)),
                         "kept": bool(row["success"]) and aside is None,
                         "set_aside": aside,
                         "row": "ground_truth" if clip_id in real_ids or source == "dataset"
                         else "model"})
    return rows


def _write_and_report(
    ctx: Any, rows: list[dict[str, Any]], metrics: dict[str, Any], failures: dict[str, str],
    unmeasured: dict[str, str], n_clips: int,
) -> None:
    """Write ``per_clip.parquet`` and ``metrics.json`` atomically, then log the table and
    every clip not evaluated or not measured (with a hint when nothing was measured)."""
    source = metrics["source"]
    out_dir = storage.path(ctx.work_dir) / "evaluate"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(pa.Table.from_pylist(rows, schema=ROW_SCHEMA),
                         out_dir / "per_clip.parquet")
    write_json_atomic(_json_safe(metrics), out_dir / "metrics.json")
    ctx.log(ce.format_table(metrics, f"[evaluate] source={source} -> {out_dir}"))
    for clip, why in sorted(failures.items()):
        ctx.log(f"[evaluate] clip {clip} not evaluated: {why}")
    for clip, why in sorted(unmeasured.items()):
        ctx.log(f"[evaluate] clip {clip} not measured: {why}")
    if not metrics["clips_with_sfm"]:
        ctx.log(f"[evaluate] nothing could be measured: SfM failed in all "
                f"{metrics['trials']} trials of {n_clips} clip(s); {NOTHING_HINT[source]}")


class _TaskView:
    """What the evaluation helpers read of a run, from the global task the runner hands over
    (config, work dir, done upstream outputs, the log)."""

    def __init__(self, task: ShardTask):
        self.cfg = task.cfg
        self.work_dir = storage.path(task.work_dir)
        self._inputs = task.inputs_all

    def done_outputs(self, stage: str) -> list[Path]:
        """Done outputs of ``stage`` for the current shard plan: the upstream inputs the runner
        handed over, or (``curate``, read for ``source=model`` without being an upstream, so
        that ``source=dataset`` does not run the whole pipeline first) from its ledger."""
        if stage in self._inputs:
            return [storage.path(p) for p in sorted(self._inputs[stage])]
        from pipeline.io import read_json
        from pipeline.ledger import Ledger

        plan = self.work_dir / "plan.json"
        shards = read_json(plan)["shards"] if plan.is_file() else {}
        ledger = Ledger(self.work_dir, stage)
        outs = (ledger.done_output(s) for s in sorted(shards))
        return [p for p in outs if p is not None]

    @staticmethod
    def log(msg: str) -> None:
        log.info(msg)


class EvaluateStage(Stage):
    name = "evaluate"
    kind = GLOBAL
    in_all = False
    #: evaluate's own settings, and those that put SfM trajectories in metres (``score_trial``
    #: triangulates and aligns with them); ``config_view`` adds what a source reads
    reads = Reads(upstream=("ingest",), config=("evaluate", "triangulate", "align"))
    output_name = "metrics.json"

    def out_dir_name(self, cfg: dict[str, Any]) -> str:
        return "evaluate"

    @staticmethod
    def _source_of(cfg: dict[str, Any]) -> str:
        """The source, or the configured word when the settings are invalid (``run`` then
        says why in one line)."""
        try:
            return _source(cfg["evaluate"])
        except ValueError:
            return str(cfg["evaluate"]["source"])

    def config_view(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """Plus the depth settings when metric depth is on, and the train settings (model,
        sampler) when the model is sampled."""
        view = super().config_view(cfg)
        if Settings(cfg).evaluate.metric_depth != "none":
            view["depth"] = cfg.get("depth")
        if self._source_of(cfg) == "model":
            view["train"] = cfg.get("train")
        return view

    def file_inputs(self, ctx: Any) -> list[str]:
        """``source=videos``: the videos and trajectories folders; ``source=model``: the
        checkpoints it samples (a newer or replaced checkpoint is another model)."""
        cfg = ctx.cfg
        source = self._source_of(cfg)
        s = Settings(cfg)
        if source == "videos":
            return [str(s.evaluate.videos), str(s.evaluate.trajectories)]
        if source == "model":
            return [str(storage.path(ctx.work_dir) / s.train.out_subdir / "checkpoints")]
        return []

    def prepare(self, ctx: Any) -> dict[str, Any]:
        """``source=model`` samples curated clips without curate being an upstream (so that
        ``source=dataset`` needs no curation): the curated shards' digests fingerprint it."""
        if self._source_of(ctx.cfg) != "model":
            return {}
        return {"curated": {s: [e.status, e.output_digest] if e else None
                            for s, e in ctx.entries("curate").items()}}

    def check_inputs(self, cfg: dict[str, Any]) -> None:
        """The source and its folders, at start-up: a mistyped ``evaluate.videos`` is one line
        before Ray starts and before the upstream stages run."""
        ecfg = cfg["evaluate"]
        try:
            source = _source(ecfg)
        except ValueError as exc:
            raise ConfigError(f"evaluate: {exc}") from None
        if source == "videos":
            for key in ("videos", "trajectories"):
                if not storage.path(ecfg[key]).is_dir():
                    raise ConfigError(f"evaluate.{key}={ecfg[key]} is not a directory")

    def process_shard(self, task: ShardTask) -> ShardResult:
        out = self.run(_TaskView(task))
        failed = dict(out.get("failed_clips") or {})
        not_run = [c for c in failed if c not in out["per_clip"]]
        # measured = at least one successful trial: a run that measured no clip is not a
        # success (the runner exits 1), and every clip's reason is kept in the ledger
        return ShardResult(n_clips=int(out["clips"]) + len(not_run),
                           n_ok=int(out["clips_with_sfm"]), failures=failed,
                           stats={k: out[k] for k in (*ce.ALL_METRICS, "sfm_success_rate",
                                                      "clips_with_sfm")})

    def run(self, ctx: Any) -> dict[str, Any]:
        """Gather the source's clips, run their SfM trials, score them by the protocol, write
        the per-trial rows and the metrics, and report what could not be measured."""
        cfg = ctx.cfg
        s = Settings(cfg)
        protocol = s.evaluate.protocol
        failures: dict[str, str] = {}
        real: list[tuple[ce.EvalClip, Any, str | None]] = []
        source, clips = _gather_clips(ctx, failures, real)
        results, by_id, asides = _run_sfm_trials(ctx, s, source, clips, real)
        real_ids = {c.clip_id for c, _, _ in real}
        rows = _score_rows(cfg, protocol, source, results, by_id, asides, real_ids)
        gen_rows = [r for r in rows if r["clip_id"] not in real_ids]
        metrics = ce.aggregate(gen_rows, [c.clip_id for c, _, _ in clips])
        metrics["protocol"] = protocol
        metrics["ground_truth"] = ce.ground_truth_summary(
            source, metrics, [r for r in rows if r["clip_id"] in real_ids],
            [c.clip_id for c, _, _ in real])
        unmeasured = ce.unmeasured_clips(gen_rows)
        metrics.update(source=source, failed_clips={**failures, **unmeasured})
        _write_and_report(ctx, rows, metrics, failures, unmeasured, len(clips))
        return {k: metrics[k] for k in (*ce.ALL_METRICS, "sfm_success_rate", "clips",
                                        "clips_with_sfm", "failed_clips", "per_clip")}


STAGE = register(EvaluateStage())
