"""What a run reports: the summary printed at the end of ``run`` (and saved as
``summary.json``) and ``status``. Both read the ledger through ``pipeline.ledger.shard_state``,
the rule ``run`` uses to decide what to compute."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline import registry
from pipeline.errors import ConfigError
from pipeline.ledger import BLOCKED, DONE, FAILED, RUNNING, Ledger
from pipeline.log import log
from pipeline.stage import ERROR, GLOBAL, GLOBAL_SHARD, INPUT


def max_attempts(cfg: dict[str, Any]) -> int:
    return int(cfg["retry"]["max_attempts"])


def _fmt(v: Any) -> str:
    """Numbers for people: 4 significant digits, not 16."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------------- summary
@dataclass
class _Tally:
    """What the ledgers of a run's chain say, gathered stage by stage for the summary."""

    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)
    filtered: dict[str, str] = field(default_factory=dict)
    per_stage_done: dict[str, set[str]] = field(default_factory=dict)
    stage_rows: list[dict[str, Any]] = field(default_factory=list)
    global_stages: dict[str, Any] = field(default_factory=dict)
    shard_failures: int = 0
    #: sharded stages whose dataset-wide step (``finalize``) is not done
    steps_failed: list[str] = field(default_factory=list)
    empty_globals: list[str] = field(default_factory=list)

    def add_global(self, name: str, stage: Any, ledger: Ledger, cap: int) -> None:
        """A global stage's one task: its status, why, metrics and wall time."""
        e = ledger.get(GLOBAL_SHARD)
        st = ledger.state(e, [], cap, check=stage.output_problem)
        self.global_stages[name] = {
            "status": e.status if e else "missing", "why": st.why,
            "metrics": e.stats if e else {}, "wall_s": e.duration_s if e else None,
        }
        if e is None or e.status != DONE:
            self.shard_failures += 1
        elif e.n_clips and not e.n_ok:  # it ran, on clips, and none of them succeeded
            self.empty_globals.append(name)

    def add_sharded(self, name: str, stage: Any, ledger: Ledger, entries: dict[str, Any],
                    timing: dict[str, Any]) -> None:
        """A sharded stage: shard counts by status, the clips each done shard kept, failed or
        filtered, the clips of the other shards as pending, and its dataset-wide step."""
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
                    self.failed.setdefault(c, {"stage": name, "reason": why,
                                               "kind": e.failure_kinds.get(c, INPUT)})
                self.filtered.update(e.filtered)
            else:
                self.shard_failures += e.status == FAILED
                for c in e.clip_ids:
                    self.pending.setdefault(c, f"{name} shard {shard} {e.status}")
        self.per_stage_done[name] = done_clips
        if stage.finalize_output:
            fin = ledger.get(GLOBAL_SHARD)
            if fin is None or fin.status != DONE:
                self.steps_failed.append(name)
        done = [e for e in entries.values() if e and e.status == DONE]
        self.stage_rows.append({
            "stage": name,
            "shards": counts,
            "clips_ok": sum(e.n_ok for e in done),
            "clips_failed": sum(len(e.failures) for e in done),
            "cpu_s": round(sum((e.cpu_s or 0.0) for e in entries.values() if e), 3),
            **timing,
        })

    def problems(self, n_clips: int, last: list[str], kept: set[str],
                 errors: dict[str, Any], pending: dict[str, str]) -> list[str]:
        """Everything that makes the run's exit code 1, one line each."""
        problems = []
        if errors:
            problems.append(f"{len(errors)} clip(s) hit unexpected errors")
        if self.shard_failures:
            problems.append(f"{self.shard_failures} shard(s) or task(s) failed")
        for name in self.steps_failed:
            problems.append(f"the dataset-wide step of {name} failed (its log: "
                            f"logs/{name}/{GLOBAL_SHARD}.log)")
        if pending:
            problems.append(f"{len(pending)} clip(s) pending")
        if n_clips and last and not kept and not problems:
            problems.append(f"no clip survived {last[-1]}")
        return problems + [f"no clip succeeded in {name}" for name in self.empty_globals]


def build_summary(ctx: Any, chain: list[str], report: dict[str, Any]) -> dict[str, Any]:
    """Clips in = kept + filtered + failed (+ pending, when shards crashed or were blocked)."""
    clip_ids = [c for s in ctx.shard_ids for c in ctx.shards[s]]
    tally = _Tally()
    cap = max_attempts(ctx.cfg)
    for name in chain:
        stage = registry.get(name)
        ledger = Ledger(ctx.work_dir, name)
        if stage.kind == GLOBAL:
            tally.add_global(name, stage, ledger, cap)
        else:
            tally.add_sharded(name, stage, ledger, ctx.entries(name),
                              report["stages"].get(name, {}))
    failed, filtered = tally.failed, tally.filtered
    last = [n for n in chain if n in tally.per_stage_done]
    kept = tally.per_stage_done[last[-1]] if last else set()
    kept = {c for c in kept if c not in filtered and c not in failed}
    pending = {c: why for c, why in tally.pending.items() if c not in failed}
    errors = {c: f for c, f in failed.items() if f["kind"] == ERROR}
    problems = tally.problems(len(clip_ids), last, kept, errors, pending)
    return {
        "clips_in": len(clip_ids),
        "kept": len(kept),
        "filtered": filtered,
        "failed": failed,
        "errors": errors,
        "pending": pending,
        "stages": tally.stage_rows,
        "global_stages": tally.global_stages,
        "last_stage": last[-1] if last else None,
        "wall_s": report.get("wall_s"),
        "problems": problems,
        "exit_code": 1 if problems else 0,
    }


def print_summary(summary: dict[str, Any], max_lines: int = 20) -> None:
    w = log.info
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
        tag = "error" if f.get("kind") == ERROR else "failed"
        w(f"  {tag} [{f['stage']}] {clip}: {f['reason']}")
    for clip, why in list(sorted(summary["pending"].items()))[:max_lines]:
        w(f"  pending {clip}: {why} (re-run to retry)")
    for name, info in summary.get("global_stages", {}).items():
        brief = ", ".join(
            f"{k}={_fmt(v)}" for k, v in (info.get("metrics") or {}).items()
            if isinstance(v, (int, float, str)) and len(str(v)) < 80
        )
        wall = info.get("wall_s")
        w(f"{name}: {info['status']}" + (f" ({wall:.1f} s)" if wall is not None else "")
          + (f": {brief}" if brief else "") + (f" [{info['why']}]" if info.get("why") else ""))
    if summary.get("wall_s") is not None:
        w(f"wall time: {summary['wall_s']:.1f} s")
    w("=" * 72)


def status(cfg: dict[str, Any]) -> dict[str, Any]:
    """Per stage: shards done / errors / failed / pending and every reason, decided by the same
    ``shard_state`` rule as ``run`` (reads files only)."""
    from pipeline import storage
    from pipeline.io import read_json

    work_dir = storage.path(cfg["paths"]["work_dir"])
    plan_path = work_dir / "plan.json"
    if not plan_path.exists():
        raise ConfigError(f"nothing has run in {work_dir} yet (no plan.json)")
    shards = read_json(plan_path)["shards"]
    cap = max_attempts(cfg)
    out: dict[str, Any] = {}
    for name in registry.names():
        led = Ledger(work_dir, name)
        if not led.dir.is_dir():
            continue
        stage = registry.get(name)
        rows: dict[str, Any] = {"done": 0, "errors": 0, "failed": 0, "pending": 0, "to_run": 0,
                                "clip_failures": {}, "shard_errors": {}}
        plan = {GLOBAL_SHARD: []} if stage.kind == GLOBAL else shards
        if stage.kind != GLOBAL and stage.finalize_output:
            # the dataset-wide step is reported on its own line, not counted as a shard
            st = led.state(led.get(GLOBAL_SHARD), [], cap)
            rows["dataset_step"] = st.label + (f" ({st.why})" if st.why else "")
            rows["to_run"] += st.todo
        for shard in sorted(plan):
            e = led.get(shard)
            st = led.state(e, plan[shard], cap, check=stage.output_problem)
            rows[st.label] += 1
            rows["to_run"] += st.todo
            if st.why:
                rows["shard_errors"][shard] = st.why
            if e is not None and e.status == DONE and st.label in ("done", "errors"):
                for c, why in e.failures.items():
                    kind = e.failure_kinds.get(c, INPUT)
                    rows["clip_failures"][c] = why if kind == INPUT else f"[error] {why}"
        out[name] = rows
    return out


def format_status(st: dict[str, Any], lock: Any = None) -> str:
    """The status table and reasons; ``lock`` (a ``work_lock.Holder``) adds who holds the run
    lock, so a stale one left by a killed driver is visible where users look first."""
    lines = [f"{'stage':<12}{'done':>6}{'errors':>8}{'failed':>8}{'pending':>9}{'to run':>8}"
             f"{'clip failures':>15}"]
    for name, r in st.items():
        lines.append(
            f"{name:<12}{r['done']:>6}{r['errors']:>8}{r['failed']:>8}{r['pending']:>9}"
            f"{r['to_run']:>8}{len(r['clip_failures']):>15}"
        )
    for name, r in st.items():
        if "dataset_step" in r:
            lines.append(f"  [{name}] dataset-wide step: {r['dataset_step']}")
        for shard, err in sorted(r["shard_errors"].items()):
            lines.append(f"  [{name}] shard {shard}: {err}")
        for clip, why in sorted(r["clip_failures"].items()):
            lines.append(f"  [{name}] clip {clip}: {why}")
    if any(r["to_run"] for r in st.values()):
        lines.append("`python -m pipeline run` with the same settings computes the shards counted "
                     "under 'to run'; per-shard logs: <work_dir>/logs/<stage>/<shard>.log")
    if lock is not None:
        lines.append(lock.describe())
    return "\n".join(lines)
