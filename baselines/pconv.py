"""PConv baseline (PAPER.md sec. 5; Liu et al., "Image Inpainting for Irregular Holes Using
Partial Convolutions", ECCV 2018): a U-Net of partial convolutions.

Mask polarity: inside this module the networks think as the paper does, ``valid = 1`` on known
pixels. :class:`PConvInpainter` is the one adapter: it takes the project's ``hole = 1`` mask
(docs/CONVENTIONS.md) and hands ``1 - mask`` to :class:`PartialConvUNet`; nothing else converts.

Choices made here:

* **Multi-channel masks** (Liu et al., implementation of the partial convolution layer:
  masks are ``C x H x W`` and updated by a convolution with an all-ones kernel). A mask has one
  channel per feature channel, or one channel meaning "the same for every channel". ``sum(M)``
  counts valid entries over all input channels of the window, ``sum(1) = C_in * k * k``, and the
  updated mask is 1 wherever that count is positive, so it is the same for every output channel
  and is returned with one channel. Zero padding counts as hole (as in the paper's code).
* **Depth.** The paper's U-Net has 8 stride-2 encoder layers at 512x512, ending at 2x2
  (supplementary table; PConv1..PConv8). Here the encoder halves the map down to 2x2 at every
  resolution: ``depth = log2(resolution) - 1``, at most 8: 32 -> 4 levels (16, 8, 4, 2),
  64 -> 5 (32 .. 2), 256 -> 7 (128 .. 2; the layout of naoto0804's 256x256 port), 512 -> 8.
  Kernels 7, 5, 5, 3, 3, ...; widths ``base_width * (1, 2, 4, 8, 8, ...)`` (64 .. 512 in the paper).
* **Bias** only in the two layers without batch norm (the first encoder layer, the output
  layer); a bias before batch norm is cancelled by its shift.
* **Output.** The last partial convolution is linear (no batch norm, no activation, no tanh):
  its 3 channels are the prediction in [-1, 1] units, not clamped (the losses keep it in
  range; metrics clamp).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

DEEPEST_SIZE = 2
MAX_DEPTH = 8
"""Liu et al. 2018: 8 encoder layers at 512x512 end at 2x2."""
ENCODER_KERNELS = (7, 5, 5)
"""Kernel sizes of the first encoder layers; every later layer is 3x3."""
MAX_WIDTH_FACTOR = 8
DECODER_SLOPE = 0.2


# ---------------------------------------------------------------------- partial convolution


class PartialConv2d(nn.Conv2d):
    """Partial convolution with mask update (PAPER.md sec. 5; Liu et al. 2018, partial convolution layer):

    ``x' = W^T (X * M) * sum(1) / sum(M) + b`` where ``sum(M) > 0``, else ``0``;
    ``m' = 1`` where ``sum(M) > 0``, else ``0``.

    ``forward(x, valid) -> (x', valid')``. ``valid`` (1 = known) is ``N x C_in x H x W`` (one
    mask per channel) or ``N x 1 x H x W`` (the same for every channel); ``sum`` runs over the
    window and every input channel, ``sum(1) = C_in * k * k``. ``valid'`` is ``N x 1 x H' x W'``
    (the same for every output channel). Padding keeps the size (``ceil(size / stride)``) and
    counts as hole. The mask carries no gradient.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         padding=(kernel_size - 1) // 2, bias=bias)

    def valid_count(self, valid: Tensor) -> Tensor:
        """``sum(M)`` at every output position, ``N x 1 x H' x W'`` (exact small integers)."""
        if valid.shape[1] == self.in_channels:
            per_pixel = valid.sum(dim=1, keepdim=True)
        elif valid.shape[1] == 1:
            per_pixel = valid * self.in_channels
        else:
            raise ValueError(f"mask has {valid.shape[1]} channels; expected 1 or {self.in_channels}")
        # summing over the window is an all-ones convolution (the paper's mask updater)
        return F.avg_pool2d(per_pixel, self.kernel_size, self.stride, self.padding,
                            count_include_pad=True, divisor_override=1)

    def forward(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            count = self.valid_count(valid)
            new_valid = (count > 0).to(x.dtype)
            window = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
            scale = torch.where(count > 0, window / torch.where(count > 0, count, 1.0), 0.0)
        out = F.conv2d(x * valid, self.weight, None, self.stride, self.padding) * scale
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1) * new_valid
        return out, new_valid


class PartialConvBlock(nn.Module):
    """Partial convolution, then optional batch norm, then optional activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 batch_norm: bool, activation: nn.Module | None):
        super().__init__()
        self.conv = PartialConv2d(in_channels, out_channels, kernel_size, stride, bias=not batch_norm)
        self.norm = nn.BatchNorm2d(out_channels) if batch_norm else None
        self.activation = activation

    def forward(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        x, valid = self.conv(x, valid)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x, valid


def channel_masks(valid: Tensor, channels: int) -> Tensor:
    """A one-channel (or already ``channels``-channel) mask as ``channels`` channels (a view)."""
    return valid.expand(-1, channels, -1, -1)


# ---------------------------------------------------------------------------------- U-Net


def unet_depth(resolution: int) -> int:
    """Number of stride-2 encoder levels: down to 2x2, at most 8 (Liu et al.: 8 at 512)."""
    if resolution < 2 * DEEPEST_SIZE or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= {2 * DEEPEST_SIZE}, got {resolution}")
    return min(MAX_DEPTH, int(math.log2(resolution // DEEPEST_SIZE)))


def encoder_kernels(depth: int) -> tuple[int, ...]:
    """Kernel sizes of encoder levels 1..depth: 7, 5, 5, then 3 (Liu et al. 2018)."""
    return tuple(ENCODER_KERNELS[level] if level < len(ENCODER_KERNELS) else 3 for level in range(depth))


def encoder_widths(depth: int, base_width: int) -> tuple[int, ...]:
    """Channels of encoder levels 1..depth: ``base_width * 2**(l-1)`` capped at ``8 * base_width``."""
    return tuple(min(base_width * 2**level, MAX_WIDTH_FACTOR * base_width) for level in range(depth))


class PartialConvUNet(nn.Module):
    """The PConv U-Net (PAPER.md sec. 5; Liu et al. 2018, network design and supplementary table),
    in the paper's polarity: ``forward(image, valid) -> output`` with ``valid = 1`` on known
    pixels (``N x 1`` or ``N x 3``), ``image`` in [-1, 1].

    Encoder: partial convolutions with stride 2, batch norm except on the first level, ReLU.
    Decoder, level by level back up: nearest upsampling of the features and of the mask,
    concatenation with the encoder features and masks of the level above (the image and its
    mask last), a 3x3 partial convolution, batch norm and LeakyReLU(0.2), except the last layer
    (linear, 3 channels). See the module docstring for depth and widths.
    """

    def __init__(self, resolution: int, base_width: int = 64):
        super().__init__()
        self.resolution = resolution
        self.depth = unet_depth(resolution)
        self.widths = encoder_widths(self.depth, base_width)
        self.kernels = encoder_kernels(self.depth)
        in_widths = (3,) + self.widths[:-1]
        self.encoder = nn.ModuleList(
            PartialConvBlock(c_in, c_out, kernel, stride=2, batch_norm=level > 0, activation=nn.ReLU())
            for level, (c_in, c_out, kernel) in enumerate(zip(in_widths, self.widths, self.kernels)))
        # decoder[k] rebuilds level depth-1-k from level depth-k; the last one rebuilds the image
        self.decoder = nn.ModuleList()
        for level in range(self.depth - 1, -1, -1):
            last = level == 0
            self.decoder.append(PartialConvBlock(
                self.widths[level] + in_widths[level], in_widths[level], 3, stride=1,
                batch_norm=not last, activation=None if last else nn.LeakyReLU(DECODER_SLOPE)))
        self.finetune = False

    def forward(self, image: Tensor, valid: Tensor) -> Tensor:
        skips = [(image, valid)]
        x = image
        for block in self.encoder:
            x, valid = block(x, valid)
            skips.append((x, valid))
        for block, (skip, skip_valid) in zip(self.decoder, reversed(skips[:-1])):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            valid = F.interpolate(valid, scale_factor=2.0, mode="nearest")
            masks = torch.cat([channel_masks(valid, x.shape[1]), channel_masks(skip_valid, skip.shape[1])], dim=1)
            x, valid = block(torch.cat([x, skip], dim=1), masks)
        return x

    def encoder_batch_norms(self) -> list[nn.BatchNorm2d]:
        return [block.norm for block in self.encoder if block.norm is not None]

    def set_finetune(self, enabled: bool, keep_requires_grad: bool = False) -> None:
        """Fine-tuning phase (Liu et al. 2018, training procedure: "freeze the Batch Normalization parameters
        in the encoder part of the network"; lr 5e-5 there, set by the caller): the encoder's
        batch norms use their running statistics (eval mode, kept by :meth:`train`) and their
        affine parameters stop learning. The decoder's batch norms keep training. The flag is
        not saved in the state dict: the caller sets it from its schedule.

        ``keep_requires_grad`` (under ``DistributedDataParallel``, which expects a gradient for
        every parameter that required one when it was wrapped): the frozen parameters keep
        ``requires_grad`` and the caller drops their gradients (:meth:`frozen_parameters`)
        before its optimiser step; without gradients they stay exactly as they are, as with
        ``requires_grad`` off."""
        self.finetune = enabled
        for norm in self.encoder_batch_norms():
            norm.requires_grad_(not enabled or keep_requires_grad)
        self.train(self.training)

    def frozen_parameters(self) -> list[nn.Parameter]:
        """The parameters the fine-tuning phase freezes (none outside it)."""
        return [p for norm in self.encoder_batch_norms() for p in norm.parameters()] if self.finetune else []

    def train(self, mode: bool = True) -> PartialConvUNet:
        super().train(mode)
        if self.finetune:
            for norm in self.encoder_batch_norms():
                norm.eval()
        return self


class ValidMaskAdapter(nn.Module):
    """The one mask-polarity adapter of the baselines (PAPER.md sec. 5; docs/CONVENTIONS.md).

    ``forward(image_damaged, mask)``: ``N x 3 x R x R`` in [-1, 1] and ``N x 1 x R x R`` with
    hole = 1. The wrapped network ``net(image, valid)`` thinks in the papers' polarity, so it
    gets ``valid = 1 - mask``; this is the only place the polarity changes. Returns ``output``
    (the raw prediction) and ``composite`` (``output`` in the hole, ``image_damaged``
    elsewhere, bit for bit).
    """

    def __init__(self, resolution: int, net: nn.Module):
        super().__init__()
        self.resolution = resolution
        self.net = net

    def forward(self, image_damaged: Tensor, mask: Tensor) -> dict[str, Tensor]:
        check_inputs(image_damaged, mask, self.resolution)
        output = self.net(image_damaged, 1.0 - mask)
        # == mask * output + (1 - mask) * image_damaged for a 0/1 mask, exact outside the hole
        composite = torch.where(mask > 0.5, output, image_damaged)
        return {"output": output, "composite": composite}

    def set_finetune(self, enabled: bool, keep_requires_grad: bool = False) -> None:
        """The network's fine-tuning mode (frozen batch-norm statistics; see
        :meth:`PartialConvUNet.set_finetune` for ``keep_requires_grad``)."""
        if hasattr(self.net, "frozen_parameters"):
            self.net.set_finetune(enabled, keep_requires_grad)
        else:  # RFR: its batch norms' affine parameters keep learning, nothing to keep
            self.net.set_finetune(enabled)

    def frozen_parameters(self) -> list[nn.Parameter]:
        """Parameters whose gradients the caller drops in the fine-tuning phase."""
        return self.net.frozen_parameters() if hasattr(self.net, "frozen_parameters") else []


class PConvInpainter(ValidMaskAdapter):
    """PConv baseline in the project's conventions: :class:`PartialConvUNet` behind the
    :class:`ValidMaskAdapter`."""

    def __init__(self, resolution: int, base_width: int = 64):
        super().__init__(resolution, PartialConvUNet(resolution, base_width))


def check_inputs(image: Tensor, mask: Tensor, resolution: int) -> None:
    """Raise ValueError unless ``image`` is ``N x 3 x R x R`` and ``mask`` ``N x 1 x R x R``."""
    if (image.ndim != 4 or image.shape[1:] != (3, resolution, resolution)
            or mask.shape != (image.shape[0], 1, resolution, resolution)):
        raise ValueError(f"expected N x 3 x {resolution} x {resolution} images and N x 1 masks, got "
                         f"{tuple(image.shape)} and {tuple(mask.shape)}")
