"""Configuration: Hydra's compose API over ``conf/`` (no output dirs, no chdir).

``@hydra.main`` cannot take the positional sub-command, so the CLI parses ``run``/``status`` with
argparse and hands the remaining ``key=value`` words here. Depth defaults per dataset: a real
dataset wants Depth Anything, the bundled sample its exact ground truth; Hydra cannot make one
group's default depend on another's choice, so we compose once to learn the dataset's
``default_depth`` and again with it, unless the user named ``depth=`` themselves.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"


class ConfigError(ValueError):
    """A user-facing configuration problem: printed as one line, no traceback."""


def _compose(overrides: list[str]) -> Any:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="config", overrides=overrides)


def _first_line(exc: BaseException) -> str:
    """One informative line: Hydra's first line, plus the choices for an unknown group option
    and the full key for a missing value."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    missing = re.search(r"Could not find '([\w-]+)/([\w-]+)'", line)
    if missing and (CONF_DIR / missing.group(1)).is_dir():
        group = missing.group(1)
        names = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        line = f"unknown {group} '{missing.group(2)}' (choose from: {', '.join(names)})"
    full_key = getattr(exc, "full_key", None)
    if full_key and "Missing mandatory value" in line:
        line = f"missing required value '{full_key}': set it with {full_key}=..."
    return line


def load_config(overrides: list[str] | None = None, strict: bool = True) -> dict[str, Any]:
    """Compose, resolve and validate the config; returns plain containers with absolute paths.

    ``strict=False`` returns only ``paths.work_dir`` and tolerates missing mandatory values:
    ``status`` reads the ledger and must work without the dataset's settings.
    """
    overrides = list(overrides or [])
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' is not of the form key=value")
    try:
        cfg = _compose(overrides)
        user_depth = any(o.split("=", 1)[0].lstrip("+~") == "depth" for o in overrides)
        wanted = cfg.dataset.get("default_depth")
        if not user_depth and wanted and wanted != cfg.depth.get("backend"):
            cfg = _compose([*overrides, f"depth={wanted}"])
        if not strict:
            work_dir = OmegaConf.select(cfg, "paths.work_dir")
            return {"paths": {"work_dir": str(Path(os.getcwd(), work_dir).resolve())}}
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:  # Hydra/OmegaConf raise many types; all are user errors here
        raise ConfigError(_first_line(exc)) from None
    return _absolutise(resolved)


def _absolutise(cfg: dict[str, Any]) -> dict[str, Any]:
    """Make user paths absolute against the current directory once, on the driver: Ray workers
    run in other directories. Project-bundled files (``definition``) resolve against the repo."""
    cwd = Path(os.getcwd())

    def fix(value: Any) -> Any:
        return str((cwd / value).resolve()) if isinstance(value, str) and value else value

    cfg["paths"]["work_dir"] = fix(cfg["paths"]["work_dir"])
    ds = cfg["dataset"]
    for key in ("root", "frames_root", "videos_root", "depth_root", "clip_list"):
        if ds.get(key) and ds[key] != "???":
            ds[key] = fix(ds[key])
    if ds.get("definition"):
        ds["definition"] = str((PROJECT_ROOT / ds["definition"]).resolve())
    # "hub id or local directory": a relative directory must reach the Ray actors as absolute
    # (a hub id such as org/name is left alone unless such a folder exists here)
    model_dirs = [(cfg.get("depth") or {}, "model"),
                  ((cfg.get("train") or {}).get("svd") or {}, "pretrained")]
    for holder, key in model_dirs:
        value = holder.get(key)
        if isinstance(value, str) and value and (cwd / value).is_dir():
            holder[key] = fix(value)
    return cfg


def stage_config_view(cfg: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The slice of config that fingerprints a stage (so unrelated edits don't invalidate it)."""
    return {k: cfg.get(k) for k in keys}
