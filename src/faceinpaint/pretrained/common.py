"""Frozen-network plumbing shared by every pretrained wrapper."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no parameter gradients; returns the module."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class FrozenNetwork(nn.Module):
    """A pretrained network that stays in eval mode, even when a parent module calls
    ``.train()`` (batch-norm statistics and dropout of a frozen loss network must not change).
    Subclasses pass their submodules through :func:`freeze`."""

    def __init__(self):
        super().__init__()
        self.training = False

    def train(self, mode: bool = True) -> "FrozenNetwork":
        return super().train(False)


def resize_antialiased(images, size: int):
    """Bilinear resize to ``size x size`` with antialiasing (matters when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
