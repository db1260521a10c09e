"""The runner: plans shards, decides with the ledger what is missing, failed or stale, runs it,
records everything and prints a summary. It names no stage: stages come from the registry and
are driven only through the declared contract of ``pipeline.stage``.

Resume is the default: a shard whose ledger entry is ``done`` with the current fingerprint, an
existing output and no unexpected clip errors is never recomputed. A fingerprint chains the
digests of the upstream outputs of the same shard (all of them for a global stage) with the
stage's own config sections, so an upstream change or a config edit makes exactly the affected
shards stale. Outputs are written by the workers atomically; ledger entries by the driver, after
the output exists, so a crash anywhere leaves a consistent state.

Ray is started (or joined) only when a stage has tasks to run: the plan, the ledger and the
fingerprints are all driver-side, so a run with nothing to compute never waits for Ray.

Exit status of ``run`` (``Summary["exit_code"]``): 0 when every shard is done and no clip hit an
unexpected error; 1 when shards or a dataset-wide step failed, shards are pending, clips hit
unexpected errors, or no clip survived; the CLI adds 2 for configuration errors and 130 for an
interrupt.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline import log as plog
from pipeline import ray_utils, registry, storage, work_lock
from pipeline.errors import ConfigError, StorageError
from pipeline.io import file_digest, files_digest, stable_hash, write_json_atomic
from pipeline.ledger import BLOCKED, DONE, FAILED, RUNNING, Entry, Ledger
from pipeline.settings import Settings
from pipeline.stage import (
    GLOBAL,
    GLOBAL_SHARD,
    ShardTask,
    Stage,
    StageNotImplemented,
    TaskOutcome,
    execute,
    stage_config_view,
)
from pipeline.summary import (  # noqa: F401 - status/format_status: public here too
    build_summary,
    format_status,
    max_attempts,
    print_summary,
    status,
)

log = plog.log


def load_stage(name: str) -> Stage:
    """A registered stage by name, or a one-line ``ConfigError`` listing the choices."""
    try:
        return registry.get(name)
    except registry.UnknownStage:
        raise ConfigError(
            f"unknown stage '{name}' (choose from: all, {', '.join(registry.names())})"
        ) from None


def stage_chain(target: str) -> list[str]:
    """``target`` and everything upstream of it, in data-flow order."""
    if target != "all":
        load_stage(target)
    return registry.chain(target)


class RunContext:
    """What stage hooks on the driver (prepare/finalize/shard_extra) see of the current run."""

    def __init__(self, cfg: dict[str, Any], shards: dict[str, list[str]],
                 sources: dict[str, Any] | None = None):
        self.cfg = cfg
        settings = Settings(cfg)
        self.work_dir = storage.path(settings.paths.work_dir)  # Path, or ObjectPath for a URI
        self.shards = shards
        self.shard_ids = sorted(shards)
        self.sources = sources or {}
        self.progress = settings.progress
        #: what each stage's ``prepare`` returned in this run, by stage name: its dataset-wide
        #: step (``finalize``) reads it instead of computing the same values again
        self.prepared: dict[str, dict[str, Any]] = {}

    def output_path(self, stage: str, shard_id: str) -> Any:
        return self.work_dir / load_stage(stage).output_file(self.cfg, shard_id)

    def entries(self, stage: str) -> dict[str, Entry | None]:
        return Ledger(self.work_dir, stage).entries(self.shard_ids)

    def done_outputs(self, stage: str) -> list[Any]:
        ledger = Ledger(self.work_dir, stage)
        outs = (ledger.done_output(s) for s in self.shard_ids)
        return [p for p in outs if p is not None]

    def clip_failures(self, stage: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for e in self.entries(stage).values():
            if e is not None and e.status == DONE:
                out.update(e.failures)
        return out

    def log(self, msg: str) -> None:
        log.info(msg)


def _remote_execute(stage: Stage, task: ShardTask) -> TaskOutcome:
    """Body of one Ray task (the stage object travels with it: toy stages work too)."""
    return execute(stage.process_shard, task, in_worker=True)


class Runner:
    def __init__(self, cfg: dict[str, Any], started_at: float | None = None):
        """``started_at``: when the command started (epoch seconds), so the reported wall time
        is the whole command's (imports, Ray start), not only the stages'; default now."""
        self.cfg = cfg
        #: the same config, typed (attribute access; ``cfg`` stays what tasks receive)
        self.settings = Settings(cfg)
        self.started_at = time.time() if started_at is None else float(started_at)
        self._ray_ready = False
        #: the work dir as configured: what tasks receive (``~`` is each node's home)
        self.work_root = self.settings.paths.work_dir
        #: the same, resolved here for the driver's own reads and writes
        self.work_dir = storage.path(self.work_root)
        self.force = self.settings.force
        self.report: dict[str, Any] = {"stages": {}}

    # ------------------------------------------------------------------ planning
    def plan(self) -> tuple[dict[str, list[str]], dict[str, Any]]:
        """Discover clips (the source stage's job) and cut them into shards of sorted ids."""
        sources = registry.source().discover(self.cfg)
        ds = self.settings.dataset
        if not sources:
            raise ConfigError(f"dataset '{ds.name}' at {ds.root} has no clips")
        ids = sorted(sources)
        if ds.limit is not None:
            ids = ids[: ds.limit]
            sources = {c: sources[c] for c in ids}
        shards = cut_shards(ids, self.settings.shards.size, self.settings.shards.max_factor)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            {"dataset": ds.name, "shards": shards},
            self.work_dir / "plan.json",
        )
        return shards, sources

    # ------------------------------------------------------------------ running
    def run(self, target: str) -> dict[str, Any]:
        chain = stage_chain(target)
        for name in chain:
            stage = load_stage(name)
            if not stage.implemented:
                raise StageNotImplemented(
                    f"stage '{name}' is declared but not implemented yet "
                    f"(needed for stage={target})"
                )
        storage.configure(self.cfg.get("storage"))
        preflight(self.cfg)  # buckets, credentials, endpoints: one line before any stage runs
        for name in chain:  # inputs first: a missing dataset is more specific than a model
            load_stage(name).check_inputs(self.cfg)
        for name in chain:  # weights, devices...: fail before any stage writes anything
            load_stage(name).check_ready(self.cfg)
        if storage.is_uri(self.work_root):
            self.work_dir.mkdir(parents=True, exist_ok=True)
        else:  # the first write: a read-only directory or mount is one line, not a traceback
            check_writable(self.work_root)
        self._lock = work_lock.acquire(self.work_root,
                                       float(self.settings.storage.lock_ttl_s))
        failure: StorageError | None = None
        summary: dict[str, Any] | None = None
        try:
            plog.setup(self.work_dir, self.settings.log.level)
            if self._lock.note:  # a killed run's lock, taken over
                log.info(self._lock.note)
            summary = self._run_locked(target, chain)
            return summary
        except OSError as exc:  # the work dir's storage failed under the driver
            if isinstance(exc, ConnectionError):  # sockets (Ray's), never a filesystem's error
                raise
            plog.to_file("storage failed during the run")
            failure = StorageError(f"storage failed during the run on {self.work_root}: "
                                   f"{storage.describe(exc)}")
            raise failure from None
        finally:
            kept = plog.flush_remote()  # on object storage the run log is uploaded at the end
            self._lock.close()
            if kept is not None:
                note = (f"the run log could not be uploaded to {self.work_root}; it is kept at "
                        f"{kept}")
                if failure is not None:
                    failure.details.append(note)
                elif summary is not None:
                    summary["problems"].append(note)
                    summary["exit_code"] = 1
                else:  # an interrupt or a bug is on its way out: say it beside it
                    print(f"warning: {note}", file=sys.stderr)

    def _ensure_ray(self) -> float:
        """Start (or join) Ray the first time a stage has tasks to run: a run with nothing to
        compute decides that from the ledger alone and never pays for a Ray start. Returns the
        seconds it took (kept out of the stage's own wall time, which benchmarks compare)."""
        if self._ray_ready:
            return 0.0
        t0 = time.time()
        ray_utils.init_ray(self.cfg)
        if not storage.is_uri(self.work_root):
            ray_utils.check_shared_dir(self.work_root)  # several nodes: one shared directory
        self._ray_ready = True
        took = time.time() - t0
        self.report["ray_start_s"] = round(took, 3)
        return took

    def _run_locked(self, target: str, chain: list[str]) -> dict[str, Any]:
        shards, sources = self.plan()
        ctx = RunContext(self.cfg, shards, sources)
        n_clips = sum(len(v) for v in shards.values())
        ctx.log(f"[plan] {n_clips} clips in {len(shards)} shards -> {self.work_dir}")
        for name in chain:
            self._lock.check()
            stage = load_stage(name)
            force = self.force and (target == "all" or name == target)
            t0 = time.time()
            stats = self._run_stage(stage, ctx, force)
            stats["wall_s"] = round(time.time() - t0 - stats.pop("ray_start_s"), 3)
            self.report["stages"][name] = stats
        self.report["wall_s"] = time.time() - self.started_at
        summary = build_summary(ctx, chain, self.report)
        write_json_atomic(summary, self.work_dir / "summary.json")
        print_summary(summary)
        return summary

    def _fingerprint(self, stage: Stage, clips: list[str], upstream: dict[str, Any],
                     extra: Any, view: dict[str, Any] | None = None) -> str:
        return stable_hash(
            {
                "stage": stage.name,
                "version": stage.version,
                "config": stage.config_view(self.cfg) if view is None else view,
                "clips": clips,
                "upstream": upstream,
                "extra": extra,
            }
        )

    def _adopt_earlier_fingerprint(self, stage: Stage, ledger: Ledger, prev: Entry | None,
                                   fp: str, clips: list[str], digests: dict[str, Any],
                                   extra: Any) -> None:
        """An entry written before the stage declared ``reads.config_exclude`` carries the
        fingerprint of its whole sections: with unchanged settings it is the same result, so it
        takes the new fingerprint instead of being redone (for train: retrained from scratch)."""
        if prev is None or prev.fingerprint == fp or not stage.reads.config_exclude:
            return
        whole = stage_config_view(self.cfg, stage.reads.config)
        if prev.fingerprint == self._fingerprint(stage, clips, digests, extra, whole):
            prev.fingerprint = fp
            ledger.put(prev)

    def _plan_task(
        self, stage: Stage, ctx: RunContext, ledger: Ledger, shard: str, clips: list[str],
        inputs: dict[str, str], digests: dict[str, Any], extra: dict[str, Any],
        blocked: str | None, force: bool, inputs_all: dict[str, list[str]] | None = None,
        task_extra: dict[str, Any] | None = None,
    ) -> tuple[Entry, ShardTask] | str:
        """The task for one shard, or why it does not run (``fresh``, ``blocked``, ``gave_up``)."""
        fp = self._fingerprint(stage, clips, digests, extra)
        rel_out = stage.output_file(self.cfg, shard)
        prev = ledger.get(shard)
        self._adopt_earlier_fingerprint(stage, ledger, prev, fp, clips, digests, extra)
        if blocked is not None:
            ledger.put(Entry(stage.name, shard, BLOCKED, clips, fp, rel_out, error=blocked,
                             attempts=prev.attempts if prev else 0))
            return "blocked"
        st = ledger.state(prev, clips, max_attempts(self.cfg), fp, stage.output_problem)
        if not force and not st.todo:
            return "fresh" if st.label in ("done", "errors") and prev and prev.status == DONE \
                else "gave_up"
        same = prev is not None and prev.fingerprint == fp and not force
        entry = Entry(stage.name, shard, RUNNING, clips, fp, rel_out,
                      attempts=prev.attempts if same and prev else 0)
        task = ShardTask(
            stage=stage.name, shard_id=shard, clip_ids=clips, inputs=inputs,
            output=storage.join(self.work_root, rel_out), cfg=self.cfg, work_dir=self.work_root,
            extra={**extra, **(task_extra or {})}, inputs_all=inputs_all or {}, fingerprint=fp,
            restart=not same,
        )
        return entry, task

    def _run_stage(self, stage: Stage, ctx: RunContext, force: bool) -> dict[str, Any]:
        ledger = Ledger(self.work_dir, stage.name)
        extra_all = ctx.prepared[stage.name] = stage.prepare(ctx)
        # declared file inputs enter the fingerprint beside the upstream digests; only when
        # there are any, so the fingerprints of stages without them stay as they were
        files = stage.file_inputs(ctx)
        own = {"_files": files_digest(files)} if files else {}
        todo: list[tuple[Entry, ShardTask]] = []
        counts = {"fresh": 0, "blocked": 0, "gave_up": 0}
        if stage.kind == GLOBAL:
            plans = [self._global_plan(stage, ctx, ledger, extra_all, force, own)]
        else:
            plans = [self._shard_plan(stage, ctx, ledger, shard, clips, extra_all, force, own)
                     for shard, clips in ctx.shards.items()]
        for p in plans:
            if isinstance(p, str):
                counts[p] += 1
            else:
                todo.append(p)
        what = "task" if stage.kind == GLOBAL else "shards"
        ctx.log(
            f"[{stage.name}] {len(todo)} {what} to run, {counts['fresh']} done and fresh"
            + (f", {counts['blocked']} blocked by upstream failures" if counts["blocked"] else "")
            + (f", {counts['gave_up']} given up after {max_attempts(self.cfg)} attempts"
               if counts["gave_up"] else "")
        )
        stats: dict[str, Any] = {"run": len(todo), **counts, "ray_start_s": 0.0}
        if todo:  # global stages may start Ray work of their own, too
            stats["ray_start_s"] = self._ensure_ray()
            self._execute(stage, ledger, todo, ctx)
        if stage.kind != GLOBAL and stage.finalize_output:
            stats["finalize"] = self._run_finalize(stage, ctx, ledger, force)
        return stats

    def _upstream_of_shard(self, stage: Stage, shard: str) -> tuple[dict, dict, str | None]:
        inputs: dict[str, str] = {}
        digests: dict[str, Any] = {}
        for up in stage.reads.upstream:
            up_ledger = Ledger(self.work_dir, up)
            e = up_ledger.get(shard)
            up_out = up_ledger.done_path(e)
            if e is None or up_out is None:
                why = f" ({e.status}: {_last_line(e.error)})" if e and e.error else (
                    f" ({e.status})" if e else "")
                return inputs, digests, f"upstream {up} shard {shard} is not done{why}"
            inputs[up] = storage.join(self.work_root, e.output)
            digests[up] = _chained_digest(e)
        return inputs, digests, None

    def _shard_plan(self, stage: Stage, ctx: RunContext, ledger: Ledger, shard: str,
                    clips: list[str], extra_all: dict[str, Any], force: bool,
                    own: dict[str, Any]) -> Any:
        inputs, digests, blocked = self._upstream_of_shard(stage, shard)
        digests.update(own)
        shard_extra = stage.shard_extra(ctx, shard, clips)
        # per-shard values enter the fingerprint as digests (for ingest exactly as before the
        # stage contract existed: work dirs made then stay fresh)
        for key, value in shard_extra.items():
            digests[key] = stable_hash(value)
        return self._plan_task(stage, ctx, ledger, shard, clips, inputs, digests,
                               extra_all, blocked, force, task_extra=shard_extra)

    def _global_plan(self, stage: Stage, ctx: RunContext, ledger: Ledger,
                     extra_all: dict[str, Any], force: bool, own: dict[str, Any]) -> Any:
        """One task over every done upstream shard; its fingerprint chains all of them, so
        changed upstream data (e.g. the curated set for train) starts a new run."""
        inputs_all: dict[str, list[str]] = {}
        digests: dict[str, Any] = dict(own)
        blocked = None
        for up in stage.reads.upstream:
            up_stage = load_stage(up)
            up_ledger = Ledger(self.work_dir, up)
            ids = [GLOBAL_SHARD] if up_stage.kind == GLOBAL else ctx.shard_ids
            done = {s: e for s, e in up_ledger.entries(ids).items()
                    if up_ledger.done_path(e) is not None}
            if not done:
                blocked = f"upstream {up} has no done output"
            inputs_all[up] = [storage.join(self.work_root, e.output) for e in done.values()]
            digests[up] = {s: _chained_digest(e) for s, e in done.items()}
        inputs = {up: storage.join(self.work_root, load_stage(up).out_dir_name(self.cfg))
                  for up in stage.reads.upstream}
        return self._plan_task(stage, ctx, ledger, GLOBAL_SHARD, [], inputs, digests,
                               extra_all, blocked, force, inputs_all)

    def _run_finalize(self, stage: Stage, ctx: RunContext, ledger: Ledger,
                      force: bool) -> str:
        """A sharded stage's dataset-wide step, under the ledger like a global stage: it re-runs
        only when one of the stage's shard entries (or the config) changed."""
        entries = ctx.entries(stage.name)
        digests = {s: [e.status, e.fingerprint, e.output_digest] if e else None
                   for s, e in entries.items()}
        fp = self._fingerprint(stage, [], {"shards": digests}, "finalize")
        rel_out = f"{stage.out_dir_name(self.cfg)}/{stage.finalize_output}"
        prev = ledger.get(GLOBAL_SHARD)
        st = ledger.state(prev, [], max_attempts(self.cfg), fp)
        if not force and not st.todo:
            return "fresh"
        same = prev is not None and prev.fingerprint == fp and not force
        entry = Entry(stage.name, GLOBAL_SHARD, RUNNING, [], fp, rel_out,
                      attempts=prev.attempts if same and prev else 0)
        ledger.mark_running(entry)
        task = ShardTask(stage=stage.name, shard_id=GLOBAL_SHARD, clip_ids=[], inputs={},
                         output=storage.join(self.work_root, rel_out), cfg=self.cfg,
                         work_dir=self.work_root, fingerprint=fp, restart=not same)

        def fin(_task: ShardTask) -> Any:
            from pipeline.stage import ShardResult

            return ShardResult(n_clips=0, n_ok=0, stats=dict(stage.finalize(ctx) or {}))

        self._record(ledger, entry, execute(fin, task))
        if entry.status != DONE:
            ctx.log(f"[{stage.name}] dataset-wide step FAILED: {_last_line(entry.error)}")
        return entry.status

    def _execute(
        self, stage: Stage, ledger: Ledger, todo: list[tuple[Entry, ShardTask]], ctx: RunContext
    ) -> None:
        if stage.kind == GLOBAL:  # in the driver: it may start its own Ray work (Ray Train)
            for entry, task in todo:
                ledger.mark_running(entry)
                self._record(ledger, entry, execute(stage.process_shard, task))
                self._report_entry(stage, entry, ctx)
            return
        import ray

        executor = stage.make_executor(self.cfg)
        remote = None
        if executor is None:
            remote = ray.remote(_remote_execute).options(
                **stage.resources(self.cfg),
                **ray_utils.task_options(self.cfg),
                max_retries=0,
                name=f"{stage.name}-shard",
            )
        max_in_flight = ray_utils.max_in_flight(self.cfg)
        pending = list(todo)
        in_flight: dict[Any, tuple[Entry, ShardTask]] = {}
        n_clips = sum(len(t.clip_ids) for _, t in todo)
        every = float(self.settings.log.progress_every_s)
        bar = plog.progress(n_clips, f"{stage.name} clips", "clips", ctx.progress, every)
        ok = failed = 0
        try:
            while pending or in_flight:
                while pending and len(in_flight) < max_in_flight:
                    entry, task = pending.pop(0)
                    ledger.mark_running(entry)
                    if executor is not None:
                        key = executor.submit(task)
                    else:
                        key = remote.remote(stage, task)
                    in_flight[key] = (entry, task)
                done = executor.next_done() if executor is not None else _next_done(in_flight)
                for key, outcome in done:
                    entry, task = in_flight.pop(key)
                    self._record(ledger, entry, outcome)
                    if entry.status == DONE:
                        ok += entry.n_ok
                        failed += entry.n_clips - entry.n_ok
                    self._report_entry(stage, entry, ctx)
                    bar.set_postfix(ok=ok, failed=failed)
                    bar.update(len(task.clip_ids))
        finally:
            bar.close()
            if executor is not None:
                executor.close()

    def _report_entry(self, stage: Stage, entry: Entry, ctx: RunContext) -> None:
        log_path = Path("logs") / stage.name / f"{entry.shard_id}.log"
        if entry.status != DONE:
            ctx.log(f"[{stage.name}] shard {entry.shard_id} FAILED: {_last_line(entry.error)} "
                    f"(log: {log_path})")
        elif entry.errors:
            ctx.log(f"[{stage.name}] shard {entry.shard_id}: {len(entry.errors)} clip(s) hit "
                    f"unexpected errors, retried on the next run (log: {log_path})")

    def _record(self, ledger: Ledger, entry: Entry, outcome: TaskOutcome) -> None:
        entry.finished_at = time.time()
        entry.duration_s = round(outcome.wall_s, 3)
        entry.cpu_s = round(outcome.cpu_s, 3)
        entry.peak_rss_mb = round(outcome.peak_rss_mb, 1)
        entry.node = outcome.node
        res = outcome.result
        if outcome.ok and res is not None:
            out = ledger.output_path(entry)
            if not out.exists():
                entry.status = FAILED
                entry.error = f"stage reported success but wrote no output at {out}"
            else:
                entry.status = DONE
                entry.output_digest = file_digest(out)
                entry.error = None
            entry.n_clips = res.n_clips
            entry.n_ok = res.n_ok
            entry.failures = dict(res.failures)
            entry.failure_kinds = {c: res.kind_of(c) for c in res.failures}
            entry.filtered = dict(res.filtered)
            entry.inputs_digest = res.inputs_digest
            entry.stats = dict(res.stats)
        else:
            entry.status = FAILED
            entry.error = outcome.error or "task returned no result"
        ledger.put(entry)


def _next_done(refs: dict[Any, Any]) -> list[tuple[Any, TaskOutcome]]:
    """Wait for the next Ray task to finish; its outcome, keyed by its ObjectRef."""
    import ray

    ready, _ = ray.wait(list(refs), num_returns=1)
    return [(ref, _collect(ref)) for ref in ready]


def _collect(ref: Any) -> TaskOutcome:
    """Resolve one task; a lost worker or actor is a shard failure like any exception."""
    import ray

    try:
        value = ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, ActorDied...
        return TaskOutcome(ok=False, error=f"{type(exc).__name__}: {exc}")
    if not isinstance(value, TaskOutcome):
        return TaskOutcome(ok=False, error=f"executor returned {type(value).__name__}, "
                                           "expected TaskOutcome (run tasks through execute)")
    return value


def _id_hash(clip_id: str) -> int:
    return int.from_bytes(hashlib.sha256(clip_id.encode()).digest()[:8], "big")


def cut_shards(ids: list[str], size: int, max_factor: int) -> dict[str, list[str]]:
    """Cut sorted clip ids into shards whose boundaries depend on the ids themselves.

    A shard ends after a clip whose id hash is 0 modulo ``size`` (so shards hold ``size`` clips
    on average), or once it reaches ``max_factor * size`` clips. Fixed-size slicing would move
    every later boundary when one clip is added or removed, and a growing dataset would then
    re-triangulate everything after it; here only the shard that gained or lost the clip
    changes. A shard is named by a hash of its first clip id, so names are stable too.
    """
    cap = max(1, max_factor * size)
    shards: dict[str, list[str]] = {}
    current: list[str] = []
    for clip_id in ids:
        current.append(clip_id)
        if _id_hash(clip_id) % size == 0 or len(current) >= cap:
            shards[_shard_name(current[0])] = current
            current = []
    if current:
        shards[_shard_name(current[0])] = current
    return shards


def _shard_name(first_clip: str) -> str:
    return f"shard-{_id_hash(first_clip):016x}"


def _chained_digest(e: Entry) -> str | None:
    """What a downstream fingerprint chains on: the upstream output's digest, plus the digest of
    inputs the output only names by path (``ShardResult.inputs_digest``, reported by ingest).
    Frames or depth files replaced at the same path leave the manifest byte-identical, yet
    triangulate/depth must be redone on them."""
    extra = e.inputs_digest
    return e.output_digest if extra is None else stable_hash([e.output_digest, extra])


def check_writable(work_dir: str) -> None:
    """A local work dir must take files: create it and a probe file in it, else one
    ``ConfigError`` line. Checked after the other start-up checks (it creates the work dir) and
    before the run lock and any stage, so a read-only directory or mount never surfaces as a
    traceback from whichever write happens to come first."""
    d = storage.path(work_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"paths.work_dir={work_dir} is not writable "
                          f"({exc.strerror or type(exc).__name__}): choose a writable directory "
                          "or fix its permissions") from None


def preflight(cfg: dict[str, Any]) -> None:
    """Every object-storage location of the run is reachable with the node's credentials and
    its bucket exists: one ``ConfigError`` line otherwise, before any stage runs or writes."""
    places = [("paths.work_dir", cfg["paths"]["work_dir"])]
    ds = cfg.get("dataset") or {}
    places += [(f"dataset.{k}", ds[k]) for k in ("root", "frames_root", "videos_root",
                                                  "depth_root") if ds.get(k)]
    seen: set[str] = set()
    for key, value in places:
        if not storage.is_uri(value):
            continue
        bucket = str(storage.path(value).parts[0])
        if bucket in seen:
            continue
        seen.add(bucket)
        try:
            storage.check_access(str(value), key)
        except OSError as exc:
            raise ConfigError(str(exc)) from None


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""
