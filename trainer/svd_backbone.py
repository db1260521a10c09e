"""The pretrained backbone: Stable Video Diffusion (diffusers) with a trainable camera adapter.

The UNet, VAE and CLIP image encoder are frozen; only ``CameraEncoder`` trains. SVD's
``UNetSpatioTemporalConditionModel.forward`` has no residual-injection argument, so the
adapter adds its feature for down block ``i`` through a forward hook on
``down_blocks[i].resnets[-1]``, whose output feeds both the block's transformer and the skip
connection (and the hook keeps working under gradient checkpointing). Zero-initialised
projections leave the base model's output unchanged at step 0.

Parametrisation: SVD was trained with EDM's v-parametrisation, input scaling
``c_in = 1/sqrt(sigma^2+1)`` and ``c_noise = log(sigma)/4``. With a DDPM schedule
(``z_t = a z_0 + s eps``, ``a^2 + s^2 = 1``) and ``sigma = s/a``: the EDM input
``c_in * z_t / a`` equals ``z_t``, and EDM's denoised estimate ``a z_t - s F`` equals DDPM's
``x_0`` from v-prediction, so the UNet's raw output *is* the DDPM velocity. Hence this backbone
takes ``z_t`` unchanged, is fed ``c_noise = log(sigma_t)/4`` instead of the integer step, and
is trained and sampled with diffusers' ``DDPMScheduler``/``DDIMScheduler`` in
``v_prediction`` mode.

Conditioning follows diffusers' ``StableVideoDiffusionPipeline``: the condition latent is the
VAE mode of the noise-augmented image, unscaled; CLIP image embeddings cross-attend;
``added_time_ids = [fps - 1, motion_bucket_id, noise_aug_strength]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.model import CameraEncoder

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class SVDBackbone(nn.Module):
    supported_predictions = ("v_prediction",)

    def __init__(self, unet: nn.Module, vae: nn.Module, image_encoder: nn.Module,
                 cfg: dict[str, Any]):
        super().__init__()
        self.unet, self.vae, self.image_encoder = unet, vae, image_encoder
        for m in (unet, vae, image_encoder):
            m.requires_grad_(False)
        vae.eval()
        image_encoder.eval()
        if cfg.get("gradient_checkpointing"):
            unet.enable_gradient_checkpointing()
        self.fps = float(cfg["fps"])
        self.motion_bucket_id = float(cfg["motion_bucket_id"])
        self.noise_aug = float(cfg["noise_aug_strength"])
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling = float(vae.config.scaling_factor)
        self.latent_channels = int(vae.config.latent_channels)
        outs = [int(c) for c in unet.config.block_out_channels]
        hidden = list(cfg["camera_channels"])[: len(outs)]
        if len(hidden) < len(outs):
            hidden += [hidden[-1]] * (len(outs) - len(hidden))
        self.camera = CameraEncoder(self.vae_factor, hidden, outs)
        self._cam: list[torch.Tensor] | None = None
        for i, blk in enumerate(unet.down_blocks):
            blk.resnets[-1].register_forward_hook(self._make_hook(i))

    @classmethod
    def from_pretrained(cls, cfg: dict[str, Any]) -> SVDBackbone:
        """Hub id (from the local cache only unless ``local_files_only`` is false) or a local
        directory in the diffusers layout (``unet/``, ``vae/``, ``image_encoder/``)."""
        from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
        from transformers import CLIPVisionModelWithProjection

        src = str(cfg["pretrained"])
        kw = {"local_files_only": bool(cfg["local_files_only"])}
        if Path(src).is_dir():
            kw = {}
        unet = UNetSpatioTemporalConditionModel.from_pretrained(src, subfolder="unet", **kw)
        vae = AutoencoderKLTemporalDecoder.from_pretrained(src, subfolder="vae", **kw)
        enc = CLIPVisionModelWithProjection.from_pretrained(
            src, subfolder="image_encoder", trust_remote_code=False, **kw
        )
        return cls(unet, vae, enc, cfg)

    def _make_hook(self, i: int):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
            if self._cam is None:
                return None
            return output + self._cam[i].to(output.dtype)

        return hook

    # -- latents --------------------------------------------------------------------------
    def encode_video(
        self, video: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        b, f = video.shape[:2]
        dist = self.vae.encode(video.flatten(0, 1)).latent_dist
        z = dist.sample(generator=generator) * self.scaling
        return z.view(b, f, *z.shape[1:])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        b, f = z.shape[:2]
        x = self.vae.decode(z.flatten(0, 1) / self.scaling, num_frames=f).sample
        return x.view(b, f, *x.shape[1:]).clamp(-1, 1)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, ...]:
        return (frames, self.latent_channels, height // self.vae_factor, width // self.vae_factor)

    # -- conditioning ---------------------------------------------------------------------
    def condition(
        self, cond_image: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        b = cond_image.shape[0]
        noise = torch.randn(cond_image.shape, generator=generator).to(cond_image)
        latent = self.vae.encode(cond_image + self.noise_aug * noise).latent_dist.mode()
        size = int(self.image_encoder.config.image_size)
        px = F.interpolate(cond_image, size=(size, size), mode="bicubic", align_corners=False,
                           antialias=True)
        px = ((px + 1) / 2).clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN, device=px.device, dtype=px.dtype).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=px.device, dtype=px.dtype).view(1, 3, 1, 1)
        embeds = self.image_encoder((px - mean) / std).image_embeds[:, None]
        time_ids = torch.tensor(
            [[self.fps - 1, self.motion_bucket_id, self.noise_aug]], device=px.device
        ).expand(b, 3)
        return {"latent": latent, "embeds": embeds, "time_ids": time_ids}

    def model_timesteps(self, t: torch.Tensor, scheduler: Any) -> torch.Tensor:
        """DDPM step -> EDM ``c_noise = log(sigma)/4`` with ``sigma = sqrt((1 - abar)/abar)``."""
        abar = scheduler.alphas_cumprod.to(torch.float64)[t.long().cpu()]
        sigma = ((1 - abar) / abar).sqrt()
        return (0.25 * sigma.log()).to(device=t.device, dtype=torch.float32)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.camera.parameters())

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return self.camera.state_dict()

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.camera.load_state_dict(state)

    def train(self, mode: bool = True) -> SVDBackbone:
        super().train(mode)
        self.vae.eval()
        self.image_encoder.eval()
        return self

    def forward(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        cond: dict[str, torch.Tensor],
        plucker: torch.Tensor | None,
        keep_image: torch.Tensor | None = None,
        keep_camera: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, f = z_t.shape[:2]
        latent, embeds = cond["latent"], cond["embeds"]
        if keep_image is not None:
            latent = latent * keep_image.view(-1, 1, 1, 1).to(latent.dtype)
            embeds = embeds * keep_image.view(-1, 1, 1).to(embeds.dtype)
        x = torch.cat([z_t, latent[:, None].expand(-1, f, -1, -1, -1).to(z_t.dtype)], dim=2)
        self._cam = None
        if plucker is not None:
            feats = self.camera(plucker.flatten(0, 1).to(z_t.dtype))
            if keep_camera is not None:
                m = keep_camera.to(z_t.dtype).repeat_interleave(f).view(-1, 1, 1, 1)
                feats = [ft * m for ft in feats]
            self._cam = feats
        try:
            return self.unet(
                x, t, encoder_hidden_states=embeds, added_time_ids=cond["time_ids"]
            ).sample
        finally:
            self._cam = None
