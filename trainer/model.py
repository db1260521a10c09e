"""The built-in backbone: a compact space-time denoiser and the camera encoder shared with the
SVD path.

"Latents" of the built-in path are the pixels themselves folded by a fixed, lossless
space-to-depth (``pixel_unshuffle`` by ``latent_factor``): no autoencoder to train or download,
exact decoding, and a 16x16 grid at 32x32 pixels (factor 2) or 32x32 at 256x256 (factor 8).

Conditioning, as in CamI2V/RealCam-I2V: the condition frame's latent is concatenated to every
frame's noisy latent (channel-wise), and the camera encoder turns each frame's Plücker map into
one feature map per denoiser resolution, added after that level's ResBlock through zero-
initialised 1x1 projections, so an untrained camera branch leaves the denoiser unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from trainer.warp import warp_condition


def _groups(ch: int) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if ch % g == 0 and ch // g >= 2 or g == 1:
            return g
    return 1


def zero_module(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class CameraEncoder(nn.Module):
    """Plücker maps (N, 6, H, W) at pixel resolution -> one feature per level.

    Level 0 sits at ``H / in_factor``; each next level halves the resolution. Projections are
    zero-initialised, which is what lets a pretrained backbone start exactly where it was.
    """

    def __init__(self, in_factor: int, hidden: list[int], out_channels: list[int]):
        super().__init__()
        assert len(hidden) == len(out_channels)
        self.in_factor = int(in_factor)
        c_in = 6 * self.in_factor**2
        self.stem = nn.Sequential(
            nn.Conv2d(c_in, hidden[0], 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden[0], hidden[0], 3, padding=1), nn.SiLU(),
        )
        self.levels = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.proj = nn.ModuleList()
        for i, (h, o) in enumerate(zip(hidden, out_channels)):
            prev = hidden[i - 1] if i else hidden[0]
            self.downs.append(
                nn.Identity() if i == 0 else nn.Conv2d(prev, h, 3, stride=2, padding=1)
            )
            self.levels.append(nn.Sequential(nn.Conv2d(h, h, 3, padding=1), nn.SiLU()))
            self.proj.append(zero_module(nn.Conv2d(h, o, 1)))

    def forward(self, plucker: torch.Tensor) -> list[torch.Tensor]:
        x = F.pixel_unshuffle(plucker, self.in_factor) if self.in_factor > 1 else plucker
        x = self.stem(x)
        feats = []
        for down, level, proj in zip(self.downs, self.levels, self.proj):
            x = level(down(x))
            feats.append(proj(x))
        return feats


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, temb: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(temb, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class TemporalAttention(nn.Module):
    """Self-attention across frames at every pixel (tokens = frames), residual."""

    def __init__(self, ch: int, heads: int, max_frames: int = 64):
        super().__init__()
        self.norm = nn.LayerNorm(ch)
        self.attn = nn.MultiheadAttention(ch, heads, batch_first=True)
        pos = torch.arange(max_frames)[:, None] * torch.exp(
            -math.log(10000.0) * torch.arange(0, ch, 2)[None] / ch
        )
        pe = torch.zeros(max_frames, ch)
        pe[:, 0::2] = torch.sin(pos)
        pe[:, 1::2] = torch.cos(pos[:, : ch // 2])
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        bf, c, h, w = x.shape
        b = bf // frames
        t = x.view(b, frames, c, h, w).permute(0, 3, 4, 1, 2).reshape(b * h * w, frames, c)
        q = self.norm(t) + self.pe[:frames].to(t.dtype)
        out, _ = self.attn(q, q, q, need_weights=False)
        t = t + out
        return t.view(b, h, w, frames, c).permute(0, 3, 4, 1, 2).reshape(bf, c, h, w)


class SpaceTimeDenoiser(nn.Module):
    """A small U-Net over (B, F, C, h, w): ResBlocks + temporal attention per level."""

    def __init__(self, latent_channels: int, channels: list[int], heads: int, temb_dim: int,
                 n_inputs: int = 2, extra_channels: int = 0):
        super().__init__()
        self.channels = list(channels)
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(channels[0], temb_dim)
        # n_inputs latents per frame, stacked on channels: the noisy one, the condition frame's
        # and (with the warp prior) the condition frame reprojected to this frame; then
        # ``extra_channels`` more (the warp's validity mask, folded)
        self.conv_in = nn.Conv2d(n_inputs * latent_channels + extra_channels, channels[0], 3,
                                 padding=1)
        self.down_res = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = channels[0]
        for i, ch in enumerate(channels):
            self.down_res.append(ResBlock(prev, ch, temb_dim))
            self.down_attn.append(TemporalAttention(ch, heads))
            last = i == len(channels) - 1
            self.downsample.append(
                nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1)
            )
            prev = ch
        self.mid_res = ResBlock(prev, prev, temb_dim)
        self.mid_attn = TemporalAttention(prev, heads)
        self.up_res = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        for ch in reversed(channels):
            self.up_res.append(ResBlock(prev + ch, ch, temb_dim))
            self.up_attn.append(TemporalAttention(ch, heads))
            prev = ch
        self.norm_out = nn.GroupNorm(_groups(prev), prev)
        self.conv_out = nn.Conv2d(prev, latent_channels, 3, padding=1)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        cam_feats: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        b, f, c2, h, w = x.shape
        t = timesteps.reshape(-1).repeat_interleave(f)
        temb = self.time_embed(self.time_proj(t).to(x.dtype))
        hcur = self.conv_in(x.reshape(b * f, c2, h, w))
        skips = []
        n = len(self.channels)
        for i in range(n):
            hcur = self.down_res[i](hcur, temb)
            if cam_feats is not None:
                hcur = hcur + cam_feats[i].to(hcur.dtype)
            hcur = self.down_attn[i](hcur, f)
            skips.append(hcur)
            hcur = self.downsample[i](hcur)
        hcur = self.mid_attn(self.mid_res(hcur, temb), f)
        for j in range(n):
            skip = skips[n - 1 - j]
            if hcur.shape[-2:] != skip.shape[-2:]:
                hcur = F.interpolate(hcur, size=skip.shape[-2:], mode="nearest")
            hcur = self.up_res[j](torch.cat([hcur, skip], dim=1), temb)
            hcur = self.up_attn[j](hcur, f)
        out = self.conv_out(F.silu(self.norm_out(hcur)))
        return out.view(b, f, -1, h, w)


#: the depth head's output range (natural log of the poses' units): wide enough for metric rooms
#: and for relative poses written up to thousands of times too large or small, narrow enough
#: that exp() stays far from float32 overflow
LOG_DEPTH_MIN, LOG_DEPTH_MAX = math.log(1e-4), math.log(1e5)


class DepthHead(nn.Module):
    """Condition image (B, 3, H, W) in [-1, 1] -> z-depth (B, 1, H, W) in the poses' units.

    A small encoder-decoder with a global (image-mean) feature, since how far a room's walls are
    is a property of the whole view. The last layer is zero-initialised, so an untrained head
    predicts ``init_depth`` everywhere: a fronto-parallel plane, with which the warp already
    moves the view the right way and the training only has to learn the shape and the scale.
    """

    def __init__(self, channels: list[int], init_depth: float):
        super().__init__()
        c0, c1 = int(channels[0]), int(channels[1])
        self.enc0 = nn.Sequential(nn.Conv2d(3, c0, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(c0, c0, 3, padding=1), nn.SiLU())
        self.enc1 = nn.Sequential(nn.Conv2d(c0, c1, 3, stride=2, padding=1), nn.SiLU(),
                                  nn.Conv2d(c1, c1, 3, padding=1), nn.SiLU())
        self.glob = nn.Linear(c1, c1)
        self.dec = nn.Sequential(nn.Conv2d(c0 + c1, c0, 3, padding=1), nn.SiLU())
        self.out = zero_module(nn.Conv2d(c0, 1, 3, padding=1))
        self.log_init = math.log(float(init_depth))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(image)
        e1 = self.enc1(e0)
        e1 = e1 + self.glob(e1.mean(dim=(-2, -1)))[:, :, None, None]
        up = F.interpolate(e1, size=e0.shape[-2:], mode="bilinear", align_corners=False)
        log_depth = self.out(self.dec(torch.cat([e0, up], dim=1))) + self.log_init
        return torch.exp(log_depth.clamp(LOG_DEPTH_MIN, LOG_DEPTH_MAX))


class BuiltinBackbone(nn.Module):
    """Pixel-space (space-to-depth) latents + ``SpaceTimeDenoiser`` + ``CameraEncoder``.

    Every backbone exposes: ``encode_video``, ``condition``, ``forward``, ``decode``,
    ``trainable_parameters``, ``model_timesteps`` and ``latent_shape``.
    """

    supported_predictions = ("epsilon", "v_prediction", "sample")

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.factor = int(cfg["latent_factor"])
        self.latent_channels = 3 * self.factor**2
        channels = list(cfg["channels"])
        # the geometric prior: the condition frame reprojected along each frame's camera with a
        # learned depth (trainer.warp); the denoiser refines that warp instead of the plain
        # condition frame
        warp = cfg.get("warp_prior") or {}
        self.warp = bool(warp.get("enabled", False))
        self.warp_mask = self.warp and bool(warp.get("mask_input", False))
        self.denoiser = SpaceTimeDenoiser(
            self.latent_channels, channels, int(cfg["heads"]), int(cfg["temb_dim"]),
            n_inputs=3 if self.warp else 2,
            extra_channels=self.factor**2 if self.warp_mask else 0,
        )
        if self.warp:
            self.depth_head = DepthHead(list(warp["depth_channels"]), float(warp["init_depth"]))
            self.warp_iterations = int(warp["iterations"])
        self.reprojection_weight = (float(warp.get("reprojection_weight", 0.0)) if self.warp
                                    else 0.0)
        # the last training forward's warp in pixels (warped, valid, has camera), for
        # ``auxiliary_loss``; None outside training
        self._last_warp: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.camera = CameraEncoder(self.factor, list(cfg["camera_channels"]), channels)
        # x0 prediction as the condition frame plus a learned change: a model that has learnt
        # nothing yet already returns the condition image in every frame, so training time goes
        # into how the view changes with the camera rather than into copying the image
        self.residual = bool(cfg.get("residual_to_condition", False)) or self.warp
        if self.residual:
            zero_module(self.denoiser.conv_out)

    # -- latents --------------------------------------------------------------------------
    def encode_video(
        self, video: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        b, f = video.shape[:2]
        z = F.pixel_unshuffle(video.flatten(0, 1), self.factor) if self.factor > 1 else (
            video.flatten(0, 1))
        return z.view(b, f, *z.shape[1:])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        b, f = z.shape[:2]
        x = F.pixel_shuffle(z.flatten(0, 1), self.factor) if self.factor > 1 else z.flatten(0, 1)
        return x.view(b, f, *x.shape[1:]).clamp(-1, 1)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, ...]:
        return (frames, self.latent_channels, height // self.factor, width // self.factor)

    # -- conditioning ---------------------------------------------------------------------
    def condition(
        self, cond_image: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> what ``forward`` needs of the condition frame."""
        return {"latent": self.encode_video(cond_image[:, None])[:, 0]}

    def model_timesteps(self, t: torch.Tensor, scheduler: Any) -> torch.Tensor:
        return t

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return self.state_dict()

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)

    def forward(
        self,
        z_t: torch.Tensor,
        t: torch.Tensor,
        cond: dict[str, torch.Tensor],
        plucker: torch.Tensor | None,
        keep_image: torch.Tensor | None = None,
        keep_camera: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``keep_*`` (B,) float masks implement condition dropout (0 = dropped)."""
        b, f = z_t.shape[:2]
        c = cond["latent"]
        base, valid = (self.warped_condition(c, plucker, keep_camera, f) if self.warp
                       else (None, None))
        if keep_image is not None:
            c = c * keep_image.view(-1, 1, 1, 1).to(c.dtype)
        inputs = [z_t, c[:, None].expand(-1, f, -1, -1, -1)]
        if base is not None:
            shown = base
            if keep_image is not None:
                shown = base * keep_image.view(-1, 1, 1, 1, 1).to(base.dtype)
            inputs.append(shown)
            if self.warp_mask:
                inputs.append(valid.to(z_t.dtype))
        x = torch.cat(inputs, dim=2)
        feats = None
        if plucker is not None:
            feats = self.camera(plucker.flatten(0, 1).to(z_t.dtype))
            if keep_camera is not None:
                m = keep_camera.to(z_t.dtype).repeat_interleave(f).view(-1, 1, 1, 1)
                feats = [ft * m for ft in feats]
        out = self.denoiser(x, t, feats)
        if base is not None:
            return out + base
        if self.residual:
            out = out + cond["latent"][:, None]
        return out

    def auxiliary_loss(self, video: torch.Tensor) -> torch.Tensor | None:
        """The photometric reprojection loss of the last training forward, times its weight:
        mean |warped condition frame - frame| over the pixels where the warp is valid, samples
        with a camera only. ``video`` (B, F, 3, H, W) in [-1, 1]. None when off or when that
        forward had no camera to warp along."""
        last, self._last_warp = self._last_warp, None
        if last is None:
            return None
        warped, valid, has = last
        mask = valid * has.view(-1, 1, 1, 1, 1).to(valid.dtype)
        err = (warped - video.to(warped.dtype)).abs() * mask
        return self.reprojection_weight * err.sum() / (3 * mask.sum()).clamp(min=1.0)

    def warped_condition(self, cond_latent: torch.Tensor, plucker: torch.Tensor | None,
                         keep_camera: torch.Tensor | None, frames: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F, C, h, w) latents of the condition frame seen from each frame's camera, and
        where that view is valid (B, F, f*f, h, w), folded like the latents.

        Samples without a camera (an all-zero Plücker map: the no-camera arm; or camera
        dropout) get the condition frame unchanged in every frame, valid everywhere."""
        image = F.pixel_shuffle(cond_latent, self.factor) if self.factor > 1 else cond_latent
        same = cond_latent[:, None].expand(-1, frames, -1, -1, -1)
        b, _, _, h, w = same.shape
        all_valid = same.new_ones(b, frames, self.factor**2, h, w)
        if plucker is None:
            return same, all_valid
        pl = plucker.to(cond_latent.dtype)
        has = pl.flatten(1).abs().amax(dim=1) > 0
        if keep_camera is not None:
            has = has & (keep_camera > 0)
        if not bool(has.any()):
            return same, all_valid
        # samples without a camera borrow a valid map so that no NaN enters the graph, and
        # are then replaced by the unwarped frame
        donor = int(torch.nonzero(has)[0, 0])
        pl = torch.where(has.view(-1, 1, 1, 1, 1), pl, pl[donor: donor + 1])
        depth = self.depth_head(image)
        warped, valid = warp_condition(image, pl, depth, self.warp_iterations)
        if self.training and self.reprojection_weight > 0:
            self._last_warp = (warped, valid, has)
        z = self.encode_video(warped)
        keep = has.view(-1, 1, 1, 1, 1)
        return (torch.where(keep, z, same),
                torch.where(keep, self.encode_video(valid.to(z.dtype)), all_valid))
