"""Command line: ``python -m pipeline run [stage=NAME] [hydra overrides...]``, ``status``,
``unlock`` and ``ui``.

User mistakes (unknown stage, key or option, a value out of range, missing model weights, an
empty dataset) print one line and exit 2 before any stage runs; storage failing under a run
(an object store outage, a lost run lock) prints one line and exits 1; only genuine bugs show a
traceback. Exit codes are listed in ``EPILOG``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from pipeline import storage
from pipeline.config import load_config
from pipeline.errors import ConfigError, StorageError
from pipeline.stage import StageNotImplemented
from pipeline.work_lock import LockHeld

EPILOG = """\
overrides (Hydra syntax, key=value; checked before any work starts):
  stage=<all|{stages}>   (default: all = {default_chain})
  dataset=<{datasets}>   dataset.root=PATH   dataset.relative_scale=F (rgbd, nerfstudio)
  depth=<{depths}>     depth.model=HUB_ID_OR_DIR
  paths.work_dir=PATH|s3://BUCKET/PREFIX (dataset.root too; credentials: AWS env/profile)
  shards.size=N                 force=true
  retry.max_attempts=N          log.level=INFO      progress=false
  ray.address=auto|HOST:PORT    ray.num_cpus=N

failures:
  input   bad data for one clip (unreadable frame, bad pose file...): recorded with a reason,
          kept in the ledger, not retried; the clip's good neighbours carry on
  error   anything unexpected for one clip or a whole shard (a bug, I/O, out of memory): the
          good clips are kept, the shard is retried on the next run up to retry.max_attempts
          times (force=true starts over)

exit codes (run; unlock: 1 while the lock's holder is alive):
  0  everything done; clips may have failed for input reasons (see the summary)
  1  clips hit unexpected errors, shards failed or are pending, or no clip survived (or a
     dataset-wide stage succeeded on none of its clips); or storage failed under the run (one
     line; the run log is kept locally if it cannot be uploaded, at the path that line names)
  2  configuration or usage error (one line, nothing was computed)
  130  interrupted: re-run the same command to resume

logs: <work_dir>/logs/run.log (the driver), <work_dir>/logs/<stage>/<shard>.log (each task,
with full tracebacks); progress bars only on a terminal, periodic lines otherwise.

examples:
  python -m pipeline run                                   # bundled sample, whole pipeline
  python -m pipeline run stage=align
  python -m pipeline run stage=ingest dataset=rgbd dataset.root=../shared/data/rgbd/redkitchen-seq
  python -m pipeline status paths.work_dir=work
  python -m pipeline unlock paths.work_dir=s3://bucket/work   # a killed driver's stale lease
"""


def _epilog() -> str:
    from pipeline import registry
    from pipeline.config import CONF_DIR

    def choices(group: str) -> str:  # the config group's files: one list, never out of date
        return "|".join(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")))

    return EPILOG.format(stages="|".join(registry.names()),
                         default_chain=" -> ".join(registry.default_chain()),
                         datasets=choices("dataset"), depths=choices("depth"))


def build_parser() -> argparse.ArgumentParser:
    epilog = _epilog()
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="metric-align: metric-scale camera poses for RealEstate10K-style clips.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog,
    )
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{run,status,unlock,ui}")
    for name, text in (
        ("run", "run a stage and every upstream shard that is missing, failed or stale"),
        ("status", "per stage: shards done / with errors / failed / pending, what `run` would "
                   "compute, and every failure reason; who holds the run lock"),
        ("unlock", "remove a stale run lock (its holder's process is gone or its lease "
                   "expired); refused while the holder is alive"),
        ("ui", "trajectory designer web page: ui [image=PATH | clip=CLIP_ID] [ui.port=N]"),
    ):
        p = sub.add_parser(
            name, help=text, description=text, epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides")
    return parser


def process_started_at() -> float:
    """When this process started (epoch seconds), from ``/proc`` on Linux (its start time in
    clock ticks since boot, against the uptime); elsewhere now. The wall time a run reports is
    then what the user waited for: interpreter start, imports and Ray included."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_ticks = int(fields[_PROC_STARTTIME])  # after the command name
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()
    return time.time() - max(0.0, age)


#: index of ``starttime`` (field 22 of proc(5)) among the fields after ``(comm)`` (fields 3...)
_PROC_STARTTIME = 22 - 3


def main(argv: list[str] | None = None, started_at: float | None = None) -> int:
    """The command; ``started_at`` (epoch seconds) is when the command began, for the wall
    time it reports (``python -m pipeline`` passes the process start; default now)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "ui":
            from pipeline.ui import main_ui

            return main_ui(args.overrides)
        cfg = load_config(args.overrides, strict=args.command == "run")
        from pipeline import runner, work_lock

        work_dir = cfg["paths"]["work_dir"]
        if args.command == "unlock":
            try:
                print(work_lock.unlock(work_dir))
            except OSError as exc:
                raise StorageError(f"cannot unlock {work_dir}: {storage.describe(exc)}") from None
            return 0
        if args.command == "status":
            try:
                print(runner.format_status(runner.status(cfg), work_lock.holder(work_dir)))
            except OSError as exc:  # status only reads: an unreachable bucket, a lost mount
                raise StorageError(f"cannot read {work_dir}: {storage.describe(exc)}") from None
            except ConfigError as exc:  # nothing has run: a lock may still stand
                held = work_lock.holder(work_dir)
                raise ConfigError(f"{exc}; {held.describe()}" if held else str(exc)) from None
            return 0
        summary = runner.Runner(cfg, started_at=started_at).run(cfg["stage"]["name"])
        if summary["exit_code"]:
            print(f"run incomplete: {'; '.join(summary['problems'])}: see "
                  f"`python -m pipeline status paths.work_dir={cfg['paths']['work_dir']}` and "
                  f"{cfg['paths']['work_dir']}/logs/", file=sys.stderr)
        return int(summary["exit_code"])
    except (ConfigError, StageNotImplemented) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (StorageError, LockHeld) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command == "ui":  # Ctrl-C while it starts: the designer's normal end
            print("trajectory designer stopped", flush=True)
            return 0
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
