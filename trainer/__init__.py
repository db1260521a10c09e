"""Camera-conditioned image-to-video diffusion trained on the curated metric-scale dataset.

Modules: ``data`` (dataset over curated shards), ``plucker`` (ray embedding), ``model``
(built-in denoiser + camera encoder), ``svd_backbone`` (Stable Video Diffusion + camera
adapter), ``loop`` (training with checkpoint/resume), ``ray_train`` (multi-worker through
Ray Train), ``sampling`` (DDIM to mp4).
"""
