"""faceinpaint-repro: a reproducibility suite for two-stage face inpainting.

Structure reconstructor (pSp encoder -> frozen StyleGAN2) then a gated-convolution texture
generator with multi-level contextual attention; ablation variants; PConv and RFR baselines.
See ../shared/PAPER.md for the method as a build spec and docs/CONVENTIONS.md for tensor and
mask conventions.
"""

__version__ = "0.1.0"
