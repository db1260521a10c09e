"""Depth: metric depth D(u, v) at every triangulated observation.

Output rows follow the observations of the shard one to one, in the same order (align joins on
row order), for every clip that reached this stage and did not fail here. Two backends:

- ``da2_metric``: Depth Anything V2 metric on Ray actors, one per GPU (model loaded once per
  actor), fed shards by Ray's ``ActorPool`` (``pipeline.pool``). Worker threads decode and
  preprocess frames of several clips while the model runs; frames of all clips of a shard are
  batched together, grouped by preprocessed shape. A cluster without a GPU gets CPU actors and
  a logged message (asking Ray for a GPU that does not exist would wait forever).
- ``sensor``: the dataset's own metric depth (synthetic ground truth, RGB-D PNGs), as plain Ray
  tasks.

A clip whose frame or depth file cannot be read fails with that reason; its rows are left out.
Optionally a low-resolution depth map of each clip's first processed frame is kept under
``<stage dir>/_preview/`` (the ``_`` keeps Parquet dataset readers away from it).
"""

from __future__ import annotations

import io
import logging
import queue
import sys
import threading
import time
import traceback
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import ray_utils, storage
from pipeline.depth.model import (
    DepthPredictor,
    Item,
    finalize_samples,
    load_depth_model,
    model_source_problem,
    preview_map,
    sample_sensor,
)
from pipeline.device import device_for
from pipeline.formats import frames as frame_io
from pipeline.io import write_bytes_atomic, write_parquet_atomic
from pipeline.pool import ShardActorPool
from pipeline.registry import register
from pipeline.schema import DEPTH_SAMPLES
from pipeline.settings import DepthSensor, Settings
from pipeline.stage import (
    ERROR,
    ClipError,
    Failures,
    Reads,
    ShardResult,
    ShardTask,
    Stage,
    TaskOutcome,
    error_reason,
    execute,
    for_each_clip,
)

log = logging.getLogger(__name__)

OBS_COLUMNS = ["clip_id", "frame_idx", "point_id", "u", "v"]


# ---------------------------------------------------------------------- shard inputs/outputs
class ShardInputs:
    """Observations of one shard grouped per clip and frame, plus the manifest rows."""

    def __init__(self, task: ShardTask):
        self.obs = storage.read_table(task.inputs["triangulate"], columns=OBS_COLUMNS)
        manifest = storage.read_table(task.inputs["ingest"]).to_pylist()
        self.rows = {r["clip_id"]: r for r in manifest}
        clip = self.obs.column("clip_id").to_numpy(zero_copy_only=False)
        self.frame = self.obs.column("frame_idx").to_numpy()
        self.u = self.obs.column("u").to_numpy().astype(np.float64)
        self.v = self.obs.column("v").to_numpy().astype(np.float64)
        order = np.argsort(clip, kind="stable")
        self.clip_ids: list[str] = list(dict.fromkeys(clip.tolist()))
        self.rows_of: dict[str, np.ndarray] = {}
        if len(order):
            sorted_clips = clip[order]
            cuts = np.flatnonzero(sorted_clips[1:] != sorted_clips[:-1]) + 1
            for part in np.split(order, cuts):
                self.rows_of[str(clip[part[0]])] = part
        self.clip = clip
        self.frames = {c: self._frames_of(c) for c in self.clip_ids}

    def _frames_of(self, clip_id: str) -> dict[int, np.ndarray]:
        """frame_idx -> observation row indices (increasing frame order)."""
        rows = self.rows_of[clip_id]
        rows = rows[np.argsort(self.frame[rows], kind="stable")]
        frames, starts = np.unique(self.frame[rows], return_index=True)
        return {int(f): part for f, part in zip(frames, np.split(rows, starts[1:]))}

    def manifest_row(self, clip_id: str) -> dict[str, Any]:
        row = self.rows.get(clip_id)
        if row is None:
            raise ClipError(clip_id, "clip has observations but no manifest row in this shard")
        return row


def write_output(
    task: ShardTask, inp: ShardInputs, depth: np.ndarray, valid: np.ndarray, ok: set[str]
) -> None:
    keep = np.isin(inp.clip, np.asarray(sorted(ok), dtype=object)) if ok else np.zeros(
        len(inp.clip), bool
    )
    idx = np.flatnonzero(keep)
    table = pa.Table.from_arrays(
        [
            inp.obs.column("clip_id").take(idx),
            inp.obs.column("frame_idx").take(idx),
            inp.obs.column("point_id").take(idx),
            pa.array(depth[idx], type=pa.float32()),
            pa.array(valid[idx], type=pa.bool_()),
        ],
        schema=DEPTH_SAMPLES,
    )
    write_parquet_atomic(table, task.output)


def write_preview(task: ShardTask, clip_id: str, frame_idx: int, small: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, depth=small, frame_idx=np.int64(frame_idx))
    write_bytes_atomic(buf.getvalue(),
                       storage.path(task.output).parent / "_preview" / f"{clip_id}.npz")


def _reason(exc: BaseException) -> tuple[str, str]:
    """(reason, kind): a ``ClipError`` is the data's fault, anything else is unexpected."""
    if isinstance(exc, ClipError):
        return exc.reason, exc.kind
    log.error("unexpected error\n%s", "".join(traceback.format_exception(exc)))
    return error_reason(exc), ERROR


# ---------------------------------------------------------------------- sensor backend
def run_sensor_shard(task: ShardTask) -> ShardResult:
    dcfg = Settings(task.cfg).depth
    inp = ShardInputs(task)
    n = len(inp.clip)
    depth = np.full(n, np.nan, np.float32)
    valid = np.zeros(n, bool)
    max_depth = float(dcfg.max_depth)

    def one(clip_id: str, _: Any) -> str:
        row = inp.manifest_row(clip_id)
        shape = (int(row["height"]), int(row["width"]))
        for k, (f, rows) in enumerate(inp.frames[clip_id].items()):
            d = frame_io.read_depth(row, f)
            if d.shape != shape:
                raise ClipError(
                    clip_id, f"depth of frame {f} is {d.shape[1]}x{d.shape[0]}, "
                    f"frames are {shape[1]}x{shape[0]}"
                )
            depth[rows], valid[rows] = sample_sensor(
                d, inp.u[rows], inp.v[rows], dcfg.interpolation, max_depth
            )
            if k == 0 and dcfg.preview:
                dd, _ok = finalize_samples(d, max_depth)
                write_preview(task, clip_id, f, preview_map(dd, dcfg.preview_width))
        return clip_id

    ok, failures = for_each_clip(((c, None) for c in inp.clip_ids), one)
    write_output(task, inp, depth, valid, set(ok))
    return ShardResult(
        n_clips=len(inp.clip_ids), n_ok=len(ok), failures=failures,
        stats={"obs": n, "valid": int(valid.sum())},
    )


# ---------------------------------------------------------------------- model backend
_DONE = object()


def _producer(
    inp: ShardInputs,
    clips: list[str],
    predictor: DepthPredictor,
    out: queue.Queue,
    stop: threading.Event,
    preview: bool,
) -> None:
    """Decode + preprocess the frames of some clips; one message per frame, then per clip."""

    def put(msg: Any) -> None:
        while not stop.is_set():
            try:
                out.put(msg, timeout=0.1)
                return
            except queue.Full:
                continue

    for clip_id in clips:
        if stop.is_set():
            return
        try:
            row = inp.manifest_row(clip_id)
            frames = inp.frames[clip_id]
            size = (int(row["height"]), int(row["width"]))
            first = True
            for f, rgb in frame_io.iter_frames(row, list(frames)):
                if rgb.shape[:2] != size:
                    raise ClipError(
                        clip_id, f"frame {f} is {rgb.shape[1]}x{rgb.shape[0]}, manifest says "
                        f"{size[1]}x{size[0]}"
                    )
                rows = frames[f]
                put(("item", Item((clip_id, f), predictor.preprocess(rgb), size,
                                  inp.u[rows], inp.v[rows], want_map=preview and first), None))
                first = False
            put(("done", clip_id, None))
        except Exception as exc:  # noqa: BLE001 - becomes this clip's failure reason
            put(("done", clip_id, _reason(exc)))  # (reason, kind)
    put((_DONE, None, None))


class _ShardConsumer:
    """The consumer side of one shard's model pass: items from the prefetch threads are
    bucketed by input shape, a full bucket is launched on the device while the previous batch
    is collected, and collected samples land in the shard's depth/valid arrays (frames of a
    clip that already failed are counted but dropped)."""

    def __init__(self, inp: ShardInputs, predictor: DepthPredictor, dcfg: dict[str, Any]):
        self.inp, self.predictor, self.dcfg = inp, predictor, dcfg
        n = len(inp.clip)
        self.depth = np.full(n, np.nan, np.float32)
        self.valid = np.zeros(n, bool)
        self.max_depth = float(dcfg["max_depth"])
        self.failures = Failures()
        self.buckets: dict[tuple[int, ...], list[Item]] = defaultdict(list)
        self.previews: dict[str, tuple[int, np.ndarray]] = {}
        self.n_frames = 0
        self.t_model = 0.0
        self.pending: list[Any] = []  # launched on the device, not collected yet

    def collect(self) -> None:
        """Fetch every launched batch and store its samples (and preview maps)."""
        for job in self.pending:
            for it, (samples, full) in zip(job.items, self.predictor.fetch([job])):
                clip_id, f = it.key
                self.n_frames += 1
                if clip_id in self.failures:
                    continue
                rows = self.inp.frames[clip_id][f]
                self.depth[rows], self.valid[rows] = finalize_samples(samples, self.max_depth)
                if full is not None:
                    dd, _ok = finalize_samples(full, self.max_depth)
                    self.previews[clip_id] = (
                        f, preview_map(dd, int(self.dcfg["preview_width"])))
        self.pending.clear()

    def run_bucket(self, items: list[Item]) -> None:
        """Launch one batch (items of failed clips left out), then collect the previous one."""
        items = [it for it in items if it.key[0] not in self.failures]
        if not items:
            return
        t = time.perf_counter()
        launched = self.predictor.launch(items)  # queue this batch, then collect the previous one
        self.collect()
        self.pending.extend(launched)
        self.t_model += time.perf_counter() - t

    def consume(self, q: queue.Queue, threads: list[threading.Thread]) -> None:
        """Drain the queue until every producer has finished, then run and collect what is
        left; producers that die without their end marker are an error, not a hang."""
        finished = 0
        while finished < len(threads):
            try:
                kind, a, b = q.get(timeout=1.0)
            except queue.Empty:
                if not any(th.is_alive() for th in threads) and q.empty():
                    raise RuntimeError("depth prefetch threads died without finishing") from None
                continue
            if kind is _DONE:
                finished += 1
            elif kind == "done":
                if b is not None:
                    self.failures.add(a, *b)
            else:
                shape = a.pixel_values.shape
                self.buckets[shape].append(a)
                if len(self.buckets[shape]) >= self.predictor.batch_size:
                    self.run_bucket(self.buckets.pop(shape))
        for shape in list(self.buckets):
            self.run_bucket(self.buckets.pop(shape))
        self.collect()


def run_model_shard(
    task: ShardTask, predictor: DepthPredictor, dcfg: dict[str, Any]
) -> ShardResult:
    """Predict and sample every frame with observations; decoding overlaps inference."""
    t0 = time.perf_counter()
    inp = ShardInputs(task)
    consumer = _ShardConsumer(inp, predictor, dcfg)
    preview = bool(dcfg.get("preview"))
    n_workers = max(1, min(int(dcfg["prefetch_workers"]), len(inp.clip_ids)))
    q: queue.Queue = queue.Queue(maxsize=max(1, int(dcfg["prefetch_batches"]))
                                 * predictor.batch_size)
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_producer,
            args=(inp, inp.clip_ids[i::n_workers], predictor, q, stop, preview),
            daemon=True, name=f"depth-prefetch-{i}",
        )
        for i in range(n_workers)
    ]
    for th in threads:
        th.start()
    try:
        consumer.consume(q, threads)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=5)
    return _write_shard(task, inp, consumer, t0)


def _write_shard(
    task: ShardTask, inp: ShardInputs, consumer: _ShardConsumer, t0: float
) -> ShardResult:
    """Write the shard's depth samples (clips that did not fail) and previews; its result.
    The images/s figure counts the shard's whole wall time since ``t0``, writes included."""
    failures, predictor = consumer.failures, consumer.predictor
    ok = [c for c in inp.clip_ids if c not in failures]
    write_output(task, inp, consumer.depth, consumer.valid, set(ok))
    for clip_id, (f, small) in consumer.previews.items():
        if clip_id not in failures:
            write_preview(task, clip_id, f, small)
    wall = time.perf_counter() - t0
    n_frames = consumer.n_frames
    return ShardResult(
        n_clips=len(inp.clip_ids), n_ok=len(ok), failures=failures,
        stats={
            "obs": len(inp.clip), "valid": int(consumer.valid.sum()), "frames": n_frames,
            "images_per_s": n_frames / wall if wall > 0 else None,
            "model_s": round(consumer.t_model, 3), "device": str(predictor.device),
            "batch_size": predictor.batch_size, "oom_halvings": predictor.n_oom,
        },
    )


def build_predictor(dcfg: dict[str, Any], device: str) -> DepthPredictor:
    model, processor = load_depth_model(
        dcfg["model"], float(dcfg["max_depth"]), revision=dcfg.get("revision"),
        local_files_only=bool(dcfg.get("local_files_only")),
    )
    dtype = dcfg["dtype"] if device.startswith("cuda") else dcfg["cpu_dtype"]
    return DepthPredictor(model, processor, device, dtype, float(dcfg["max_depth"]),
                          int(dcfg["batch_size"]), dcfg["preprocess"])


_LOCAL: dict[str, DepthPredictor] = {}


def local_predictor(dcfg: dict[str, Any]) -> DepthPredictor:
    """A predictor in this process (direct calls, benchmarks), loaded once per config."""
    from pipeline.io import stable_hash

    key = stable_hash(dcfg)
    if key not in _LOCAL:
        _LOCAL.clear()
        _LOCAL[key] = build_predictor(dcfg, device_for(dcfg))
    return _LOCAL[key]


# ---------------------------------------------------------------------- actor pool
class DepthWorker:
    """One Ray actor: the model is loaded once and serves shard after shard."""

    def __init__(self, dcfg: dict[str, Any], device: str, num_threads: int):
        import torch

        torch.set_num_threads(max(1, num_threads))
        self.dcfg = dcfg
        self.predictor = build_predictor(dcfg, device)

    def ready(self) -> str:
        return str(self.predictor.device)

    def _run(self, task: ShardTask) -> ShardResult:
        return run_model_shard(task, self.predictor, self.dcfg)

    def process(self, task: ShardTask) -> TaskOutcome:
        """Through the engine's one task wrapper (timings, shard log file, crash capture)."""
        return execute(self._run, task, in_worker=True)


def _announce(msg: str) -> None:
    """Printed on the driver (the runner's own lines go to the terminal the same way)."""
    log.info(msg)
    print(msg, file=sys.stderr, flush=True)


class DepthActorPool(ShardActorPool):
    """The depth model's actors (one per GPU, or CPU actors when the cluster has no GPU) under
    Ray's ``ActorPool``: decides how many and where, and fails early when they cannot start."""

    def __init__(self, cfg: dict[str, Any]):
        import ray

        from pipeline.errors import ConfigError

        dcfg = cfg["depth"]
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        policy = dcfg.get("device") or "auto"
        if policy not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"depth.device '{policy}' is not one of auto, cuda, cpu")
        if policy == "cuda" and gpus == 0:
            raise ConfigError("depth.device=cuda but the Ray cluster has no GPU")
        node_cpus = [
            int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")
        ] or [1]
        cpus = max(1, min(int(dcfg["cpus_per_actor"]), max(node_cpus)))
        if gpus > 0 and policy != "cpu":
            n = min(int(dcfg.get("num_actors") or gpus), gpus)
            opts = {"num_gpus": 1, "num_cpus": cpus}
            device = "cuda"
            _announce(f"[depth] {n} GPU actor(s) ({dcfg['model']}, {dcfg['dtype']} autocast)")
        else:
            fit = sum(c // cpus for c in node_cpus) or 1
            n = max(1, min(int(dcfg.get("num_actors") or dcfg["cpu_actors"]), fit))
            opts = {"num_gpus": 0, "num_cpus": cpus}
            device = "cpu"
            why = "depth.device=cpu" if policy == "cpu" else "no GPU in the Ray cluster"
            _announce(
                f"[depth] {why}: running Depth Anything on {n} CPU actor(s) x {cpus} cores "
                "(expect well under 1 image/s per core with a real checkpoint)"
            )
        env = ray_utils.forwarded_env(cfg)  # ray.forward_env (object-storage endpoint...)
        if env:
            opts["runtime_env"] = {"env_vars": env}
        remote = ray.remote(DepthWorker).options(
            **opts, max_restarts=int(dcfg["max_restarts"]), max_task_retries=0,
        )
        self.device = device
        super().__init__([remote.remote(dcfg, device, cpus) for _ in range(n)])
        # Surface load errors (missing weights, a relative head) once, here, not per shard,
        # and never wait silently for actors the cluster cannot place.
        refs = [a.ready.remote() for a in self.actors]
        timeout = float(dcfg["startup_timeout_s"])
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if len(done) < len(refs):
            self.close()
            raise RuntimeError(
                f"depth: only {len(done)} of {len(refs)} actors ({opts}) started within "
                f"{timeout:.0f} s (depth.startup_timeout_s): the cluster cannot place them or "
                "loading the model is stuck"
            )
        ray.get(refs)


# ---------------------------------------------------------------------- the stage
class DepthStage(Stage):
    name = "depth"
    reads = Reads(upstream=("ingest", "triangulate"), config=("depth",))
    version = 1

    def resources(self, cfg: dict[str, Any]) -> dict[str, Any]:
        dcfg = Settings(cfg).depth
        return {"num_cpus": dcfg.cpus_per_task if isinstance(dcfg, DepthSensor)
                else dcfg.cpus_per_actor}

    def check_ready(self, cfg: dict[str, Any]) -> None:
        """The model must be loadable before the first stage runs, not after triangulation."""
        s = Settings(cfg)
        dcfg = s.depth
        if isinstance(dcfg, DepthSensor):
            return
        problem = model_source_problem(
            dcfg.model, dcfg.revision, dcfg.local_files_only, float(s.models.hub_timeout_s),
        )
        if problem:
            from pipeline.errors import ConfigError

            raise ConfigError(
                f"depth.model: {problem}; download it on a connected machine "
                f"(huggingface-cli download {dcfg.model} --local-dir DIR) and pass "
                "depth.model=DIR, or use depth=sensor for datasets with their own depth"
            )

    def make_executor(self, cfg: dict[str, Any]) -> DepthActorPool | None:
        if Settings(cfg).depth.backend == "sensor":
            return None
        return DepthActorPool(cfg)

    def process_shard(self, task: ShardTask) -> ShardResult:
        dcfg = task.cfg["depth"]
        backend = dcfg["backend"]
        if backend == "sensor":
            return run_sensor_shard(task)
        if backend == "da2_metric":
            return run_model_shard(task, local_predictor(dcfg), dcfg)
        raise ValueError(f"unknown depth backend '{backend}' (da2_metric | sensor)")


STAGE = register(DepthStage())
