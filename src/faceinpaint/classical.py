"""The classical row of Tables 1-2: scikit-image's biharmonic fill (``inpaint_biharmonic``),
behind the same inpainter interface as every trained model (docs/CONVENTIONS.md), so the one
evaluation path (:mod:`faceinpaint.evaluate`) treats it like them. The registry
(:mod:`faceinpaint.models`) loads it through :func:`biharmonic_inpainter`.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.restoration import inpaint_biharmonic


def inpaint_biharmonic_batch(damaged: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fill the holes with scikit-image's ``inpaint_biharmonic``, the classical row of Tables 1-2.

    ``damaged`` is ``N x 3 x H x W`` in [-1, 1], ``mask`` ``N x 1 x H x W`` with hole = 1. Each
    channel's hole is the solution of the biharmonic equation with the known pixels as boundary
    values. Returns the composite: known pixels are ``damaged``'s, bit for bit.
    """
    if damaged.ndim != 4 or mask.ndim != 4 or mask.shape[1] != 1 or damaged.shape[0] != mask.shape[0]:
        raise ValueError(f"expected N x C x H x W images and N x 1 x H x W masks, got {tuple(damaged.shape)} and {tuple(mask.shape)}")
    hole = mask > 0.5
    images = damaged.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()
    holes = hole[:, 0].cpu().numpy()
    filled = np.stack(
        [inpaint_biharmonic(img, h, channel_axis=-1) if h.any() else img for img, h in zip(images, holes)]
    )
    filled_t = torch.from_numpy(filled).permute(0, 3, 1, 2).to(damaged.device, damaged.dtype)
    return torch.where(hole, filled_t, damaged)


class BiharmonicInpainter:
    """The classical fill behind the model interface (docs/CONVENTIONS.md), so the one evaluation
    path treats it like every trained model."""

    name = "inpaint_biharmonic"

    def __call__(self, image_damaged: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        composite = inpaint_biharmonic_batch(image_damaged, mask)
        return {"output": composite, "composite": composite}


def biharmonic_inpainter(cfg, name: str = "biharmonic", device="cpu") -> BiharmonicInpainter:
    """The registry's loader of the classical fill (:mod:`faceinpaint.models`)."""
    return BiharmonicInpainter()
