"""The texture loss's readings (faceinpaint.losses.texture_loss) and the C1 diagnostics
(faceinpaint.diagnostics), each against a computation done another way."""

import copy
import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from faceinpaint.config import ConfigError, TextureLoss, load_config, parse_params
from faceinpaint.diagnostics import (EDGE_RINGS, edge_distance, edge_rings, flat_cosine, masked_inversion,
                                     output_gradient_shares, parameter_gradients, region_psnr, residual_measures,
                                     stage2_residual, inversion_oracle)
from faceinpaint.losses import texture_l1, texture_loss
from faceinpaint.metrics import psnr
from faceinpaint.texture import perceptual_loss, texture_generator_loss


class LinearCritic(nn.Module):
    """f(x, mask) = sum(a * x) per image."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, images, mask):
        return (images * self.a).flatten(1).sum(1)


@pytest.fixture(scope="module")
def perceptual_net():
    from faceinpaint import pretrained
    return pretrained.perceptual_backbone("efficientnet_lite0")


def batch(seed=0, n=3, size=32):
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(n, 3, size, size, generator=gen) * 2 - 1
    output = (target + 0.3 * torch.randn(n, 3, size, size, generator=gen)).requires_grad_(True)
    mask = torch.zeros(n, 1, size, size)
    for i in range(n):
        y, x, s = (int(v) for v in torch.randint(0, size // 2, (3,), generator=gen))
        mask[i, :, y:y + s + 4, x:x + s + 4] = 1
    critic = LinearCritic(torch.randn(3, size, size, generator=gen) * 0.1)
    return output, target, mask, critic


def test_default_reading_is_the_stored_models_loss_bit_for_bit(perceptual_net):
    output, target, mask, critic = batch()
    new = texture_loss(output, target, mask, perceptual_net, critic, TextureLoss())
    (g_new,) = torch.autograd.grad(new["total"], output)
    old = texture_generator_loss(output, target, mask, perceptual_net, critic, 10.0, 1.0, 100.0)
    (g_old,) = torch.autograd.grad(old["total"], output)
    assert all(torch.equal(new[k], old[k]) for k in old)
    assert torch.equal(g_new, g_old)


@pytest.mark.parametrize("region, reduction", [("output", "mean"), ("output", "sum"), ("composite", "mean"),
                                               ("composite", "sum"), ("hole", "mean")])
def test_l1_readings_against_numpy(region, reduction):
    output, target, mask, _ = batch(1)
    o, t, m = output.detach().double().numpy(), target.double().numpy(), mask.double().numpy()
    per_image = []
    for i in range(len(o)):
        err = np.abs(o[i] - t[i])  # 3 x H x W
        if region != "output":
            err = err * m[i]
        if region == "hole":
            per_image.append((err.sum(), 3 * m[i].sum()))
        elif reduction == "sum":
            per_image.append((err.sum(), 1.0))
        else:
            per_image.append((err.sum(), err.size))
    if region == "hole":
        expected = sum(s for s, _ in per_image) / sum(c for _, c in per_image)
    elif reduction == "sum":
        expected = np.mean([s for s, _ in per_image])
    else:
        expected = sum(s for s, _ in per_image) / sum(c for _, c in per_image)
    got = texture_l1(output, target, mask, region, reduction)
    assert float(got.detach()) == pytest.approx(expected, rel=1e-5)


def test_sum_reading_is_the_mean_times_the_element_count():
    output, target, mask, _ = batch(2, n=2, size=16)
    mean, total = texture_l1(output, target, mask, "output", "mean"), texture_l1(output, target, mask, "output", "sum")
    torch.testing.assert_close(total, mean * 3 * 16 * 16)


def test_composite_readings_leave_the_known_pixels_without_gradient(perceptual_net):
    output, target, mask, critic = batch(3)
    w = TextureLoss(l1_region="composite", perceptual_region="composite")
    loss = texture_loss(output, target, mask, perceptual_net, critic, w)
    (grad,) = torch.autograd.grad(loss["total"], output)
    assert grad[(mask > 0.5).expand_as(grad)].abs().sum() > 0
    assert torch.equal(grad[(mask < 0.5).expand_as(grad)], torch.zeros_like(grad[(mask < 0.5).expand_as(grad)]))
    # the perceptual term of the composite reading is the one of the composite built by hand
    by_hand = mask * output.detach() + (1 - mask) * target
    torch.testing.assert_close(loss["perceptual"].detach(), perceptual_loss(perceptual_net, by_hand, target).detach())
    with torch.no_grad():
        adversarial = -(by_hand * critic.a).flatten(1).sum(1).mean()
    torch.testing.assert_close(loss["adversarial"].detach(), adversarial)
    torch.testing.assert_close(loss["total"].detach(), 10 * loss["perceptual"].detach() + adversarial + 100 * loss["l1"].detach())
    # today's reading puts L1 gradient on every pixel
    (g_out,) = torch.autograd.grad(texture_l1(output, target, mask), output)
    assert (g_out != 0).all()


def test_config_rejects_readings_that_are_not_one(tmp_path):
    raw = yaml.safe_load(open("params.yaml"))
    bad = copy.deepcopy(raw)
    bad["losses"]["texture"].update(l1_region="hole", l1_reduction="sum")
    with pytest.raises(ConfigError, match="losses.texture.*composite"):
        parse_params(bad)
    bad = copy.deepcopy(raw)
    bad["losses"]["texture"]["l1_region"] = "edge"
    with pytest.raises(ConfigError, match="losses.texture.l1_region"):
        parse_params(bad)
    bad = copy.deepcopy(raw)
    bad["profiles"]["cpu"]["diagnostics"]["inversion_steps"] = [100, 50]
    with pytest.raises(ConfigError, match="inversion_steps"):
        parse_params(bad)


# ------------------------------------------------------------------------------ diagnostics


def brute_force_distance(hole):
    """Chebyshev distance of every hole pixel to every known pixel, minimised: a double loop."""
    known = np.argwhere(~hole)
    out = np.zeros(hole.shape, dtype=np.int64)
    for y, x in np.argwhere(hole):
        out[y, x] = np.max(np.abs(known - [y, x]), axis=1).min()
    return out


def test_edge_distance_against_brute_force():
    rng = np.random.default_rng(0)
    holes = [np.zeros((20, 20), bool) for _ in range(3)]
    holes[0][3:15, 5:17] = True                         # a square
    holes[1] = rng.random((20, 20)) < 0.55              # scattered pixels
    holes[2][0:9, 0:6] = True                           # touching the image's border
    holes[2][12:19, 10:20] = True
    for hole in holes:
        got = edge_distance(hole)
        np.testing.assert_array_equal(got, brute_force_distance(hole))
        rings = edge_rings(hole)
        np.testing.assert_array_equal(rings, np.minimum(brute_force_distance(hole), EDGE_RINGS[-1]))
    with pytest.raises(ValueError, match="whole image"):
        edge_distance(np.ones((4, 4), bool))


def test_region_psnr_by_hand_and_against_the_metric():
    gen = torch.Generator().manual_seed(4)
    target = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1
    pred = (target + 0.2 * torch.randn(2, 3, 16, 16, generator=gen)).clamp(-1.2, 1.2)
    region = torch.zeros(2, 1, 16, 16)
    region[:, :, 4:9, 2:12] = 1
    p = (pred.double().clamp(-1, 1).numpy() + 1) / 2
    t = (target.double().numpy() + 1) / 2
    sel = region.numpy().astype(bool).repeat(3, 1)
    by_hand = [10 * np.log10(1 / np.mean((p[i][sel[i]] - t[i][sel[i]]) ** 2)) for i in range(2)]
    np.testing.assert_allclose(region_psnr(pred, target, region), by_hand, rtol=1e-10)
    np.testing.assert_allclose(region_psnr(pred, target, torch.ones_like(region)), psnr(pred, target), rtol=1e-6)


def test_residual_measures_of_a_half_correction():
    gen = torch.Generator().manual_seed(5)
    image = torch.rand(4, 3, 16, 16, generator=gen) * 1.6 - 0.8
    stage1 = image + 0.1 * torch.randn(4, 3, 16, 16, generator=gen)
    ours = stage1 + 0.5 * (image - stage1)              # halves the error everywhere: +6.02 dB
    mask = torch.zeros(4, 1, 16, 16)
    mask[:, :, 3:12, 4:13] = 1
    r = residual_measures(image, mask, stage1, ours)
    gain = np.array(r["per_image"]["hole_psnr_ours"]) - np.array(r["per_image"]["hole_psnr_stage1"])
    np.testing.assert_allclose(gain, 20 * np.log10(2), atol=1e-3)
    assert r["hole_pixels_improved_share"] == 1.0 and r["hole_pixels_damaged_share"] == 0.0
    assert r["residual_cosine_with_target_minus_stage1"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert r["ours_below_stage1_share"] == 0.0
    counts = {k: v["pixels"] for k, v in r["hole_psnr_by_edge_distance"].items()}
    # a 9 x 9 square: rings of 32, 24, 16 pixels and 9 inside
    assert counts == {"1px": 4 * 32, "2px": 4 * 24, "3px": 4 * 16, "4px_or_more": 4 * 9}


def test_output_gradient_shares_against_gradients_by_hand():
    gen = torch.Generator().manual_seed(6)
    target = torch.randn(2, 3, 8, 8, generator=gen)
    output = torch.randn(2, 3, 8, 8, generator=gen).requires_grad_(True)
    c = torch.randn(2, 3, 8, 8, generator=gen)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 2:5] = 1
    terms = {"linear": (c * output).sum() * 0.5, "l1": 100 * (output - target).abs().mean()}
    got = output_gradient_shares(terms, output, mask)
    hole = mask.expand_as(output) > 0.5
    grads = {"linear": 0.5 * c, "l1": 100 * torch.sign(output.detach() - target) / output.numel()}
    for region, sel in (("hole", hole), ("outside", ~hole)):
        norms = {k: float(g[sel].norm()) for k, g in grads.items()}
        for k in grads:
            assert got[k][f"{region}_norm"] == pytest.approx(norms[k], rel=1e-5)
            assert got[k][f"{region}_share"] == pytest.approx(norms[k] / sum(norms.values()), rel=1e-5)


def test_parameter_gradients_and_their_cosine_against_gradients_by_hand():
    gen = torch.Generator().manual_seed(7)
    w1, w2 = nn.Parameter(torch.randn(5, generator=gen)), nn.Parameter(torch.randn(2, 3, generator=gen))
    a1, a2 = torch.randn(5, generator=gen), torch.randn(2, 3, generator=gen)
    b1 = torch.randn(5, generator=gen)
    terms = {"a": (a1 * w1).sum() + (a2 * w2).sum(), "b": (b1 * w1).sum() * 3}
    g = parameter_gradients(terms, [w1, w2])
    torch.testing.assert_close(g["a"], torch.cat([a1, a2.flatten()]))
    torch.testing.assert_close(g["b"], torch.cat([3 * b1, torch.zeros(6)]))
    expected = float(a1 @ (3 * b1)) / (float(torch.cat([a1, a2.flatten()]).norm()) * float((3 * b1).norm()))
    assert flat_cosine(g["a"], g["b"]) == pytest.approx(expected, rel=1e-6)


def tiny_reconstructor(size=32):
    from faceinpaint.psp import build_structure_reconstructor
    from faceinpaint.stylegan2 import Generator

    torch.manual_seed(0)
    g = Generator(size, 32, 1, channel_multiplier=1, channel_max=16)
    return build_structure_reconstructor(g, torch.zeros(32), size, (1, 1, 1, 1), (16, 16, 32, 32)).eval()


def test_masked_inversion_lowers_the_known_pixel_loss_and_leaves_the_prior_frozen():
    recon = tiny_reconstructor()
    before = {k: v.clone() for k, v in recon.state_dict().items()}
    gen = torch.Generator().manual_seed(8)
    image = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:20, 10:22] = 1
    inv = masked_inversion(recon, image, mask, (3, 10), lr=0.01)
    assert sorted(inv["outputs"]) == [0, 3, 10]
    assert inv["losses"][-1] < inv["losses"][0]
    # the known-pixel loss recomputed from the outputs: the encoder's output gives the first value
    known = 1 - mask
    first = float((((inv["outputs"][0] - image) * known).square().sum((1, 2, 3)) / (3 * known.sum((1, 2, 3)))).sum())
    assert inv["losses"][0] == pytest.approx(first, rel=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in recon.state_dict().items())
    assert all(p.grad is None for p in recon.parameters())
    # the hole's pixels do not enter the objective: other content there, same trajectory
    other = torch.where(mask > 0.5, -image, image)
    inv2 = masked_inversion(recon, other, mask, (3, 10), lr=0.01)
    assert inv2["losses"] == inv["losses"]


def test_off_for_the_smoke_profile(tmp_path):
    cfg = load_config("params.yaml", "smoke")
    for run, name in ((stage2_residual, "stage2_residual"), (inversion_oracle, "inversion_oracle")):
        paths = run(cfg, tmp_path)
        doc = json.loads(paths["json"].read_text())
        assert "off" in doc and doc["profile"] == "smoke"
        assert paths["png"].stat().st_size > 0 and paths["json"].name == f"{name}.json"


def test_diagnose_command_writes_the_off_note_for_smoke(tmp_path):
    from click.testing import CliRunner

    from faceinpaint.cli import cli

    for name in ("stage2-residual", "inversion-oracle"):
        result = CliRunner().invoke(cli, ["diagnose", name, "--profile", "smoke", "--out", str(tmp_path)])
        assert result.exit_code == 0, result.output
        doc = json.loads((tmp_path / f"{name.replace('-', '_')}.json").read_text())
        assert doc["off"].startswith("off for the smoke profile")
