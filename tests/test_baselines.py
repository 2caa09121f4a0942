"""PConv and RFR baselines (PAPER.md sec. 5): partial convolution against ordinary convolution,
loop-by-loop sums and max-pooled masks; KCA and feature merging against loops written from the
equations; the loss terms against hand computations; hole pixels never read; pixels outside the
hole kept bit for bit; the mask-polarity adapter; fine-tuning; one optimiser step per profile."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from baselines.losses import (
    LossWeights,
    dilated_total_variation,
    gram_matrix,
    inpainting_loss,
    perceptual_l1,
    style_l1,
)
from baselines.pconv import PartialConv2d, PConvInpainter, encoder_widths, unet_depth
from baselines.rfr import AttentionState, KnowledgeConsistentAttention, RFRInpainter, merge_features
from faceinpaint.config import load_config
from faceinpaint.losses import valid_hole_l1



def profile_widths(profile: str, kind: str) -> tuple[int, int, int]:
    """(resolution, base_width, recurrences) of ``kind`` (``pconv`` / ``rfr``) in a profile of
    params.yaml (recurrences: RFR's, also for PConv, which has none)."""
    cfg = load_config(profile=profile)
    return cfg.resolution, getattr(cfg, kind).base_width, cfg.rfr.recurrences


def square_hole(batch: int, size: int, box: tuple[int, int, int, int]) -> Tensor:
    """``batch x 1 x size x size`` hole = 1 inside ``box = (x0, y0, x1, y1)``."""
    mask = torch.zeros(batch, 1, size, size)
    x0, y0, x1, y1 = box
    mask[..., y0:y1, x0:x1] = 1.0
    return mask


def damaged_batch(batch: int, size: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(image, mask, damaged): random images, one square hole per sample at different places."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    side = size // 4
    corners = [((size // 8 + 3 * k) % (size - side), (size // 3 + 5 * k) % (size - side)) for k in range(batch)]
    mask = torch.cat([square_hole(1, size, (x0, y0, x0 + side, y0 + side)) for x0, y0 in corners])
    return image, mask, image * (1 - mask)


class FixedFeatures(nn.Module):
    """A frozen two-level random feature extractor standing in for the perceptual backbone."""

    def __init__(self, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.first = nn.Conv2d(3, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        with torch.no_grad():
            for conv in (self.first, self.second):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.3)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.1)
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: Tensor) -> list[Tensor]:
        first = F.relu(self.first(images))
        return [first, F.relu(self.second(first))]


# ------------------------------------------------------------------- partial convolution


def partial_conv_by_loops(x: Tensor, valid: Tensor, weight: Tensor, bias: Tensor | None,
                          stride: int) -> tuple[Tensor, Tensor]:
    """Liu et al. 2018 eq. 1-2 position by position, in float64; ``valid`` ``N x C_in x H x W``."""
    n, c_in, h, w = x.shape
    c_out, _, k, _ = weight.shape
    pad = (k - 1) // 2
    xp = F.pad(x.double(), (pad,) * 4)
    mp = F.pad(valid.double(), (pad,) * 4)
    h_out, w_out = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    out = torch.zeros(n, c_out, h_out, w_out, dtype=torch.float64)
    new_valid = torch.zeros(n, 1, h_out, w_out, dtype=torch.float64)
    for b, i, j in itertools.product(range(n), range(h_out), range(w_out)):
        xw = xp[b, :, i * stride:i * stride + k, j * stride:j * stride + k]
        mw = mp[b, :, i * stride:i * stride + k, j * stride:j * stride + k]
        count = float(mw.sum())
        if count > 0:
            new_valid[b, 0, i, j] = 1.0
            for o in range(c_out):
                value = float((weight[o].double() * xw * mw).sum()) * (c_in * k * k) / count
                out[b, o, i, j] = value + (float(bias[o]) if bias is not None else 0.0)
    return out, new_valid


@pytest.mark.parametrize("kernel,stride,bias", [(3, 1, True), (5, 2, False), (7, 2, True)])
def test_partial_conv_with_full_mask_is_ordinary_conv_inside(kernel, stride, bias):
    torch.manual_seed(0)
    pconv = PartialConv2d(3, 4, kernel, stride, bias=bias)
    conv = nn.Conv2d(3, 4, kernel, stride, padding=(kernel - 1) // 2, bias=bias)
    conv.load_state_dict(pconv.state_dict())
    x = torch.randn(2, 3, 12, 12)
    out, new_valid = pconv(x, torch.ones(2, 1, 12, 12))
    expected = conv(x)
    pad = (kernel - 1) // 2
    inside = [i for i in range(out.shape[-1]) if i * stride - pad >= 0 and i * stride - pad + kernel <= 12]
    rows = slice(inside[0], inside[-1] + 1)
    torch.testing.assert_close(out[..., rows, rows], expected[..., rows, rows], rtol=1e-5, atol=1e-5)
    assert torch.equal(new_valid, torch.ones_like(new_valid))
    # at the border the zero padding counts as hole: the sum is rescaled by window / count
    reference, _ = partial_conv_by_loops(x, torch.ones(2, 3, 12, 12), pconv.weight.detach(),
                                         pconv.bias.detach() if bias else None, stride)
    torch.testing.assert_close(out.double(), reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[..., 0, 0], expected[..., 0, 0])


def test_partial_conv_matches_the_equation_with_per_channel_masks():
    torch.manual_seed(1)
    pconv = PartialConv2d(3, 2, 3, stride=1)
    x = torch.randn(1, 3, 7, 7)
    valid = (torch.rand(1, 3, 7, 7) > 0.6).float()
    valid[..., :4, :4] = 0.0  # a window with no valid entry at all
    out, new_valid = pconv(x, valid)
    reference, reference_valid = partial_conv_by_loops(x, valid, pconv.weight.detach(), pconv.bias.detach(), 1)
    torch.testing.assert_close(out.double(), reference, rtol=1e-5, atol=1e-6)
    assert torch.equal(new_valid.double(), reference_valid)
    # one location by hand: sum(1) / sum(M) scaling, bias after the scaling
    i, j = 4, 5
    window = (slice(None), slice(i - 1, i + 2), slice(j - 1, j + 2))
    count = valid[0][window].sum()
    assert 0 < count < 27
    by_hand = (pconv.weight[1] * x[0][window] * valid[0][window]).sum() * 27 / count + pconv.bias[1]
    torch.testing.assert_close(out[0, 1, i, j], by_hand.detach(), rtol=1e-5, atol=1e-6)
    # no valid input in the window: exactly 0, and the mask stays 0
    assert out[0, :, 1, 1].eq(0).all() and new_valid[0, 0, 1, 1] == 0


@pytest.mark.parametrize("kernel,stride", [(3, 1), (5, 2), (7, 2), (7, 1)])
def test_mask_update_is_a_max_pool_of_the_channel_union(kernel, stride):
    gen = torch.Generator().manual_seed(kernel + stride)
    valid = (torch.rand(2, 4, 20, 20, generator=gen) > 0.93).float()
    pconv = PartialConv2d(4, 3, kernel, stride)
    _, new_valid = pconv(torch.randn(2, 4, 20, 20), valid)
    pooled = F.max_pool2d(valid.amax(dim=1, keepdim=True), kernel, stride, padding=(kernel - 1) // 2)
    assert torch.equal(new_valid, pooled)
    # the same through a convolution with an all-ones kernel (the paper's mask updater)
    counted = F.conv2d(valid, torch.ones(1, 4, kernel, kernel), stride=stride, padding=(kernel - 1) // 2)
    assert torch.equal(new_valid, (counted > 0).float())
    assert new_valid.mean() > valid.amax(dim=1).mean()  # holes shrank


def test_single_channel_mask_means_the_same_for_every_channel():
    torch.manual_seed(2)
    pconv = PartialConv2d(3, 4, 5, 2)
    x = torch.randn(2, 3, 12, 12)
    valid = (torch.rand(2, 1, 12, 12) > 0.5).float()
    one, m_one = pconv(x, valid)
    three, m_three = pconv(x, valid.expand(-1, 3, -1, -1).contiguous())
    torch.testing.assert_close(one, three, rtol=0, atol=1e-6)
    assert torch.equal(m_one, m_three)
    with pytest.raises(ValueError, match="channels"):
        pconv(x, valid.expand(-1, 2, -1, -1))


# ------------------------------------------------------------------------------ layouts


def test_pconv_levels_reach_two_by_two():
    assert [unet_depth(r) for r in (32, 64, 256, 512, 1024)] == [4, 5, 7, 8, 8]
    assert encoder_widths(8, 64) == (64, 128, 256, 512, 512, 512, 512, 512)  # Liu et al. at 512
    with pytest.raises(ValueError):
        unet_depth(48)


@pytest.mark.parametrize("resolution", [32, 64])
def test_rfr_attention_map_is_an_eighth_of_the_image(resolution):
    recurrences = 2
    model = RFRInpainter(resolution, 8, recurrences).eval()
    sizes = []
    model.net.reasoning.attention.register_forward_hook(lambda mod, inp, out: sizes.append(inp[0].shape[-1]))
    _, mask, damaged = damaged_batch(1, resolution, seed=3)
    with torch.no_grad():
        model(damaged, mask)
    assert sizes == [resolution // 8] * recurrences


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="N x 1 masks"):
        PConvInpainter(32, 8)(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="multiple of 8"):
        RFRInpainter(32, 12)
    with pytest.raises(ValueError, match="resolution"):
        RFRInpainter(24, 8)


# ------------------------------------------------------------------------ KCA and merging


def kca_scores_by_loops(features: Tensor) -> Tensor:
    """``score'[n, s, y, x]`` written from the equations, float64."""
    n, c, h, w = features.shape
    f = features.double()
    scores = torch.zeros(n, h * w, h, w, dtype=torch.float64)
    for b in range(n):
        for y, x in itertools.product(range(h), range(w)):
            logits = torch.zeros(h * w, dtype=torch.float64)
            for s in range(h * w):
                source = f[b, :, s // w, s % w]
                unit = source / source.norm()
                for dy, dx in itertools.product((-1, 0, 1), repeat=2):
                    if 0 <= y + dy < h and 0 <= x + dx < w:
                        logits[s] += float(f[b, :, y + dy, x + dx] @ unit)
            scores[b, :, y, x] = torch.softmax(logits, dim=0)
    return scores


def test_knowledge_consistent_attention_matches_its_equations():
    torch.manual_seed(4)
    kca = KnowledgeConsistentAttention(3)
    with torch.no_grad():
        kca.ratio.fill_(-0.5)  # |ratio| is the weight
    features = torch.randn(2, 3, 4, 4)
    valid = (torch.rand(2, 1, 4, 4) > 0.5).float()
    out, state = kca(features, valid, None)
    fresh = kca_scores_by_loops(features)
    torch.testing.assert_close(state.scores.double(), fresh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(state.scores.sum(1), torch.ones(2, 4, 4))
    assert torch.equal(state.valid, valid)

    unit = features / features.norm(dim=1, keepdim=True)
    attended = torch.einsum("ncs,nsyx->ncyx", unit.flatten(2).double(), fresh)
    expected = kca.combine(torch.cat([attended.float(), features], dim=1))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)

    # next recurrence: where the target was valid before, (prev + r * new) / (1 + r), r = 0.5
    later = torch.randn(2, 3, 4, 4)
    _, blended = kca(later, torch.ones(2, 1, 4, 4), state)
    new = kca_scores_by_loops(later)
    r = 0.5 + 1e-7
    expected_scores = torch.where(valid > 0.5, (fresh + r * new) / (1 + r), new)
    torch.testing.assert_close(blended.scores.double(), expected_scores, rtol=1e-5, atol=1e-7)
    assert isinstance(blended, AttentionState)


def test_feature_merging_averages_the_valid_maps():
    f1, f2, f3 = (torch.full((1, 2, 1, 3), v) for v in (1.0, 4.0, 10.0))
    m1 = torch.tensor([[[[1.0, 0.0, 0.0]]]])
    m2 = torch.tensor([[[[1.0, 1.0, 0.0]]]])
    m3 = torch.tensor([[[[1.0, 1.0, 0.0]]]])
    merged = merge_features([f1, f2, f3], [m1, m2, m3])
    expected = torch.tensor([(1 + 4 + 10) / 3, (4 + 10) / 2, 0.0]).view(1, 1, 1, 3).expand(1, 2, 1, 3)
    torch.testing.assert_close(merged, expected)


# ---------------------------------------------------------------------------- invariants


def build(kind: str, profile: str = "smoke") -> nn.Module:
    resolution, width, recurrences = profile_widths(profile, kind)
    torch.manual_seed(5)
    return PConvInpainter(resolution, width) if kind == "pconv" else RFRInpainter(resolution, width, recurrences)


@pytest.mark.parametrize("kind", ["pconv", "rfr"])
@pytest.mark.parametrize("training", [True, False])
def test_hole_pixels_of_the_input_are_never_read(kind, training):
    model = build(kind).train(training)
    image, mask, damaged = damaged_batch(2, model.resolution, seed=6)
    scribbled = torch.where(mask > 0.5, torch.randn_like(image) * 5, damaged)
    assert not torch.equal(scribbled, damaged)
    with torch.no_grad():
        first, second = model(damaged, mask), model(scribbled, mask)
    assert torch.equal(first["output"], second["output"])


@pytest.mark.parametrize("kind", ["pconv", "rfr"])
def test_composite_keeps_known_pixels_bit_for_bit(kind):
    model = build(kind)
    image, mask, damaged = damaged_batch(2, model.resolution, seed=7)
    result = model(damaged, mask)
    known = (mask < 0.5).expand_as(image)
    assert torch.equal(result["composite"][known], image[known])
    assert torch.equal(result["composite"][~known], result["output"][~known])
    assert not torch.equal(result["output"][known], image[known])  # the raw output is not the input


@pytest.mark.parametrize("kind", ["pconv", "rfr"])
def test_mask_polarity_adapter(kind):
    model = build(kind).eval()
    _, mask, damaged = damaged_batch(2, model.resolution, seed=8)
    with torch.no_grad():
        adapted = model(damaged, mask)["output"]
        direct = model.net(damaged, 1.0 - mask)
        inverted = model(damaged, 1.0 - mask)["output"]
    assert torch.equal(adapted, direct)
    assert (adapted - inverted).abs().max() > 1e-3


# -------------------------------------------------------------------------------- losses


def test_valid_and_hole_l1_by_hand():
    output = torch.tensor([[[[0.5, -1.0], [0.0, 1.0]]]]).expand(1, 3, 2, 2)
    target = torch.tensor([[[[0.0, 0.0], [0.5, 0.5]]]]).expand(1, 3, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    valid, hole = valid_hole_l1(output, target, mask)
    # errors 0.5, 1.0, 0.5, 0.5 in each of 3 channels; 12 elements
    torch.testing.assert_close(valid, torch.tensor(3 * (1.0 + 0.5) / 12))
    torch.testing.assert_close(hole, torch.tensor(3 * (0.5 + 0.5) / 12))


def test_gram_and_style_by_hand():
    torch.manual_seed(9)
    features = torch.randn(2, 3, 2, 4)
    gram = gram_matrix(features)
    for n, a, b in itertools.product(range(2), range(3), range(3)):
        by_hand = sum(float(features[n, a, y, x] * features[n, b, y, x])
                      for y in range(2) for x in range(4)) / (3 * 2 * 4)
        assert abs(float(gram[n, a, b]) - by_hand) < 1e-6
    other = torch.randn(2, 3, 2, 4)
    style = style_l1([features], [other])
    torch.testing.assert_close(style, (gram - gram_matrix(other)).abs().sum() / (2 * 3 * 3))
    torch.testing.assert_close(perceptual_l1([features], [other]), (features - other).abs().sum() / 48)


def test_total_variation_over_the_dilated_hole_by_hand():
    torch.manual_seed(10)
    image = torch.randn(1, 2, 6, 7)
    mask = torch.zeros(1, 1, 6, 7)
    mask[0, 0, 2, 3] = 1.0
    mask[0, 0, 5, 0] = 1.0
    region = {(y + dy, x + dx) for y, x in ((2, 3), (5, 0)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
              if 0 <= y + dy < 6 and 0 <= x + dx < 7}
    total = 0.0
    for y, x in region:
        if (y, x + 1) in region:
            total += float((image[0, :, y, x + 1] - image[0, :, y, x]).abs().sum())
        if (y + 1, x) in region:
            total += float((image[0, :, y + 1, x] - image[0, :, y, x]).abs().sum())
    torch.testing.assert_close(dilated_total_variation(image, mask), torch.tensor(total / image.numel()))


def test_inpainting_loss_terms_and_weights():
    torch.manual_seed(11)
    target = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = square_hole(2, 8, (2, 2, 5, 6))
    output = (target + 0.3 * torch.randn(2, 3, 8, 8)).requires_grad_(True)
    composite = torch.where(mask > 0.5, output, target)
    net = FixedFeatures()
    net.name = "vgg16"  # the papers' backbone: features enter unscaled
    weights = LossWeights(valid=2.0, hole=3.0, perceptual=0.5, style=7.0, tv=0.25)
    terms = inpainting_loss(output, composite, target, mask, net, weights)
    check_loss_terms(terms, output, composite, target, mask, net, weights, scale=False)


def test_substitute_backbone_features_are_scaled_by_the_target_rms():
    torch.manual_seed(12)
    target = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = square_hole(2, 8, (1, 1, 4, 5))
    output = (target + 0.3 * torch.randn(2, 3, 8, 8)).requires_grad_(True)
    composite = torch.where(mask > 0.5, output, target)
    net = FixedFeatures()
    net.name = "efficientnet_lite0"
    weights = LossWeights()
    terms = inpainting_loss(output, composite, target, mask, net, weights)
    check_loss_terms(terms, output, composite, target, mask, net, weights, scale=True)


def check_loss_terms(terms, output, composite, target, mask, net, weights, scale):
    feats_out, feats_comp, feats_gt = net(output), net(composite), net(target)
    if scale:
        rms = [float(t.pow(2).mean().sqrt()) for t in feats_gt]
        feats_out, feats_comp, feats_gt = ([f / r for f, r in zip(fs, rms)] for fs in (feats_out, feats_comp, feats_gt))
    expected = {
        "valid": ((output - target).abs() * (1 - mask)).sum() / output.numel(),
        "hole": ((output - target).abs() * mask).sum() / output.numel(),
        "perceptual": sum((a - b).abs().mean() for feats in (feats_out, feats_comp)
                          for a, b in zip(feats, feats_gt)),
        "style": sum((gram_matrix(a) - gram_matrix(b)).abs().mean() for feats in (feats_out, feats_comp)
                     for a, b in zip(feats, feats_gt)),
        "tv": dilated_total_variation(composite, mask),
    }
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, rtol=1e-5, atol=1e-7, msg=name)
    total = sum(getattr(weights, name) * value for name, value in expected.items())
    torch.testing.assert_close(terms["total"], total, rtol=1e-5, atol=1e-7)
    terms["total"].backward()
    assert output.grad is not None and output.grad.abs().sum() > 0
    assert LossWeights() == LossWeights(valid=1.0, hole=6.0, perceptual=0.05, style=120.0, tv=0.1)


# ---------------------------------------------------------------------------- fine-tuning


def test_pconv_finetune_freezes_encoder_batch_norm_only():
    model = build("pconv").train()
    model.set_finetune(True)
    encoder_norms = model.net.encoder_batch_norms()
    decoder_norms = [b.norm for b in model.net.decoder if b.norm is not None]
    assert encoder_norms and decoder_norms
    model.train()  # the loop's recipe may call train() again; the encoder norms must stay frozen
    assert all(not n.training and not n.weight.requires_grad for n in encoder_norms)
    assert all(n.training and n.weight.requires_grad for n in decoder_norms)
    before = [n.running_mean.clone() for n in encoder_norms]
    _, mask, damaged = damaged_batch(2, model.resolution, seed=12)
    model(damaged, mask)["output"].square().mean().backward()
    assert all(torch.equal(b, n.running_mean) for b, n in zip(before, encoder_norms))
    assert all(n.weight.grad is None for n in encoder_norms)
    model.set_finetune(False)
    assert all(n.training and n.weight.requires_grad for n in encoder_norms)


def test_rfr_finetune_uses_running_statistics_everywhere():
    model = build("rfr").train()
    model.set_finetune(True)
    model.train()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not n.training for n in norms)
    assert all(p.requires_grad for p in model.parameters())
    assert any(m.training for m in model.modules() if not isinstance(m, nn.BatchNorm2d))


# ------------------------------------------------------------------------ optimiser step


def one_step(kind: str, resolution: int, width: int, recurrences: int, batch: int) -> None:
    torch.manual_seed(13)
    model = (PConvInpainter(resolution, width) if kind == "pconv"
             else RFRInpainter(resolution, width, recurrences)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    image, mask, damaged = damaged_batch(batch, resolution, seed=14)
    result = model(damaged, mask)
    assert result["output"].shape == image.shape
    terms = inpainting_loss(result["output"], result["composite"], image, mask, FixedFeatures())
    assert all(torch.isfinite(v) for v in terms.values())
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    terms["total"].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    optimizer.step()
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert changed == len(before)


@pytest.mark.parametrize("kind", ["pconv", "rfr"])
@pytest.mark.parametrize("profile", ["smoke", "cpu"])
def test_one_optimiser_step_at_profile_resolutions(kind, profile):
    one_step(kind, *profile_widths(profile, kind), batch=2 if profile == "smoke" else 1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pconv", "rfr"])
def test_one_optimiser_step_at_paper_resolution(kind):
    one_step(kind, *profile_widths("paper", kind), batch=1)


def test_vgg16_perceptual_layers_of_the_baselines_are_pool1_to_pool3():
    import torchvision

    from baselines.losses import feature_scales
    from baselines.recipes import PoolFeatures
    from faceinpaint.pretrained.feature_nets import VGG16Features

    torch.manual_seed(0)
    vgg = VGG16Features(torchvision.models.vgg16(weights=None).features)  # random weights: layout only
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    pools = PoolFeatures(vgg)(images)
    # torchvision's own pool layers (indices 4, 9, 16) applied along the real network
    x = ((images + 1) / 2 - vgg.mean) / vgg.std
    expected = []
    for index, layer in enumerate(vgg.features):
        x = layer(x)
        if index in (4, 9, 16):
            expected.append(x)
    assert [p.shape for p in pools] == [e.shape for e in expected]
    assert all(torch.allclose(p, e) for p, e in zip(pools, expected))
    assert all(float(s) == 1.0 for s in feature_scales(PoolFeatures(vgg), pools))  # VGG: the papers' weights unscaled
