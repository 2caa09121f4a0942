"""Loss terms that more than one model trains with (one definition each).

* :func:`valid_hole_l1`: the per-pixel L1 of PConv (Liu et al. 2018, "Loss Functions"), split
  into the known pixels and the hole, each normalised by *all* elements of the image, so that
  L_valid + L_hole is the plain mean L1. The structure reconstructor's L_hole / L_valid
  (PAPER.md sec. 2; paper sec. 3.2) and both baselines' L_valid / L_hole (PAPER.md sec. 5) are
  these two terms.
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
