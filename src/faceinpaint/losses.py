"""Loss terms that more than one model trains with (one definition each).

* :func:`valid_hole_l1`: the per-pixel L1 of PConv (Liu et al. 2018, "Loss Functions"), split
  into the known pixels and the hole, each normalised by *all* elements of the image, so that
  L_valid + L_hole is the plain mean L1. The structure reconstructor's L_hole / L_valid
  (PAPER.md sec. 2; paper sec. 3.2) and both baselines' L_valid / L_hole (PAPER.md sec. 5) are
  these two terms.
* :func:`texture_loss`: the texture generator's L_T (PAPER.md sec. 3) under a reading of the
  text (``losses.texture``: L1 per element or per image, the region L1 and the perceptual term
  cover), :func:`texture_l1` its L1.
"""

from __future__ import annotations

from torch import Tensor


def valid_hole_l1(output: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(L_valid, L_hole)``: ``sum((1 - mask) * |output - target|) / N`` and
    ``sum(mask * |output - target|) / N`` with N the number of elements of ``output`` (the
    whole batch, every channel; not of the region). ``output``, ``target``: ``N x C x H x W``;
    ``mask``: ``N x 1 x H x W`` (broadcast over channels), hole = 1 (docs/CONVENTIONS.md)."""
    error = (output - target).abs()
    return (error * (1.0 - mask)).mean(), (error * mask).mean()


# ------------------------------------------------------------------ texture loss readings

L1_REDUCTIONS = ("mean", "sum")
"""How ``||I_gt - I_out||_1`` of L_T is reduced: ``mean`` over the elements (the reading the
stored models were trained with) or ``sum`` over one image's elements, as the norm is written
(averaged over the images of the batch)."""
L1_REGIONS = ("output", "composite", "hole")
"""What L1 compares with the target: the raw ``output`` over every pixel (stored models), the
``composite`` (the hole's output, the target elsewhere: the error outside the hole is 0, the
normaliser of ``mean`` stays every element), or the ``hole`` alone (``mean`` over the hole's
elements only)."""
PERCEPTUAL_REGIONS = ("output", "composite")
"""What the perceptual term compares with the target: the raw ``output`` (stored models) or the
``composite``."""


def composite_of(output: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """``output`` in the hole, ``target`` elsewhere (``torch.where`` on ``mask > 0.5``): what the
    critic scores, and what the composite readings of L1 and the perceptual term compare."""
    import torch

    return torch.where(mask > 0.5, output, target)


def texture_l1(output: Tensor, target: Tensor, mask: Tensor, region: str = "output", reduction: str = "mean") -> Tensor:
    """L1 of the texture loss L_T (PAPER.md sec. 3; paper sec. 4.4) under one reading.

    ``region`` (:data:`L1_REGIONS`) and ``reduction`` (:data:`L1_REDUCTIONS`): ``output``/``mean``
    is ``F.l1_loss(output, target)``, the stored models' reading; ``sum`` divides the sum of
    absolute errors by the batch size only (``||I_gt - I_out||_1`` of one image, averaged over
    the images); ``hole``/``mean`` divides the hole's absolute errors by the hole's element count
    (``C * sum(mask)``). ``hole``/``sum`` is ``composite``/``sum`` and is refused (one name per reading).
    """
    from torch.nn import functional as F

    if region not in L1_REGIONS:
        raise ValueError(f"L1 region must be one of {L1_REGIONS}, got {region!r}")
    if reduction not in L1_REDUCTIONS:
        raise ValueError(f"L1 reduction must be one of {L1_REDUCTIONS}, got {reduction!r}")
    if region == "hole":
        if reduction == "sum":
            raise ValueError("L1 region 'hole' with reduction 'sum' is the composite's sum: use region 'composite'")
        hole = (mask > 0.5).to(output.dtype)
        count = (hole.sum() * output.shape[1]).clamp_min(1.0)
        return ((output - target).abs() * hole).sum() / count
    compared = output if region == "output" else composite_of(output, target, mask)
    if reduction == "mean":
        return F.l1_loss(compared, target)
    return F.l1_loss(compared, target, reduction="sum") / output.shape[0]


def texture_loss(output: Tensor, target: Tensor, mask: Tensor, perceptual_net, critic, weights) -> dict[str, Tensor]:
    """L_T = 10 L_perceptual + L_adv + 100 L1 (PAPER.md sec. 3; paper sec. 4.4) under the reading
    of ``weights`` (``losses.texture``: the three weights, ``l1_reduction``, ``l1_region``,
    ``perceptual_region``; :class:`faceinpaint.config.TextureLoss`).

    The critic always scores the composite (:func:`composite_of`; its training sees composites).
    With the defaults (mean L1 and the perceptual term on the raw output) this computes the same
    operations in the same order as :func:`faceinpaint.texture.texture_generator_loss`, so the
    stored models' training steps are unchanged bit for bit. Returns ``l1``, ``perceptual``,
    ``adversarial`` (unweighted) and the weighted ``total``.
    """
    from .texture import perceptual_loss, wgan_generator_loss

    l1 = texture_l1(output, target, mask, weights.l1_region, weights.l1_reduction)
    perceived = output if weights.perceptual_region == "output" else composite_of(output, target, mask)
    perceptual = perceptual_loss(perceptual_net, perceived, target)
    adversarial = wgan_generator_loss(critic, composite_of(output, target, mask), mask)
    total = weights.perceptual * perceptual + weights.adversarial * adversarial + weights.l1 * l1
    return {"total": total, "l1": l1, "perceptual": perceptual, "adversarial": adversarial}
