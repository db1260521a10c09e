"""The warp prior's geometry (trainer/warp.py) against answers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import torch

from trainer.plucker import plucker_embedding
from trainer.warp import camera_centres, identity_frame, intrinsics, reproject, warp_condition

H, W = 24, 32
K = torch.tensor([[30.0, 0, 15.0], [0, 28.0, 13.0], [0, 0, 1]], dtype=torch.float64)


def _c2w(yaw_deg: float = 0.0, t=(0.0, 0.0, 0.0)) -> torch.Tensor:
    a = math.radians(yaw_deg)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0],
                              [-math.sin(a), 0, math.cos(a)]], dtype=torch.float64)
    m[:3, 3] = torch.tensor(t, dtype=torch.float64)
    return m


def _plucker(poses: list[torch.Tensor]) -> torch.Tensor:
    c2w = torch.stack(poses)
    return plucker_embedding(K.expand(len(poses), 3, 3), c2w, H, W)[None]


def test_centres_intrinsics_and_condition_frame_are_read_off_the_plucker_maps():
    pl = _plucker([_c2w(5.0, (0.3, -0.1, 0.2)), _c2w(0.0), _c2w(-3.0, (0.0, 0.0, 0.5))])
    c = camera_centres(pl)[0]
    assert torch.allclose(c[0], torch.tensor([0.3, -0.1, 0.2], dtype=c.dtype), atol=1e-9)
    assert torch.allclose(c[2], torch.tensor([0.0, 0.0, 0.5], dtype=c.dtype), atol=1e-9)
    assert int(identity_frame(pl)[0]) == 1
    k = intrinsics(pl[:, 1])[0]
    assert torch.allclose(k, torch.tensor([30.0, 28.0, 15.0, 13.0], dtype=k.dtype), atol=1e-9)


def test_identity_frame_is_found_beside_a_pure_rotation_and_a_pure_translation():
    # frame 0: a 0.5 degree yaw at the origin; frame 2: no rotation, 2 cm to the side
    pl = _plucker([_c2w(0.5), _c2w(0.0, (0.02, 0, 0)), _c2w(0.0), _c2w(0.0, (0.0, 0.0, 0.01))])
    assert int(identity_frame(pl)[0]) == 2


def test_sideways_translation_over_a_plane_shifts_by_f_t_over_z():
    # a plane at z = 2 m, camera moved 0.1 m to +x: a target pixel u sees the condition pixel
    # u + fx * tx / z = u + 30 * 0.1 / 2 = u + 1.5 (rows unchanged)
    pl = _plucker([_c2w(0.0), _c2w(0.0, (0.1, 0.0, 0.0))])
    grid, valid = reproject(pl, torch.full((1, 1, H, W), 2.0, dtype=torch.float64), 3)
    u = (grid[0, 1, ..., 0] + 1) * W / 2
    v = (grid[0, 1, ..., 1] + 1) * H / 2
    u0 = torch.arange(W, dtype=torch.float64) + 0.5
    v0 = torch.arange(H, dtype=torch.float64)[:, None] + 0.5
    assert torch.allclose(u, (u0 + 1.5).expand(H, W), atol=1e-9)
    assert torch.allclose(v, v0.expand(H, W), atol=1e-9)
    assert valid[0, 0].all() and valid[0, 1, 0, :, : W - 2].all()
    assert not valid[0, 1, 0, :, W - 1].any()  # looks past the right edge


def test_forward_motion_over_a_plane_magnifies_about_the_principal_point():
    # moving 0.5 m towards a plane at 2 m: the condition pixel is cx + (u - cx) * (2 - 0.5) / 2
    pl = _plucker([_c2w(0.0), _c2w(0.0, (0.0, 0.0, 0.5))])
    grid, _ = reproject(pl, torch.full((1, 1, H, W), 2.0, dtype=torch.float64), 3)
    u = (grid[0, 1, ..., 0] + 1) * W / 2
    u0 = torch.arange(W, dtype=torch.float64) + 0.5
    assert torch.allclose(u, (15.0 + (u0 - 15.0) * 0.75).expand(H, W), atol=1e-9)


def test_pure_rotation_does_not_depend_on_depth():
    pl = _plucker([_c2w(0.0), _c2w(4.0)])
    g1, _ = reproject(pl, torch.full((1, 1, H, W), 1.0, dtype=torch.float64), 3)
    g2, _ = reproject(pl, torch.rand(1, 1, H, W, dtype=torch.float64) * 5 + 0.5, 3)
    assert torch.allclose(g1, g2, atol=1e-9)
    # yaw of +4 degrees (x right, y down, z forward: the camera turns right). Column 14 (centre
    # u = 14.5, x_n = -0.5 / 30) has the ray (x_n, ., 1) in its camera, (x_n cos a + sin a, .,
    # -x_n sin a + cos a) in the condition camera, so it looks at cx + fx * x' / z'
    a, xn = math.radians(4.0), -0.5 / 30.0
    want = 15.0 + 30.0 * (xn * math.cos(a) + math.sin(a)) / (-xn * math.sin(a) + math.cos(a))
    u = (g1[0, 1, H // 2, :, 0] + 1) * W / 2
    assert abs(float(u[14]) - want) < 1e-9 and want > 16.5  # about 2.1 px to the right


def test_fixed_point_follows_a_depth_step():
    # left half of the condition image at 1 m, right half at 4 m; a 0.2 m sideways move shifts
    # the near half by fx * 0.2 / 1 = 6 px and the far half by 1.5 px
    depth = torch.full((1, 1, H, W), 4.0, dtype=torch.float64)
    depth[..., : W // 2] = 1.0
    pl = _plucker([_c2w(0.0), _c2w(0.0, (0.2, 0.0, 0.0))])
    grid, _ = reproject(pl, depth, 4)
    u = (grid[0, 1, H // 2, :, 0] + 1) * W / 2
    assert abs(float(u[2]) - (2.5 + 6.0)) < 1e-9      # lands in the near half
    assert abs(float(u[20]) - (20.5 + 1.5)) < 1e-9    # lands in the far half


def test_warp_moves_image_content_and_keeps_the_condition_frame():
    img = torch.zeros(1, 3, H, W, dtype=torch.float64)
    img[:, :, :, 10] = 1.0  # a bright column at u = 10.5
    pl = _plucker([_c2w(0.0), _c2w(0.0, (0.2, 0.0, 0.0))])
    out, _ = warp_condition(img, pl, torch.full((1, 1, H, W), 1.0, dtype=torch.float64), 2)
    assert torch.allclose(out[0, 0], img[0])  # the identity frame is the image itself
    # moving +0.2 m at 1 m: content moves 6 px left; the column is now at u = 4.5 (index 4)
    prof = out[0, 1, 0, H // 2].numpy()
    assert int(np.argmax(prof)) == 4 and prof[4] > 0.99


def test_backbone_warp_prior_follows_the_camera_and_falls_back_without_one():
    """With the warp prior the x0 base is the reprojected condition frame; with no camera (an
    all-zero Plücker map: the no-camera arm) or the camera dropped, it is the frame itself."""
    from pipeline.config import load_config
    from trainer.model import BuiltinBackbone

    cfg = load_config([])["train"]["builtin"]
    cfg.update(latent_factor=2, channels=[8, 16], camera_channels=[4, 8], heads=2, temb_dim=16)
    cfg["warp_prior"]["enabled"] = True
    torch.manual_seed(0)
    model = BuiltinBackbone(cfg).eval()
    img = torch.rand(1, 3, H, W) * 2 - 1
    lat = model.condition(img)["latent"]
    pl = _plucker([_c2w(0.0), _c2w(3.0, (0.2, 0.0, 0.1))]).float()
    moved, valid = model.warped_condition(lat, pl, None, 2)
    assert torch.allclose(moved[:, 0], lat, atol=1e-5)  # the condition frame stays put
    assert (moved[:, 1] - lat).abs().mean() > 0.05  # the other frame moved
    assert valid.shape == (1, 2, 4, H // 2, W // 2)
    assert bool((valid[:, 0] == 1).all())  # the condition frame sees itself everywhere
    same, same_valid = model.warped_condition(lat, torch.zeros_like(pl), None, 2)
    assert torch.equal(same, lat[:, None].expand_as(same))
    assert bool((same_valid == 1).all())
    dropped, _ = model.warped_condition(lat, pl, torch.zeros(1), 2)
    assert torch.equal(dropped, lat[:, None].expand_as(dropped))
    # the untrained network adds nothing (zero-initialised output): x0 = the warp exactly
    z = torch.randn(1, 2, *lat.shape[1:])
    out = model(z, torch.tensor([500]), {"latent": lat}, pl)
    assert torch.allclose(out, moved, atol=1e-6)


def test_mask_input_tells_the_denoiser_where_the_warp_left_the_image():
    """``warp_prior.mask_input``: a 10-degree yaw leaves a band of the new view outside the
    condition image; the folded validity mask marks that band 0 (the rest 1), and the denoiser's
    output depends on it (same inputs, mask flipped -> different output)."""
    from pipeline.config import load_config
    from trainer.model import BuiltinBackbone

    cfg = load_config([])["train"]["builtin"]
    cfg.update(latent_factor=2, channels=[8, 16], camera_channels=[4, 8], heads=2, temb_dim=16)
    cfg["warp_prior"].update(enabled=True, mask_input=True)
    torch.manual_seed(0)
    model = BuiltinBackbone(cfg).eval()
    torch.nn.init.normal_(model.denoiser.conv_out.weight, std=0.1)  # not the zero init
    img = torch.rand(1, 3, H, W) * 2 - 1
    lat = model.condition(img)["latent"]
    pl = _plucker([_c2w(0.0), _c2w(10.0)]).float()
    _, valid = model.warped_condition(lat, pl, None, 2)
    # along the middle row (fx = 30, cx = 15) the condition image spans -26.6..29.5 degrees;
    # turned 10 degrees, the pixels whose centre lies past 30 * tan(19.5 deg) + 15 = 25.6 (or
    # before 6.1 on the other side) see past its edge: 6 pixel columns = 3 latent columns
    # (factor 2). Rows nearer the top and bottom lose more (the turned rays also leave it
    # vertically), so the middle latent row is checked.
    cols = valid[0, 1, :, H // 4].amin(dim=0)  # per latent column: all 4 folded pixels valid?
    assert 2 <= int((cols == 0).sum()) <= 4 and int((cols == 1).sum()) >= 12
    assert bool((cols[:1] == 0).all()) != bool((cols[-1:] == 0).all())  # one side only
    z = torch.randn(1, 2, *lat.shape[1:])
    t = torch.tensor([500])
    with torch.no_grad():
        out = model(z, t, {"latent": lat}, pl)
        orig = model.warped_condition
        model.warped_condition = lambda *a: (orig(*a)[0], 1 - orig(*a)[1])
        flipped = model(z, t, {"latent": lat}, pl)
    assert (out - flipped).abs().amax() > 1e-3


def test_enormous_translations_keep_the_sampler_in_range():
    """A written pose 20x (or 1e6x) too large must not overflow the sampler's pixel index: the
    sampling grid stays finite and bounded, and the gradient reaches the depth."""
    pl = _plucker([_c2w(0.0), _c2w(89.0, (1e6, -3e5, 2e5))]).float()
    depth = torch.full((1, 1, H, W), 2.0, requires_grad=True)
    grid, valid = reproject(pl, depth, 3)
    assert torch.isfinite(grid).all() and grid.abs().max() <= 2.0
    assert not valid[0, 1].any()
    img = torch.rand(1, 3, H, W, requires_grad=True)
    out, _ = warp_condition(img, pl, depth, 3)
    out.sum().backward()
    assert torch.isfinite(depth.grad).all() and torch.isfinite(img.grad).all()


def test_reprojection_loss_teaches_the_depth_head_the_depth():
    """``warp_prior.reprojection_weight``: a textured plane 1.2 units away, seen again after a
    0.3-unit sideways step. The untrained head says 2.5 everywhere; the reprojection loss alone
    (its only training signal here) brings it to the plane's depth, and is then near zero. A
    sample without a camera adds no loss."""
    import cv2

    from pipeline.config import load_config
    from trainer.model import BuiltinBackbone

    rng = np.random.default_rng(0)
    tex = cv2.GaussianBlur(rng.uniform(-1, 1, (H, W, 3)).astype(np.float32), (0, 0), 1.5)
    img = torch.from_numpy(tex / np.abs(tex).max()).permute(2, 0, 1)[None]
    pl = _plucker([_c2w(0.0), _c2w(0.0, (0.3, 0.0, 0.0))]).float()
    truth = torch.full((1, 1, H, W), 1.2)
    video, _ = warp_condition(img, pl, truth, 3)  # frame 1: the plane after the step
    cfg = load_config([])["train"]["builtin"]
    cfg.update(latent_factor=2, channels=[8, 16], camera_channels=[4, 8], heads=2, temb_dim=16)
    cfg["warp_prior"].update(enabled=True, reprojection_weight=1.0)
    torch.manual_seed(0)
    model = BuiltinBackbone(cfg).train()
    lat = model.condition(img)["latent"]
    opt = torch.optim.Adam(model.depth_head.parameters(), lr=3e-3)
    for _ in range(150):
        model.warped_condition(lat, pl, None, 2)  # what forward does first
        loss = model.auxiliary_loss(video)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        depth = model.depth_head(img)
    inner = depth[0, 0, 4:-4, 8:-8]  # away from the band the step uncovers
    assert abs(float(inner.median()) - 1.2) < 0.12, float(inner.median())
    assert float(loss.detach()) < 0.02
    model(torch.zeros(1, 2, *lat.shape[1:]), torch.tensor([10]), {"latent": lat},
          torch.zeros_like(pl))
    assert model.auxiliary_loss(video) is None
