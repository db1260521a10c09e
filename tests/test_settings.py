"""The typed schemas of ``pipeline.settings``: the one place for every default and check.

- every section is checked when the config is composed (one bad value each: the message names
  the key, the value and what is allowed), so a bad value never reaches Ray or a task;
- what Hydra composes from ``conf/`` equals the schemas' defaults, and the YAML files only
  choose options and override (no file repeats a default);
- the stages' config fingerprints are the ones recorded before the schemas carried the
  defaults, so no existing work dir is invalidated.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import registry, settings
from pipeline.config import CONF_DIR, ConfigError, load_config
from pipeline.io import stable_hash
from pipeline.settings import Settings
from pipeline.stage import Reads
from tests.conftest import ROOT
from tests.fingerprints import FINGERPRINT_SETS, stage_fingerprints

#: one bad value per section: (override, what the message must also say). The key and the value
#: are always checked, too.
BAD = {
    "paths": ("paths.work_dir=5", "string"),
    "storage": ("storage.lock_ttl_s=0.5", ">= 1"),
    "shards": ("shards.max_factor=0", ">= 1"),
    "stage": ("stage=triangulat", "did you mean 'triangulate'"),
    "force": ("force=maybe", "true/false"),
    "progress": ("progress=3", "true/false"),
    "retry": ("retry.max_attempts=0", ">= 1"),
    "models": ("models.hub_timeout_s=-1", "> 0"),
    "log": ("log.level=LOUD", "one of DEBUG, INFO, WARNING, ERROR"),
    "ray": ("ray.scheduling_strategy=PACK", "one of DEFAULT, SPREAD"),
    "dataset": ("dataset.limit=0", ">= 1"),
    "ingest": ("ingest.verify_frames=some", "one of all, ends"),
    "triangulate": ("triangulate.frames.max_n=-1", ">= 2"),
    "depth": ("depth.max_depth=0", "> 0"),
    "align": ("align.min_measured_frames=0", ">= 1"),
    "curate": ("curate.quantile=0.7", "in [0, 0.5)"),
    "train": ("train.camera=absolute", "one of metric, relative, none"),
    "sample": ("train.sampling.trajectory_preset=spin", "one of '', dolly, orbit, pan, zoom"),
    "evaluate": ("evaluate.metric_depth=maybe", "one of auto, sensor, model, none"),
    "ui": ("ui.port=70000", "in [0, 65535]"),
    "download": ("download.workers=0", ">= 1"),
}


def test_every_section_has_a_bad_value_case() -> None:
    sections = {f.name for f in dataclasses.fields(settings.Config)} | {"dataset", "depth"}
    assert sections | {"sample"} == set(BAD)


@pytest.mark.parametrize("section", sorted(BAD))
def test_bad_value_fails_at_compose_time_naming_key_value_and_allowed(section: str) -> None:
    override, allowed = BAD[section]
    key, _, value = override.partition("=")
    with pytest.raises(ConfigError) as err:
        load_config([override])
    msg = str(err.value)
    assert "\n" not in msg
    assert key in msg and value in msg and allowed in msg, msg


@pytest.mark.parametrize("override, allowed", [
    ("evaluate.protocol=realcam", "one of project, cami2v"),
    ("evaluate.sfm.mapper=hybrid", "one of global, incremental"),
    ("evaluate.consensus.mode=vote", "one of none, majority, best"),
    ("evaluate.consensus.trans_tol=0", "> 0"),
    ("train.builtin.warp_prior.iterations=0", ">= 1"),
    ("train.builtin.warp_prior.depth_channels=[32,0]", ">= 1"),
])
def test_evaluation_and_warp_prior_settings_checked_at_compose_time(override: str,
                                                                    allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config([override])
    assert override.partition("=")[0] in str(err.value) and allowed in str(err.value), err.value


def test_evaluation_and_warp_prior_defaults_read_typed() -> None:
    s = Settings(load_config([]))
    assert (s.evaluate.protocol, s.evaluate.sfm.mapper) == ("project", "global")
    assert (s.evaluate.sfm.sift.max_num_features, s.evaluate.sfm.sift.first_octave) == (8192, -1)
    assert s.evaluate.consensus == settings.EvaluateConsensus(mode="majority", rot_tol=0.01,
                                                             trans_tol=0.02)
    assert s.train.builtin.warp_prior == settings.TrainWarpPrior(
        enabled=False, depth_channels=[32, 64], init_depth=2.5, iterations=3)


def test_depth_variant_checked_by_its_own_schema() -> None:
    with pytest.raises(ConfigError, match=r"depth.interpolation must be one of bilinear, "
                                          r"nearest; got 'cubic'"):
        load_config(["depth=sensor", "depth.interpolation=cubic"])
    with pytest.raises(ConfigError, match="unknown key 'depth.interpolation'"):
        load_config(["depth=da2_metric", "depth.interpolation=nearest"])


def test_bad_triangulate_setting_stops_the_cli_before_ray(monkeypatch, capsys,
                                                          tmp_path: Path) -> None:
    """The most-tuned key used to be checked only inside the task (a retried shard failure)."""
    from pipeline import ray_utils
    from pipeline.cli import main

    started: list[Any] = []
    monkeypatch.setattr(ray_utils, "init_ray", lambda *a, **k: started.append(a))
    code = main(["run", "stage=triangulate", f"paths.work_dir={tmp_path / 'w'}",
                 "triangulate.frames.max_n=-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and started == [] and not (tmp_path / "w").exists()
    assert err == ["error: triangulate.frames.max_n must be >= 2, got -1"], err


def test_choices_match_values_of_their_own_kind() -> None:
    for ok in ("auto", "true", "false"):
        load_config([f"train.distributed.use_gpu={ok}"])
    with pytest.raises(ConfigError, match="use_gpu must be one of auto, true, false; got 1"):
        load_config(["train.distributed.use_gpu=1"])


def test_key_no_schema_declares_is_refused_with_the_closest() -> None:
    cfg = load_config([])
    cfg["evaluate"]["trails"] = 3  # as if a YAML file had it
    with pytest.raises(settings.SettingError,
                       match=r"unknown key 'evaluate.trails' \(did you mean 'evaluate.trials'"):
        settings.check_config(cfg)


def _plain_json(value: Any) -> str:
    """JSON keeps 900 and 900.0 apart (fingerprints hash JSON), dict equality does not."""
    return json.dumps(value, sort_keys=True)


def test_composed_defaults_equal_the_schema_defaults() -> None:
    cfg = load_config(["depth=da2_metric"])
    want = settings.defaults(settings.Config)
    for key, value in want.items():
        if key == "paths":  # made absolute against the current directory
            assert cfg["paths"]["work_dir"] == str(Path.cwd() / value["work_dir"])
            continue
        assert _plain_json(cfg[key]) == _plain_json(value), key
    for option, schema in settings.DEPTH_BACKENDS.items():
        got = load_config([f"depth={option}"])["depth"]
        assert _plain_json(got) == _plain_json(settings.defaults(schema)), option


def _yaml_files() -> list[Path]:
    return sorted(CONF_DIR.glob("*.yaml")) + sorted(CONF_DIR.glob("*/*.yaml"))


def _repeats(node: Any, default: Any, prefix: str) -> list[str]:
    if isinstance(node, dict) and isinstance(default, dict):
        return [k for key, v in node.items() if key in default
                for k in _repeats(v, default[key], f"{prefix}.{key}")]
    same = _plain_json(node) == _plain_json(default)
    return [prefix] if same else []


def test_yaml_files_only_choose_and_override() -> None:
    """No file under conf/ states a schema's default again (one place for each default);
    dataset files describe one dataset each and have no schema defaults to repeat."""
    everything = settings.defaults(settings.Config)
    repeated = []
    for path in _yaml_files():
        group = path.parent.name if path.parent != CONF_DIR else ""
        if group in ("bench", "dataset"):  # the bench's own file; one dataset per file
            continue
        body = yaml.safe_load(path.read_text()) or {}
        body.pop("defaults", None)
        if group == "depth":
            default = settings.defaults(settings.DEPTH_BACKENDS[path.stem])
        elif group:
            default = everything[group]
        else:
            default = everything
        repeated += [f"{path.relative_to(ROOT)}: {k}" for k in _repeats(body, default, group)]
    assert repeated == []


def test_typed_view_reads_the_composed_values() -> None:
    cfg = load_config(["triangulate.frames.max_n=16", "depth=sensor", "dataset=rgbd",
                       "dataset.root=data"])
    s = Settings(cfg)
    assert s.triangulate.frames.max_n == 16 and s.triangulate.matching.mode == "sequential"
    assert isinstance(s.triangulate.frames, settings.TriangulateFrames)
    assert isinstance(s.depth, settings.DepthSensor) and s.depth.interpolation == "bilinear"
    assert isinstance(s.dataset, settings.RgbdDataset) and s.dataset.relative_scale == 0.37
    assert s.curate.report.bins == cfg["curate"]["report"]["bins"]
    assert s.train.cond_dropout.image == 0.1 and s.progress is True
    with pytest.raises(AttributeError):
        s.triangulate.frames.max_N  # noqa: B018 - a misspelt key is an error, not None


# ---------------------------------------------------------------------- fingerprints
#: ``python -m tests.fingerprints`` (from another directory, with the project on PYTHONPATH) on
#: the tree whose defaults were still spelt out in conf/*.yaml, as of the evaluation protocol
#: settings (evaluate.protocol, sfm.mapper, consensus, SIFT defaults) and train.builtin.warp_prior;
#: re10k also since its dataset keys for decoding source videos (source_videos,
#: source_video_extensions, video_id_pattern); train, sample and evaluate also since
#: train.builtin.warp_prior.mask_input / reprojection_weight (both off by default, so a model
#: trained before is retrained once: its config view gained the two keys)
RECORDED = {
    "sample": "8d1a45c47662c4f5",
    "re10k": "05b2604b82870d9a",
    "rgbd": "a2ec0038329694b9",
    "nerfstudio": "f65fe0291c369154",
    "da2_metric": "3a17476ea1c60cc4",
    "svd": "8af5db29eefb4177",
    "builtin_256": "b27797fee4c9ca8a",
    "eval_dataset": "1fbc926c4b719ae6",
    "eval_no_depth": "874ace2a2aa74965",
    "eval_videos": "d5f04b6ce6641047",
    "edited": "f812d4e5100dc30f",
}


@pytest.mark.parametrize("name", sorted(FINGERPRINT_SETS))
def test_stage_fingerprints_are_the_recorded_ones(name: str, tmp_path: Path,
                                                  monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    per_stage = stage_fingerprints(load_config(FINGERPRINT_SETS[name]))
    assert set(per_stage) >= {"ingest", "triangulate", "depth", "align", "curate", "train",
                              "sample", "evaluate"}
    assert stable_hash(per_stage) == RECORDED[name], per_stage


def test_a_changed_setting_changes_only_its_stages_fingerprint(tmp_path: Path,
                                                               monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = stage_fingerprints(load_config([]))
    edited = stage_fingerprints(load_config(["triangulate.frames.max_n=16"]))
    assert {n for n in base if base[n] != edited[n]} == {"triangulate", "evaluate"}
    sampling = stage_fingerprints(load_config(["train.sampling.steps=5"]))
    assert {n for n in base if base[n] != sampling[n]} == {"sample", "evaluate"}


# ---------------------------------------------------------------------- what a stage reads
def test_each_stage_declares_what_it_reads_in_one_place() -> None:
    for name, stage in registry.stages().items():
        reads = type(stage).reads
        assert isinstance(reads, Reads), name
        assert (stage.upstream, stage.config_keys, stage.config_exclude) == (
            reads.upstream, reads.config, reads.config_exclude), name
    train = registry.get("train").reads
    assert train == Reads(upstream=("curate",), config=("train",),
                          config_exclude=("train.sampling",))


def test_sample_file_inputs_come_from_its_declaration(tmp_path: Path) -> None:
    """The files named by ``reads.files`` that are set, in declaration order (as the
    sample stage listed them before)."""
    sample = registry.get("sample")
    image, traj = tmp_path / "i.png", tmp_path / "t.json"
    cfg = load_config([f"train.sampling.image={image}", f"train.sampling.trajectory={traj}",
                       "train.sampling.depth="])
    ctx = type("Ctx", (), {"cfg": cfg})()
    assert sample.file_inputs(ctx) == [str(image), str(traj)]
    assert sample.reads.files == ("train.sampling.image", "train.sampling.trajectory",
                                  "train.sampling.depth")


def test_earlier_spelling_of_a_stage_still_declares_reads() -> None:
    from pipeline.stage import Stage

    class Old(Stage):
        name = "old"
        upstream = ("ingest",)
        config_keys = ("old",)
        config_exclude = ("old.x",)

    assert Old.reads == Reads(upstream=("ingest",), config=("old",), config_exclude=("old.x",))

