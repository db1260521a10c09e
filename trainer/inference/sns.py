"""Scene-constrained noise shaping (SNS, RealCam-I2V) inside the DDIM sampler.

At every noise level ``t`` at or above the threshold (``t / T >= sns_t_threshold``, ``T`` the
number of training timesteps), before the denoiser sees the latent::

    z_t = m * (a_t z_preview + s_t eps) + (1 - m) * z_t,     a_t = sqrt(abar_t),
                                                              s_t = sqrt(1 - abar_t)

with ``m`` the usable mask at latent resolution, ``z_preview`` the clean latents of the preview
frames and ``eps`` drawn afresh at each level (from its own generator, so the sampler's own
random stream, and hence the result with SNS off, is unchanged). The clean output counts as the
level ``t = 0`` (``abar`` = the scheduler's final value, 1 for DDIM's default), so a threshold
of 0 with an all-ones mask returns exactly the preview latents. The paper finds ``t > 0.9`` the
right trade-off between following the scene and letting the model fix the preview's errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainer.inference.render import latent_mask


@dataclass
class NoiseShaping:
    """What the sampler needs: preview latents, mask, threshold and the eps generator."""

    z_preview: torch.Tensor  # (B, F, C, h, w)
    mask: torch.Tensor  # (B, F, 1, h, w) float 0/1 (or bool)
    t_threshold: float  # normalised in [0, 1]
    generator: torch.Generator  # CPU generator for the fresh eps of every shaped level

    def applies(self, t: int | torch.Tensor, num_train_timesteps: int) -> bool:
        return float(t) / float(num_train_timesteps) >= float(self.t_threshold)

    def shape(self, z: torch.Tensor, abar: float | torch.Tensor) -> torch.Tensor:
        """Replace the masked part of ``z`` by the preview noised to ``abar``."""
        abar = torch.as_tensor(abar, dtype=torch.float64)
        a = float(abar.sqrt())
        s = float((1 - abar).clamp(min=0).sqrt())
        eps = torch.randn(z.shape, generator=self.generator, dtype=torch.float32).to(z)
        m = self.mask.to(device=z.device, dtype=z.dtype)
        target = a * self.z_preview.to(device=z.device, dtype=z.dtype) + s * eps
        return m * target + (1 - m) * z

    def at_level(self, z: torch.Tensor, t: torch.Tensor, scheduler: object) -> torch.Tensor:
        """Shape ``z`` at DDIM level ``t`` if it is at or above the threshold."""
        n = int(scheduler.config.num_train_timesteps)
        if not self.applies(int(t), n):
            return z
        return self.shape(z, scheduler.alphas_cumprod[int(t)])

    def at_clean(self, z: torch.Tensor, scheduler: object) -> torch.Tensor:
        """The clean output, level 0: shaped only when the threshold is 0."""
        if not self.applies(0, int(scheduler.config.num_train_timesteps)):
            return z
        return self.shape(z, getattr(scheduler, "final_alpha_cumprod", torch.tensor(1.0)))


def sns_generator(seed: int) -> torch.Generator:
    """A CPU generator independent of the sampler's own (same seed, separate stream)."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([int(seed), 0x5E5]).generate_state(1)[0]))
    return g


def latent_factor(model: torch.nn.Module, height: int, width: int) -> int:
    """Pixels per latent cell side, from the backbone's own ``latent_shape``."""
    _, _, h, w = model.latent_shape(1, height, width)
    if height % h or width % w or height // h != width // w:
        raise ValueError(f"latent grid {h}x{w} does not tile the {height}x{width} image evenly")
    return height // h


@torch.no_grad()
def prepare_shaping(
    model: torch.nn.Module,
    preview: torch.Tensor,
    usable: torch.Tensor,
    t_threshold: float,
    latent_margin: int,
    seed: int,
) -> NoiseShaping:
    """Preview video (B, F, 3, H, W) in [-1, 1] + usable pixel mask (B, F, H, W) -> shaping.

    Latents come from the backbone's own encoder (the built-in fold is exact; SVD's VAE is
    sampled with the SNS generator, so runs are repeatable). The mask is reduced to latent cells
    conservatively (a cell is usable only if all its pixels are); for a backbone with a VAE
    (``model.vae``), whose encoder mixes neighbouring cells, cells within ``latent_margin`` of an
    unusable one are dropped too.
    """
    gen = sns_generator(seed)
    device = next(model.parameters()).device
    z_prev = model.encode_video(preview.to(device), generator=gen)
    h, w = preview.shape[-2:]
    f = latent_factor(model, h, w)
    margin = int(latent_margin) if getattr(model, "vae", None) is not None else 0
    m = latent_mask(usable.bool(), f, margin)
    return NoiseShaping(z_prev, m[:, :, None].float(), float(t_threshold), gen)
