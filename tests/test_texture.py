"""Texture generator (PAPER.md sec. 3): attention against a loop-by-loop reference written from
the paper's equations, gated convolution against two plain convolutions, composites, the
WGAN-GP penalty against a closed form, and one optimiser step at every profile resolution."""

from __future__ import annotations

import math
import time
import zlib

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from faceinpaint.config import load_config
from faceinpaint.texture import (
    GatedConv2d,
    MultiLevelAttention,
    TextureCritic,
    TextureGenerator,
    compute_attention,
    gradient_penalty,
    hole_cells,
    level_sizes,
    level_strides,
    level_widths,
    perceptual_loss,
    texture_generator_loss,
    transfer_attention,
    wgan_critic_loss,
    wgan_generator_loss,
)

FULL, SINGLE = (4, 5, 6), (6,)
SCALE = 10.0
EPS = 1e-4


# ------------------------------------------------------------------------------ masks


def square_mask(size: int, box: tuple[int, int, int, int]) -> Tensor:
    mask = torch.zeros(1, 1, size, size)
    x0, y0, x1, y1 = box
    mask[..., y0:y1, x0:x1] = 1
    return mask


def make_masks(kind: str, batch: int, size: int, gen: torch.Generator) -> Tensor:
    """``batch`` masks of one kind at random places (hole = 1)."""
    masks = []
    for _ in range(batch):
        if kind == "square":
            side = int(torch.randint(size // 8, size // 4 + 1, (), generator=gen))
            x0, y0 = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=gen))
            masks.append(square_mask(size, (x0, y0, x0 + side, y0 + side)))
        elif kind == "two_squares":
            side = size // 6
            x0, y0 = (int(v) for v in torch.randint(0, size // 2 - side + 1, (2,), generator=gen))
            x1, y1 = (int(v) for v in torch.randint(size // 2, size - side + 1, (2,), generator=gen))
            masks.append(torch.maximum(square_mask(size, (x0, y0, x0 + side, y0 + side)),
                                       square_mask(size, (x1, y1, x1 + side, y1 + side))))
        elif kind == "irregular":  # thresholded smooth noise: blobs not aligned with cells
            noise = F.interpolate(torch.rand(1, 1, 6, 6, generator=gen), size=(size, size),
                                  mode="bilinear", align_corners=False)
            masks.append((noise > 0.72).float())
        else:
            raise ValueError(kind)
    return torch.cat(masks)


# ---------------------------------------------------------- reference, from the equations


def cell_is_hole(mask: Tensor, h: int, w: int) -> list[list[bool]]:
    """Cell (y, x) of an h x w level covers pixels [y*H/h, (y+1)*H/h) x ...; it is a hole when
    any of them is."""
    height, width = mask.shape
    ch, cw = height // h, width // w
    return [[bool(mask[y * ch:(y + 1) * ch, x * cw:(x + 1) * cw].any()) for x in range(w)]
            for y in range(h)]


def reference_transfer(maps: list[Tensor], mask: Tensor, score_level: dict[int, int]) -> list[Tensor]:
    """PAPER.md sec. 3 with explicit loops over samples, hole patches j and known patches i
    (1x1 patches at level l; block j of level t covers the image region of cell j), in float64:
    c_ij = <p_i/|p_i|, p_j/|p_j|>, s_ij = exp(10 c_ij) / sum_i' exp(10 c_i'j),
    p_j^t = sum_i s_ij p_i^t, pasted on the hole cells of level t only."""
    maps = [m.double() for m in maps]
    outputs = []
    for target in (1, 2, 3):
        out = maps[target - 1].clone()
        for n in range(mask.shape[0]):
            source = maps[score_level[target] - 1][n]
            h, w = source.shape[1:]
            holes = cell_is_hole(mask[n, 0], h, w)
            known = [(y, x) for y in range(h) for x in range(w) if not holes[y][x]]
            hole = [(y, x) for y in range(h) for x in range(w) if holes[y][x]]
            if not known:
                continue
            features = maps[target - 1][n]
            height, width = features.shape[1:]
            rh, rw = height // h, width // w
            target_holes = cell_is_hole(mask[n, 0], height, width)
            for yj, xj in hole:
                p_j = source[:, yj, xj]
                u_j = p_j / max(p_j.norm().item(), EPS)
                cosines = []
                for yi, xi in known:
                    p_i = source[:, yi, xi]
                    cosines.append(float(u_j @ (p_i / max(p_i.norm().item(), EPS))))
                top = max(cosines)
                exps = [math.exp(SCALE * (c - top)) for c in cosines]
                total = sum(exps)
                block = torch.zeros(features.shape[0], rh, rw, dtype=torch.float64)
                for (yi, xi), e in zip(known, exps):
                    block += (e / total) * features[:, yi * rh:(yi + 1) * rh, xi * rw:(xi + 1) * rw]
                for a in range(rh):
                    for b in range(rw):
                        if target_holes[yj * rh + a][xj * rw + b]:
                            out[n, :, yj * rh + a, xj * rw + b] = block[:, a, b]
        outputs.append(out)
    return outputs


def random_maps(batch: int, sizes: tuple[int, ...], channels: tuple[int, ...],
                gen: torch.Generator) -> list[Tensor]:
    return [torch.randn(batch, c, s, s, generator=gen) for s, c in zip(sizes, channels)]


# Non-uniform strides (1, 2, 1, 2, 2, 1) on a 32x32 mask: block ratios 8, 4 and 2.
SMALL_SIZES = (32, 16, 16, 8, 4, 4)
SMALL_CHANNELS = (3, 4, 5, 6, 7, 8)


@pytest.mark.parametrize("levels", [FULL, SINGLE], ids=["levels456", "level6"])
@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("kind", ["square", "irregular", "two_squares"])
def test_attention_matches_loop_reference(levels, batch, kind):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{levels}{batch}{kind}".encode()))
    maps = random_maps(batch, SMALL_SIZES, SMALL_CHANNELS, gen)
    mask = make_masks(kind, batch, SMALL_SIZES[0], gen)
    attention = MultiLevelAttention(levels, SCALE)
    assert attention.score_level == ({1: 6, 2: 5, 3: 4} if levels == FULL else {1: 6, 2: 6, 3: 6})
    filled = attention(maps, mask)
    expected = reference_transfer(maps, mask, attention.score_level)
    for got, want in zip(filled, expected, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("levels", [FULL, SINGLE], ids=["levels456", "level6"])
def test_attention_matches_reference_at_generator_geometry(levels):
    """A 64x64 generator's level sizes (64, 64, 32, 16, 8, 4) and two square masks."""
    gen = torch.Generator().manual_seed(7)
    sizes = level_sizes(64)
    maps = random_maps(2, sizes, (4, 4, 6, 8, 8, 8), gen)
    mask = torch.cat([square_mask(64, (10, 20, 18, 28)), square_mask(64, (30, 33, 46, 49))])
    attention = MultiLevelAttention(levels, SCALE)
    for got, want in zip(attention(maps, mask), reference_transfer(maps, mask, attention.score_level)):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


def test_scores_are_a_distribution_over_known_patches():
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(8, 16, 8, 8, generator=gen)
    mask = make_masks("irregular", 8, 64, gen)
    holes = hole_cells(mask, (8, 8))
    attention = compute_attention(features, holes, SCALE)
    hole = holes.flatten(1)
    assert hole.any() and (~hole).any()
    has_known = (~hole).any(1, keepdim=True)
    assert torch.equal(attention.fill, hole & has_known)
    row_sums = attention.scores.sum(2)
    torch.testing.assert_close(row_sums[attention.fill], torch.ones(int(attention.fill.sum())))
    assert torch.all(row_sums[~attention.fill] == 0)  # known patches are not filled
    # a hole patch is never a source: its column is exactly 0
    assert torch.all(attention.scores.masked_select(hole[:, None, :].expand_as(attention.scores)) == 0)
    assert torch.all(attention.scores >= 0)


def test_hole_cells_any_pixel_makes_a_hole():
    mask = torch.zeros(1, 1, 16, 16)
    mask[0, 0, 5, 9] = 1  # one pixel, in cell (1, 2) of a 4x4 grid, cell (0, 1) of 2x2
    assert hole_cells(mask, (4, 4))[0, 0].nonzero().tolist() == [[1, 2]]
    assert hole_cells(mask, (2, 2))[0, 0].nonzero().tolist() == [[0, 1]]
    assert torch.equal(hole_cells(mask, (16, 16)), mask > 0.5)


def test_known_cells_unchanged_and_edge_cases():
    """Known cells bit for bit; a sample without hole and one that is all hole keep their maps
    (no NaN, finite gradients); any batch size in one call."""
    gen = torch.Generator().manual_seed(5)
    sizes = level_sizes(64)
    maps = [m.requires_grad_(True) for m in random_maps(4, sizes, (4, 4, 6, 8, 8, 8), gen)]
    mask = torch.cat([square_mask(64, (20, 20, 36, 36)),
                      torch.zeros(1, 1, 64, 64),                   # no hole
                      torch.ones(1, 1, 64, 64),                    # all hole
                      make_masks("irregular", 1, 64, gen)])
    for levels in (FULL, SINGLE):
        filled = MultiLevelAttention(levels, SCALE)(maps, mask)
        for level, (out, original) in enumerate(zip(filled, maps), start=1):
            assert torch.isfinite(out).all()
            known = ~hole_cells(mask, out.shape[-2:]).expand_as(out)
            assert torch.equal(out[known], original[known]), f"level {level}"
            assert torch.equal(out[1], original[1]) and torch.equal(out[2], original[2])
            assert (out[0] != original[0]).any()
        sum(f.square().sum() for f in filled).backward()
        for m in maps:  # levels 4 and 5 get none with attention from level 6 only
            assert m.grad is None or torch.isfinite(m.grad).all()
            m.grad = None


def test_attention_gradients_reach_the_score_level():
    gen = torch.Generator().manual_seed(11)
    maps = [m.requires_grad_(True) for m in random_maps(2, SMALL_SIZES, SMALL_CHANNELS, gen)]
    mask = make_masks("square", 2, 32, gen)
    filled = MultiLevelAttention(FULL, SCALE)(maps, mask)
    sum((f * torch.randn(f.shape, generator=gen)).sum() for f in filled).backward()
    for level in (1, 2, 3, 4, 5, 6):
        assert maps[level - 1].grad.abs().sum() > 0, f"level {level}"


def test_transfer_rejects_non_integer_blocks():
    attention = compute_attention(torch.randn(1, 2, 3, 3), torch.zeros(1, 1, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="whole number"):
        transfer_attention(torch.randn(1, 2, 8, 8), attention, torch.zeros(1, 1, 8, 8, dtype=torch.bool))


# ------------------------------------------------------------------------- gated conv


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("activate", [True, False])
def test_gated_conv_is_sigmoid_gate_times_elu_feature(stride, activate):
    torch.manual_seed(0)
    layer = GatedConv2d(5, 7, 3, stride, activate=activate)
    x = torch.randn(2, 5, 12, 12, requires_grad=True)
    out = layer(x)
    w_f, w_g = layer.conv.weight[:7], layer.conv.weight[7:]
    b_f, b_g = layer.conv.bias[:7], layer.conv.bias[7:]
    feature = F.conv2d(x, w_f, b_f, stride=stride, padding=1)
    gating = F.conv2d(x, w_g, b_g, stride=stride, padding=1)
    expected = torch.sigmoid(gating) * (F.elu(feature) if activate else feature)
    assert out.shape == (2, 7, 12 // stride, 12 // stride)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    grad = layer.conv.weight.grad
    assert grad[:7].abs().sum() > 0 and grad[7:].abs().sum() > 0  # both branches learn


# -------------------------------------------------------------------------- generator


def test_level_geometry():
    assert level_strides(32) == (1, 1, 1, 2, 2, 2) and level_sizes(32) == (32, 32, 32, 16, 8, 4)
    assert level_strides(64) == (1, 1, 2, 2, 2, 2) and level_sizes(64) == (64, 64, 32, 16, 8, 4)
    assert level_strides(256) == (2,) * 6 and level_sizes(256) == (128, 64, 32, 16, 8, 4)
    assert level_sizes(512) == (256, 128, 64, 32, 16, 8)
    assert level_widths(32, 256) == (32, 64, 128, 256, 256, 256)
    with pytest.raises(ValueError):
        level_strides(48)
    with pytest.raises(ValueError):
        MultiLevelAttention((3, 6))


def make_batch(resolution: int, batch: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, resolution, resolution, generator=gen) * 2 - 1
    mask = make_masks("square", batch, resolution, gen)
    return image, mask, image * (1 - mask)


@pytest.mark.parametrize("levels", [FULL, SINGLE], ids=["levels456", "level6"])
@pytest.mark.parametrize("with_stage1", [False, True], ids=["variant1", "stage1"])
def test_generator_composite_keeps_known_pixels(levels, with_stage1):
    torch.manual_seed(0)
    model = TextureGenerator(32, 8, 32, levels)
    image, mask, damaged = make_batch(32, 3)
    if with_stage1:
        stage1 = torch.rand(3, 3, 32, 32) * 2 - 1
        image_in = torch.where(mask > 0.5, stage1, image)  # the stage-1 composite
        out = model(image_in, mask, stage1)
    else:
        image_in = damaged
        out = model(image_in, mask)
    assert out["output"].shape == image.shape and torch.isfinite(out["output"]).all()
    known = (mask < 0.5).expand_as(image)
    assert torch.equal(out["composite"][known], image_in[known])
    assert torch.equal(out["composite"][~known], out["output"][~known])


def test_generator_sees_damaged_input_and_mask_only():
    """Fed damaged images, two ground truths that differ only in the hole give the same
    result bit for bit; fed a stage-1 composite, the hole content is used."""
    torch.manual_seed(0)
    model = TextureGenerator(32, 8, 32).eval()
    image, mask, damaged = make_batch(32, 2)
    other = torch.where(mask > 0.5, torch.rand_like(image) * 2 - 1, image)
    with torch.no_grad():
        first = model(image * (1 - mask), mask)
        second = model(other * (1 - mask), mask)
        assert torch.equal(first["composite"], second["composite"])
        stage1_a = model(image, mask, image)["composite"]
        stage1_b = model(other, mask, other)["composite"]
    assert not torch.equal(stage1_a, stage1_b)


def test_generator_residual_is_added_to_upsampled_stage1():
    """With the residual switched off (zero feature filters of the output layer) the output is
    the stage-1 result, bilinearly upsampled when it is smaller."""
    torch.manual_seed(0)
    model = TextureGenerator(32, 8, 32)
    with torch.no_grad():
        model.to_rgb[-1].conv.weight[:3].zero_()
        model.to_rgb[-1].conv.bias[:3].zero_()
    image, mask, damaged = make_batch(32, 2)
    stage1 = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        out = model(damaged, mask, stage1)["output"]
        alone = model(damaged, mask)["output"]
    upsampled = F.interpolate(stage1, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, upsampled, rtol=0, atol=1e-6)
    assert torch.equal(alone, damaged)


# ---------------------------------------------------------------------- critic and losses


class LinearCritic(nn.Module):
    """f(x, mask) = sum(a * x) per image: grad_x f = a everywhere."""

    def __init__(self, a: Tensor):
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, images: Tensor, mask: Tensor) -> Tensor:
        return (images * self.a).flatten(1).sum(1)


def test_gradient_penalty_of_a_linear_critic():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 8, 8, generator=gen) * 0.05
    critic = LinearCritic(a)
    real, fake = torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)
    mask = make_masks("square", 4, 8, gen)
    gp = gradient_penalty(critic, real, fake, mask, weight=10.0)
    expected = 10.0 * (a.norm() - 1) ** 2
    torch.testing.assert_close(gp, expected)
    gp.backward()  # d gp / d a = 10 * 2 (|a| - 1) a / |a|
    torch.testing.assert_close(critic.a.grad, 20.0 * (a.norm() - 1) * a / a.norm())


def test_wgan_losses():
    gen = torch.Generator().manual_seed(1)
    critic = LinearCritic(torch.randn(3, 8, 8, generator=gen))
    real, fake = torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)
    mask = make_masks("square", 4, 8, gen)
    losses = wgan_critic_loss(critic, real, fake, mask, gp_weight=10.0)
    d_real, d_fake = critic(real, mask).mean(), critic(fake, mask).mean()
    gp = 10.0 * (critic.a.norm() - 1) ** 2
    torch.testing.assert_close(losses["total"], d_fake - d_real + gp)
    torch.testing.assert_close(losses["gradient_penalty"], gp)
    torch.testing.assert_close(wgan_generator_loss(critic, fake, mask), -d_fake)


@pytest.fixture(scope="module")
def perceptual_net():
    from faceinpaint import pretrained
    return pretrained.perceptual_backbone("efficientnet_lite0")


def test_texture_generator_loss_terms(perceptual_net):
    gen = torch.Generator().manual_seed(2)
    target = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    output = target + 0.3 * torch.randn(2, 3, 32, 32, generator=gen)
    mask = make_masks("square", 2, 32, gen)
    critic = LinearCritic(torch.randn(3, 32, 32, generator=gen))
    losses = texture_generator_loss(output, target, mask, perceptual_net, critic)
    with torch.no_grad():
        l1 = (output - target).abs().mean()
        composite = mask * output + (1 - mask) * target
        adversarial = -(composite * critic.a).flatten(1).sum(1).mean()
        pairs = list(zip(perceptual_net(output), perceptual_net(target)))
        perceptual = sum(((a - b) ** 2).sum() / (b ** 2).sum() for a, b in pairs) / len(pairs)
        assert perceptual_loss(perceptual_net, target, target) == 0
    torch.testing.assert_close(losses["l1"], l1)
    torch.testing.assert_close(losses["adversarial"], adversarial)
    torch.testing.assert_close(losses["perceptual"], perceptual)
    torch.testing.assert_close(losses["total"], 10 * perceptual + adversarial + 100 * l1)


def optimiser_step(profile: str, perceptual_net: nn.Module, levels: tuple[int, ...]) -> None:
    """One critic step and one generator step with Adam (lr 1e-4, paper sec. 5) at a params.yaml
    profile's resolution and texture widths: every parameter that should learn moves, the
    losses are finite."""
    cfg = load_config(profile=profile)
    resolution, p = cfg.resolution, cfg.texture
    base_width, max_width, critic_width = p.base_width, p.max_width, p.critic_width
    torch.manual_seed(0)
    generator = TextureGenerator(resolution, base_width, max_width, levels)
    critic = TextureCritic(resolution, critic_width)
    g_opt = torch.optim.Adam(generator.parameters(), lr=1e-4, betas=(0.5, 0.9))
    d_opt = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.5, 0.9))
    image, mask, damaged = make_batch(resolution, 1)
    g_before = [p.detach().clone() for p in generator.parameters()]
    d_before = [p.detach().clone() for p in critic.parameters()]

    out = generator(damaged, mask)
    d_losses = wgan_critic_loss(critic, image, out["composite"], mask)
    d_opt.zero_grad()
    d_losses["total"].backward()
    d_opt.step()

    critic.requires_grad_(False)
    g_losses = texture_generator_loss(out["output"], image, mask, perceptual_net, critic)
    g_opt.zero_grad()
    g_losses["total"].backward()
    g_opt.step()

    for losses in (d_losses, g_losses):
        assert all(torch.isfinite(v) for v in losses.values()), losses
    assert all(not torch.equal(a, b) for a, b in zip(g_before, generator.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(d_before, critic.parameters()))


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
def test_optimiser_step_small(profile, perceptual_net):
    optimiser_step(profile, perceptual_net, FULL)


@pytest.mark.slow
def test_optimiser_step_paper_256(perceptual_net):
    start = time.perf_counter()
    optimiser_step("paper", perceptual_net, FULL)
    print(f"paper profile widths: one critic + generator step in {time.perf_counter() - start:.1f} s")
