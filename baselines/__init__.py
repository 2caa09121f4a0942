"""Baselines of PAPER.md sec. 5: PConv (Liu et al. 2018) and RFR (Li et al. 2020), with their
shared loss. Both take the project's ``hole = 1`` masks and convert to their own ``valid = 1``
polarity in one adapter each (:class:`PConvInpainter`, :class:`RFRInpainter`)."""

from .losses import LossWeights, inpainting_loss
from .pconv import PartialConv2d, PartialConvUNet, PConvInpainter
from .rfr import KnowledgeConsistentAttention, RFRInpainter, RFRNet

__all__ = [
    "KnowledgeConsistentAttention",
    "LossWeights",
    "PConvInpainter",
    "PartialConv2d",
    "PartialConvUNet",
    "RFRInpainter",
    "RFRNet",
    "inpainting_loss",
]
