"""StyleGAN2 (faceinpaint.stylegan2) against references written here from the equations.

The references compute the StyleGAN2 layers the textbook way: per-sample modulated and
demodulated weights in a grouped convolution, and FIR up/down-sampling as explicit
zero-stuffing, zero-padding and a sum of shifted, kernel-weighted copies (upfirdn). The
paddings are rosinality's (``stylegan2-pytorch/model.py``), whose checkpoints must work.
"""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from torch.nn import functional as F

from faceinpaint.stylegan2 import (
    CheckpointError,
    ConvLayer,
    Discriminator,
    Generator,
    ModulatedConv2d,
    ResBlock,
    ToRGB,
    channel_widths,
    d_logistic_loss,
    d_r1_loss,
    g_nonsaturating_loss,
    g_path_regularize,
    generator_from_checkpoint,
    load_rosinality_checkpoint,
    load_state_strict,
    make_noise,
    mixing_noise,
)

SQRT2 = math.sqrt(2)


# ---------------------------------------------------------------------------- references


def fir_kernel(taps) -> torch.Tensor:
    k = torch.tensor(taps, dtype=torch.float32)
    k = torch.outer(k, k)
    return k / k.sum()


def upfirdn2d_explicit(x: torch.Tensor, kernel: torch.Tensor, up: int = 1,
                       pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Zero-stuff by ``up``, zero-pad by ``pad`` (before, after), then a true 2-D
    convolution with ``kernel`` written as a sum of shifted copies."""
    n, c, h, w = x.shape
    stuffed = x.new_zeros(n, c, h * up, w * up)
    stuffed[:, :, ::up, ::up] = x
    padded = F.pad(stuffed, (pad[0], pad[1], pad[0], pad[1]))
    kh, kw = kernel.shape
    out_h, out_w = padded.shape[2] - kh + 1, padded.shape[3] - kw + 1
    out = torch.zeros(n, c, out_h, out_w)
    for i in range(kh):
        for j in range(kw):
            out += kernel[kh - 1 - i, kw - 1 - j] * padded[:, :, i:i + out_h, j:j + out_w]
    return out


def style_vector(conv: ModulatedConv2d, style: torch.Tensor) -> torch.Tensor:
    """s = A(w): equalised linear layer, bias initialised to 1."""
    mod = conv.modulation
    return style @ (mod.weight / math.sqrt(mod.weight.shape[1])).t() + mod.bias


def modulated_conv_grouped(conv: ModulatedConv2d, x: torch.Tensor, style: torch.Tensor,
                           taps=(1, 3, 3, 1)) -> torch.Tensor:
    """StyleGAN2 eq. 1-3: w'_{n,o,i,k} = w_{o,i,k} s_{n,i} / sqrt(fan_in), demodulated per
    (n, o), applied as one convolution with groups = batch."""
    n, cin, h, w = x.shape
    weight = conv.weight[0]
    cout, _, k, _ = weight.shape
    per_sample = weight[None] * style_vector(conv, style)[:, None, :, None, None]
    per_sample = per_sample / math.sqrt(cin * k * k)
    if conv.demodulate:
        per_sample = per_sample / torch.sqrt(
            per_sample.square().sum((2, 3, 4), keepdim=True) + 1e-8)
    grouped_x = x.reshape(1, n * cin, h, w)
    if conv.upsample:
        # transposed conv takes (in, out) weights; rosinality's blur pads after it
        weight_t = per_sample.transpose(1, 2).reshape(n * cin, cout, k, k)
        out = F.conv_transpose2d(grouped_x, weight_t, stride=2, groups=n)
        out = out.reshape(n, cout, out.shape[2], out.shape[3])
        excess = (len(taps) - 2) - (k - 1)
        pad = ((excess + 1) // 2 + 1, excess // 2 + 1)
        return upfirdn2d_explicit(out, fir_kernel(taps) * 4, pad=pad)
    out = F.conv2d(grouped_x, per_sample.reshape(n * cout, cin, k, k), padding=k // 2, groups=n)
    return out.reshape(n, cout, h, w)


def randomise_(module: torch.nn.Module) -> None:
    """Non-trivial values for parameters that start at 0 or 1 (biases, noise strengths)."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias") or name.endswith("noise.weight"):
                param.copy_(torch.randn_like(param))


# ------------------------------------------------------------------- modulated convolution


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 1)], ids=["k4", "k3"])
@pytest.mark.parametrize("upsample", [False, True], ids=["same", "up"])
@pytest.mark.parametrize("demodulate", [True, False], ids=["demod", "nodemod"])
def test_modulated_conv_equals_grouped_reference(demodulate, upsample, taps, channels_last):
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, 3, style_dim=7, demodulate=demodulate, upsample=upsample,
                           blur_kernel=taps)
    randomise_(conv)
    x = torch.randn(3, 6, 8, 8)
    style = torch.randn(3, 7)
    expected = modulated_conv_grouped(conv, x, style, taps)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = conv(x, style)
    assert out.shape == ((3, 5, 16, 16) if upsample else (3, 5, 8, 8))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 1)], ids=["k4", "k3"])
def test_to_rgb_equals_reference_with_upsampled_skip(taps):
    torch.manual_seed(1)
    to_rgb = ToRGB(6, style_dim=7, blur_kernel=taps)
    randomise_(to_rgb)
    x, style, skip = torch.randn(2, 6, 8, 8), torch.randn(2, 7), torch.randn(2, 3, 4, 4)
    # rosinality's Upsample: up=2, kernel * factor^2, pad ((p+1)//2 + 1, p//2), p = K - 2
    excess = len(taps) - 2
    expected = (modulated_conv_grouped(to_rgb.conv, x, style) + to_rgb.bias
                + upfirdn2d_explicit(skip, fir_kernel(taps) * 4, up=2,
                                     pad=((excess + 1) // 2 + 1, excess // 2)))
    assert not to_rgb.conv.demodulate
    torch.testing.assert_close(to_rgb(x, style, skip), expected, atol=1e-5, rtol=0)


def test_upsampled_constant_stays_constant_inside():
    """The FIR upsampler preserves brightness: a constant map stays constant away from the
    zero-padded border (kernel normalised to 1, times factor^2 for the zero-stuffing)."""
    to_rgb = ToRGB(4, style_dim=4)
    up = to_rgb.upsample(torch.full((1, 3, 6, 6), 2.5))
    assert up.shape == (1, 3, 12, 12)
    torch.testing.assert_close(up[:, :, 2:-2, 2:-2], torch.full((1, 3, 8, 8), 2.5))


# -------------------------------------------------------------------------- discriminator


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 1)], ids=["k4", "k3"])
def test_downsampling_conv_layer_equals_blur_then_strided_conv(taps):
    torch.manual_seed(2)
    layer = ConvLayer(5, 6, 3, downsample=True, blur_kernel=taps)
    randomise_(layer)
    x = torch.randn(2, 5, 8, 8)
    excess = (len(taps) - 2) + 2  # rosinality: p = (K - factor) + (kernel_size - 1)
    blurred = upfirdn2d_explicit(x, fir_kernel(taps), pad=((excess + 1) // 2, excess // 2))
    conv = layer[1]
    expected = F.conv2d(blurred, conv.weight / math.sqrt(5 * 9), stride=2)
    expected = F.leaky_relu(expected + layer[2].bias.view(1, -1, 1, 1), 0.2) * SQRT2
    out = layer(x)
    assert out.shape == (2, 6, 4, 4)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_res_block_equals_reference():
    torch.manual_seed(3)
    block = ResBlock(4, 6)
    randomise_(block)
    x = torch.randn(2, 4, 8, 8)

    def layer(conv, bias, inp, downsample):
        if downsample:
            k = conv.weight.shape[-1]
            excess = 2 + (k - 1)
            inp = upfirdn2d_explicit(inp, fir_kernel((1, 3, 3, 1)),
                                     pad=((excess + 1) // 2, excess // 2))
        fan_in = conv.weight[0].numel()
        out = F.conv2d(inp, conv.weight / math.sqrt(fan_in), stride=2 if downsample else 1,
                       padding=0 if downsample else conv.weight.shape[-1] // 2)
        return out if bias is None else F.leaky_relu(out + bias.view(1, -1, 1, 1), 0.2) * SQRT2

    main = layer(block.conv2[1], block.conv2[2].bias,
                 layer(block.conv1[0], block.conv1[1].bias, x, False), True)
    skip = layer(block.skip[1], None, x, True)
    assert block.skip[1].bias is None
    torch.testing.assert_close(block(x), (main + skip) / SQRT2, atol=1e-5, rtol=0)


def test_discriminator_logits_and_stddev_grouping():
    torch.manual_seed(4)
    d = Discriminator(16, channel_max=8)
    x = torch.randn(8, 3, 16, 16)
    out = d(x)
    assert out.shape == (8, 1)
    # Samples n and n + 2 (batch 8, groups of 4 -> 2 groups) share a stddev statistic:
    # swapping two members of one group does not change any logit's value.
    perm = torch.tensor([2, 1, 0, 3, 4, 5, 6, 7])
    torch.testing.assert_close(d(x[perm]), out[perm], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="stddev group"):
        d(torch.randn(6, 3, 16, 16))


# ---------------------------------------------------------------------------- generator


@pytest.mark.parametrize("size", [32, 64, 256, 1024])
def test_n_latent(size):
    g = Generator(size, style_dim=4, n_mlp=1, channel_max=4)
    assert g.n_latent == 2 * int(math.log2(size)) - 2
    # one style per modulated layer: conv1, to_rgb1, then 3 per resolution above 4x4
    n_modulated = sum(isinstance(m, ModulatedConv2d) for m in g.modules())
    assert n_modulated == g.n_latent + (g.n_latent - 2) // 2


def test_channel_widths_follow_rosinality_table_and_cap():
    assert channel_widths(2, 512) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256,
                                      256: 128, 512: 64, 1024: 32}
    assert channel_widths(1, 128) == {r: 128 for r in (4, 8, 16, 32, 64, 128)} | {
        256: 64, 512: 32, 1024: 16}
    with pytest.raises(ValueError):
        Generator(48)
    with pytest.raises(ValueError):
        Discriminator(4)


def test_generator_output_and_noise_modes():
    torch.manual_seed(5)
    g = Generator(16, style_dim=8, n_mlp=2, channel_max=8)
    randomise_(g)
    z = torch.randn(2, 8)
    image, latent = g([z], randomize_noise=False)
    assert image.shape == (2, 3, 16, 16) and latent is None
    assert image.is_contiguous()
    torch.testing.assert_close(g([z], randomize_noise=False)[0], image, rtol=0, atol=0)
    assert not torch.allclose(g([z])[0], image)  # fresh noise (noise strengths are non-zero)
    stored = [getattr(g.noises, f"noise_{i}") for i in range(g.num_layers)]
    torch.testing.assert_close(g([z], noise=stored)[0], image, rtol=0, atol=0)
    assert [n.shape for n in g.make_noise()] == [n.shape for n in stored]


def test_style_mixing_inject_index_and_truncation():
    torch.manual_seed(6)
    g = Generator(32, style_dim=8, n_mlp=2, channel_max=8)
    w1, w2 = torch.randn(3, 8), torch.randn(3, 8)
    for k in (1, 3, g.n_latent - 1):
        _, latent = g([w1, w2], input_is_latent=True, inject_index=k, return_latents=True)
        assert latent.shape == (3, g.n_latent, 8)
        assert torch.equal(latent[:, :k], w1[:, None].expand(3, k, 8))
        assert torch.equal(latent[:, k:], w2[:, None].expand(3, g.n_latent - k, 8))
    # from z: styles go through the mapping network first
    z1, z2 = torch.randn(3, 8), torch.randn(3, 8)
    _, latent = g([z1, z2], inject_index=2, return_latents=True)
    torch.testing.assert_close(latent[:, 0], g.get_latent(z1))
    torch.testing.assert_close(latent[:, -1], g.get_latent(z2))
    # truncation pulls towards the given centre
    centre = torch.randn(1, 8)
    _, latent = g([w1], input_is_latent=True, truncation=0.5, truncation_latent=centre,
                  return_latents=True)
    torch.testing.assert_close(latent, (centre + 0.5 * (w1 - centre))[:, None].expand_as(latent))
    # a W+ code is used as it is
    w_plus = torch.randn(3, g.n_latent, 8)
    _, latent = g([w_plus], input_is_latent=True, return_latents=True)
    assert torch.equal(latent, w_plus)
    assert g.mean_latent(64).shape == (1, 8)


# ---------------------------------------------------------------------------- checkpoints

ROSINALITY_G_KEYS = {  # name: shape, for Generator(32, style_dim=16, n_mlp=2, channel_max=16)
    "style.1.weight": (16, 16), "style.2.bias": (16,), "input.input": (1, 16, 4, 4),
    "conv1.conv.weight": (1, 16, 16, 3, 3), "conv1.conv.modulation.weight": (16, 16),
    "conv1.conv.modulation.bias": (16,), "conv1.noise.weight": (1,),
    "conv1.activate.bias": (16,), "to_rgb1.conv.weight": (1, 3, 16, 1, 1),
    "to_rgb1.bias": (1, 3, 1, 1), "convs.0.conv.blur.kernel": (4, 4),
    "convs.0.noise.weight": (1,), "convs.5.activate.bias": (16,),
    "to_rgbs.2.upsample.kernel": (4, 4), "to_rgbs.2.conv.modulation.weight": (16, 16),
    "noises.noise_0": (1, 1, 4, 4), "noises.noise_6": (1, 1, 32, 32),
}
ROSINALITY_D_KEYS = {  # for Discriminator(32, channel_max=16)
    "convs.0.0.weight": (16, 3, 1, 1), "convs.0.1.bias": (16,),
    "convs.1.conv1.0.weight": (16, 16, 3, 3), "convs.1.conv1.1.bias": (16,),
    "convs.1.conv2.0.kernel": (4, 4), "convs.1.conv2.1.weight": (16, 16, 3, 3),
    "convs.1.conv2.2.bias": (16,), "convs.1.skip.0.kernel": (4, 4),
    "convs.3.skip.1.weight": (16, 16, 1, 1), "final_conv.0.weight": (16, 17, 3, 3),
    "final_conv.1.bias": (16,), "final_linear.0.weight": (16, 256),
    "final_linear.1.weight": (1, 16), "final_linear.1.bias": (1,),
}


def test_state_dict_names_are_rosinality_names():
    g_state = Generator(32, style_dim=16, n_mlp=2, channel_max=16).state_dict()
    d_state = Discriminator(32, channel_max=16).state_dict()
    for state, expected in ((g_state, ROSINALITY_G_KEYS), (d_state, ROSINALITY_D_KEYS)):
        assert {k: tuple(state[k].shape) for k in expected if k in state} == expected
    assert "noises.noise_7" not in g_state and "convs.6.conv.weight" not in g_state
    assert "convs.1.skip.1.bias" not in d_state  # rosinality's skip has no bias
    assert not any(k.startswith("convs.1.conv.blur") for k in g_state)  # no blur without up


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(7)
    g = Generator(32, style_dim=16, n_mlp=2, channel_max=16)
    randomise_(g)
    d = Discriminator(32, channel_max=16)
    path = tmp_path / "sg2.pt"
    torch.save({"g_ema": g.state_dict(), "latent_avg": g.mean_latent(100)[0],
                "g": g.state_dict(), "d": d.state_dict(),
                "args": argparse.Namespace(size=32, channel_multiplier=2)}, path)

    ckpt = load_rosinality_checkpoint(path)
    assert ckpt["latent_avg"].shape == (16,) and ckpt["args"].size == 32
    torch.manual_seed(8)
    loaded = generator_from_checkpoint(ckpt, 32, channel_max=16, style_dim=16, n_mlp=2)
    z = torch.randn(2, 16)
    torch.testing.assert_close(loaded([z], randomize_noise=False)[0],
                               g([z], randomize_noise=False)[0], rtol=0, atol=0)
    from_path = generator_from_checkpoint(path, 32, channel_max=16, style_dim=16, n_mlp=2,
                                          key="g")
    assert all(torch.equal(a, b) for a, b in
               zip(from_path.state_dict().values(), g.state_dict().values()))
    fresh_d = Discriminator(32, channel_max=16)
    load_state_strict(fresh_d, ckpt["d"], "d")
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(fresh_d(x), d(x), rtol=0, atol=0)


def test_checkpoint_errors_name_the_file(tmp_path):
    g = Generator(32, style_dim=16, n_mlp=2, channel_max=16)
    path = tmp_path / "wrong_width.pt"
    torch.save({"g_ema": g.state_dict()}, path)
    assert load_rosinality_checkpoint(path)["latent_avg"] is None
    with pytest.raises(CheckpointError, match="wrong_width.pt.*shape mismatch"):
        generator_from_checkpoint(path, 32, channel_max=8, style_dim=16, n_mlp=2)
    with pytest.raises(CheckpointError, match="missing .*convs.6"):
        generator_from_checkpoint(path, 64, channel_max=16, style_dim=16, n_mlp=2)
    bare = tmp_path / "bare.pt"
    torch.save(g.state_dict(), bare)
    with pytest.raises(CheckpointError, match="bare.pt has no 'g_ema'"):
        load_rosinality_checkpoint(bare)
    with pytest.raises(CheckpointError, match="absent.pt does not exist"):
        load_rosinality_checkpoint(tmp_path / "absent.pt")


# --------------------------------------------------------------------------------- losses


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_logistic_losses_match_softplus_formula():
    real = torch.tensor([[0.5], [-1.0], [2.0]])
    fake = torch.tensor([[0.3], [-0.7], [1.5]])
    expected_d = (sum(softplus(-v) for v in (0.5, -1.0, 2.0)) / 3
                  + sum(softplus(v) for v in (0.3, -0.7, 1.5)) / 3)
    assert d_logistic_loss(real, fake).item() == pytest.approx(expected_d, rel=1e-6)
    expected_g = sum(softplus(-v) for v in (0.3, -0.7, 1.5)) / 3
    assert g_nonsaturating_loss(fake).item() == pytest.approx(expected_g, rel=1e-6)


def test_r1_is_batch_mean_of_squared_gradient_norms():
    torch.manual_seed(9)
    x = torch.randn(3, 2, 2, 2, requires_grad=True)
    pred = 0.5 * x.square().sum((1, 2, 3)) + 2.0  # dD/dx_n = x_n
    penalty = d_r1_loss(pred, x)
    expected = x.detach().square().flatten(1).sum(1).mean()
    torch.testing.assert_close(penalty, expected)
    (grad,) = torch.autograd.grad(penalty, x)  # differentiable: d/dx mean ||x_n||^2
    torch.testing.assert_close(grad, 2 * x.detach() / 3)


def test_path_length_formula():
    torch.manual_seed(10)
    n, n_latent, dim, h, w = 2, 3, 4, 2, 2
    latents = torch.randn(n, n_latent, dim, requires_grad=True)
    # images linear in the latents; the Jacobian plays the generator's weights
    jacobian = torch.randn(3 * h * w, n_latent * dim, requires_grad=True)
    images = (latents.reshape(n, -1) @ jacobian.t()).reshape(n, 3, h, w)
    torch.manual_seed(11)
    penalty, new_mean, lengths = g_path_regularize(images, latents, 0.5, decay=0.1)

    torch.manual_seed(11)  # the same projection y the function drew
    y = torch.randn(n, 3, h, w) / math.sqrt(h * w)
    grads = (y.reshape(n, -1) @ jacobian.detach()).reshape(n, n_latent, dim)  # J^T y
    expected_lengths = grads.square().sum(2).mean(1).sqrt()
    expected_mean = 0.5 + 0.1 * (expected_lengths.mean() - 0.5)
    torch.testing.assert_close(lengths, expected_lengths)
    torch.testing.assert_close(new_mean, expected_mean)
    torch.testing.assert_close(penalty, (expected_lengths - expected_mean).square().mean())
    assert not new_mean.requires_grad and penalty.requires_grad  # trains the weights


def test_noise_helpers():
    assert [t.shape for t in make_noise(5, 7, 3)] == [(5, 7)] * 3
    assert len(mixing_noise(5, 7, prob=0.0)) == 1
    assert len(mixing_noise(5, 7, prob=1.0)) == 2
    torch.manual_seed(12)
    counts = sum(len(mixing_noise(1, 1, prob=0.5)) == 2 for _ in range(400))
    assert 150 < counts < 250
