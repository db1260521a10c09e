"""Command line: ``python -m pipeline run [stage=NAME] [hydra overrides...]`` and ``status``.

User mistakes (unknown stage or option, missing value, empty dataset) print one line and exit 2;
only genuine bugs show a traceback.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.config import ConfigError, load_config
from pipeline.stage import StageNotImplemented

EPILOG = """\
overrides (Hydra syntax, key=value):
  stage=<all|ingest|triangulate|depth|align|curate|train|sample>   (default: all = through curate)
  dataset=<sample|re10k|rgbd>   dataset.root=PATH   dataset.relative_scale=F (rgbd)
  depth=<da2_metric|sensor>     depth.model=HUB_ID_OR_DIR
  paths.work_dir=PATH           shards.size=N       force=true
  ray.address=auto|HOST:PORT    ray.num_cpus=N

examples:
  python -m pipeline run                                   # bundled sample, whole pipeline
  python -m pipeline run stage=align
  python -m pipeline run stage=ingest dataset=rgbd dataset.root=../shared/data/rgbd/redkitchen-seq
  python -m pipeline status paths.work_dir=work
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="metric-align: metric-scale camera poses for RealEstate10K-style clips.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,status,ui}")
    for name, text in (
        ("run", "run a stage and every upstream shard that is missing, failed or stale"),
        ("status", "per stage: shards done / failed / pending and the failure reasons"),
        ("ui", "trajectory designer web page: ui [image=PATH | clip=CLIP_ID] [ui.port=N]"),
    ):
        p = sub.add_parser(
            name, help=text, description=text, epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "ui":
            from pipeline.ui import main_ui

            return main_ui(args.overrides)
        cfg = load_config(args.overrides, strict=args.command == "run")
        from pipeline import runner

        if args.command == "status":
            print(runner.format_status(runner.status(cfg)))
            return 0
        summary = runner.Runner(cfg).run(cfg["stage"]["name"])
        return 0 if not summary["pending"] else 1
    except (ConfigError, StageNotImplemented) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
