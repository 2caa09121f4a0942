"""StyleGAN2 generator and discriminator (Karras et al. 2020), the prior of the structure
reconstructor (PAPER.md sec. 2 and sec. 8), with its training losses.

Parameter names and shapes are exactly those of rosinality's ``stylegan2-pytorch``
(``model.py``), so its checkpoints (``g_ema``, ``latent_avg``, ``g``, ``d``) load with
``strict=True`` and ours load there. The maths is the same too; only the formulation differs,
chosen to be fast on a CPU in pure PyTorch:

* Modulated convolution scales the *activations* by the style (``x * s`` per input channel),
  applies the one shared weight with an ordinary convolution, and demodulates the *output*
  (``* d`` per output channel, ``d = rsqrt(sum_{i,k} (w * s)^2 + 1e-8)``). This equals the
  per-sample grouped convolution with modulated, demodulated weights (paper eq. 1-3) because
  both scalings are per channel and convolution is linear.
* Up- and downsampling FIR filters ("blur", ``upfirdn2d`` in the reference) are depthwise
  convolutions (``groups = channels``): a depthwise transposed convolution of stride 2 for
  upsampling, a padded depthwise convolution for blurring (before a strided convolution in
  the discriminator, after the stride-2 transposed convolution in the generator), with
  rosinality's paddings.
* The "fused" bias + leaky ReLU is ``leaky_relu(x + b, 0.2) * sqrt(2)`` in plain ops.
* Tensors stay NCHW: channels_last makes oneDNN's forward, transposed and depthwise
  convolutions faster on this CPU but its weight gradient 2.5x slower, a net loss in training.

Measured here (``tests/benchmarks/test_bench_stylegan2.py``; 64x64, width 128, batch 16),
a training step is 2.1x faster than the per-sample grouped formulation on two shared CPU
cores, 2.5x in single-thread CPU time. The dense 3x3 convolutions, which both formulations
must compute, then take about three quarters of the time, so reformulating cannot give
much more.

Widths follow rosinality's table (512 up to 32x32, then ``256 * channel_multiplier`` at
64x64, halving with every further doubling of the resolution), each capped at
``channel_max`` (512 by default, as there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, autograd, nn
from torch.nn import functional as F

from .checkpoint import CheckpointError  # noqa: F401 - one error type for every unusable checkpoint file

LEAKY_SLOPE = 0.2
ACTIVATION_GAIN = math.sqrt(2.0)
DEMODULATION_EPS = 1e-8


def channel_widths(channel_multiplier: int = 2, channel_max: int = 512) -> dict[int, int]:
    """Feature-map width per resolution: rosinality's table, capped at ``channel_max``."""
    widths = {4: 512, 8: 512, 16: 512, 32: 512}
    for log_res in range(6, 11):
        widths[2**log_res] = 2 ** (14 - log_res) * channel_multiplier
    return {res: min(width, channel_max) for res, width in widths.items()}


def _check_size(size: int) -> int:
    if size < 8 or size > 1024 or size & (size - 1):
        raise ValueError(f"size must be a power of two in 8..1024, got {size}")
    return int(math.log2(size))


def make_blur_kernel(taps: Sequence[float]) -> Tensor:
    """2-D FIR kernel: outer product of the 1-D ``taps``, normalised to sum 1."""
    k1 = torch.tensor(list(taps), dtype=torch.float32)
    kernel = k1[None, :] * k1[:, None]
    return kernel / kernel.sum()


# ------------------------------------------------------------------------------ FIR filters


class Blur(nn.Module):
    """Depthwise FIR filter with zero padding ``pad = (before, after)`` on both axes.

    Same as rosinality's ``upfirdn2d(x, kernel, pad=pad)``: a true convolution (kernel
    flipped). The ``kernel`` buffer is part of the state dict, as there;
    ``upsample_factor`` scales it by ``factor**2`` so that blurring a zero-stuffed
    upsampled map keeps its brightness.
    """

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", make_blur_kernel(taps) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        weight = self.kernel.flip((0, 1)).to(x.dtype).expand(channels, 1, *self.kernel.shape)
        before, after = self.pad
        if before == after >= 0:
            return F.conv2d(x, weight, padding=before, groups=channels)
        return F.conv2d(F.pad(x, (before, after, before, after)), weight, groups=channels)


class Upsample(nn.Module):
    """2x upsampling with a FIR filter (rosinality ``Upsample``: ``upfirdn2d(up=2)``).

    Zero-stuffing followed by the filter is a depthwise transposed convolution of stride 2;
    the padding ``(pad0, pad1)`` of the zero-stuffed map becomes a crop of its output.
    """

    factor = 2

    def __init__(self, taps: Sequence[float]):
        super().__init__()
        self.register_buffer("kernel", make_blur_kernel(taps) * self.factor**2)
        excess = len(taps) - self.factor
        self.pad = ((excess + 1) // 2 + self.factor - 1, excess // 2)

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        size = self.kernel.shape[0]
        weight = self.kernel.to(x.dtype).expand(channels, 1, size, size)
        out = F.conv_transpose2d(x, weight, stride=self.factor, groups=channels)
        # Transposed-conv output index m equals upfirdn output index m - (size - 1 - pad0).
        before = self.pad[0] - (size - 1)
        after = self.pad[1] - (size - self.factor)
        return F.pad(out, (before, after, before, after))


# ------------------------------------------------------------------------- basic layers


class PixelNorm(nn.Module):
    """Normalise each latent vector to unit root-mean-square over its channels."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: weight ~ N(0, 1/lr_mul^2), used times
    ``lr_mul / sqrt(in_dim)``; bias used times ``lr_mul``. With ``activation`` the bias is
    followed by leaky ReLU(0.2) times sqrt(2)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        if self.activation:
            out = F.leaky_relu(out, LEAKY_SLOPE) * ACTIVATION_GAIN
        return out


class EqualConv2d(nn.Module):
    """Convolution with equalised learning rate: weight used times ``1/sqrt(fan_in)``."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.stride = stride
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride,
                        padding=self.padding)


class BiasLeakyReLU(nn.Module):
    """Per-channel bias, leaky ReLU(0.2), times sqrt(2) (rosinality's ``FusedLeakyReLU``)."""

    def __init__(self, channel: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))

    def forward(self, x: Tensor) -> Tensor:
        # leaky_relu(x + b) * g == leaky_relu(g * x + g * b) for g > 0: two passes, not three.
        out = torch.add((self.bias * ACTIVATION_GAIN).view(1, -1, 1, 1), x, alpha=ACTIVATION_GAIN)
        return F.leaky_relu_(out, LEAKY_SLOPE)


# ------------------------------------------------------------------------------ generator


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution, StyleGAN2 eq. 1-3 (Karras et al. 2020, sec. 2.2).

    ``w'_{oik} = scale * w_{oik} * s_i`` with ``s = modulation(style)``; with ``demodulate``,
    ``w''_{oik} = w'_{oik} / sqrt(sum_{i,k} w'_{oik}^2 + 1e-8)``. Computed as
    ``conv(x * scale * s, w) * d`` (see the module docstring). With ``upsample`` the
    convolution is transposed with stride 2 and followed by the FIR blur.
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:
            factor = 2
            excess = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((excess + 1) // 2 + factor - 1, excess // 2 + 1),
                             upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(
            torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        s = self.modulation(style) * self.scale  # N x in_channel
        weight = self.weight[0]
        x = x * s[:, :, None, None]
        if self.upsample:
            out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # sum_{i,k} (w_oik s_i)^2 = sum_i s_i^2 * sum_k w_oik^2
            demod = torch.rsqrt(s.square() @ weight.square().sum((2, 3)).t() + DEMODULATION_EPS)
            out = out * demod[:, :, None, None]
        return out


class NoiseInjection(nn.Module):
    """Adds per-pixel Gaussian noise, one map per sample shared by all channels, times a
    learned scalar ``weight`` (initialised to 0)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            batch, _, height, width = x.shape
            noise = x.new_empty(batch, 1, height, width).normal_()
        return x + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 constant the synthesis network starts from."""

    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    """Modulated 3x3 convolution, noise, bias and leaky ReLU: one synthesis layer."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 upsample: bool = False, blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim,
                                    upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = BiasLeakyReLU(out_channel)

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None = None) -> Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to RGB (not demodulated) plus bias, added to the upsampled
    RGB image of the previous resolution (the skip architecture of StyleGAN2)."""

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class Generator(nn.Module):
    """StyleGAN2 generator (Karras et al. 2020, config F with skip outputs): mapping MLP
    ``style`` (PixelNorm + ``n_mlp`` EqualLinear layers with learning-rate multiplier
    ``lr_mlp``) and the synthesis network, rosinality-compatible. PAPER.md sec. 2: the
    frozen prior of the structure reconstructor, driven in W+ (``n_latent`` styles)."""

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8,
                 channel_multiplier: int = 2, channel_max: int = 512,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), lr_mlp: float = 0.01):
        super().__init__()
        self.log_size = _check_size(size)
        self.size = size
        self.style_dim = style_dim
        self.channels = channel_widths(channel_multiplier, channel_max)
        self.style = nn.Sequential(
            PixelNorm(),
            *(EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True)
              for _ in range(n_mlp)))

        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim,
                                blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False)

        self.num_layers = (self.log_size - 2) * 2 + 1
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()  # fixed noise maps, one per synthesis layer (buffers)
        for layer_idx in range(self.num_layers):
            res = 2 ** ((layer_idx + 5) // 2)
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, res, res))

        in_channel = self.channels[4]
        for log_res in range(3, self.log_size + 1):
            out_channel = self.channels[2**log_res]
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True,
                                         blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim,
                                         blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_channel, style_dim, blur_kernel=blur_kernel))
            in_channel = out_channel

        self.n_latent = self.log_size * 2 - 2

    def make_noise(self) -> list[Tensor]:
        """Fresh noise maps, one per synthesis layer, each shared by the whole batch."""
        device = self.input.input.device
        return [torch.randn(1, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), device=device)
                for i in range(self.num_layers)]

    @torch.no_grad()
    def mean_latent(self, n_latent: int) -> Tensor:
        """Mean of ``n_latent`` mapped random z: the truncation centre, 1 x style_dim."""
        z = torch.randn(n_latent, self.style_dim, device=self.input.input.device)
        return self.style(z).mean(0, keepdim=True)

    def get_latent(self, z: Tensor) -> Tensor:
        """Map z (N x style_dim) to w with the mapping network."""
        return self.style(z)

    def forward(self, styles: Sequence[Tensor], return_latents: bool = False,
                inject_index: int | None = None, truncation: float = 1.0,
                truncation_latent: Tensor | None = None, input_is_latent: bool = False,
                noise: Sequence[Tensor | None] | None = None,
                randomize_noise: bool = True) -> tuple[Tensor, Tensor | None]:
        """Synthesise images in [-1, 1] (approximately; nothing clamps them).

        ``styles``: one or two z (or, with ``input_is_latent``, w) of shape N x style_dim, or
        a single W+ code N x n_latent x style_dim with ``input_is_latent=True``. With two,
        latents ``0..inject_index-1`` take the first and the rest the second (style mixing;
        ``inject_index`` drawn uniformly from 1..n_latent-1 when None). ``truncation < 1``
        pulls every style towards ``truncation_latent``. ``noise``: one map per layer (None
        entries draw fresh noise); when None, fresh noise if ``randomize_noise`` else the
        stored ``noises.noise_i`` buffers. Returns ``(image, latent)`` where ``latent`` is
        the N x n_latent x style_dim code used if ``return_latents`` else None.
        """
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if noise is None:
            if randomize_noise:
                noise = [None] * self.num_layers
            else:
                noise = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if truncation < 1:
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]

        if len(styles) < 2:
            first = styles[0]
            latent = first if first.ndim == 3 else first.unsqueeze(1).repeat(1, self.n_latent, 1)
        else:
            if inject_index is None:
                inject_index = int(torch.randint(1, self.n_latent, ()))
            latent = torch.cat([styles[0].unsqueeze(1).repeat(1, inject_index, 1),
                                styles[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)],
                               dim=1)

        # NHWC: oneDNN's CPU convolutions (dense, transposed, depthwise) are faster on it;
        # every later op keeps the layout of its input.
        out = self.input(latent.shape[0])
        out = self.conv1(out, latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        for block, (up_conv, conv, to_rgb) in enumerate(
                zip(self.convs[::2], self.convs[1::2], self.to_rgbs)):
            i = 2 * block + 1
            out = up_conv(out, latent[:, i], noise=noise[i])
            out = conv(out, latent[:, i + 1], noise=noise[i + 1])
            skip = to_rgb(out, latent[:, i + 2], skip)
        return skip.contiguous(), (latent if return_latents else None)


# -------------------------------------------------------------------------- discriminator


class ConvLayer(nn.Sequential):
    """[FIR blur], equalised convolution (stride 2 after the blur when ``downsample``),
    [bias + leaky ReLU]. A Sequential so that its parameter names (``0.kernel``,
    ``1.weight``, ``2.bias``) match rosinality's."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int,
                 downsample: bool = False, blur_kernel: Sequence[float] = (1, 3, 3, 1),
                 bias: bool = True, activate: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            excess = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((excess + 1) // 2, excess // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, stride=stride,
                                  padding=padding, bias=bias and not activate))
        if activate:
            layers.append(BiasLeakyReLU(out_channel))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Residual downsampling block: two 3x3 conv layers (the second halves the resolution)
    plus a blurred, strided 1x1 skip; the sum is scaled by 1/sqrt(2)."""

    def __init__(self, in_channel: int, out_channel: int,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3, blur_kernel=blur_kernel)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True,
                               blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, activate=False,
                              bias=False, blur_kernel=blur_kernel)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator with minibatch standard deviation (groups of 4),
    rosinality-compatible. Returns one logit per image (N x 1)."""

    def __init__(self, size: int, channel_multiplier: int = 2, channel_max: int = 512,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        log_size = _check_size(size)
        channels = channel_widths(channel_multiplier, channel_max)
        blocks: list[nn.Module] = [ConvLayer(3, channels[size], 1)]
        in_channel = channels[size]
        for log_res in range(log_size, 2, -1):
            out_channel = channels[2 ** (log_res - 1)]
            blocks.append(ResBlock(in_channel, out_channel, blur_kernel))
            in_channel = out_channel
        self.convs = nn.Sequential(*blocks)
        self.stddev_group = 4
        self.stddev_feat = 1
        self.final_conv = ConvLayer(in_channel + 1, channels[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(channels[4] * 4 * 4, channels[4], activation=True),
            EqualLinear(channels[4], 1))

    def forward(self, x: Tensor) -> Tensor:
        out = self.convs(x)
        batch, channel, height, width = out.shape
        group = min(batch, self.stddev_group)
        if batch % group:
            raise ValueError(f"batch {batch} is not a multiple of the stddev group {group}")
        # Sample n = g * (batch // group) + m belongs to group m; std over g.
        grouped = out.reshape(group, -1, self.stddev_feat, channel // self.stddev_feat,
                              height, width)
        stddev = torch.sqrt(grouped.var(0, unbiased=False) + 1e-8)
        stddev = stddev.mean((2, 3, 4)).reshape(-1, self.stddev_feat, 1, 1)
        stddev = stddev.repeat(group, 1, height, width)
        out = self.final_conv(torch.cat([out, stddev], 1))
        return self.final_linear(out.flatten(1))


# ----------------------------------------------------------------------------------- losses


def d_logistic_loss(real_pred: Tensor, fake_pred: Tensor) -> Tensor:
    """Logistic discriminator loss of StyleGAN2 (Karras et al. 2020; Goodfellow et al.
    2014): ``mean(softplus(-D(x))) + mean(softplus(D(G(z))))``. PAPER.md sec. 8: the
    StyleGAN2 prior is trained here, with StyleGAN2's own losses."""
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def d_r1_loss(real_pred: Tensor, real_img: Tensor) -> Tensor:
    """R1 penalty (Mescheder et al. 2018, as used by Karras et al. 2020; PAPER.md sec. 8):
    ``mean_n ||d D(x_n) / d x_n||^2``, without the gamma/2 factor. ``real_img`` must
    require grad and ``real_pred`` be computed from it; differentiable (create_graph)."""
    (grad,) = autograd.grad(real_pred.sum(), real_img, create_graph=True)
    return grad.square().flatten(1).sum(1).mean()


def g_nonsaturating_loss(fake_pred: Tensor) -> Tensor:
    """Non-saturating generator loss (Karras et al. 2020; PAPER.md sec. 8):
    ``mean(softplus(-D(G(z))))``."""
    return F.softplus(-fake_pred).mean()


def g_path_regularize(fake_img: Tensor, latents: Tensor, mean_path_length: float | Tensor,
                      decay: float = 0.01) -> tuple[Tensor, Tensor, Tensor]:
    """Path length regularisation (Karras et al. 2020, sec. 3.2; PAPER.md sec. 8).

    With ``y ~ N(0, I) / sqrt(H*W)``, the per-sample path length is
    ``a_n = sqrt(mean_l ||J_{w_l}^T y||^2)`` where ``J^T y = d (G(w) . y) / d w`` and the
    mean runs over the ``n_latent`` style vectors. The running mean moves as
    ``a_bar <- a_bar + decay * (mean_n a_n - a_bar)``; the penalty is
    ``mean_n (a_n - a_bar)^2``. ``latents`` is the W+ code the images were made from
    (``Generator(..., return_latents=True)``). Returns ``(penalty, new a_bar (detached),
    path_lengths)``.
    """
    noise = torch.randn_like(fake_img) / math.sqrt(fake_img.shape[2] * fake_img.shape[3])
    (grad,) = autograd.grad((fake_img * noise).sum(), latents, create_graph=True)
    path_lengths = grad.square().sum(2).mean(1).sqrt()
    path_mean = mean_path_length + decay * (path_lengths.detach().mean() - mean_path_length)
    penalty = (path_lengths - path_mean).square().mean()
    return penalty, path_mean.detach(), path_lengths


def make_noise(batch: int, latent_dim: int, n_noise: int = 1,
               device: torch.device | str | None = None) -> list[Tensor]:
    """``n_noise`` independent z ~ N(0, I), each ``batch x latent_dim``."""
    return list(torch.randn(n_noise, batch, latent_dim, device=device).unbind(0))


def mixing_noise(batch: int, latent_dim: int, prob: float,
                 device: torch.device | str | None = None) -> list[Tensor]:
    """Style-mixing regularisation (Karras et al. 2019, sec. 3.1): two z with probability
    ``prob``, else one; pass the list as ``styles`` to :class:`Generator`."""
    n_noise = 2 if prob > 0 and float(torch.rand(())) < prob else 1
    return make_noise(batch, latent_dim, n_noise, device)


# ------------------------------------------------------------------------------ checkpoints


def load_rosinality_checkpoint(path: str | Path) -> dict:
    """Read a rosinality ``stylegan2-pytorch`` checkpoint (or one saved in its format).

    Returns the file's dict with ``"g_ema"`` (a state dict) and ``"latent_avg"`` (Tensor,
    or None when the file has none), plus whatever else it holds (``"g"``, ``"d"``,
    optimiser states, ``"args"``). Loaded with ``weights_only=True``; the ``argparse``
    namespace rosinality's ``train.py`` stores under ``"args"`` is allowed explicitly.
    """
    import argparse

    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"StyleGAN2 checkpoint {path} does not exist") from err
    except Exception as err:
        raise CheckpointError(
            f"StyleGAN2 checkpoint {path} could not be read with torch.load(weights_only=True)"
            f": {err}") from err
    if not isinstance(ckpt, dict) or "g_ema" not in ckpt:
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"StyleGAN2 checkpoint {path} has no 'g_ema' entry (found {found})")
    ckpt.setdefault("latent_avg", None)
    return ckpt


def generator_from_checkpoint(ckpt: dict | str | Path, size: int, channel_multiplier: int = 2,
                              channel_max: int = 512, style_dim: int = 512, n_mlp: int = 8,
                              key: str = "g_ema") -> Generator:
    """Build a :class:`Generator` and load ``ckpt[key]`` into it with ``strict=True``.

    ``ckpt`` is a dict from :func:`load_rosinality_checkpoint` or a path to read with it.
    On missing or unexpected keys (wrong size / width settings), raises
    :class:`CheckpointError` naming the source and the keys.
    """
    source = "checkpoint dict"
    if not isinstance(ckpt, dict):
        source = str(ckpt)
        ckpt = load_rosinality_checkpoint(ckpt)
    generator = Generator(size, style_dim=style_dim, n_mlp=n_mlp,
                          channel_multiplier=channel_multiplier, channel_max=channel_max)
    load_state_strict(generator, ckpt[key], f"{source}[{key!r}]")
    return generator


def load_state_strict(module: nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    """``module.load_state_dict(state_dict, strict=True)`` with an error that names the
    source and lists the missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mis_shaped = sorted(f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
                        for k in set(own) & set(state_dict)
                        if tuple(state_dict[k].shape) != tuple(own[k].shape))
    if missing or unexpected or mis_shaped:
        raise CheckpointError(
            f"{source} does not fit {type(module).__name__}: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}, shape mismatch (file vs model) "
            f"{mis_shaped[:8]}; check size / channel_multiplier / channel_max / style_dim / "
            f"n_mlp")
    module.load_state_dict(state_dict, strict=True)
