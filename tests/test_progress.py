"""Long steps report progress in redirected output too: a plain line (what, how far, rate, time
left) every ``log.progress_every_s`` seconds, where a terminal gets a bar. Each test runs a tiny
version of a step that takes minutes at full size, with a very short interval."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from pipeline import log as plog
from pipeline.config import load_config

EVERY = "log.progress_every_s=0.01"
#: "[what] done/total unit (pct%)" then the rate or time left: a plain progress line
LINE = r"\[{what}[^\]]*\] \d+/\d+ {unit} \(\d+%\)"


def _progress_lines(text: str, what: str, unit: str) -> list[str]:
    pattern = re.compile(LINE.format(what=re.escape(what), unit=re.escape(unit)))
    return [ln for ln in text.splitlines() if pattern.search(ln)]


@pytest.fixture
def console(capsys: pytest.CaptureFixture[str]) -> Any:
    """The run's console (stdout, not a terminal here), as ``run`` sets it up."""
    plog.setup(None, "INFO")
    capsys.readouterr()
    return capsys


def test_plain_progress_line_says_how_far_rate_and_time_left() -> None:
    lines: list[str] = []
    bar = plog.PlainProgress(4, "render", "frames", 0.0, emit=lines.append)
    bar.update(1)
    bar.set_postfix(ok=1)
    bar.update(3)
    assert re.fullmatch(r"\[render\] 1/4 frames \(25%\), .+ left", lines[0]), lines
    assert re.search(r"/s|each", lines[0]), lines
    assert lines[-1].startswith("[render] 4/4 frames (100%)") and "(ok=1)" in lines[-1]
    assert "\r" not in "".join(lines) and "\x1b[" not in "".join(lines)


def test_sample_render_reports_progress(tmp_path: Path, console: Any) -> None:
    """Rendering the bundled sample takes minutes on first use: it reports its frames."""
    from stages.ingest import STAGE as INGEST

    definition = tmp_path / "def.yaml"
    OmegaConf.save(OmegaConf.create({
        "defaults": {"width": 32, "height": 24, "fov_deg": 60.0, "frame_interval_us": 33333},
        "clips": [{"clip_id": "p0", "split": "test", "seed": 7, "kind": "forward",
                   "n_frames": 3, "rel_scale": 1.0}]}), definition)
    cfg = load_config([f"paths.work_dir={tmp_path / 'work'}", f"dataset.definition={definition}",
                       EVERY])
    assert set(INGEST.discover(cfg)) == {"p0"}
    lines = _progress_lines(console.readouterr().out, "render", "frames")
    assert lines and lines[-1].split("] ")[1].startswith("3/3 frames"), lines


def test_training_reports_progress(tmp_path: Path, console: Any) -> None:
    """Training ran for minutes without a line when not on a terminal."""
    from stages.train import STAGE as TRAIN
    from tests.test_trainer import _global_task, clip_spec, train_cfg, write_curated

    curated = [str(write_curated(tmp_path / "curated" / "shard-0.parquet",
                                 [clip_spec(tmp_path, "t0", 8, 1, 1.0)]))]
    cfg = load_config([EVERY])
    cfg["train"] = train_cfg(max_steps=3, progress=True)
    cfg["train"]["sampling"]["after_train"] = False
    TRAIN.process_shard(_global_task(TRAIN, cfg, tmp_path / "work", curated))
    lines = _progress_lines(console.readouterr().out, "train", "steps")
    assert lines and "3/3 steps" in lines[-1], lines


class _Ctx:
    def __init__(self, cfg: dict, work_dir: Path) -> None:
        self.cfg, self.work_dir = cfg, work_dir

    def done_outputs(self, stage: str) -> list[Path]:
        return []

    @staticmethod
    def log(msg: str) -> None:
        plog.log.info(msg)


def test_evaluate_sfm_trials_report_progress(tmp_path: Path, console: Any,
                                             ray_cluster: str) -> None:
    """The SfM trials of stage=evaluate ran for minutes without a line."""
    from stages.evaluate import STAGE
    from tests.helpers import noise_videos

    vids, trajs = noise_videos(tmp_path, ["n0"])
    cfg = load_config([EVERY, "evaluate.trials=2", f"evaluate.videos={vids}",
                       f"evaluate.trajectories={trajs}", "evaluate.metric_depth=none"])
    STAGE.run(_Ctx(cfg, tmp_path / "work"))
    lines = _progress_lines(console.readouterr().out, "evaluate", "trials")
    assert lines and "2/2 trials" in lines[-1], lines
