"""RFR baseline (PAPER.md sec. 5; Li et al., "Recurrent Feature Reasoning for Image Inpainting",
CVPR 2020): a partial-convolution encoder to a feature map, a recurrent loop that shrinks the
hole of that map and reasons about the newly filled ring, feature merging, and a decoder to RGB.

Mask polarity: inside this module the networks think as the paper does, ``valid = 1`` on known
pixels. :class:`RFRInpainter` is the one adapter: it takes the project's ``hole = 1`` mask
(docs/CONVENTIONS.md) and hands ``1 - mask`` to :class:`RFRNet`; nothing else converts.

Layout (the official code's ``RFRNet``, widths scaled by ``base_width``; 64 is the paper's):

* Encoder: 7x7 partial conv, stride 2 (image -> feature map at resolution/2), then a 7x7
  partial conv, each with batch norm and ReLU.
* Each recurrence (``recurrences``, 6 in the paper; weights shared across recurrences):
  **area identification**, two 7x7 partial convs with mask update (the hole shrinks by 3 cells
  per side per conv), batch norm, LeakyReLU(0.01); **feature reasoning**, an encoder-decoder on
  the map (3 stride-2 convs to 2w, 4w, 8w channels, 3 dilated convs, 2 dilated decoder convs,
  then transposed convs back up with skips) with **knowledge-consistent attention** (KCA) on its
  resolution/8 map; the result is zeroed outside the current valid area.
* **Feature merging**: ``sum_i F_i / sum_i M_i`` over the encoder's map and the maps of every
  recurrence (the code's ``feature_group`` starts with the encoder's), 0 where no map is valid.
* Decoder: a transposed conv back to full resolution, a 3x3 partial conv on it concatenated
  with the damaged image (image and mask), a ResNet bottleneck, and a linear 3x3 conv to RGB.

The layout is the same at every resolution (a multiple of 16, at least 32): feature map R/2, reasoning
bottleneck R/16, KCA on R/8: 32 -> 16, 2, 4; 64 -> 32, 4, 8; 256 -> 128, 16, 32 (the paper's).

Both places where the image enters are partial convolutions, so hole pixels of the input are
never read: the output does not depend on them at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .pconv import PartialConv2d, ValidMaskAdapter, channel_masks

AREA_KERNEL = 7
"""Kernel of the encoder and area-identification partial convs (official ``RFRNet``)."""
SLOPE = 0.01
"""LeakyReLU slope around the recurrence and decoder (the code's ``F.leaky_relu`` default)."""
REASONING_SLOPE = 0.2
"""LeakyReLU slope of the reasoning module's decoder."""
PROPAGATION_SIZE = 3
"""KCA sums similarities over this neighbourhood of the target position."""
REASONING_DOWNSAMPLING = 8
"""The reasoning module's bottleneck is the feature map / 8 (and KCA runs on the map / 4)."""
MIN_RESOLUTION = 32
"""Smallest image side: KCA's map (resolution / 8) is then 4x4."""
EPS = 1e-7
"""Floor of a feature norm in KCA and of its blend weight (the official code's 1e-7)."""


# -------------------------------------------------------------------------------- KCA


@dataclass(frozen=True)
class AttentionState:
    """KCA scores of one recurrence, kept for the next."""

    scores: Tensor
    """``N x P x h x w``: ``scores[n, s, y, x]`` = weight of source position s for target (y, x)."""
    valid: Tensor
    """``N x 1 x h x w``: target positions that were valid in that recurrence."""


class KnowledgeConsistentAttention(nn.Module):
    """Knowledge-consistent attention (PAPER.md sec. 5; Li et al. 2020, and the
    official ``KnowledgeConsistentAttention`` with 1x1 patches and propagation size 3).

    For a map ``f`` (``N x C x h x w``), target t and source s among all ``P = h w`` positions:

    * similarity ``sim(t, s) = <f_t, f_s / |f_s|>``, summed over the 3x3 neighbourhood of t
      (zero padded): ``sim'(t, s) = sum_{t' in N(t)} sim(t', s)``;
    * ``score'(t, .) = softmax_s sim'(t, s)`` over every position (holes included: their
      features are the reasoning module's inference by now);
    * consistency with the previous recurrence, where t was valid in it:
      ``score(t, .) = (score_prev(t, .) + r score'(t, .)) / (1 + r)``, else ``score'(t, .)``,
      with ``r = |ratio| + 1e-7`` learnable (starts at 1, i.e. an even blend);
    * ``f^_t = sum_s score(t, s) f_s / |f_s|``, and the output is a 1x1 conv of ``[f^, f]``.

    The paper calls ``sim`` the cosine similarity and writes averages and ``f_s`` where the
    official code, followed here, leaves the target unnormalised, sums over the neighbourhood
    and reconstructs from the unit source vectors: with both vectors normalised and an average,
    the logits would lie in [-1, 1] and the softmax over P positions would be nearly uniform.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.ratio = nn.Parameter(torch.ones(1))
        self.combine = nn.Conv2d(2 * channels, channels, kernel_size=1)

    def forward(self, features: Tensor, valid: Tensor,
                previous: AttentionState | None) -> tuple[Tensor, AttentionState]:
        """``valid``: ``N x 1 x h x w`` positions valid in this recurrence."""
        n, c, h, w = features.shape
        flat = features.reshape(n, c, h * w)
        unit = F.normalize(flat, dim=1, eps=EPS)
        similarity = (unit.transpose(1, 2) @ flat).reshape(n, h * w, h, w)  # [n, source, target]
        similarity = F.avg_pool2d(similarity, PROPAGATION_SIZE, stride=1, padding=PROPAGATION_SIZE // 2,
                                  count_include_pad=True, divisor_override=1)
        scores = similarity.softmax(dim=1)
        if previous is not None:
            weight = self.ratio.abs() + EPS
            scores = (previous.scores * previous.valid + scores * weight) / (previous.valid + weight)
        attended = (unit @ scores.reshape(n, h * w, h * w)).reshape(n, c, h, w)
        return self.combine(torch.cat([attended, features], dim=1)), AttentionState(scores, valid)


# ------------------------------------------------------------------- feature reasoning


def conv_bn(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1,
            activation: nn.Module | None = None) -> nn.Sequential:
    """3x3 conv (size-preserving padding), batch norm, activation (ReLU by default)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels), activation if activation is not None else nn.ReLU())


def up_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    """4x4 transposed conv doubling the size, batch norm, LeakyReLU(0.2)."""
    return nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 4, 2, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.LeakyReLU(REASONING_SLOPE))


class FeatureReasoning(nn.Module):
    """Feature reasoning module (PAPER.md sec. 5; Li et al. 2020; the code's
    ``RFRModule``), ``width`` channels in and out, map size a multiple of 8.

    Encoder: 3x3 stride-2 convs to ``2w, 4w, 8w`` (size/2, /4, /8), three 3x3 convs with
    dilation 2 at ``8w``; batch norm and ReLU. Decoder: two dilated convs on ``[x, skip]``, then
    transposed convs on ``[x, skip]`` to ``8w`` (size/4, followed by KCA), ``4w`` (size/2) and
    ``w`` (size); batch norm and LeakyReLU(0.2).
    """

    def __init__(self, width: int):
        super().__init__()
        w2, w4, w8 = 2 * width, 4 * width, 8 * width
        self.encoder = nn.ModuleList([
            conv_bn(width, w2, stride=2), conv_bn(w2, w4, stride=2), conv_bn(w4, w8, stride=2),
            conv_bn(w8, w8, dilation=2), conv_bn(w8, w8, dilation=2), conv_bn(w8, w8, dilation=2)])
        self.bottleneck_decoder = nn.ModuleList(
            conv_bn(2 * w8, w8, dilation=2, activation=nn.LeakyReLU(REASONING_SLOPE)) for _ in range(2))
        self.up_to_attention = up_bn(2 * w8, w8)
        self.attention = KnowledgeConsistentAttention(w8)
        self.up_half = up_bn(w8 + w4, w4)
        self.up_full = up_bn(w4 + w2, width)

    def forward(self, x: Tensor, valid: Tensor,
                previous: AttentionState | None) -> tuple[Tensor, AttentionState]:
        """``valid``: ``N x 1`` mask of the map; KCA takes a cell of its map as valid when every
        feature-map position it covers is."""
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.bottleneck_decoder, (skips[4], skips[3])):
            x = block(torch.cat([x, skip], dim=1))
        x = self.up_to_attention(torch.cat([x, skips[2]], dim=1))
        cell_valid = 1.0 - F.max_pool2d(1.0 - valid, kernel_size=valid.shape[-1] // x.shape[-1])
        x, state = self.attention(x, cell_valid, previous)
        x = self.up_half(torch.cat([x, skips[1]], dim=1))
        x = self.up_full(torch.cat([x, skips[0]], dim=1))
        return x, state


class Bottleneck(nn.Module):
    """ResNet bottleneck (He et al. 2016): 1x1 to ``planes``, 3x3, 1x1 to ``4 planes``, batch norm
    after each, identity shortcut, ReLU (the code's tail ``Bottleneck(32, 8)`` at width 64)."""

    def __init__(self, channels: int, planes: int):
        super().__init__()
        if channels != 4 * planes:
            raise ValueError(f"identity shortcut needs channels == 4 * planes, got {channels}, {planes}")
        self.body = nn.Sequential(
            nn.Conv2d(channels, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(),
            nn.Conv2d(planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(),
            nn.Conv2d(planes, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + x)


# ----------------------------------------------------------------------------- network


def merge_features(features: list[Tensor], masks: list[Tensor]) -> Tensor:
    """Feature merging (PAPER.md sec. 5; Li et al. 2020):
    ``F = sum_i F_i M_i / sum_i M_i`` where ``sum_i M_i > 0``, else 0. Masks ``N x 1``."""
    total = sum(f * m for f, m in zip(features, masks, strict=True))
    count = sum(masks)
    return torch.where(count > 0, total / torch.where(count > 0, count, 1.0), 0.0)


class RFRNet(nn.Module):
    """RFR-Net in the paper's polarity (PAPER.md sec. 5; Li et al. 2020, Fig. 2; the code's
    ``RFRNet``): ``forward(image, valid) -> output`` with ``valid = 1`` on known pixels
    (``N x 1`` or ``N x 3``), ``image`` ``N x 3 x R x R`` in [-1, 1]. See the module docstring."""

    def __init__(self, resolution: int, base_width: int = 64, recurrences: int = 6):
        super().__init__()
        if resolution < MIN_RESOLUTION or resolution % (2 * REASONING_DOWNSAMPLING):
            raise ValueError(f"resolution must be a multiple of {2 * REASONING_DOWNSAMPLING} and at "
                             f"least {MIN_RESOLUTION}, got {resolution}")
        if base_width < 8 or base_width % 8:
            raise ValueError(f"base_width must be a positive multiple of 8 (the tail bottleneck has "
                             f"base_width / 8 planes), got {base_width}")
        if recurrences < 1:
            raise ValueError(f"recurrences must be >= 1, got {recurrences}")
        self.resolution = resolution
        self.recurrences = recurrences
        w = base_width
        self.encode_down = PartialConv2d(3, w, AREA_KERNEL, stride=2, bias=False)
        self.encode_down_norm = nn.BatchNorm2d(w)
        self.encode = PartialConv2d(w, w, AREA_KERNEL, bias=False)
        self.encode_norm = nn.BatchNorm2d(w)
        self.identify_first = PartialConv2d(w, w, AREA_KERNEL, bias=False)
        self.identify_second = PartialConv2d(w, w, AREA_KERNEL, bias=False)
        self.identify_norm = nn.BatchNorm2d(w)
        self.reasoning = FeatureReasoning(w)
        self.upsample = nn.ConvTranspose2d(w, w, 4, 2, padding=1, bias=False)
        self.upsample_norm = nn.BatchNorm2d(w)
        self.tail = PartialConv2d(3 + w, w // 2, 3, bias=False)
        self.tail_bottleneck = Bottleneck(w // 2, w // 8)
        self.to_rgb = nn.Conv2d(w, 3, 3, padding=1, bias=False)
        self.finetune = False

    def forward(self, image: Tensor, valid: Tensor) -> Tensor:
        x, m = self.encode_down(image, valid)
        x = F.relu(self.encode_down_norm(x))
        x, m = self.encode(x, m)
        x = F.relu(self.encode_norm(x))
        features, masks = [x], [m]
        state = None
        for _ in range(self.recurrences):
            x, m = self.identify_first(x, m)
            x, m = self.identify_second(x, m)
            x = F.leaky_relu(self.identify_norm(x), SLOPE)
            x, state = self.reasoning(x, m, state)
            x = x * m
            features.append(x)
            masks.append(m)
        merged = merge_features(features, masks)

        up = F.leaky_relu(self.upsample_norm(self.upsample(merged)), SLOPE)
        up_valid = F.interpolate(m, scale_factor=2.0, mode="nearest")
        tail_valid = torch.cat([channel_masks(valid, 3), channel_masks(up_valid, up.shape[1])], dim=1)
        x, _ = self.tail(torch.cat([image, up], dim=1), tail_valid)
        x = F.leaky_relu(x, SLOPE)
        return self.to_rgb(torch.cat([x, self.tail_bottleneck(x)], dim=1))

    def set_finetune(self, enabled: bool) -> None:
        """Fine-tuning phase as in the official code (``RFRNet.train(finetune=True)``): every
        batch norm uses its running statistics (eval mode, kept by :meth:`train`); their affine
        parameters keep learning (the code's optimiser still holds them). Its lr (5e-5 there) is
        the caller's. The flag is not saved in the state dict: the caller sets it."""
        self.finetune = enabled
        self.train(self.training)

    def train(self, mode: bool = True) -> RFRNet:
        super().train(mode)
        if self.finetune:
            for module in self.modules():
                # _BatchNorm: also nn.SyncBatchNorm, which multi-GPU training converts them to
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


class RFRInpainter(ValidMaskAdapter):
    """RFR baseline in the project's conventions: :class:`RFRNet` behind the
    :class:`~baselines.pconv.ValidMaskAdapter`."""

    def __init__(self, resolution: int, base_width: int = 64, recurrences: int = 6):
        super().__init__(resolution, RFRNet(resolution, base_width, recurrences))
