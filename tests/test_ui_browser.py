"""End-to-end test of the trajectory designer (``python -m pipeline ui``) in a real headless
browser: Debian's chromium driven by Playwright (never a browser download).

On a small clip rendered like the bundled sample: load the page, add a keyframe, move it
(through the keyframe's X number input: a 3D gizmo drag is not reproducible in a headless
browser, the inputs edit the same keyframe), Preview (video in the page, mp4s on disk), the
usable-mask toggle, Export (a valid trajectory file with the moved keyframe), Generate without
a checkpoint (one-sentence error in the page), then with one (result in the page); and an
unreadable image shows its error in the page. A screenshot is kept as a test artefact
(``METRIC_ALIGN_DOCS_SCREENSHOT=PATH`` also writes it there: the README's figure).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from pipeline.synthetic.sample_data import render_clip
from tests.test_trainer import train_cfg

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 180_000  # generous: CI shares 2 cores with the app, which renders and samples on CPU


def _browser_path() -> str:
    env = os.environ.get("METRIC_ALIGN_CHROMIUM")
    if env and Path(env).is_file():
        return env
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium browser installed (apt-get install chromium; or set "
                "METRIC_ALIGN_CHROMIUM=PATH): the browser test needs a system browser")


def _wait(cond: Callable[[], Any], what: str, timeout_s: float = 120.0) -> Any:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        val = cond()
        if val:
            return val
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def _frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    exe = _browser_path()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) missing")
    profile = tempfile.mkdtemp(prefix="ui-browser-")
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=exe, headless=True, args=BROWSER_ARGS,
            viewport={"width": 1400, "height": 900})
        ctx.set_default_timeout(TIMEOUT_MS)
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


def _cfg(tmp: Path, **ui: Any) -> dict[str, Any]:
    from pipeline.config import load_config
    from pipeline.ui import expand_overrides, free_port

    cfg = load_config(expand_overrides([
        f"dataset.root={tmp / 'data'}", "dataset.definition=null", "depth=sensor",
        f"paths.work_dir={tmp / 'work'}", f"port={free_port('127.0.0.1')}", "ui.device=cpu",
    ]))
    cfg["ui"].update(ui)
    tcfg = train_cfg()
    tcfg["sampling"].update(steps=2)
    cfg["train"] = tcfg
    return cfg


@pytest.fixture
def app_factory() -> Iterator[Callable[[dict[str, Any]], Any]]:
    from pipeline.ui import DesignerApp

    apps: list[Any] = []

    def make(cfg: dict[str, Any]) -> Any:
        app = DesignerApp(cfg)
        apps.append(app)
        app.load()
        return app

    yield make
    for app in apps:  # always shut the servers down
        app.stop()


def test_design_preview_export_generate(browser: Any, app_factory: Any, tmp_path: Path) -> None:
    import torch

    from trainer import checkpoint as ckpt
    from trainer.inference.trajectory import load_trajectory
    from trainer.loop import build_backbone

    render_clip(tmp_path / "data", "syn_ui", "test", seed=2000, kind="forward", n_frames=2,
                width=192, height=144, rel_scale=0.3)
    cfg = _cfg(tmp_path, clip="syn_ui")
    app = app_factory(cfg)
    assert app.scene is not None and app.scene.depth_source.startswith("dataset")
    page = browser.new_page()
    page.goto(app.url)
    page.get_by_role("button", name="Preview").wait_for()
    page.get_by_text("syn_ui", exact=False).first.wait_for()
    n0 = len(app.design.keyframes)
    assert n0 == int(cfg["ui"]["preset_keyframes"])

    # add a keyframe after the selected one (K1) and move it 0.25 m to the right
    page.get_by_role("button", name="Add keyframe").click()
    _wait(lambda: len(app.design.keyframes) == n0 + 1, "the added keyframe")
    assert app.selected == 2
    _wait(lambda: page.get_by_label("Selected keyframe").input_value() == "2",
          "the page to select the new keyframe")
    x = page.get_by_label("X (m)")
    x.fill("0.25")
    x.press("Enter")
    _wait(lambda: abs(app.design.keyframes[2].position[0] - 0.25) < 1e-9, "the moved keyframe")

    # preview: video in the page and mp4s on disk
    page.get_by_role("button", name="Preview").click()
    page.locator("#preview-video").wait_for()
    out = Path(cfg["paths"]["work_dir"]) / "ui" / "syn_ui"
    nf = int(cfg["ui"]["num_frames"])
    assert _frames(out / "preview.mp4") == nf and _frames(out / "mask.mp4") == nf
    page.get_by_label("Show usable mask").check()
    page.locator('img[alt^="usable mask"]').wait_for()

    # export: a valid trajectory file through the moved keyframe
    page.get_by_role("button", name="Export").click()
    traj_path = _wait(lambda: (out / "trajectory.json").is_file() and out / "trajectory.json",
                      "the exported trajectory")
    traj = load_trajectory(traj_path)
    assert len(traj) == nf and len(traj.keyframes) == n0 + 1
    np.testing.assert_allclose(traj.keyframes[2].c2w[0, 3], 0.25)
    np.testing.assert_allclose(traj.c2w[0], np.eye(4), atol=1e-12)
    page.get_by_text("Exported", exact=False).first.wait_for()

    # generate without a checkpoint: one sentence in the page, the page stays alive
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("no checkpoint under", exact=False).first.wait_for()
    # with a (random) checkpoint of the tiny model: the result appears beside the preview
    tcfg = copy.deepcopy(cfg["train"])
    torch.manual_seed(0)
    model = build_backbone(tcfg)
    ckpt_dir = Path(cfg["paths"]["work_dir"]) / tcfg["out_subdir"] / "checkpoints"
    ckpt.save_atomic({"model": model.trainable_state_dict()}, ckpt.checkpoint_path(ckpt_dir, 1))
    page.get_by_role("button", name="Generate").click()
    page.locator("#generated-video").wait_for()
    assert app.gen_progress == (2, 2)  # the progress bar followed every denoising step
    mp4 = Path(cfg["paths"]["work_dir"]) / tcfg["out_subdir"] / "samples" / "syn_ui.mp4"
    assert _frames(mp4) == int(tcfg["data"]["num_frames"])

    shot = tmp_path / "designer.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    docs = os.environ.get("METRIC_ALIGN_DOCS_SCREENSHOT")
    if docs:
        shutil.copyfile(shot, docs)
    page.close()


def test_bad_image_is_one_sentence_in_the_page(browser: Any, app_factory: Any,
                                               tmp_path: Path) -> None:
    bad = tmp_path / "room.png"
    bad.write_bytes(b"not an image at all")
    app = app_factory(_cfg(tmp_path, image=str(bad)))
    assert app.scene is None
    page = browser.new_page()
    page.goto(app.url)
    msg = page.get_by_text(f"cannot read image {bad}", exact=False).first
    msg.wait_for()
    assert "Error" in page.content()
    # the page still answers: Preview explains there is nothing to preview
    page.get_by_role("button", name="Preview").click()
    page.get_by_text("no scene loaded", exact=False).first.wait_for()
    # an uploaded image is read, but this config has no depth for it (sensor backend, no file)
    good = tmp_path / "upload me.png"
    cv2.imwrite(str(good), np.full((24, 32, 3), 128, np.uint8))
    page.locator("input[type=file]").first.set_input_files(str(good))
    page.get_by_text("no depth for this image", exact=False).first.wait_for()
    assert app.u["image"].endswith("upload_me.png") and Path(app.u["image"]).is_file()
    page.close()


def test_short_keys_and_cli_branch() -> None:
    from pipeline.cli import build_parser
    from pipeline.ui import expand_overrides

    assert expand_overrides(["image=a.png", "clip=c1", "port=9000", "host=0.0.0.0",
                             "depth=sensor", "ui.split=train"]) == [
        "ui.image=a.png", "ui.clip=c1", "ui.port=9000", "ui.host=0.0.0.0", "depth=sensor",
        "ui.split=train"]
    args = build_parser().parse_args(["ui", "image=a.png"])
    assert args.command == "ui" and args.overrides == ["image=a.png"]


def test_depth_model_not_on_disk_is_one_sentence(tmp_path: Path) -> None:
    from pipeline.config import load_config
    from pipeline.ui import SceneError, expand_overrides, load_scene

    img = tmp_path / "room.png"
    cv2.imwrite(str(img), np.full((24, 32, 3), 128, np.uint8))
    cfg = load_config(expand_overrides([
        f"image={img}", "depth=da2_metric", f"depth.model={tmp_path / 'no_such_model'}",
        f"paths.work_dir={tmp_path / 'work'}"]))
    with pytest.raises(SceneError, match=r"depth model .*no_such_model is not available locally"):
        load_scene(cfg, "cpu")
