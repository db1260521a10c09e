"""The shard runner: plans shards, decides what is missing/failed/stale, runs it on Ray, records
everything in the ledger and prints a summary.

Resume is the default: a shard whose ledger entry is ``done`` with the current fingerprint and an
existing output is never recomputed. A fingerprint chains the digests of the upstream outputs of
the same shard with the stage's own config section, so an upstream change or a config edit makes
exactly the affected shards stale. Outputs are written by the workers atomically; ledger entries
by the driver, after the output exists, so a crash anywhere leaves a consistent state.
"""

from __future__ import annotations

import hashlib
import importlib
import resource
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline import ray_utils
from pipeline.config import ConfigError, stage_config_view
from pipeline.io import file_digest, stable_hash, write_json_atomic
from pipeline.ledger import BLOCKED, DONE, FAILED, RUNNING, Entry, Ledger
from pipeline.stage import ShardResult, ShardTask, Stage, StageNotImplemented

#: every stage, in data-flow order (``stage=all`` runs the first five)
STAGE_ORDER = ("ingest", "triangulate", "depth", "align", "curate", "train", "sample", "evaluate")
ALL = ("ingest", "triangulate", "depth", "align", "curate")


class _Declared(Stage):
    """Placeholder for a stage whose module has not been written yet."""

    implemented = False

    def __init__(self, name: str):
        self.name = name


def load_stage(name: str) -> Stage:
    if name not in STAGE_ORDER:
        raise ConfigError(f"unknown stage '{name}' (choose from: all, {', '.join(STAGE_ORDER)})")
    try:
        module = importlib.import_module(f"stages.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"stages.{name}":
            return _Declared(name)
        raise
    return module.STAGE


def stage_chain(target: str) -> list[str]:
    """``target`` and everything upstream of it, in data-flow order."""
    if target == "all":
        return list(ALL)
    needed: set[str] = set()
    todo = [target]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        todo.extend(load_stage(name).upstream)
    return [s for s in STAGE_ORDER if s in needed]


def output_dir_name(stage: Stage) -> str:
    return getattr(stage, "output_dir", None) or stage.name


class RunContext:
    """What dataset-wide stage hooks (prepare/finalize/run) see of the current run."""

    def __init__(self, cfg: dict[str, Any], shards: dict[str, list[str]]):
        self.cfg = cfg
        self.work_dir = Path(cfg["paths"]["work_dir"])
        self.shards = shards
        self.shard_ids = sorted(shards)
        self.progress = bool(cfg.get("progress", True))

    def output_path(self, stage: str, shard_id: str) -> Path:
        return self.work_dir / output_dir_name(load_stage(stage)) / f"{shard_id}.parquet"

    def entries(self, stage: str) -> dict[str, Entry | None]:
        return Ledger(self.work_dir, stage).entries(self.shard_ids)

    def done_outputs(self, stage: str) -> list[Path]:
        ledger = Ledger(self.work_dir, stage)
        outs = (ledger.done_output(s) for s in self.shard_ids)
        return [p for p in outs if p is not None]

    def clip_failures(self, stage: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for e in self.entries(stage).values():
            if e is not None:
                out.update(e.failures)
        return out

    def log(self, msg: str) -> None:
        tqdm.write(msg)


def _execute_shard(stage_name: str, task: ShardTask) -> dict[str, Any]:
    """Body of one Ray task: run a shard, never raise (errors travel back as text)."""
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        result = load_stage(stage_name).process_shard(task)
        payload: dict[str, Any] = {"ok": True, "result": asdict(result)}
    except Exception:  # noqa: BLE001 - reported to the driver and the ledger
        payload = {"ok": False, "error": traceback.format_exc(limit=8)}
    payload["wall_s"] = time.perf_counter() - t0
    payload["cpu_s"] = time.process_time() - c0
    payload["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    payload["node"] = ray_utils.node_id()
    return payload


class Runner:
    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.work_dir = Path(cfg["paths"]["work_dir"])
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.force = bool(cfg.get("force", False))
        self.report: dict[str, Any] = {"stages": {}}

    # ------------------------------------------------------------------ planning
    def plan(self) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
        """Discover clips (ingest's job) and cut them into fixed shards of sorted clip ids."""
        ingest = load_stage("ingest")
        sources = ingest.discover(self.cfg)
        if not sources:
            ds = self.cfg["dataset"]
            raise ConfigError(f"dataset '{ds['name']}' at {ds.get('root')} has no clips")
        ids = sorted(sources)
        limit = self.cfg["dataset"].get("limit")
        if limit is not None:
            limit = _int_setting("dataset.limit", limit, minimum=1)
            ids = ids[:limit]
            sources = {c: sources[c] for c in ids}
        size = _int_setting("shards.size", self.cfg["shards"]["size"], minimum=1)
        shards = cut_shards(ids, size, int(self.cfg["shards"]["max_factor"]))
        write_json_atomic(
            {"dataset": self.cfg["dataset"].get("name"), "shards": shards},
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
        lock = _lock_work_dir(self.work_dir)
        try:
            return self._run_locked(target, chain)
        finally:
            lock.close()  # releases the lock (the OS does the same if the driver is killed)

    def _run_locked(self, target: str, chain: list[str]) -> dict[str, Any]:
        ray_utils.init_ray(self.cfg)
        t_start = time.time()
        shards, sources = self.plan()
        ctx = RunContext(self.cfg, shards)
        n_clips = sum(len(v) for v in shards.values())
        ctx.log(f"[plan] {n_clips} clips in {len(shards)} shards -> {self.work_dir}")
        self.report["clips_in"] = n_clips
        for name in chain:
            stage = load_stage(name)
            force = self.force and (target == "all" or name == target)
            if hasattr(stage, "run"):
                t0 = time.time()
                out = stage.run(ctx)
                self.report["stages"][name] = {"summary": out, "wall_s": time.time() - t0}
                continue
            self._run_stage(stage, ctx, sources, force)
        self.report["wall_s"] = time.time() - t_start
        summary = build_summary(ctx, chain, self.report)
        write_json_atomic(summary, self.work_dir / "summary.json")
        print_summary(summary)
        return summary

    def _fingerprint(
        self, stage: Stage, shard: str, clips: list[str], upstream: dict[str, str], extra: Any
    ) -> str:
        return stable_hash(
            {
                "stage": stage.name,
                "version": getattr(stage, "version", 1),
                "config": stage_config_view(self.cfg, stage.config_keys),
                "clips": clips,
                "upstream": upstream,
                "extra": extra,
            }
        )

    def _run_stage(
        self, stage: Stage, ctx: RunContext, sources: dict[str, Any], force: bool
    ) -> None:
        ledger = Ledger(self.work_dir, stage.name)
        extra_all = stage.prepare(ctx)
        todo: list[tuple[Entry, ShardTask]] = []
        n_fresh = n_blocked = 0
        for shard, clips in ctx.shards.items():
            out = ctx.output_path(stage.name, shard)
            inputs: dict[str, str] = {}
            digests: dict[str, Any] = {}
            blocked = None
            for up in stage.upstream:
                up_ledger = Ledger(self.work_dir, up)
                e = up_ledger.get(shard)
                up_out = up_ledger.done_path(e)
                if e is None or up_out is None:
                    blocked = f"upstream {up} shard {shard} is not done" + (
                        f" ({e.status}: {_last_line(e.error)})" if e else ""
                    )
                    break
                inputs[up] = str(up_out)
                digests[up] = _chained_digest(e)
            extra = dict(extra_all)
            if stage.name == "ingest":
                extra["sources"] = {c: sources[c] for c in clips}
                digests["sources"] = stable_hash(extra["sources"])
            fp = self._fingerprint(stage, shard, clips, digests, extra_all)
            rel_out = str(out.relative_to(self.work_dir))
            if blocked is not None:
                ledger.put(Entry(stage.name, shard, BLOCKED, clips, fp, rel_out, error=blocked))
                n_blocked += 1
                continue
            prev = ledger.get(shard)
            if not force and ledger.is_fresh(prev, fp):
                n_fresh += 1
                continue
            entry = Entry(
                stage.name, shard, RUNNING, clips, fp, rel_out,
                attempts=prev.attempts if prev else 0,
            )
            task = ShardTask(
                stage=stage.name, shard_id=shard, clip_ids=clips, inputs=inputs,
                output=str(out), cfg=self.cfg, work_dir=str(self.work_dir), extra=extra,
            )
            todo.append((entry, task))
        ctx.log(
            f"[{stage.name}] {len(todo)} shards to run, {n_fresh} done and fresh"
            + (f", {n_blocked} blocked by upstream failures" if n_blocked else "")
        )
        stats = {"run": len(todo), "fresh": n_fresh, "blocked": n_blocked}
        t0 = time.time()
        if todo:
            self._execute(stage, ledger, todo, ctx)
        stats["wall_s"] = time.time() - t0
        stage.finalize(ctx)
        self.report["stages"][stage.name] = stats

    def _execute(
        self, stage: Stage, ledger: Ledger, todo: list[tuple[Entry, ShardTask]], ctx: RunContext
    ) -> None:
        import ray

        executor = stage.make_executor(self.cfg)
        remote = None
        if executor is None:
            remote = ray.remote(_execute_shard).options(
                **stage.resources(self.cfg),
                **ray_utils.task_options(self.cfg),
                max_retries=0,
                name=f"{stage.name}-shard",
            )
        max_in_flight = ray_utils.max_in_flight(self.cfg)
        pending = list(todo)
        in_flight: dict[Any, tuple[Entry, ShardTask, float]] = {}
        n_clips = sum(len(t.clip_ids) for _, t in todo)
        disable = not ctx.progress
        bar = tqdm(total=len(todo), desc=f"{stage.name} shards", unit="shard", disable=disable)
        cbar = tqdm(total=n_clips, desc=f"{stage.name} clips", unit="clip", disable=disable)
        ok = failed = 0
        try:
            while pending or in_flight:
                while pending and len(in_flight) < max_in_flight:
                    entry, task = pending.pop(0)
                    ledger.mark_running(entry)
                    if executor is not None:
                        ref = executor.submit(task)
                    else:
                        ref = remote.remote(stage.name, task)
                    in_flight[ref] = (entry, task, time.time())
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    entry, task, t_sub = in_flight.pop(ref)
                    payload = _collect(ref, t_sub)
                    self._record(ledger, entry, payload)
                    if entry.status == DONE:
                        ok += entry.n_ok
                        failed += entry.n_clips - entry.n_ok
                    else:
                        ctx.log(f"[{stage.name}] shard {entry.shard_id} FAILED: "
                                f"{_last_line(entry.error)}")
                    bar.update(1)
                    cbar.update(len(task.clip_ids))
                    cbar.set_postfix(ok=ok, failed=failed)
        finally:
            bar.close()
            cbar.close()
            if executor is not None:
                executor.close()

    def _record(self, ledger: Ledger, entry: Entry, payload: dict[str, Any]) -> None:
        entry.finished_at = time.time()
        entry.duration_s = payload.get("wall_s")
        if payload.get("ok"):
            res = payload["result"]
            out = ledger.output_path(entry)
            if not out.exists():
                entry.status = FAILED
                entry.error = f"stage reported success but wrote no output at {out}"
            else:
                entry.status = DONE
                entry.output_digest = file_digest(out)
                entry.error = None
            entry.n_clips = res["n_clips"]
            entry.n_ok = res["n_ok"]
            entry.failures = res["failures"]
            entry.stats = dict(res.get("stats") or {})
        else:
            entry.status = FAILED
            entry.error = payload.get("error")
        for key in ("cpu_s", "peak_rss_mb", "node", "wall_s"):
            if key in payload:
                entry.stats[f"_{key}"] = payload[key]
        ledger.put(entry)


def _collect(ref: Any, t_submit: float) -> dict[str, Any]:
    """Resolve one shard's result; a lost worker or an executor's exception is a shard failure."""
    import ray

    try:
        value = ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, ...
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    if isinstance(value, ShardResult):  # executors (actor pools) return the bare result
        return {"ok": True, "result": asdict(value), "wall_s": time.time() - t_submit}
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
    inputs the output only names by path (``stats["inputs_digest"]``, reported by ingest).
    Frames or depth files replaced at the same path leave the manifest byte-identical, yet
    triangulate/depth must be redone on them."""
    extra = (e.stats or {}).get("inputs_digest")
    return e.output_digest if extra is None else stable_hash([e.output_digest, extra])


def _lock_work_dir(work_dir: Path) -> Any:
    """Exclusive lock on the work dir for one ``run``. Two runs on one work dir would rewrite
    the same outputs and ledger entries under each other (an entry could end up describing the
    other run's file), so a second run stops with a clear message instead."""
    import fcntl

    fh = open(work_dir / ".run.lock", "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise ConfigError(
            f"another `run` is using {work_dir}: wait for it to finish (or stop it), "
            "or choose another paths.work_dir"
        ) from None
    return fh


def _int_setting(key: str, value: Any, minimum: int) -> int:
    """An integer setting checked on the driver: ``int(-1)`` would silently slice off the last
    clip (``dataset.limit=-1``) and ``int('abc')`` would end in a traceback."""
    try:
        out = int(value)
        ok = out == value or str(out) == str(value).strip()
    except (TypeError, ValueError):
        ok = False
    if not ok or out < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return out


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""


# ---------------------------------------------------------------------- summary
def build_summary(ctx: RunContext, chain: list[str], report: dict[str, Any]) -> dict[str, Any]:
    """Clips in = kept + filtered + failed (+ pending, when shards crashed or were blocked)."""
    clip_ids = [c for s in ctx.shard_ids for c in ctx.shards[s]]
    failed: dict[str, dict[str, str]] = {}
    pending: dict[str, str] = {}
    stage_rows = []
    per_stage_done: dict[str, set[str]] = {}
    filtered: dict[str, str] = {}
    for name in chain:
        stage = load_stage(name)
        if hasattr(stage, "run"):
            continue
        entries = ctx.entries(name)
        counts = {DONE: 0, FAILED: 0, BLOCKED: 0, RUNNING: 0, "missing": 0}
        done_clips: set[str] = set()
        for shard, e in entries.items():
            if e is None:
                counts["missing"] += 1
                continue
            counts[e.status] = counts.get(e.status, 0) + 1
            if e.status == DONE:
                done_clips.update(c for c in e.clip_ids if c not in e.failures)
                for c, why in e.failures.items():
                    failed.setdefault(c, {"stage": name, "reason": why})
                filtered.update(e.stats.get("filtered", {}) or {})
            else:
                for c in e.clip_ids:
                    pending.setdefault(c, f"{name} shard {shard} {e.status}")
        per_stage_done[name] = done_clips
        cpu = sum((e.stats.get("_cpu_s") or 0.0) for e in entries.values() if e is not None)
        stage_rows.append(
            {
                "stage": name,
                "shards": counts,
                "clips_ok": sum(e.n_ok for e in entries.values() if e and e.status == DONE),
                "clips_failed": sum(
                    len(e.failures) for e in entries.values() if e and e.status == DONE
                ),
                "cpu_s": cpu,
                **report["stages"].get(name, {}),
            }
        )
    last = [n for n in chain if n in per_stage_done]
    kept = per_stage_done[last[-1]] if last else set()
    kept = {c for c in kept if c not in filtered and c not in failed}
    pending = {c: why for c, why in pending.items() if c not in failed}
    return {
        "clips_in": len(clip_ids),
        "kept": len(kept),
        "filtered": filtered,
        "failed": failed,
        "pending": pending,
        "stages": stage_rows,
        "last_stage": last[-1] if last else None,
        "dataset_stages": {k: v for k, v in report["stages"].items() if "summary" in v},
        "wall_s": report.get("wall_s"),
    }


def print_summary(summary: dict[str, Any], max_lines: int = 20) -> None:
    w = tqdm.write
    w("")
    w("=" * 72)
    w(f"{'stage':<12}{'shards done/failed/blocked':>28}{'clips ok':>10}{'failed':>8}{'cpu s':>10}")
    for row in summary["stages"]:
        s = row["shards"]
        w(
            f"{row['stage']:<12}{s[DONE]:>16}/{s[FAILED]}/{s[BLOCKED]:<9}"
            f"{row['clips_ok']:>10}{row['clips_failed']:>8}{row['cpu_s']:>10.1f}"
        )
    rules: dict[str, int] = {}
    for rule in summary["filtered"].values():
        rules[rule] = rules.get(rule, 0) + 1
    w("-" * 72)
    w(
        f"clips in: {summary['clips_in']}   kept after {summary['last_stage']}: {summary['kept']}"
        f"   filtered: {len(summary['filtered'])}   failed: {len(summary['failed'])}"
        + (f"   pending: {len(summary['pending'])}" if summary["pending"] else "")
    )
    for rule, n in sorted(rules.items()):
        w(f"  filtered by {rule}: {n}")
    for i, (clip, f) in enumerate(sorted(summary["failed"].items())):
        if i == max_lines:
            more = len(summary["failed"]) - max_lines
            w(f"  ... and {more} more (see `python -m pipeline status`)")
            break
        w(f"  failed [{f['stage']}] {clip}: {f['reason']}")
    for clip, why in list(sorted(summary["pending"].items()))[:max_lines]:
        w(f"  pending {clip}: {why} (re-run to retry)")
    for name, info in summary.get("dataset_stages", {}).items():
        brief = ", ".join(
            f"{k}={v}" for k, v in (info.get("summary") or {}).items()
            if isinstance(v, (int, float, str)) and len(str(v)) < 80
        )
        w(f"{name} ({info.get('wall_s', 0.0):.1f} s): {brief}")
    if summary.get("wall_s") is not None:
        w(f"wall time: {summary['wall_s']:.1f} s")
    w("=" * 72)


def status(cfg: dict[str, Any]) -> dict[str, Any]:
    """Per stage: shards done / failed / pending, and every failure reason (reads files only)."""
    from pipeline.io import read_json

    work_dir = Path(cfg["paths"]["work_dir"])
    plan_path = work_dir / "plan.json"
    if not plan_path.exists():
        raise ConfigError(f"nothing has run in {work_dir} yet (no plan.json)")
    shards = read_json(plan_path)["shards"]
    out: dict[str, Any] = {}
    for name in STAGE_ORDER:
        led = Ledger(work_dir, name)
        if not led.dir.exists():
            continue
        rows: dict[str, Any] = {DONE: 0, FAILED: 0, "pending": 0, "clip_failures": {},
                                "shard_errors": {}}
        for shard, e in led.entries(sorted(shards)).items():
            lost = led.done_path(e) is None
            if e is not None and e.status == DONE and (
                list(e.clip_ids) != list(shards[shard]) or lost
            ):
                # an entry of an earlier plan (other shards.size / dataset) or a lost output:
                # `run` recomputes it, so it is not done for the current plan
                rows["pending"] += 1
                rows["shard_errors"][shard] = (
                    "stale: output missing" if lost
                    else "stale: its clips differ from the current plan (re-run)"
                )
                continue
            if e is None or e.status in (RUNNING, BLOCKED):
                rows["pending"] += 1
                if e is not None and e.error:
                    rows["shard_errors"][shard] = _last_line(e.error)
            elif e.status == DONE:
                rows[DONE] += 1
                rows["clip_failures"].update(e.failures)
            else:
                rows[FAILED] += 1
                rows["shard_errors"][shard] = _last_line(e.error)
        out[name] = rows
    return out


def format_status(st: dict[str, Any]) -> str:
    lines = [f"{'stage':<12}{'done':>6}{'failed':>8}{'pending':>9}{'clip failures':>15}"]
    for name, r in st.items():
        lines.append(
            f"{name:<12}{r[DONE]:>6}{r[FAILED]:>8}{r['pending']:>9}{len(r['clip_failures']):>15}"
        )
    for name, r in st.items():
        for shard, err in sorted(r["shard_errors"].items()):
            lines.append(f"  [{name}] shard {shard}: {err}")
        for clip, why in sorted(r["clip_failures"].items()):
            lines.append(f"  [{name}] clip {clip}: {why}")
    return "\n".join(lines)

