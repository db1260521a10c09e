"""Keyframe model of the trajectory designer (trainer/inference/designer.py): editing rules,
angles, interpolation continuity, presets and the export round-trip. No browser here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainer.inference.designer import (
    DesignKeyframe,
    TrajectoryDesign,
    euler_to_matrix,
    matrix_to_euler,
    pose,
)
from trainer.inference.trajectory import (
    TrajectoryError,
    load_trajectory,
    preset_trajectory,
    quat_from_matrix,
)

PRESET = {"dolly_frac": 0.5, "pan_frac": 0.3, "orbit_deg": 20.0, "zoom_factor": 1.5}


def test_euler_known_answers_and_round_trip() -> None:
    # yaw +90: the view axis (camera z) turns to world +x (right); pitch +90: looks down (+y)
    np.testing.assert_allclose(euler_to_matrix(90, 0, 0) @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(euler_to_matrix(0, 30, 0) @ [0, 0, 1],
                               [0, np.sin(np.pi / 6), np.cos(np.pi / 6)], atol=1e-12)
    # roll turns the camera's x axis towards its y axis about the view axis
    np.testing.assert_allclose(euler_to_matrix(0, 0, 90) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(50):
        ang = rng.uniform([-179, -89, -179], [179, 89, 179])
        R = euler_to_matrix(*ang)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(matrix_to_euler(R), ang, atol=1e-9)


def test_add_move_delete_reorder() -> None:
    d = TrajectoryDesign(num_frames=9, duration_s=1.5)
    assert len(d.keyframes) == 1 and np.array_equal(d.keyframes[0].c2w, np.eye(4))
    assert d.fps == pytest.approx(6.0)
    i = d.add(0, step_m=0.2)  # after the condition camera: 0.2 m along its view axis
    assert i == 1
    np.testing.assert_allclose(d.keyframes[1].position, [0, 0, 0.2])
    d.add(step_m=0.2)  # after the last: continues the last segment
    np.testing.assert_allclose(d.keyframes[2].position, [0, 0, 0.4])
    # between two keyframes: midway, rotation halfway
    d.move(2, position=[0.4, 0.0, 0.4], rotation=euler_to_matrix(40, 0, 0))
    j = d.add(1)
    assert j == 2 and len(d.keyframes) == 4
    mid = d.keyframes[2]
    assert matrix_to_euler(mid.c2w[:3, :3])[0] == pytest.approx(20.0, abs=1e-9)
    # gizmo update: a quaternion sets the rotation exactly
    R = euler_to_matrix(10, -5, 3)
    d.move(3, position=[1, 2, 3], wxyz=quat_from_matrix(R))
    np.testing.assert_allclose(d.keyframes[3].c2w[:3, :3], R, atol=1e-12)
    np.testing.assert_allclose(d.keyframes[3].position, [1, 2, 3])
    # reorder and delete
    k3 = d.keyframes[3]
    d.reorder(3, 1)
    assert d.keyframes[1] is k3
    d.delete(1)
    assert len(d.keyframes) == 3 and k3 not in d.keyframes
    # the condition camera is pinned; bad values are clear errors
    with pytest.raises(TrajectoryError, match="condition camera"):
        d.move(0, position=[1, 0, 0])
    with pytest.raises(TrajectoryError, match="condition camera"):
        d.delete(0)
    with pytest.raises(TrajectoryError, match="condition camera"):
        d.reorder(1, 0)
    with pytest.raises(TrajectoryError, match="no keyframe 7"):
        d.delete(7)
    with pytest.raises(TrajectoryError, match="orthonormal"):
        d.move(1, rotation=np.diag([1.0, 1.0, 2.0]))
    with pytest.raises(TrajectoryError, match="focal scale"):
        d.move(1, focal_scale=0.0)
    with pytest.raises(TrajectoryError, match="frame count"):
        d.set_timing(1, 1.0)
    d.move(0, focal_scale=1.2)  # the lens of the condition camera may change
    assert d.keyframes[0].focal_scale == 1.2


def test_interpolation_passes_keyframes_and_is_c1() -> None:
    d = TrajectoryDesign(9, 1.0, [
        DesignKeyframe(np.eye(4)),
        DesignKeyframe(pose([0.5, 0.0, 1.0], euler_to_matrix(15, 0, 0))),
        DesignKeyframe(pose([1.5, -0.2, 1.2], euler_to_matrix(40, 5, 0)), focal_scale=1.4),
    ])
    traj = d.trajectory()
    assert len(traj) == 9 and traj.fps == pytest.approx(9.0)
    # keyframe times 0, 0.5, 1 fall on frames 0, 4, 8: the path passes through them exactly
    for f, k in zip((0, 4, 8), d.keyframes):
        np.testing.assert_allclose(traj.c2w[f], k.c2w, atol=1e-12)
        assert traj.focal_scale[f] == pytest.approx(k.focal_scale)
    # C1: on a dense sampling the velocity changes smoothly, also across keyframe 1
    d.set_timing(801, 1.0)
    p = d.trajectory().c2w[:, :3, 3]
    v = np.diff(p, axis=0)
    dv = np.linalg.norm(np.diff(v, axis=0), axis=1)
    step = np.linalg.norm(v, axis=1)
    # smooth: second differences ~ 1/N^2; a kink (C0 only) would make one ~ a whole step
    assert dv.max() < 0.02 * step.mean()
    assert abs(step[399] - step[400]) < 0.02 * step.mean()  # speed continuous at keyframe 1


def test_preset_sampled_as_keyframes_matches_preset() -> None:
    depth = 3.0
    for name in ("dolly", "pan", "orbit", "zoom"):
        d = TrajectoryDesign.from_preset(name, 16, 2.0, depth, PRESET, num_keyframes=4)
        assert len(d.keyframes) == 4
        ref = preset_trajectory(name, 16, depth, PRESET)
        got = d.trajectory()
        np.testing.assert_allclose(got.c2w[-1], ref.c2w[-1], atol=1e-9)
        np.testing.assert_allclose(got.focal_scale[-1], ref.focal_scale[-1])
        # a line is reproduced exactly; the orbit's arc within a few mm at 3 m
        err = np.abs(got.c2w[:, :3, 3] - ref.c2w[:, :3, 3]).max()
        assert err < (5e-3 if name == "orbit" else 1e-9), (name, err)
    d = TrajectoryDesign.from_preset("dolly", 16, 2.0, depth, PRESET, num_keyframes=4)
    assert d.keyframes[-1].position[2] == pytest.approx(0.5 * depth)


def test_export_round_trip(tmp_path: Path) -> None:
    d = TrajectoryDesign.from_preset("orbit", 12, 3.0, 2.0, PRESET, num_keyframes=3)
    d.add(2)
    d.move(3, position=[0.3, -0.1, 0.2], rotation=euler_to_matrix(-10, 4, 2), focal_scale=1.1)
    path = d.export(tmp_path / "t.json")
    loaded = load_trajectory(path)
    traj = d.trajectory()
    assert len(loaded) == 12 and loaded.fps == pytest.approx(4.0)
    np.testing.assert_allclose(loaded.c2w, traj.c2w, atol=1e-12)
    np.testing.assert_allclose(loaded.focal_scale, traj.focal_scale)
    back = TrajectoryDesign.from_trajectory(loaded, duration_s=99.0)
    assert back.num_frames == 12 and back.duration_s == pytest.approx(3.0)
    assert len(back.keyframes) == len(d.keyframes)
    for a, b in zip(back.keyframes, d.keyframes):
        np.testing.assert_allclose(a.c2w, b.c2w, atol=1e-12)
        assert a.focal_scale == pytest.approx(b.focal_scale)
    np.testing.assert_allclose(back.trajectory().c2w, traj.c2w, atol=1e-12)


# ------------------------------------------------------------------------------ start-up
class _StubApp:
    """Stands in for the web server: records that it was started, stops at once."""

    started: list[dict] = []

    def __init__(self, cfg: dict) -> None:
        self.started.append(cfg)
        self.url = "http://stub"

    def load(self) -> bool:
        raise KeyboardInterrupt  # what Ctrl-C does while serving

    def stop(self) -> None:
        pass


def _ui(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> int:
    import pipeline.ui as ui
    from pipeline.cli import main

    _StubApp.started = []
    monkeypatch.setattr(ui, "DesignerApp", _StubApp)
    return main(["ui", f"dataset.root={tmp_path / 'data'}", "dataset.definition=null",
                 "depth=sensor", f"paths.work_dir={tmp_path / 'work'}", *args])


def test_bad_image_or_clip_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cv2

    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert cv2.imwrite(str(tmp_path / "dot.png"), np.zeros((1, 1, 3), np.uint8))
    for arg, msg in ((f"image={tmp_path / 'nope.png'}", "image not found"),
                     (f"image={tmp_path / 'junk.png'}", "cannot read image"),
                     (f"image={tmp_path / 'dot.png'}", "is 1x1 pixels"),
                     ("clip=no_such_clip", "clip no_such_clip not found")):
        assert _ui(monkeypatch, tmp_path, arg) == 2, arg
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1, err
        assert not _StubApp.started  # nothing was served


def test_non_loopback_host_warns(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cv2

    img = tmp_path / "room.png"
    assert cv2.imwrite(str(img), np.full((96, 128, 3), 120, np.uint8))
    assert _ui(monkeypatch, tmp_path, f"image={img}", "host=0.0.0.0") == 0
    out = capsys.readouterr()
    assert len(_StubApp.started) == 1
    warn = [ln for ln in out.err.splitlines() if ln.startswith("warning: ")]
    assert len(warn) == 1 and "reachable from the network" in warn[0] and "0.0.0.0" in warn[0]
    assert _ui(monkeypatch, tmp_path, f"image={img}") == 0  # the default 127.0.0.1: silent
    assert "warning" not in capsys.readouterr().err
    from pipeline.ui import network_warning

    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert network_warning(host) is None, host
    for host in ("0.0.0.0", "::", "192.168.1.5", "myhost.example"):
        assert network_warning(host), host


def test_large_image_is_loaded_at_working_size(tmp_path: Path) -> None:
    """The designer reads images with the sample stage's rules: a large one (and its depth map
    at the same size) is downscaled before the point cloud is built."""
    import cv2

    from pipeline.config import load_config
    from pipeline.ui import expand_overrides, load_scene

    img = tmp_path / "big.png"
    assert cv2.imwrite(str(img), np.full((600, 800, 3), 90, np.uint8))
    np.save(tmp_path / "big.npy", np.full((600, 800), 2.5, np.float32))
    cfg = load_config(expand_overrides([f"image={img}", f"ui.depth={tmp_path / 'big.npy'}",
                                        f"paths.work_dir={tmp_path / 'work'}"]))
    cfg["train"]["sampling"]["max_image_side"] = 200
    scene = load_scene(cfg, "cpu")
    assert scene.rgb.shape == (150, 200, 3) and scene.depth.shape == (150, 200)
    assert scene.median_depth == pytest.approx(2.5)
    # the intrinsics belong to the working size (centred principal point)
    np.testing.assert_allclose(scene.K[:2, 2], [100.0, 75.0])


def _wait_for_line(proc: Any, text: str, timeout_s: float) -> str:
    """What ``proc`` printed up to the line containing ``text`` (fails on exit or timeout)."""
    import os
    import select
    import time

    seen = b""
    deadline = time.monotonic() + timeout_s
    fd = proc.stdout.fileno()  # raw reads: a buffered readline would hide data from select
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no line with {text!r} after {timeout_s} s: {seen.decode()}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"exited before printing {text!r}: {seen.decode()}"
            seen += chunk
    return seen.decode(errors="replace")


def test_designer_stops_cleanly_on_sigterm_and_ctrl_c(tmp_path: Path) -> None:
    """Stopping the page with SIGTERM printed a 20-line native stack dump; Ctrl-C is the
    documented way to stop it. Both end with one line and exit 0."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import cv2

    from pipeline.ui import free_port
    from tests.conftest import ROOT

    img = tmp_path / "room.png"
    assert cv2.imwrite(str(img), np.full((48, 64, 3), 120, np.uint8))
    np.save(tmp_path / "room.npy", np.full((48, 64), 2.0, np.float32))
    procs = {}
    for sig in (signal.SIGTERM, signal.SIGINT):  # both at once: start-up dominates
        port = free_port("127.0.0.1")
        cmd = [sys.executable, "-m", "pipeline", "ui", f"image={img}",
               f"ui.depth={tmp_path / 'room.npy'}", f"port={port}", "ui.device=cpu",
               f"paths.work_dir={tmp_path / 'work'}"]
        procs[sig] = (port, subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True,
                                             env=dict(os.environ, RAY_AUTH_MODE="disabled")))
    try:
        for sig, (_port, proc) in procs.items():
            started = _wait_for_line(proc, "(Ctrl-C to stop)", 120)
            time.sleep(0.5)  # serving
            proc.send_signal(sig)
            after, _ = proc.communicate(timeout=20)
            out = started + after
            after = after.strip().splitlines()
            assert "Traceback" not in out and "Aborted" not in out, out
            assert proc.returncode == 0, (sig, out)
            assert 1 <= len(after) <= 2 and after[-1] == "trajectory designer stopped", out
    finally:
        for _, proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_mistyped_sample_root_is_refused_before_rendering(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The designer renders the bundled sample on first use: never into a mistyped root."""
    import pipeline.ui as ui
    from pipeline.cli import main

    _StubApp.started = []
    monkeypatch.setattr(ui, "DesignerApp", _StubApp)
    missing = tmp_path / "nonexistent" / "x"
    for extra in ([], ["clip=syn_test_000"]):
        assert main(["ui", f"dataset.root={missing}", f"paths.work_dir={tmp_path / 'w'}",
                     *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "dataset.root" in err and str(missing) in err, err
    assert not missing.parent.exists() and not _StubApp.started
