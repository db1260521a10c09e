"""Inference side of RealCam-I2V: a metric scene from one image, preview rendering along a metric
trajectory, and scene-constrained noise shaping (SNS) in the DDIM sampler.

Why a subpackage of ``trainer``: everything here works in the trainer's conventions (poses
relative to the condition camera in metres, pixel-unit ``K`` with centres at +0.5, videos in
[-1, 1], backbones' latents) and is consumed by ``trainer.sampling``; none of it touches the
pipeline engine (runner, ledger, CLI), so a UI can import it alone.

Modules (public functions are a stable API, documented in each module):

- ``trajectory``: the one trajectory format (JSON), c2w text files, RealEstate10K pose files,
  presets sized from the scene depth, keyframes (SLERP rotation, C1 spline translation).
- ``scene``: metric point cloud from one image + depth + intrinsics; PLY save/load.
- ``render``: batched z-buffered forward splatting, visibility, the k x k edge rule, latent
  masks, PSNR/coverage.
- ``sns``: noise shaping of the DDIM latents by the preview.
- ``preview``: glue used by ``trainer.sampling`` (depth source, preview + QA for a source).
"""
