"""The loss family of both baselines (PAPER.md sec. 5): PConv's loss (Liu et al. 2018, "Loss Functions"),
which RFR trains with unchanged (Li et al. 2020; its official ``model.py`` uses the same five
terms with the same weights: valid 1, hole 6, perceptual 0.05, style 120, total variation 0.1).

``L = w_valid L_valid + w_hole L_hole + w_perc (L_perc(out) + L_perc(comp))
      + w_style (L_style(out) + L_style(comp)) + w_tv L_tv``

with ``M = 1 - mask`` the known pixels (the paper's polarity) and N the number of elements:

* ``L_hole = |mask * (out - gt)|_1 / N``, ``L_valid = |(1 - mask) * (out - gt)|_1 / N``;
* ``L_perc(x) = sum_p |P_p(x) - P_p(gt)|_1 / N_p`` over the feature maps ``P_p`` of a frozen
  network;
* ``L_style(x) = sum_p |G_p(x) - G_p(gt)|_1 / C_p^2`` with Gram matrices
  ``G_p = P_p P_p^T / (C_p H_p W_p)`` (the paper's ``K_p``), i.e. the mean absolute entry;
* ``L_tv``: absolute differences of horizontally and vertically adjacent pixels of the
  composite, both in the 1-pixel (3x3) dilation of the hole, summed and divided by N.

Every mean also runs over the batch. The feature network is passed in: any module mapping
images in [-1, 1] to a list of feature maps (``faceinpaint.pretrained.perceptual_backbone``);
both papers used VGG16 pool1-pool3.

RFR's code differs in one term, which is not followed here: its TV is the mean of the
differences of ``comp * mask`` over the whole image (no dilation, boundary jumps to zero
included). One function serves both baselines so that their losses are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from faceinpaint.losses import valid_hole_l1


@dataclass(frozen=True)
class LossWeights:
    """Weights of the terms (Liu et al. 2018, total loss; RFR's ``model.py``)."""

    valid: float = 1.0
    hole: float = 6.0
    perceptual: float = 0.05
    style: float = 120.0
    tv: float = 0.1


def gram_matrix(features: Tensor) -> Tensor:
    """``N x C x C`` Gram matrices ``F F^T / (C H W)`` of ``N x C x H x W`` maps
    (PAPER.md sec. 5; Liu et al. 2018, style loss, normalisation ``K_p``)."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def perceptual_l1(features: Sequence[Tensor], target_features: Sequence[Tensor]) -> Tensor:
    """``sum_p mean|P_p(x) - P_p(gt)|`` (PAPER.md sec. 5; Liu et al. 2018, perceptual loss, one image)."""
    return sum((F.l1_loss(f, t) for f, t in zip(features, target_features, strict=True)),
               features[0].new_zeros(()))


def style_l1(features: Sequence[Tensor], target_features: Sequence[Tensor]) -> Tensor:
    """``sum_p mean|G_p(x) - G_p(gt)|`` (PAPER.md sec. 5; Liu et al. 2018, style loss: the L1 norm
    of the C_p x C_p Gram difference divided by C_p^2)."""
    return sum((F.l1_loss(gram_matrix(f), gram_matrix(t))
                for f, t in zip(features, target_features, strict=True)),
               features[0].new_zeros(()))


def dilated_total_variation(composite: Tensor, mask: Tensor) -> Tensor:
    """Total variation over the 1-pixel dilation P of the hole (PAPER.md sec. 5; Liu et al. 2018,
    total variation loss): ``(sum_{(i,j),(i,j+1) in P} |I_{i,j+1} - I_{i,j}| + sum_{(i,j),(i+1,j) in P}
    |I_{i+1,j} - I_{i,j}|) / N``, N the number of elements of ``composite``."""
    region = F.max_pool2d(mask, kernel_size=3, stride=1, padding=1)
    horizontal = region[..., :, 1:] * region[..., :, :-1]
    vertical = region[..., 1:, :] * region[..., :-1, :]
    total = ((composite[..., :, 1:] - composite[..., :, :-1]).abs() * horizontal).sum() \
        + ((composite[..., 1:, :] - composite[..., :-1, :]).abs() * vertical).sum()
    return total / composite.numel()


def feature_scales(feature_net: nn.Module, target_features: Sequence[Tensor]) -> list[Tensor]:
    """Per-layer divisors of the feature maps: 1 for VGG16, whose features the papers' weights
    (perceptual 0.05, style 120) were tuned on; for a substitute backbone (EfficientNet-Lite0)
    the RMS of the target's maps, so that each layer enters on VGG's order of magnitude instead
    of its own (unscaled, the style term of EfficientNet features outweighed all others 100:1).
    Under DDP the mean square is averaged over the processes (equal per-process batches), so every
    process divides by the global batch's RMS, as one process on the whole batch would."""
    from faceinpaint.training import distributed_mean

    if str(getattr(feature_net, "name", "")).startswith("vgg16"):
        return [target_features[0].new_ones(()) for _ in target_features]
    return [distributed_mean(t.square().mean()).sqrt().clamp_min(1e-6) for t in target_features]


def inpainting_loss(output: Tensor, composite: Tensor, target: Tensor, mask: Tensor,
                    feature_net: nn.Module, weights: LossWeights = LossWeights()) -> dict[str, Tensor]:
    """The PConv / RFR loss (PAPER.md sec. 5; Liu et al. 2018, total loss): see the module docstring.

    ``output``: the raw prediction, ``composite``: output in the hole and the input elsewhere,
    ``target``: the ground truth, all ``N x 3 x H x W`` in [-1, 1]; ``mask``: ``N x 1 x H x W``,
    hole = 1. ``feature_net`` must be frozen; the target's features carry no gradient.
    Returns ``valid``, ``hole``, ``perceptual``, ``style`` (each summed over output and
    composite), ``tv`` and the weighted ``total``.
    """
    valid, hole = valid_hole_l1(output, target, mask)
    with torch.no_grad():
        target_features = feature_net(target)
        scales = feature_scales(feature_net, target_features)
    # one pass for both images: the net is frozen in eval mode, so each image's maps are its own
    both = [f / s for f, s in zip(feature_net(torch.cat([output, composite], dim=0)), scales)]
    target_features = [f / s for f, s in zip(target_features, scales)]
    output_features = [f[: output.shape[0]] for f in both]
    composite_features = [f[output.shape[0]:] for f in both]
    perceptual = (perceptual_l1(output_features, target_features)
                  + perceptual_l1(composite_features, target_features))
    style = style_l1(output_features, target_features) + style_l1(composite_features, target_features)
    tv = dilated_total_variation(composite, mask)
    terms = {"valid": valid, "hole": hole, "perceptual": perceptual, "style": style, "tv": tv}
    terms["total"] = sum(getattr(weights, name) * value for name, value in terms.items())
    return terms

