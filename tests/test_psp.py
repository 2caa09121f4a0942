"""Structure reconstructor (PAPER.md sec. 2): style counts and pSp's grouping, the map2style
heads, the IR blocks against their equations, each loss term against a hand-computed value,
the frozen generator through training steps, and the composite outside the hole."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from faceinpaint.config import StructureLoss, load_config
from faceinpaint.losses import valid_hole_l1
from faceinpaint.psp import (
    INPUT_CHANNELS,
    IR50_BLOCKS,
    IR_WIDTHS,
    STRUCTURE_LOSS_WEIGHTS,
    BottleneckIR,
    GradualStyleEncoder,
    IRBackbone,
    MapToStyle,
    SqueezeExcite,
    StructureReconstructor,
    build_structure_reconstructor,
    n_styles,
    structure_loss,
    split_styles,
)
from faceinpaint.stylegan2 import Generator

TINY_BLOCKS, TINY_WIDTHS = (1, 1, 1, 1), (8, 8, 16, 16)


def tiny_generator(size: int = 32, style_dim: int = 16) -> Generator:
    torch.manual_seed(1)
    return Generator(size, style_dim=style_dim, n_mlp=2, channel_multiplier=1, channel_max=16)


def tiny_reconstructor(input_size: int = 32, generator_size: int = 32) -> StructureReconstructor:
    generator = tiny_generator(generator_size)
    torch.manual_seed(2)
    return build_structure_reconstructor(generator, generator.mean_latent(64), input_size,
                                         TINY_BLOCKS, TINY_WIDTHS)


def square_masks(batch: int, size: int) -> Tensor:
    mask = torch.zeros(batch, 1, size, size)
    for n in range(batch):
        top, left = 3 + 2 * n, 5 + n
        mask[n, :, top: top + size // 4, left: left + size // 4] = 1
    return mask


# ---------------------------------------------------------------------------- styles


@pytest.mark.parametrize("resolution, expected", [(32, 8), (64, 10), (256, 14), (1024, 18)])
def test_style_count_and_groups(resolution: int, expected: int) -> None:
    assert n_styles(resolution) == expected == 2 * round(math.log2(resolution)) - 2
    coarse, medium, fine = split_styles(n_styles(resolution))
    assert coarse == [0, 1, 2]
    assert medium == [3, 4, 5, 6]
    assert fine == list(range(7, expected))
    assert coarse + medium + fine == list(range(expected))


@pytest.mark.parametrize("resolution", [32, 64])
def test_style_count_matches_generator(resolution: int) -> None:
    assert n_styles(resolution) == tiny_generator(resolution).n_latent


@pytest.mark.parametrize("bad", [16 + 1, 4, 48])
def test_style_count_rejects_bad_resolution(bad: int) -> None:
    with pytest.raises(ValueError):
        n_styles(bad)


# ---------------------------------------------------------------------------- heads


@pytest.mark.parametrize("spatial", [2, 4, 16, 64])
def test_map2style_convs_and_output(spatial: int) -> None:
    torch.manual_seed(0)
    head = MapToStyle(in_channels=5, style_dim=7, spatial=spatial)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == round(math.log2(spatial))
    assert all(c.stride == (2, 2) and c.kernel_size == (3, 3) for c in convs)
    assert convs[0].in_channels == 5 and all(c.out_channels == 7 for c in convs)
    x = torch.randn(3, 5, spatial, spatial)
    assert head.convs(x).shape == (3, 7, 1, 1)
    style = head(x)
    assert style.shape == (3, 7)
    # The last step is the equalised linear layer on the 1x1 map.
    flat = head.convs(x).flatten(1)
    expected = flat @ (head.linear.weight * head.linear.scale).t() + head.linear.bias
    torch.testing.assert_close(style, expected)
    with pytest.raises(ValueError):
        head(torch.randn(1, 5, spatial * 2, spatial * 2))


@pytest.mark.parametrize("input_size, generator_size", [(32, 32), (64, 64), (256, 256), (256, 1024)])
def test_encoder_head_sizes(input_size: int, generator_size: int) -> None:
    """Coarse heads read the input/16 map, medium input/8, fine input/4 (pSp at 256: 16, 32, 64)."""
    count = n_styles(generator_size)
    encoder = GradualStyleEncoder(input_size, count, 8, TINY_BLOCKS, TINY_WIDTHS)
    coarse, medium, fine = split_styles(count)
    spatial = [head.spatial for head in encoder.styles]
    assert len(spatial) == count
    assert [spatial[i] for i in coarse] == [input_size // 16] * 3
    assert [spatial[i] for i in medium] == [input_size // 8] * 4
    assert [spatial[i] for i in fine] == [input_size // 4] * len(fine)


def test_encoder_pyramid_grouping() -> None:
    """Coarse styles depend on c3 only, medium ones also on c2's lateral, fine ones on both
    laterals: perturbing a lateral conv changes exactly the groups that read it."""
    torch.manual_seed(0)
    encoder = GradualStyleEncoder(64, n_styles(64), 8, TINY_BLOCKS, TINY_WIDTHS).eval()
    x = torch.randn(2, INPUT_CHANNELS, 64, 64)
    coarse, medium, fine = split_styles(n_styles(64))
    with torch.no_grad():
        base = encoder(x)
        assert base.shape == (2, 10, 8)
        encoder.lateral1.bias.add_(1.0)
        after1 = encoder(x)
        encoder.lateral2.bias.add_(1.0)
        after2 = encoder(x)
    assert torch.equal(after1[:, coarse + medium], base[:, coarse + medium])
    assert not torch.allclose(after1[:, fine], base[:, fine])
    assert torch.equal(after2[:, coarse], base[:, coarse])
    assert not torch.allclose(after2[:, medium], after1[:, medium])
    assert not torch.allclose(after2[:, fine], after1[:, fine])


def test_encoder_rejects_wrong_input_size() -> None:
    encoder = GradualStyleEncoder(32, 8, 8, TINY_BLOCKS, TINY_WIDTHS)
    with pytest.raises(ValueError):
        encoder(torch.randn(1, INPUT_CHANNELS, 64, 64))
    with pytest.raises(ValueError):
        GradualStyleEncoder(16, 8, 8, TINY_BLOCKS, TINY_WIDTHS)


# ---------------------------------------------------------------------------- backbone


def test_ir50_layout_matches_psp() -> None:
    """IR-50 has 24 bottlenecks; pSp taps c1, c2, c3 after bottlenecks 6, 20 and 23 (0-based),
    the ends of stages 2, 3 and 4; the stages halve the side four times."""
    ends = [sum(IR50_BLOCKS[: k + 1]) - 1 for k in range(4)]
    assert ends == [2, 6, 20, 23]
    backbone = IRBackbone(IR50_BLOCKS, IR_WIDTHS)
    assert [len(stage) for stage in backbone.stages] == [3, 4, 14, 3]
    # the paper profile trains the IR-50 backbone (params.yaml)
    assert tuple(load_config(profile="paper").structure.backbone_blocks) == IR50_BLOCKS
    assert backbone.stem[0].in_channels == INPUT_CHANNELS == 4
    small = IRBackbone(TINY_BLOCKS, TINY_WIDTHS)
    outputs = small(torch.randn(1, INPUT_CHANNELS, 64, 64))
    assert [tuple(o.shape[1:]) for o in outputs] == [(8, 32, 32), (8, 16, 16), (16, 8, 8), (16, 4, 4)]


def test_squeeze_excite_formula() -> None:
    torch.manual_seed(0)
    se = SqueezeExcite(32)
    x = torch.randn(2, 32, 5, 5)
    squeezed = x.sum((2, 3)) / 25
    hidden = torch.clamp(squeezed @ se.reduce.weight[:, :, 0, 0].t(), min=0)
    gate = 1 / (1 + torch.exp(-(hidden @ se.expand.weight[:, :, 0, 0].t())))
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])


@pytest.mark.parametrize("squeeze_excite", [False, True])
def test_bottleneck_shortcuts(squeeze_excite: bool) -> None:
    """With the residual branch silenced (its last BN scaled to 0), a block is its shortcut:
    pSp's MaxPool2d(1, 2) for equal widths, a strided 1x1 conv + BN otherwise."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8, 8)
    same = BottleneckIR(6, 6, 2, squeeze_excite).eval()
    with torch.no_grad():
        same.residual[4].weight.zero_()
    assert torch.equal(same(x), F.max_pool2d(x, 1, 2))

    wider = BottleneckIR(6, 10, 2, squeeze_excite).eval()
    with torch.no_grad():
        wider.residual[4].weight.zero_()
    conv = wider.shortcut[0].weight[:, :, 0, 0]
    projected = torch.einsum("oc,nchw->nohw", conv, x[:, :, ::2, ::2])
    bn = wider.shortcut[1]
    expected = (projected - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    expected = expected * bn.weight[:, None, None] + bn.bias[:, None, None]
    torch.testing.assert_close(wider(x), expected)
    assert any(isinstance(m, SqueezeExcite) for m in wider.modules()) == squeeze_excite


# ---------------------------------------------------------------------------- loss


class FixedConvDistance(nn.Module):
    """A fixed perceptual distance: mean squared difference of one fixed 3x3 conv's features."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(5)
        self.register_buffer("weight", torch.randn(4, 3, 3, 3, generator=generator))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return (F.conv2d(x, self.weight, padding=1) - F.conv2d(y, self.weight, padding=1)).square().mean((1, 2, 3))


def conv_distance_by_unfold(net: FixedConvDistance, x: Tensor, y: Tensor) -> Tensor:
    """The same distance written as a patch matrix times the flattened kernel."""
    kernel = net.weight.flatten(1)  # 4 x 27
    feats = [kernel @ F.unfold(image, 3, padding=1) for image in (x, y)]  # N x 4 x HW
    return (feats[0] - feats[1]).square().mean((1, 2))


class FixedEmbedder(nn.Module):
    """A fixed identity embedder: a linear projection of the flattened image, L2-normalised."""

    def __init__(self, pixels: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(6)
        self.register_buffer("projection", torch.randn(pixels, 5, generator=generator))

    def raw(self, images: Tensor) -> Tensor:
        return images.flatten(1) @ self.projection

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.raw(images), dim=1)


def tiny_loss_case() -> tuple[Tensor, Tensor, Tensor]:
    """One 3x2x2 image pair; the hole is pixel (0, 1)."""
    target = torch.zeros(1, 3, 2, 2)
    output = torch.tensor([[[[0.5, -0.5], [0.0, 1.0]],
                            [[0.0, 0.25], [0.0, 0.0]],
                            [[-1.0, 0.0], [0.5, 0.0]]]])
    mask = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])
    return output, target, mask


def test_pixel_terms_by_hand() -> None:
    output, target, mask = tiny_loss_case()
    # Squares: 0.25+0.25+0+1 + 0+0.0625+0+0 + 1+0+0.25+0 = 2.8125 over 12 elements.
    # Hole pixel (0, 1): |-0.5| + |0.25| + |0| = 0.75; the other 9 elements sum to 3.0.
    terms = structure_loss(output, target, mask, None, None, {"lpips": 0.0, "id": 0.0})
    assert terms["l2"].item() == pytest.approx(2.8125 / 12)
    assert terms["hole"].item() == pytest.approx(0.75 / 12)
    assert terms["valid"].item() == pytest.approx(3.0 / 12)
    assert terms["lpips"].item() == 0.0 and terms["id"].item() == 0.0
    assert terms["total"].item() == pytest.approx(2.8125 / 12 + 6 * 0.75 / 12 + 3.0 / 12)
    # hole + valid is the plain mean L1 (same normalisation).
    valid, hole = valid_hole_l1(output, target, mask)
    torch.testing.assert_close(valid + hole, (output - target).abs().mean())


def test_all_terms_and_weights() -> None:
    torch.manual_seed(0)
    output = torch.randn(3, 3, 6, 6).clamp(-1, 1).requires_grad_()
    target = torch.randn(3, 3, 6, 6).clamp(-1, 1)
    mask = square_masks(3, 6)
    mask[:, :, 0, 0] = 1
    lpips_net, embedder = FixedConvDistance(), FixedEmbedder(3 * 6 * 6)

    terms = structure_loss(output, target, mask, lpips_net, embedder)
    with torch.no_grad():
        l2 = sum((output - target).square().flatten().tolist()) / output.numel()
        lpips = conv_distance_by_unfold(lpips_net, output, target).mean()
        identity = (1 - F.cosine_similarity(embedder.raw(target), embedder.raw(output), dim=1)).mean()
        diff = (output - target).abs()
        hole = (diff * mask).sum() / diff.numel()
        valid = (diff * (1 - mask)).sum() / diff.numel()
    expected = {"l2": l2, "lpips": lpips, "id": identity, "hole": hole, "valid": valid}
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(float(value), rel=1e-5), name
    total = 1.0 * l2 + 0.8 * lpips + 0.1 * identity + 6.0 * hole + 1.0 * valid
    assert terms["total"].item() == pytest.approx(float(total), rel=1e-5)

    # Weights as a mapping (partial, the rest paper defaults) or as the params object.
    custom = structure_loss(output, target, mask, lpips_net, embedder, {"id": 2.0, "hole": 0.5})
    custom_total = 1.0 * l2 + 0.8 * lpips + 2.0 * identity + 0.5 * hole + 1.0 * valid
    assert custom["total"].item() == pytest.approx(float(custom_total), rel=1e-5)
    from_params = structure_loss(output, target, mask, lpips_net, embedder, StructureLoss())
    assert from_params["total"].item() == pytest.approx(terms["total"].item(), rel=1e-6)
    assert STRUCTURE_LOSS_WEIGHTS == dict(StructureLoss())

    terms["total"].backward()
    assert output.grad is not None and output.grad.abs().sum() > 0


def test_loss_argument_errors() -> None:
    output, target, mask = tiny_loss_case()
    with pytest.raises(ValueError, match="lpips"):
        structure_loss(output, target, mask, None, None, {"id": 0.0})
    with pytest.raises(ValueError, match="unknown"):
        structure_loss(output, target, mask, None, None, {"lpips": 0.0, "id": 0.0, "tv": 1.0})


# ---------------------------------------------------------------------------- reconstructor


def test_generator_frozen_encoder_trained() -> None:
    model = tiny_reconstructor()
    generator_before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    encoder_before = {k: v.clone() for k, v in model.encoder.named_parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.encoder.parameters()}
    assert not trainable & {id(p) for p in model.generator.parameters()}
    assert not any(p.requires_grad for p in model.generator.parameters())

    model.train()
    assert model.encoder.training and not model.generator.training
    optimiser = torch.optim.Adam(model.encoder.parameters(), lr=1e-3)
    torch.manual_seed(3)
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = square_masks(2, 32)
    lpips_net, embedder = FixedConvDistance(), FixedEmbedder(3 * 32 * 32)
    for _ in range(3):
        out = model(image * (1 - mask), mask)
        loss = structure_loss(out["output"], image, mask, lpips_net, embedder)["total"]
        optimiser.zero_grad()
        loss.backward()
        # Gradients reach the encoder through the frozen generator, and stop there.
        assert all(p.grad is None for p in model.generator.parameters())
        assert all(p.grad is not None for p in model.encoder.parameters())
        assert model.encoder.styles[0].linear.weight.grad.abs().sum() > 0
        assert model.encoder.backbone.stem[0].weight.grad.abs().sum() > 0
        optimiser.step()

    generator_after = model.generator.state_dict()
    assert generator_after.keys() == generator_before.keys()
    assert all(torch.equal(generator_after[k], v) for k, v in generator_before.items())
    changed = [not torch.equal(p, encoder_before[k]) for k, p in model.encoder.named_parameters()]
    assert all(changed)
    model.eval()
    assert not model.encoder.training and not model.generator.training


def test_composite_and_codes() -> None:
    model = tiny_reconstructor().eval()
    torch.manual_seed(4)
    image = torch.rand(3, 3, 32, 32) * 2 - 1
    mask = (torch.rand(3, 1, 32, 32) < 0.3).float()
    damaged = image * (1 - mask)
    with torch.no_grad():
        out = model(damaged, mask)
        offsets = model.encoder(torch.cat([damaged, mask], dim=1))
        rendered, _ = model.generator([out["codes"]], input_is_latent=True, randomize_noise=False)
    known = (mask == 0).expand_as(image)
    assert torch.equal(out["composite"][known], image[known])
    assert torch.equal(out["composite"][~known], out["output"][~known])
    assert out["codes"].shape == (3, 8, 16)
    torch.testing.assert_close(out["codes"], offsets + model.latent_avg[None])
    assert torch.equal(out["output"], rendered)
    # Deterministic: stored noise, frozen generator, encoder in eval mode.
    with torch.no_grad():
        assert torch.equal(model(damaged, mask)["output"], out["output"])


def test_generator_larger_than_input_is_pooled() -> None:
    """pSp's setting: a generator larger than the input, its image average-pooled down."""
    model = tiny_reconstructor(input_size=32, generator_size=64).eval()
    assert model.encoder.n_styles == 10
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = square_masks(2, 32)
    with torch.no_grad():
        out = model(image * (1 - mask), mask)
        big, _ = model.generator([out["codes"]], input_is_latent=True, randomize_noise=False)
    assert big.shape[-1] == 64 and out["output"].shape == (2, 3, 32, 32)
    torch.testing.assert_close(out["output"], F.avg_pool2d(big, 2))
    known = (mask == 0).expand_as(image)
    assert torch.equal(out["composite"][known], image[known])


def test_latent_avg_shapes_and_mismatch() -> None:
    generator = tiny_generator()
    encoder = GradualStyleEncoder(32, generator.n_latent, generator.style_dim, TINY_BLOCKS, TINY_WIDTHS)
    for shape in [(16,), (1, 16), (8, 16)]:
        model = StructureReconstructor(encoder, generator, torch.randn(shape))
        assert model.latent_avg.shape == (shape[0] if len(shape) == 2 else 1, 16)
    with pytest.raises(ValueError):
        StructureReconstructor(encoder, generator, torch.randn(2, 16))
    wrong = GradualStyleEncoder(32, 10, 16, TINY_BLOCKS, TINY_WIDTHS)
    with pytest.raises(ValueError):
        StructureReconstructor(wrong, generator, torch.randn(16))


def profile_reconstructor(profile: str) -> tuple[StructureReconstructor, int]:
    """The structure reconstructor of a params.yaml profile (its encoder into its StyleGAN2,
    random weights) and the profile's structure batch size."""
    cfg = load_config(profile=profile)
    g, s = cfg.stylegan, cfg.structure
    torch.manual_seed(0)
    generator = Generator(cfg.resolution, style_dim=g.style_dim, n_mlp=g.n_mlp,
                          channel_multiplier=g.channel_multiplier, channel_max=g.channel_max)
    model = build_structure_reconstructor(generator, generator.mean_latent(256), cfg.resolution,
                                          s.backbone_blocks, s.backbone_widths).train()
    assert model.encoder.n_styles == n_styles(cfg.resolution) == generator.n_latent
    assert [len(stage) for stage in model.encoder.backbone.stages] == list(s.backbone_blocks)
    return model, s.batch_size


@pytest.mark.slow
def test_paper_profile_one_step() -> None:
    """pSp as in the paper profile (IR-SE50, 256x256 input, 14 styles into a 256 StyleGAN2,
    config F): one optimiser step with every loss term, the generator untouched."""
    model, batch = profile_reconstructor("paper")
    size, styles, style_dim = model.encoder.input_size, model.encoder.n_styles, model.encoder.style_dim
    optimiser = torch.optim.Adam(model.encoder.parameters(), lr=1e-3)
    image = torch.rand(batch, 3, size, size) * 2 - 1
    mask = square_masks(batch, size)
    generator_before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    out = model(image * (1 - mask), mask)
    assert out["output"].shape == (batch, 3, size, size) and out["codes"].shape == (batch, styles, style_dim)
    loss = structure_loss(out["output"], image, mask, FixedConvDistance(), FixedEmbedder(3 * size * size))
    optimiser.zero_grad()
    loss["total"].backward()
    optimiser.step()
    assert torch.isfinite(loss["total"])
    assert all(torch.equal(model.generator.state_dict()[k], v) for k, v in generator_before.items())


@pytest.mark.benchmark
def test_bench_cpu_profile_step(benchmark) -> None:
    """One training step of the cpu profile (its resolution, structure batch size, encoder
    blocks and widths, and frozen StyleGAN2, all read from params.yaml); L2 + hole + valid
    only, so the time is the reconstructor's own."""
    model, batch = profile_reconstructor("cpu")
    size = model.encoder.input_size
    optimiser = torch.optim.Adam(model.encoder.parameters(), lr=1e-3)
    image = torch.rand(batch, 3, size, size) * 2 - 1
    mask = square_masks(batch, size)

    def step() -> None:
        out = model(image * (1 - mask), mask)
        loss = structure_loss(out["output"], image, mask, None, None, {"lpips": 0.0, "id": 0.0})
        optimiser.zero_grad()
        loss["total"].backward()
        optimiser.step()

    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
