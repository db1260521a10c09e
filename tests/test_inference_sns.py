"""Scene-constrained noise shaping in the DDIM sampler: off is the plain sampler bit for bit,
only levels at or above the threshold are touched, eps is fresh every level, threshold 0 with a
full mask returns the preview latents; builtin and SVD backbones."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMScheduler

from tests.test_trainer import Oracle, tiny_svd, train_cfg
from trainer.inference.sns import NoiseShaping, prepare_shaping, sns_generator
from trainer.loop import build_backbone, build_noise_scheduler
from trainer.sampling import ddim_sample

torch.set_num_threads(1)


@torch.no_grad()
def reference_ddim_sample(model: Any, tcfg: dict[str, Any], cond_image: torch.Tensor,
                          plucker: torch.Tensor, steps: int, guidance_scale: float = 1.0,
                          eta: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Frozen copy of ``trainer.sampling.ddim_sample`` as it was before SNS was added."""
    device = next(model.parameters()).device
    ddim = DDIMScheduler.from_config(build_noise_scheduler(tcfg).config)
    ddim.set_timesteps(int(steps), device=device)
    b, f = plucker.shape[:2]
    h, w = cond_image.shape[-2:]
    gen = torch.Generator().manual_seed(int(seed))
    cond_image = cond_image.to(device)
    plucker = plucker.to(device)
    cond = model.condition(cond_image, generator=gen)
    z = torch.randn((b, *model.latent_shape(f, h, w)), generator=gen).to(device)
    z = z * ddim.init_noise_sigma
    ones = torch.ones(b, device=device)
    for t in ddim.timesteps:
        tt = model.model_timesteps(t.expand(b).to(device), ddim)
        pred = model(z, tt, cond, plucker, ones, ones)
        if guidance_scale != 1.0:
            unc = model(z, tt, cond, plucker, torch.zeros_like(ones), ones)
            pred = unc + guidance_scale * (pred - unc)
        z = ddim.step(pred, t, z, eta=eta, generator=gen if eta > 0 else None).prev_sample
    return model.decode(z)


def test_sns_off_is_bit_identical_to_the_plain_sampler() -> None:
    cfg = train_cfg()
    torch.manual_seed(3)
    model = build_backbone(cfg).eval()
    for p in model.parameters():  # non-trivial weights, zero-initialised layers included
        p.data.normal_(0, 0.05)
    cond = torch.rand(1, 3, 16, 16) * 2 - 1
    pl = torch.randn(1, 4, 6, 16, 16)
    for guidance, eta in ((1.0, 0.0), (1.5, 0.0), (2.0, 0.7)):
        ref = reference_ddim_sample(model, cfg, cond, pl, 5, guidance, eta, seed=11)
        new = ddim_sample(model, cfg, cond, pl, 5, guidance, eta, seed=11)
        assert torch.equal(ref, new)
        assert not torch.equal(ref, reference_ddim_sample(model, cfg, cond, pl, 5, guidance,
                                                          eta, seed=12))


class Spy(Oracle):
    """The oracle denoiser, recording what it is fed at every level."""

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def forward(self, z: torch.Tensor, t: torch.Tensor, *args: Any) -> torch.Tensor:
        pred = super().forward(z, t, *args)
        self.seen.append((int(t[0]), z.clone(), pred.clone()))
        return pred


def _run_spy(threshold: float, mask: torch.Tensor, z_prev: torch.Tensor, seed: int = 5,
             steps: int = 10):  # noqa: ANN202
    cfg = train_cfg(prediction_type="epsilon")
    sched = build_noise_scheduler(cfg)
    x0 = torch.rand(1, 3, 3, 4, 4) * 2 - 1
    spy = Spy(x0, sched, "epsilon")
    sh = NoiseShaping(z_prev, mask, threshold, sns_generator(seed))
    out = ddim_sample(spy, cfg, torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 6, 4, 4),
                      steps=steps, shaping=sh)
    ddim = DDIMScheduler.from_config(sched.config)
    ddim.set_timesteps(steps)
    return spy, out, ddim


def test_only_levels_above_threshold_are_shaped_with_fresh_eps() -> None:
    z_prev = torch.rand(1, 3, 3, 4, 4) * 2 - 1
    mask = torch.zeros(1, 3, 1, 4, 4)
    mask[..., :, :2] = 1.0  # left half of every frame usable
    thr = 0.5
    spy, out, ddim = _run_spy(thr, mask, z_prev)
    ts = [t for t, _, _ in spy.seen]
    assert ts == ddim.timesteps.tolist()
    replay = sns_generator(5)  # the eps the shaping must have drawn, in order
    m = mask.bool().expand_as(z_prev)
    eps_seen = []
    shaped_levels = 0
    for k, (t, z_in, _) in enumerate(spy.seen):
        if k == 0:
            unshaped = torch.randn(z_in.shape, generator=torch.Generator().manual_seed(0))
        else:
            tp, zp, pp = spy.seen[k - 1]
            unshaped = ddim.step(pp, tp, zp).prev_sample
        if t / 1000 >= thr:
            shaped_levels += 1
            abar = ddim.alphas_cumprod[t].double()
            eps = torch.randn(z_in.shape, generator=replay)
            want = (abar.sqrt() * z_prev + (1 - abar).sqrt() * eps).float()
            torch.testing.assert_close(z_in[m], want[m], rtol=0, atol=1e-6)
            assert torch.equal(z_in[~m], unshaped[~m])  # outside the mask: untouched
            eps_seen.append(eps[m])
        else:
            assert torch.equal(z_in, unshaped)  # below the threshold: the plain sampler
    assert shaped_levels == sum(t / 1000 >= thr for t in ts) >= 2
    assert 0 < shaped_levels < len(ts)
    # a fresh eps every shaped level
    for a, b in zip(eps_seen, eps_seen[1:]):
        assert not torch.allclose(a, b)
    # the clean output (level 0) is not shaped at this threshold
    last_t, last_z, last_p = spy.seen[-1]
    assert torch.equal(out, ddim.step(last_p, last_t, last_z).prev_sample)


def test_threshold_zero_full_mask_returns_preview_latents() -> None:
    z_prev = torch.rand(1, 3, 3, 4, 4) * 2 - 1
    spy, out, ddim = _run_spy(0.0, torch.ones(1, 3, 1, 4, 4), z_prev)
    assert torch.equal(out, z_prev)  # Oracle.decode is the identity
    assert len(spy.seen) == 10  # every level shaped, the model still ran


def test_builtin_preview_latents_and_mask() -> None:
    cfg = train_cfg()
    model = build_backbone(cfg).eval()
    preview = torch.rand(1, 4, 3, 16, 16) * 2 - 1
    usable = torch.ones(1, 4, 16, 16, dtype=torch.bool)
    usable[0, 1, 3, 5] = False
    sh = prepare_shaping(model, preview, usable, 0.9, latent_margin=2, seed=0)
    # the built-in fold is exact: latents are the pixels folded 2x2, decoding gives them back
    torch.testing.assert_close(model.decode(sh.z_preview), preview)
    assert sh.mask.shape == (1, 4, 1, 8, 8)
    assert sh.mask.sum() == 4 * 64 - 1 and sh.mask[0, 1, 0, 1, 2] == 0  # no margin: exact fold
    out = ddim_sample(model, cfg, preview[:, 0], torch.zeros(1, 4, 6, 16, 16), 3,
                      shaping=NoiseShaping(sh.z_preview, torch.ones_like(sh.mask), 0.0,
                                           sns_generator(0)))
    torch.testing.assert_close(out, preview)


def test_svd_backbone_shaping_through_the_vae() -> None:
    cfg = train_cfg(backbone="svd", prediction_type="v_prediction")
    cfg["svd"].update(camera_channels=[8, 16], gradient_checkpointing=False)
    model = tiny_svd(cfg["svd"]).eval()
    preview = torch.rand(1, 4, 3, 16, 16) * 2 - 1
    usable = torch.ones(1, 4, 16, 16, dtype=torch.bool)
    usable[0, 2, 0, 15] = False  # top-right pixel of frame 2
    sh = prepare_shaping(model, preview, usable, 0.9, latent_margin=1, seed=0)
    assert sh.z_preview.shape == (1, 4, 4, 8, 8)
    # conservative: the cell holding the pixel and its neighbours within one cell are dropped
    bad = (sh.mask[0, 2, 0] == 0).nonzero().tolist()
    assert sorted(bad) == [[0, 6], [0, 7], [1, 6], [1, 7]]
    assert sh.mask[0, [0, 1, 3]].all()
    plucker = torch.zeros(1, 4, 6, 16, 16)
    plain = ddim_sample(model, cfg, preview[:, 0], plucker, 2, seed=1)
    again = ddim_sample(model, cfg, preview[:, 0], plucker, 2, seed=1)
    assert torch.equal(plain, again)
    shaped = ddim_sample(model, cfg, preview[:, 0], plucker, 2, seed=1, shaping=sh)
    assert not torch.allclose(shaped, plain)
    full = NoiseShaping(sh.z_preview, torch.ones_like(sh.mask), 0.0, sns_generator(0))
    out = ddim_sample(model, cfg, preview[:, 0], plucker, 2, seed=1, shaping=full)
    torch.testing.assert_close(out, model.decode(sh.z_preview))
