"""Scale statistics against known answers: weighted medians, point bootstrap coverage,
shrinkage, the conditioning term, and the align columns built on them."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.geometry.poses import midpoint_depths, point_index
from pipeline.scale.factors import frame_factors
from pipeline.scale.stats import (
    SQRT_HALF_PI,
    Z95,
    FrameRatios,
    between_frame_sigma,
    clip_scale,
    focal_consistency,
    focal_sensitivity,
    shrink_frames,
    systematic_sigma,
    weighted_medians,
)


def test_weighted_median_matches_numpy_and_repeats() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 6, 17):
        v = np.sort(rng.normal(size=n))
        got = weighted_medians(v, np.ones((1, n)), np.array([0]), np.array([n]))[0, 0]
        assert got == pytest.approx(np.median(v), abs=1e-12)
        # integer weights = repeating values
        w = rng.integers(0, 4, size=n).astype(float)
        if w.sum() == 0:
            continue
        rep = np.repeat(v, w.astype(int))
        got = weighted_medians(v, w[None], np.array([0]), np.array([n]))[0, 0]
        assert got == pytest.approx(np.median(rep), abs=1e-12)
    # an empty segment and a segment with zero weight give NaN
    v = np.array([1.0, 2.0])
    out = weighted_medians(v, np.array([[0.0, 0.0]]), np.array([0, 2]), np.array([2, 2]))
    assert np.isnan(out).all()


def simulate_clip(rng: np.random.Generator, true: float, n_frames: int = 20,
                  n_points: int = 150, point_sd: float = 0.06, obs_sd: float = 0.02):
    """Observations whose errors are shared per 3D point (triangulation) plus per observation
    (depth noise): the correlation structure the point bootstrap must respect."""
    f, p, r = [], [], []
    point_err = rng.normal(0.0, point_sd, n_points)
    for pid in range(n_points):
        start = rng.integers(0, n_frames)
        length = rng.integers(2, 9)
        for fi in range(start, min(n_frames, start + length)):
            f.append(fi)
            p.append(pid)
            r.append(true * np.exp(point_err[pid] + rng.normal(0.0, obs_sd)))
    return np.array(f), np.array(p), np.array(r)


def test_point_bootstrap_interval_covers_truth_about_95_percent() -> None:
    rng = np.random.default_rng(1)
    hits, n = 0, 120
    widths = []
    for _ in range(n):
        f, p, r = simulate_clip(rng, true=2.5)
        est = clip_scale(FrameRatios.build(f, r, p, 20), min_obs=3, n_boot=200,
                         seed=int(rng.integers(1 << 30)))
        lo = est.clip * np.exp(-1.96 * est.clip_sigma_boot)
        hi = est.clip * np.exp(1.96 * est.clip_sigma_boot)
        hits += lo <= 2.5 <= hi
        widths.append(est.clip_sigma_boot)
    assert 0.88 <= hits / n <= 0.995, hits / n
    # resampling observations instead of points would be over-confident: same data, each
    # observation its own "point", gives a clearly narrower interval
    f, p, r = simulate_clip(np.random.default_rng(2), true=2.5)
    by_point = clip_scale(FrameRatios.build(f, r, p, 20), 3, 300, 0).clip_sigma_boot
    by_obs = clip_scale(FrameRatios.build(f, r, np.arange(len(r)), 20), 3, 300, 0).clip_sigma_boot
    assert by_obs < 0.8 * by_point


def test_shrinkage_pulls_noisy_frames_and_keeps_real_differences() -> None:
    log_clip = 0.0
    # no real between-frame variation: sampling noise only -> everything to the clip value
    dev = np.array([0.05, -0.04, 0.03, -0.05, 0.02, 0.0])
    sig = np.full(6, 0.05)
    shrunk, keep, tau = shrink_frames(dev, sig, log_clip, 0.0, np.inf)
    assert tau == 0.0 and np.allclose(shrunk, 0.0) and np.all(keep == 0)
    # real variation (tau ~ 0.1) and one badly measured frame (sd 0.5): the precise frames keep
    # most of their value, the noisy one is pulled most of the way to the clip
    dev = np.array([0.1, -0.1, 0.12, -0.08, 0.9])
    sig = np.array([0.01, 0.01, 0.01, 0.01, 0.5])
    shrunk, keep, tau = shrink_frames(dev, sig, log_clip, 0.0, np.inf)
    assert tau > 0.05
    assert np.all(keep[:4] > 0.95) and keep[4] < 0.3
    assert keep[4] == pytest.approx(tau**2 / (tau**2 + 0.25))
    assert shrunk[4] == pytest.approx(keep[4] * 0.9) and shrunk[4] < 0.3
    # the per-frame pose-error prior explains the spread: everything shrinks to the clip
    shrunk, keep, tau = shrink_frames(dev[:4], sig[:4], log_clip, 0.15, np.inf)
    assert tau == 0.0 and np.allclose(shrunk, 0.0)
    # the cap: a 20% frame disagreement is mostly pose error, only max_tau of it is kept
    dev = np.array([0.2, -0.2, 0.25, -0.22, 0.18, -0.19])
    shrunk, keep, tau = shrink_frames(dev, np.full(6, 0.01), log_clip, 0.04, 0.03)
    assert tau == pytest.approx(0.03)
    assert np.allclose(keep, 0.03**2 / (0.03**2 + 0.01**2 + 0.04**2))
    assert np.max(np.abs(shrunk)) < 0.1
    # no bootstrap (NaN sd): the pose-error prior alone decides, frames are not all collapsed
    shrunk_nan, keep_nan, _ = shrink_frames(dev, np.full(6, np.nan), log_clip, 0.04, 0.03)
    assert np.allclose(keep_nan, 0.03**2 / (0.03**2 + 0.04**2))


def test_between_frame_sigma_uses_effective_frames() -> None:
    rng = np.random.default_rng(4)
    iid = rng.normal(0, 0.05, 400)
    sigma, sd, n_eff = between_frame_sigma(iid)
    assert sd == pytest.approx(0.05, rel=0.15) and n_eff > 300
    assert sigma == pytest.approx(SQRT_HALF_PI * sd / np.sqrt(n_eff))
    # a slow drift (strongly autocorrelated): far fewer independent frames, a wider sigma
    walk = np.cumsum(rng.normal(0, 0.01, 400))
    s_walk, _, n_walk = between_frame_sigma(walk)
    assert n_walk < 0.1 * 400
    assert between_frame_sigma(np.zeros(10))[0] == 0.0


def test_systematic_sigma_follows_angle_and_residual() -> None:
    # 1 px residual at f = 500 px, 2 degrees of triangulation angle: 0.002 / 0.0349 = 5.7%
    s = systematic_sigma(1 / 500, 2.0, gain=1.0, floor=0.0)
    assert s == pytest.approx((1 / 500) / np.radians(2.0), rel=1e-12)
    assert systematic_sigma(1 / 500, 20.0, 1.0, 0.0) == pytest.approx(s / 10, rel=1e-12)
    assert systematic_sigma(1 / 500, 2.0, 1.0, 0.01) == pytest.approx(np.hypot(s, 0.01))
    assert systematic_sigma(np.nan, 2.0, 1.0, 0.01) == np.inf  # unknown conditioning
    assert systematic_sigma(np.nan, np.nan, 0.0, 0.01) == 0.01  # term off: floor only


def test_frame_factors_uncertainty_columns_and_rotation_dominated_flag() -> None:
    rng = np.random.default_rng(3)
    f, p, r = simulate_clip(rng, true=1.7, point_sd=0.03)
    z = rng.uniform(1.0, 3.0, size=r.size)
    d = r * z
    ucfg = {"bootstrap": 100, "seed": 0, "gain": 1.0, "floor": 0.005, "shrinkage": True,
            "frame_sigma": 0.005, "max_tau": 0.03, "frames_gain": 1.0}
    good = frame_factors("c", 20, f, z, d, np.ones_like(d, bool), 3, 1, point_id=p,
                         tri_angle=np.full(r.size, 10.0), ray_err=np.full(r.size, 1e-3),
                         ucfg=ucfg)
    assert good["scale_ci_low"] < 1.7 < good["scale_ci_high"]
    assert good["scale_ci_low"] < good["scale_median"] < good["scale_ci_high"]
    assert good["scale_uncertainty"] == pytest.approx(np.expm1(Z95 * good["scale_sigma"]))
    assert good["scale_sigma"] == pytest.approx(np.sqrt(
        good["scale_sigma_boot"] ** 2 + good["scale_sigma_sys"] ** 2
        + good["scale_sigma_frames"] ** 2))
    assert good["num_points"] == len(np.unique(p))
    # same data, triangulated under a tiny angle (rotation-dominated clip): the conditioning
    # term dominates and the clip is reported as uncertain
    rot = frame_factors("c", 20, f, z, d, np.ones_like(d, bool), 3, 1, point_id=p,
                        tri_angle=np.full(r.size, 0.5), ray_err=np.full(r.size, 2e-3),
                        ucfg=ucfg)
    assert rot["scale_uncertainty"] > 0.2 > good["scale_uncertainty"]
    # shrinkage: every frame factor is finite and frames agree with the clip within noise
    fs = np.asarray(good["frame_scale"])
    assert np.all(np.isfinite(fs)) and np.max(np.abs(fs / 1.7 - 1)) < 0.1


def _look_w2c(centres: np.ndarray, yaws: np.ndarray) -> np.ndarray:
    """w2c (N, 3, 4) of cameras at ``centres`` turned by ``yaws`` (radians) about the y axis."""
    out = np.zeros((len(centres), 3, 4))
    for i, (c, a) in enumerate(zip(centres, yaws)):
        R = np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])
        out[i, :, :3] = R
        out[i, :, 3] = -R @ c
    return out


def _observe(w2c: np.ndarray, K: np.ndarray, X: np.ndarray):
    """Every point in every frame: (frame, point, u, v, z_cam), exact projections."""
    n_f, n_p = len(w2c), len(X)
    frame = np.repeat(np.arange(n_f), n_p)
    point = np.tile(np.arange(n_p), n_f)
    Xc = np.einsum("fij,pj->fpi", w2c[:, :, :3], X) + w2c[:, None, :, 3]
    Xc = Xc.reshape(-1, 3)
    u = K[0, 0] * Xc[:, 0] / Xc[:, 2] + K[0, 2]
    v = K[1, 1] * Xc[:, 1] / Xc[:, 2] + K[1, 2]
    return frame, point, u, v, Xc[:, 2]


def _pan(seed: int, travel: float):
    """A rotation-dominated clip: 10 frames turning 15 degrees while moving ``travel`` metres
    sideways, 300 points 3-5 m away; exact projections with f = 500 (points in front only)."""
    rng = np.random.default_rng(seed)
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    t = np.linspace(0, 1, 10)
    w2c = _look_w2c(np.stack([travel * t, 0 * t, 0 * t], 1), np.radians(15.0) * t)
    X = np.stack([rng.uniform(-2, 2, 300), rng.uniform(-1, 1, 300), rng.uniform(3, 5, 300)], 1)
    frame, point, u, v, z = _observe(w2c, K, X)
    keep = z > 0.5
    return frame[keep], point[keep], u[keep], v[keep], z[keep], w2c, K


@pytest.mark.parametrize(
    ("motion", "expected"),
    [("sideways", -1.0), ("forward", 0.0)],
)
def test_focal_sensitivity_known_answers(motion: str, expected: float) -> None:
    """With the poses fixed, scaling the focal by (1 + d) scales every depth triangulated from
    sideways travel by (1 + d): d log(scale) / d log(f) = -1 exactly; under pure forward travel
    the depths do not change at all (0). Both are exact for noise-free rays."""
    rng = np.random.default_rng(0)
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    n = 8
    step = np.linspace(0, 0.4, n)
    centres = (np.stack([step, 0 * step, 0 * step], 1) if motion == "sideways"
               else np.stack([0 * step, 0 * step, step], 1))
    w2c = _look_w2c(centres, np.zeros(n))
    X = np.stack([rng.uniform(-1, 1, 200), rng.uniform(-0.8, 0.8, 200),
                  rng.uniform(2.5, 5.0, 200)], 1)
    frame, point, u, v, z = _observe(w2c, K, X)
    assert np.allclose(midpoint_depths(u, v, frame, point, w2c, K), z, rtol=1e-9)
    # the point index computed once by the caller gives the same depths, bit for bit
    assert np.array_equal(midpoint_depths(u, v, frame, point, w2c, K, pidx=point_index(point)),
                          midpoint_depths(u, v, frame, point, w2c, K))
    depth = 1.7 * z
    s = focal_sensitivity(frame, point, u, v, depth, np.ones(z.size, bool), w2c, K, n, 3, 0.02)
    assert s == pytest.approx(expected, abs=1e-6)


def test_focal_sensitivity_is_large_for_a_pan_and_feeds_the_interval() -> None:
    """A rotation-dominated clip (15 degrees of turn, 10 cm of travel) reads a wrong focal as
    parallax: |sensitivity| far above a sideways clip's 1. With ``focal_sigma`` the term enters
    ``scale_sigma`` in quadrature; with 0 the column is still written and the term is 0."""
    frame, point, u, v, z, w2c, K = _pan(1, 0.1)
    n = len(w2c)
    depth = 1.7 * z
    s = focal_sensitivity(frame, point, u, v, depth, np.ones(z.size, bool), w2c, K, n, 3, 0.02)
    assert abs(s) > 3.0
    base = {"bootstrap": 50, "seed": 0, "gain": 0.0, "floor": 0.005, "frames_gain": 0.0}
    args = ("pan", n, frame, z, depth, np.ones(z.size, bool), 3, 1)
    kw = {"point_id": point, "uv": np.stack([u, v], 1), "w2c": w2c, "K": K}
    off = frame_factors(*args, ucfg={**base, "focal_sigma": 0.0}, **kw)
    on = frame_factors(*args, ucfg={**base, "focal_sigma": 0.01}, **kw)
    assert off["scale_focal_sensitivity"] == pytest.approx(s)
    assert off["scale_sigma_focal"] == 0.0
    assert on["scale_sigma_focal"] == pytest.approx(abs(s) * 0.01)
    assert on["scale_sigma"] == pytest.approx(np.hypot(off["scale_sigma"], abs(s) * 0.01))
    # the tracks agree with the given focal: the check finds ~0 and adds ~nothing
    chk = frame_factors(*args, ucfg={**base, "focal_check_gain": 1.0, "focal_search": 0.15,
                                     "focal_search_step": 0.01, "focal_cap_px": 4.0}, **kw)
    assert abs(chk["focal_consistency"]) < 0.002
    assert chk["scale_sigma_focal"] < abs(s) * 0.002
    assert np.isnan(off["focal_consistency"])  # check off: not computed
    # without cameras the sensitivity is unknown (NaN) and contributes nothing
    bare = frame_factors(*args, ucfg={**base, "focal_sigma": 0.01}, point_id=point)
    assert np.isnan(bare["scale_focal_sensitivity"]) and bare["scale_sigma_focal"] == 0.0


def test_focal_consistency_finds_a_wrong_focal_under_fixed_poses() -> None:
    """Tracks projected with f = 500 but given f = 510 (2% too long): re-triangulating under the
    fixed poses fits best at f * (1 + g) = 500, g = 500/510 - 1, to well within the grid step;
    the true focal gives ~0. A pan is used because rotation makes the focal observable."""
    frame, point, u, v, _, w2c, K = _pan(2, 0.3)
    args = (frame, point, u, v, w2c)
    wrong = K.copy()
    wrong[0, 0] = wrong[1, 1] = 510.0
    assert focal_consistency(*args, wrong, 0.15, 0.01, 4.0) == pytest.approx(500 / 510 - 1,
                                                                               abs=0.002)
    assert focal_consistency(*args, K, 0.15, 0.01, 4.0) == pytest.approx(0.0, abs=0.002)
    # the best value outside a +-1% search lies on its edge: no verdict rather than "1%"
    assert np.isnan(focal_consistency(*args, wrong, 0.01, 0.005, 4.0))
    empty = np.zeros(0, np.int64)
    assert np.isnan(focal_consistency(empty, empty, empty * 1.0, empty * 1.0, w2c, K,
                                      0.15, 0.01, 4.0))


def test_focal_check_term_counts_only_the_error_beyond_its_tolerance() -> None:
    """Given f = 510 for tracks made with 500: the check finds g = 500/510 - 1 (|log| ~1.98%)
    and the term is |sensitivity| x (|log(1 + g)| - tolerance); within the tolerance, 0."""
    frame, point, u, v, z, w2c, K = _pan(3, 0.1)
    wrong = K.copy()
    wrong[0, 0] = wrong[1, 1] = 510.0
    chk = {"bootstrap": 20, "seed": 0, "gain": 0.0, "floor": 0.005, "frames_gain": 0.0,
           "focal_check_gain": 1.0, "focal_search": 0.15, "focal_search_step": 0.01,
           "focal_cap_px": 4.0}
    args = ("pan", len(w2c), frame, z, 1.7 * z, np.ones(z.size, bool), 3, 1)
    kw = {"point_id": point, "uv": np.stack([u, v], 1), "w2c": w2c, "K": wrong}
    out = frame_factors(*args, ucfg={**chk, "focal_check_tolerance": 0.0075}, **kw)
    g = out["focal_consistency"]
    assert g == pytest.approx(500 / 510 - 1, abs=0.002)
    expected = abs(out["scale_focal_sensitivity"]) * (abs(np.log1p(g)) - 0.0075)
    assert out["scale_sigma_focal"] == pytest.approx(expected, rel=1e-9)
    assert out["scale_sigma_focal"] > 0.02  # a pan: the 2% error is worth several percent
    within = frame_factors(*args, ucfg={**chk, "focal_check_tolerance": 0.03}, **kw)
    assert within["scale_sigma_focal"] == 0.0
