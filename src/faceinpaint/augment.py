"""Differentiable augmentation for the StyleGAN2 prior's discriminator on small data.

DiffAugment (Zhao et al. 2020): the same family of random, differentiable transforms is applied
to every image the discriminator sees, real and generated, in D's and G's passes, so that D
cannot memorise the few thousand training faces and G still receives gradients through the
transform. Each image of a batch draws its own parameters.

Policies (``stylegan.diffaugment``, comma-separated; empty = off):

* ``color``: brightness ``x + u``, ``u ~ U(-0.5, 0.5)``; saturation: the deviation from the
  per-pixel channel mean times ``s ~ U(0, 2)``; contrast: the deviation from the image mean
  times ``c ~ U(0.5, 1.5)`` (images in [-1, 1], as the generator's output).
* ``translation``: an integer shift of up to 1/8 of the side in each direction, zero-filled.

Cutout is not offered: it blanks squares like the evaluation's hole masks and teaches the prior
to draw holes.

Also here: the R1 weight heuristic of StyleGAN2-ADA for small data, ``0.0002 * res^2 / batch``.
"""

from __future__ import annotations

import torch
from torch import Tensor

POLICIES = ("color", "translation")
TRANSLATION_RATIO = 0.125


def parse_policy(policy: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        hint = " (cutout is left out on purpose: it draws hole-like squares)" if "cutout" in unknown else ""
        raise ValueError(f"unknown DiffAugment policy {unknown}; expected a comma-separated subset of {POLICIES}{hint}")
    return names


def color(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    n = x.shape[0]
    rand = lambda: torch.rand(n, 1, 1, 1, generator=generator).to(x)  # noqa: E731
    x = x + (rand() - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (rand() * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (rand() + 0.5) + mean


def translation(x: Tensor, generator: torch.Generator | None = None, ratio: float = TRANSLATION_RATIO) -> Tensor:
    """Shift image ``i`` by ``(dy_i, dx_i)`` pixels, ``|d| <= ratio * side`` (rounded), zero fill."""
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sy, sy + 1, (n,), generator=generator)
    dx = torch.randint(-sx, sx + 1, (n,), generator=generator)
    rows = torch.arange(h).view(1, h, 1) - dy.view(n, 1, 1)  # output (r, c) takes input (r - dy, c - dx)
    cols = torch.arange(w).view(1, 1, w) - dx.view(n, 1, 1)
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).to(x.device)
    rows, cols = rows.clamp(0, h - 1).expand(n, h, w), cols.clamp(0, w - 1).expand(n, h, w)
    batch = torch.arange(n).view(n, 1, 1).expand(n, h, w)
    shifted = x.permute(0, 2, 3, 1)[batch.to(x.device), rows.to(x.device), cols.to(x.device)].permute(0, 3, 1, 2)
    return shifted * inside[:, None].to(x.dtype)


TRANSFORMS = {"color": color, "translation": translation}


def diff_augment(x: Tensor, policy: tuple[str, ...], generator: torch.Generator | None = None) -> Tensor:
    """``x`` through every transform of ``policy`` in order (identity for an empty policy)."""
    for name in policy:
        x = TRANSFORMS[name](x, generator)
    return x


def r1_heuristic(resolution: int, batch_size: int) -> float:
    """StyleGAN2-ADA's R1 weight for small data: ``0.0002 * res^2 / batch`` (0.0512 at 64, batch 16)."""
    return 0.0002 * resolution**2 / batch_size


def random_xflip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Each image mirrored left-right with probability 1/2 (dataset x-flip)."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)
