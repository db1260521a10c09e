"""Configuration: Hydra's compose API over ``conf/`` (no output dirs, no chdir), validated here,
before any work starts.

``@hydra.main`` cannot take the positional sub-command, so the CLI parses ``run``/``status`` with
argparse and hands the remaining ``key=value`` words here. Depth defaults per dataset: a real
dataset wants Depth Anything, the bundled sample its exact ground truth; Hydra cannot make one
group's default depend on another's choice, so we compose once to learn the dataset's
``default_depth`` and again with it, unless the user named ``depth=`` themselves.

Every default comes from the typed schemas of ``pipeline.settings`` (handed to Hydra before
composing); checks, each one line naming the key: unknown keys (with the closest existing key),
the schemas' types, choices and ranges (``shards.size=abc``, ``curate.quantile=0.7``,
``triangulate.frames.max_n=-1``) and the stage name. A plug-in stage's settings file
``conf/<section>/default.yaml`` is picked up without being listed in ``conf/config.yaml``; its
values are checked by the stage's ``settings`` schema, or else against their defaults' types.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from pipeline.errors import ConfigError

# kept importable from here for plug-in stages written against the earlier location; the
# project itself imports it from pipeline.errors
__all__ = ["ConfigError"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"
#: extra config folders (os.pathsep-separated), searched after conf/: plug-in stages' settings
CONF_PATH_ENV = "METRIC_ALIGN_CONF_PATH"


def _extra_dirs(conf_dirs: list[str | Path] | None) -> list[Path]:
    dirs = [Path(d) for d in (conf_dirs or [])]
    env = os.environ.get(CONF_PATH_ENV)
    if env:
        dirs += [Path(d) for d in env.split(os.pathsep) if d]
    return [d.resolve() for d in dirs]


def _auto_groups(extra: list[Path]) -> list[str]:
    """``+<group>=default`` for every settings folder not named in config.yaml's defaults."""
    listed = set()
    for item in OmegaConf.load(CONF_DIR / "config.yaml").get("defaults", []):
        if isinstance(item, str):
            listed.add(item)
        else:
            listed.update(str(k) for k in item)
    out = []
    for base in [CONF_DIR, *extra]:
        for d in sorted(p for p in base.iterdir() if p.is_dir()):
            if d.name not in listed and (d / "default.yaml").is_file():
                out.append(f"+{d.name}=default")
                listed.add(d.name)
    return out


def _compose(overrides: list[str], extra: list[Path]) -> Any:
    from pipeline import settings

    settings.register_defaults()  # the schemas' defaults, which conf/ extends and overrides
    GlobalHydra.instance().clear()
    search = []
    if extra:
        search = ["hydra.searchpath=[" + ",".join(f"file://{d}" for d in extra) + "]"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="config",
                       overrides=[*search, *_auto_groups(extra), *overrides])


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            out.append(key)
            out += _flat_keys(v, key)
    return out


def _is_group(key: str, extra: list[Path]) -> bool:
    return any((base / key).is_dir() for base in [CONF_DIR, *extra])


def _first_line(exc: BaseException, overrides: list[str], extra: list[Path]) -> str:
    """One informative line: Hydra's first line, plus the choices for an unknown group option,
    the full key for a missing value and the closest key for an unknown one."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    missing = re.search(r"Could not find '([\w-]+)/([\w-]+)'", line)
    if missing:
        group = missing.group(1)
        names = sorted({p.stem for base in [CONF_DIR, *extra] if (base / group).is_dir()
                        for p in (base / group).glob("*.yaml")})
        return f"unknown {group} '{missing.group(2)}' (choose from: {', '.join(names)})"
    unknown = re.search(r"Could not override '([^']+)'", line) or re.search(
        r"Key '([^']+)' is not in struct", " ".join(text))
    if unknown:
        key = unknown.group(1)
        groups = [o for o in overrides if "=" in o and _is_group(o.split("=", 1)[0], extra)]
        try:
            known = _flat_keys(OmegaConf.to_container(_compose(groups, extra)))
        except Exception:  # noqa: BLE001 - the suggestion is a courtesy
            known = []
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
        return f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")
    full_key = getattr(exc, "full_key", None)
    if full_key and "Missing mandatory value" in line:
        return f"missing required value '{full_key}': set it with {full_key}=..."
    return line


def _split_stage(overrides: list[str]) -> tuple[list[str], str | None]:
    """``stage=NAME`` is a plain choice checked against the stage registry, not a Hydra group:
    a new stage needs no file under conf/ to be selectable."""
    rest, stage = [], None
    for ov in overrides:
        key, _, value = ov.partition("=")
        if key.lstrip("+~") in ("stage", "stage.name"):
            stage = value
        else:
            rest.append(ov)
    return rest, stage


def load_config(
    overrides: list[str] | None = None, strict: bool = True,
    conf_dirs: list[str | Path] | None = None,
) -> dict[str, Any]:
    """Compose, resolve and validate the config; returns plain containers with absolute paths.

    ``strict=False`` returns only ``paths.work_dir`` and ``retry`` and tolerates missing
    mandatory values: ``status`` reads the ledger and must work without the dataset's settings.
    ``conf_dirs`` adds config folders after ``conf/`` (as ``METRIC_ALIGN_CONF_PATH`` does).
    """
    overrides = list(overrides or [])
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' is not of the form key=value")
    overrides, stage = _split_stage(overrides)
    extra = _extra_dirs(conf_dirs)
    try:
        cfg = _compose(overrides, extra)
        user_depth = any(o.split("=", 1)[0].lstrip("+~") == "depth" for o in overrides)
        wanted = cfg.dataset.get("default_depth")
        if not user_depth and wanted and wanted != cfg.depth.get("backend"):
            overrides = [*overrides, f"depth={wanted}"]
            cfg = _compose(overrides, extra)
        if stage is not None:
            cfg.stage.name = stage
        if not strict:
            work_dir = OmegaConf.select(cfg, "paths.work_dir")
            return {"paths": {"work_dir": _absolute(work_dir, Path(os.getcwd()))},
                    "retry": OmegaConf.to_container(cfg.retry, resolve=True)}
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        groups = [o for o in overrides if _is_group(o.split("=", 1)[0].lstrip("+~"), extra)]
        defaults = OmegaConf.to_container(_compose(groups, extra), resolve=False)
    except Exception as exc:  # Hydra/OmegaConf raise many types; all are user errors here
        raise ConfigError(_first_line(exc, overrides, extra)) from None
    check(resolved, defaults)
    return _absolutise(resolved)


# ---------------------------------------------------------------------- validation
def _type_name(v: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a group of settings"}.get(type(v), type(v).__name__)


def _same_type(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True  # null defaults take anything; a null value is checked by the schemas
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) == isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, str):
        return isinstance(value, str) or (isinstance(default, str) and "${" in default)
    return isinstance(value, type(default))


def _check_types(value: Any, default: Any, prefix: str) -> None:
    if isinstance(default, dict) and isinstance(value, dict):
        for k, v in value.items():
            if k in default:
                _check_types(v, default[k], f"{prefix}.{k}" if prefix else str(k))
        return
    if not _same_type(default, value):
        raise ConfigError(f"{prefix} must be {_type_name(default)} (like its default "
                          f"{default!r}), got {value!r}")


def check(cfg: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
    """Every check that needs no file system: types, schemas, the stage name."""
    from pipeline import registry, settings

    extra: dict[str, type] = {}
    for stage in registry.stages().values():
        extra.update(stage.settings)
    if defaults is not None:  # sections without a schema: each value like its default's type
        typed = {**settings.section_schemas(cfg), **extra}
        _check_types({k: v for k, v in cfg.items() if k not in typed}, defaults, "")
    try:
        settings.check_config(cfg, extra)
    except settings.SettingError as exc:
        raise ConfigError(str(exc)) from None
    name = cfg["stage"]["name"]
    choices = ["all", *registry.names()]
    if name not in choices:
        close = difflib.get_close_matches(str(name), choices, n=1)
        raise ConfigError(f"unknown stage '{name}' (choose from: {', '.join(choices)})"
                          + (f"; did you mean '{close[0]}'?" if close else ""))


def _absolute(value: str, cwd: Path, key: str = "paths.work_dir") -> str:
    """A user path made absolute against ``cwd``. Object-storage URIs (``s3://``, ``gs://``)
    stay as they are, once they name a bucket; ``~`` stays too, expanded by ``pipeline.storage``
    on each node (each node's own home: the shared-directory check refuses it on a cluster
    whose homes differ). Other ``scheme://`` values, and a URI without a bucket, are a one-line
    error (``key`` names the setting) instead of a local folder named ``s3:`` or a traceback."""
    from pipeline import storage

    if storage.is_uri(value):
        try:
            storage.path(value)
        except ValueError as exc:
            raise ConfigError(f"{key}={value}: {exc}") from None
        return value
    bad = storage.unsupported_scheme(value)
    if bad:
        raise ConfigError(f"unsupported URI scheme '{bad}://' in {value} (use a local path, "
                          "s3://bucket/prefix or gs://bucket/prefix)")
    if value.startswith("file://"):
        value = value[len("file://"):]
    if value == "~" or value.startswith("~/"):
        return value
    return str((cwd / value).resolve())


def _absolutise(cfg: dict[str, Any]) -> dict[str, Any]:
    """Make user paths absolute against the current directory once, on the driver: Ray workers
    run in other directories. Project-bundled files (``definition``) resolve against the repo."""
    cwd = Path(os.getcwd())

    def fix(value: Any, key: str) -> Any:
        return _absolute(value, cwd, key) if isinstance(value, str) and value else value

    cfg["paths"]["work_dir"] = fix(cfg["paths"]["work_dir"], "paths.work_dir")
    ds = cfg["dataset"]
    for key in ("root", "frames_root", "videos_root", "source_videos", "depth_root", "clip_list"):
        if ds.get(key) and ds[key] != "???":
            ds[key] = fix(ds[key], f"dataset.{key}")
    if ds.get("definition"):
        ds["definition"] = str((PROJECT_ROOT / ds["definition"]).resolve())
    # "hub id or local directory": a relative directory must reach the Ray actors as absolute
    # (a hub id such as org/name is left alone unless such a folder exists here)
    model_dirs = [(cfg.get("depth") or {}, "model", "depth.model"),
                  ((cfg.get("train") or {}).get("svd") or {}, "pretrained", "train.svd.pretrained")]
    for holder, key, name in model_dirs:
        value = holder.get(key)
        if isinstance(value, str) and value and (cwd / value).is_dir():
            holder[key] = fix(value, name)
    return cfg
