"""Structure reconstructor of the first stage (PAPER.md sec. 2; paper sec. 3, Fig. 1) and its loss.

A pSp encoder (Richardson et al. 2021, "GradualStyleEncoder") reads the damaged image and its
hole mask and predicts one style vector per StyleGAN2 synthesis input (W+); a pretrained,
frozen StyleGAN2 generator (:mod:`faceinpaint.stylegan2`) renders them into the first-stage
result I_r. The encoder is an IR / IR-SE ResNet (Deng et al. 2019, ArcFace's backbone) with a
feature pyramid (Lin et al. 2017): the maps of its last three stages, c1 (largest) .. c3
(smallest), are merged top-down, and small "map2style" heads turn them into styles.

Layout, as in pSp:

* **Backbone.** A stem (3x3 conv, BatchNorm, PReLU) and four stages of bottleneck blocks; the
  first block of every stage has stride 2, so the stage outputs are 1/2, 1/4, 1/8 and 1/16 of
  the input side. c1, c2, c3 are the outputs of stages 2, 3, 4. IR-50 has (3, 4, 14, 3) blocks
  of widths (64, 128, 256, 512); both are parameters here (``backbone_blocks``,
  ``backbone_widths`` in params.yaml) so that the smoke and cpu profiles can use a thinner,
  shallower backbone of the same layout.
* **Pyramid.** p3 = c3; p2 = up(p3) + lateral(c2); p1 = up(p2) + lateral(c1), with 1x1
  lateral convolutions to the width of c3 and bilinear upsampling (``align_corners=True``).
* **Styles.** n = 2*log2(R) - 2 for a generator of side R. Coarse styles 0..2 come from p3,
  medium 3..6 from p2, fine 7..n-1 from p1 (pSp's ``coarse_ind=3``, ``middle_ind=7``); see
  :func:`split_styles`. Each style has its own :class:`MapToStyle` head.
* **Codes.** ``w+ = encoder(x) + w_avg``: the encoder predicts an offset from the generator's
  average latent (pSp's ``start_from_latent_avg``), so an untrained encoder already starts at
  the average face.

Choices made here, where pSp and the paper do not fit this task as they are:

* **Four input channels.** pSp encodes a full RGB image (3 channels). Here the encoder gets
  the damaged image and the hole mask (hole = 1, docs/CONVENTIONS.md): a hole pixel is 0
  (mid-grey) in the damaged image, which is also a legitimate colour, so without the mask the
  encoder could not tell missing pixels from grey ones.
* **Resolutions.** The map2style heads are built for the map sizes of one input side
  (``input_size``): at input side S the pyramid maps are S/16, S/8 and S/4, so at 32 / 64 /
  256 the coarse heads see 2 / 4 / 16, the medium ones 4 / 8 / 32 and the fine ones
  8 / 16 / 64. The generator may be larger than the input (pSp: 256 in, 1024 out); its image
  is then average-pooled to the input side (pSp's ``face_pool``), or bilinearly upsampled if
  it is smaller.
* **Frozen generator.** Its parameters never get gradients and it stays in eval mode; the
  stored noise maps are used (``randomize_noise=False``) so that I_r is a deterministic
  function of the input.
* **No ArcFace initialisation.** pSp starts its IR-SE50 from ArcFace weights; none exist for
  4-channel input, nor offline, so the encoder starts from PyTorch's default initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .losses import valid_hole_l1
from .stylegan2 import EqualLinear, Generator

IR50_BLOCKS: tuple[int, int, int, int] = (3, 4, 14, 3)
"""Bottleneck blocks per stage of the IR-50 backbone (pSp ``get_blocks(50)``), the paper's; the
profiles set their own (``backbone_blocks``)."""
IR_WIDTHS = (64, 128, 256, 512)
"""Stage widths of the IR backbones; the stem has the width of the first stage."""
COARSE_END = 3
"""Styles 0..2 are coarse (pSp ``coarse_ind``)."""
MEDIUM_END = 7
"""Styles 3..6 are medium, 7.. fine (pSp ``middle_ind``)."""
SE_REDUCTION = 16
HEAD_LEAKY_SLOPE = 0.01
"""Slope of the map2style heads' LeakyReLU (PyTorch's default, as in pSp)."""
INPUT_CHANNELS = 4
"""Damaged RGB image + hole mask."""
STRUCTURE_LOSS_WEIGHTS: dict[str, float] = {"l2": 1.0, "lpips": 0.8, "id": 0.1, "hole": 6.0, "valid": 1.0}
"""Weights of L_S (PAPER.md sec. 2; paper sec. 3.2)."""


# --------------------------------------------------------------------------------- styles


def n_styles(resolution: int) -> int:
    """Number of W+ style vectors of a StyleGAN2 generator of side ``resolution``:
    2*log2(resolution) - 2 (PAPER.md sec. 2): 8 at 32, 10 at 64, 14 at 256, 18 at 1024."""
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
    return 2 * int(math.log2(resolution)) - 2


def split_styles(count: int) -> tuple[list[int], list[int], list[int]]:
    """Style indices ``0..count-1`` split into (coarse, medium, fine) at pSp's boundaries 3 and 7
    (PAPER.md sec. 2; paper sec. 3.1): coarse 0-2 from the smallest pyramid map, medium 3-6 from
    the middle one, fine 7..count-1 from the largest. With ``count = n_styles(R)``:
    32 (8): [0-2], [3-6], [7]; 64 (10): [0-2], [3-6], [7-9]; 256 (14): [0-2], [3-6], [7-13];
    1024 (18): [0-2], [3-6], [7-17] (the paper's 18)."""
    if count < 1:
        raise ValueError(f"need at least one style, got {count}")
    indices = list(range(count))
    return indices[:COARSE_END], indices[COARSE_END:MEDIUM_END], indices[MEDIUM_END:]


# ------------------------------------------------------------------------------- backbone


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): scale each channel by a gate computed from the
    global average of all channels (1x1 convs without bias, reduction 16, as in IR-SE)."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=False)
        self.expand = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class BottleneckIR(nn.Module):
    """Improved residual block of ArcFace's IR backbones (Deng et al. 2019; pSp ``bottleneck_IR``
    / ``bottleneck_IR_SE``): BN, 3x3 conv, PReLU, 3x3 conv with the stride, BN[, SE]; the
    shortcut is the (subsampled) input when the width is kept, else a strided 1x1 conv + BN."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, squeeze_excite: bool):
        super().__init__()
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if squeeze_excite:
            layers.append(SqueezeExcite(out_channels))
        self.residual = nn.Sequential(*layers)
        if in_channels == out_channels:
            self.shortcut: nn.Module | None = None
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.shortcut is not None:
            skip = self.shortcut(x)
        else:
            # pSp's MaxPool2d(kernel 1, stride): plain subsampling.
            skip = x[:, :, :: self.stride, :: self.stride]
        return self.residual(x) + skip


class IRBackbone(nn.Module):
    """Stem + four stages of :class:`BottleneckIR` blocks; the first block of each stage has
    stride 2. ``forward`` returns the outputs of all four stages (sides 1/2 .. 1/16 of the input).

    ``blocks``: blocks per stage (IR-50: 3, 4, 14, 3; see :data:`IR50_BLOCKS`); ``widths``:
    channels per stage (IR: 64, 128, 256, 512); the stem has ``widths[0]`` channels.
    """

    def __init__(self, blocks: Sequence[int] = IR50_BLOCKS, widths: Sequence[int] = IR_WIDTHS,
                 in_channels: int = INPUT_CHANNELS, squeeze_excite: bool = True):
        super().__init__()
        if len(blocks) != 4 or len(widths) != 4 or min(blocks) < 1 or min(widths) < 1:
            raise ValueError(f"need four stages with >= 1 block and >= 1 channel each, got "
                             f"blocks={tuple(blocks)}, widths={tuple(widths)}")
        self.widths = tuple(int(w) for w in widths)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, self.widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(self.widths[0]), nn.PReLU(self.widths[0]))
        stages, in_width = [], self.widths[0]
        for count, width in zip(blocks, self.widths):
            stage = [BottleneckIR(in_width, width, 2, squeeze_excite)]
            stage += [BottleneckIR(width, width, 1, squeeze_excite) for _ in range(count - 1)]
            stages.append(nn.Sequential(*stage))
            in_width = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


# ------------------------------------------------------------------------------- encoder


class MapToStyle(nn.Module):
    """pSp's map2style head (``GradualStyleBlock``): log2(``spatial``) stride-2 3x3 convs, each
    followed by LeakyReLU(0.01), shrink a ``spatial`` x ``spatial`` map to 1x1 with
    ``style_dim`` channels; an equalised linear layer then gives the style vector."""

    def __init__(self, in_channels: int, style_dim: int, spatial: int):
        super().__init__()
        if spatial < 2 or spatial & (spatial - 1):
            raise ValueError(f"map side must be a power of two >= 2, got {spatial}")
        self.spatial = spatial
        layers: list[nn.Module] = []
        for index in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(in_channels if index == 0 else style_dim, style_dim, 3, 2, 1),
                       nn.LeakyReLU(HEAD_LEAKY_SLOPE)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(style_dim, style_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.spatial, self.spatial):
            raise ValueError(f"map2style head built for {self.spatial}x{self.spatial} maps, "
                             f"got {tuple(x.shape[-2:])}")
        return self.linear(self.convs(x).flatten(1))


def upsample_add(top: Tensor, lateral: Tensor) -> Tensor:
    """Feature-pyramid merge: ``top`` bilinearly resized to the side of ``lateral``, plus it."""
    return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral


class GradualStyleEncoder(nn.Module):
    """pSp encoder (PAPER.md sec. 2; paper sec. 3.1): IR backbone, feature pyramid and one
    :class:`MapToStyle` head per style. ``forward(x)``: ``N x in_channels x S x S`` with
    S = ``input_size`` -> ``N x n_styles x style_dim`` (offsets from the average latent).

    ``n_styles``: the generator's ``n_latent`` (:func:`n_styles`); ``style_dim``: its latent
    width (the heads' conv width too, as in pSp); ``backbone_blocks`` / ``backbone_widths``:
    see :class:`IRBackbone` (IR-50: ``IR50_BLOCKS``, ``IR_WIDTHS``); ``squeeze_excite``:
    IR-SE blocks (pSp's choice) or plain IR.
    """

    def __init__(self, input_size: int, n_styles: int, style_dim: int = 512,
                 backbone_blocks: Sequence[int] = IR50_BLOCKS,
                 backbone_widths: Sequence[int] = IR_WIDTHS,
                 in_channels: int = INPUT_CHANNELS, squeeze_excite: bool = True):
        super().__init__()
        if input_size < 32 or input_size & (input_size - 1):
            raise ValueError(f"input_size must be a power of two >= 32 (the smallest pyramid "
                             f"map is input_size/16), got {input_size}")
        self.input_size = input_size
        self.n_styles = n_styles
        self.style_dim = style_dim
        self.backbone = IRBackbone(backbone_blocks, backbone_widths, in_channels, squeeze_excite)
        coarse, medium, fine = split_styles(n_styles)
        self.groups = (coarse, medium, fine)
        _, width1, width2, width3 = self.backbone.widths
        # Pyramid maps p3, p2, p1 are input_size / 16, / 8, / 4 wide, all of width3 channels.
        self.styles = nn.ModuleList(
            MapToStyle(width3, style_dim, input_size // divisor)
            for group, divisor in zip(self.groups, (16, 8, 4)) for _ in group)
        # Lateral convs only for pyramid levels that feed a style (all of them from n = 8 up).
        self.lateral2 = nn.Conv2d(width2, width3, 1) if medium else None
        self.lateral1 = nn.Conv2d(width1, width3, 1) if fine else None

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"encoder built for {self.input_size}x{self.input_size} input, "
                             f"got {tuple(x.shape[-2:])}")
        _, c1, c2, c3 = self.backbone(x)
        coarse, medium, fine = self.groups
        styles = [self.styles[i](c3) for i in coarse]
        if medium:
            p2 = upsample_add(c3, self.lateral2(c2))
            styles += [self.styles[i](p2) for i in medium]
        if fine:
            p1 = upsample_add(p2, self.lateral1(c1))
            styles += [self.styles[i](p1) for i in fine]
        return torch.stack(styles, dim=1)


# ----------------------------------------------------------------------- reconstructor


class StructureReconstructor(nn.Module):
    """First stage (PAPER.md sec. 2; paper sec. 3, Fig. 1): pSp encoder -> frozen StyleGAN2.

    ``forward(image_damaged, mask)`` with images in [-1, 1] (``N x 3 x S x S``) and masks
    ``N x 1 x S x S`` (hole = 1) returns ``{"output": I_r, "composite": mask * I_r +
    (1 - mask) * image_damaged, "codes": w+}`` where ``w+ = encoder(cat(image_damaged, mask))
    + latent_avg`` (``N x n_styles x style_dim``) and I_r is the generator's image of w+,
    resized to S when the generator's side differs.

    ``latent_avg``: the generator's average w, shape ``style_dim``, ``1 x style_dim`` or
    ``n_styles x style_dim`` (a rosinality checkpoint's ``"latent_avg"``, or
    ``generator.mean_latent(n)``); kept as a buffer. The generator is frozen here
    (``requires_grad`` False, eval mode even under ``.train()``);
    Only the encoder's parameters train (the generator is frozen).
    """

    def __init__(self, encoder: GradualStyleEncoder, generator: Generator, latent_avg: Tensor):
        super().__init__()
        if encoder.n_styles != generator.n_latent or encoder.style_dim != generator.style_dim:
            raise ValueError(f"encoder predicts {encoder.n_styles} styles of {encoder.style_dim}, "
                             f"generator takes {generator.n_latent} of {generator.style_dim}")
        latent_avg = latent_avg.detach().reshape(-1, generator.style_dim)
        if latent_avg.shape[0] not in (1, generator.n_latent):
            raise ValueError(f"latent_avg must hold 1 or {generator.n_latent} vectors of "
                             f"{generator.style_dim}, got shape {tuple(latent_avg.shape)}")
        self.encoder = encoder
        self.generator = generator.requires_grad_(False).eval()
        self.register_buffer("latent_avg", latent_avg.clone())

    def train(self, mode: bool = True) -> "StructureReconstructor":
        super().train(mode)
        self.generator.eval()
        return self

    def encode(self, image_damaged: Tensor, mask: Tensor) -> Tensor:
        """W+ codes ``N x n_styles x style_dim`` of a damaged image and its mask."""
        return self.encoder(torch.cat([image_damaged, mask], dim=1)) + self.latent_avg

    def synthesise(self, codes: Tensor, size: int) -> Tensor:
        """The frozen generator's image of W+ ``codes`` at side ``size``."""
        image, _ = self.generator([codes], input_is_latent=True, randomize_noise=False)
        if image.shape[-1] > size:
            return F.adaptive_avg_pool2d(image, size)
        if image.shape[-1] < size:
            return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
        return image

    def forward(self, image_damaged: Tensor, mask: Tensor) -> dict[str, Tensor]:
        codes = self.encode(image_damaged, mask)
        output = self.synthesise(codes, image_damaged.shape[-1])
        composite = mask * output + (1 - mask) * image_damaged
        return {"output": output, "composite": composite, "codes": codes}


def build_structure_reconstructor(generator: Generator, latent_avg: Tensor, input_size: int,
                                  backbone_blocks: Sequence[int] = IR50_BLOCKS,
                                  backbone_widths: Sequence[int] = IR_WIDTHS,
                                  squeeze_excite: bool = True) -> StructureReconstructor:
    """A :class:`StructureReconstructor` whose encoder fits ``generator`` (its ``n_latent``
    styles of ``style_dim``) and images of side ``input_size``; move it to the device with
    ``.to()`` afterwards (the new encoder is on the CPU)."""
    encoder = GradualStyleEncoder(input_size, generator.n_latent, generator.style_dim,
                                  backbone_blocks, backbone_widths, INPUT_CHANNELS, squeeze_excite)
    return StructureReconstructor(encoder, generator, latent_avg)


# ----------------------------------------------------------------------------------- loss


def structure_loss_weights(weights: Mapping[str, float] | Any | None = None) -> dict[str, float]:
    """The five weights of L_S: paper defaults (:data:`STRUCTURE_LOSS_WEIGHTS`) overridden by
    ``weights`` (a mapping, or an object such as ``config.StructureLoss`` that ``dict()`` turns
    into one). Unknown keys raise."""
    given = dict(weights) if weights is not None else {}
    unknown = set(given) - set(STRUCTURE_LOSS_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown structure-loss terms {sorted(unknown)}; "
                         f"known: {sorted(STRUCTURE_LOSS_WEIGHTS)}")
    return {**STRUCTURE_LOSS_WEIGHTS, **{k: float(v) for k, v in given.items()}}


def identity_loss(output: Tensor, target: Tensor, id_embedder: nn.Module) -> Tensor:
    """L_ID = mean over images of 1 - cos(R(I_gt), R(I_r)) (PAPER.md sec. 2; paper sec. 3.2).
    The target's embedding is a constant (no gradient)."""
    with torch.no_grad():
        target_embedding = F.normalize(id_embedder(target), dim=1)
    output_embedding = F.normalize(id_embedder(output), dim=1)
    return (1 - (target_embedding * output_embedding).sum(1)).mean()


def structure_loss(output: Tensor, target: Tensor, mask: Tensor, lpips_net: nn.Module | None,
                   id_embedder: nn.Module | None,
                   weights: Mapping[str, float] | Any | None = None) -> dict[str, Tensor]:
    """L_S = w_l2 L2 + w_lpips LPIPS + w_id L_ID + w_hole L_hole + w_valid L_valid
    (PAPER.md sec. 2; paper sec. 3.2), weights 1, 0.8, 0.1, 6, 1 by default.

    * L2: mean squared error over all pixels and channels (pSp's ``mse_loss``);
    * LPIPS: mean over images of ``lpips_net(output, target)`` (per-image distances);
    * L_ID: :func:`identity_loss` with ``id_embedder`` (R, unit embeddings);
    * L_hole, L_valid: :func:`faceinpaint.losses.valid_hole_l1`, L1 over the hole (``mask``) and
      over the known pixels (``1 - mask``), each divided by all elements (PConv's convention);
      the paper's M is 1 on known pixels, so its (1 - M) is our ``mask``.

    ``output`` is the raw I_r (every pixel supervised), ``target`` I_gt, both ``N x 3 x H x W``
    in [-1, 1]; ``mask`` ``N x 1 x H x W``, hole = 1. A term whose weight is 0 is not computed
    (its network may then be None) and reported as 0. Returns the unweighted terms under
    ``"l2"``, ``"lpips"``, ``"id"``, ``"hole"``, ``"valid"`` and the weighted sum as ``"total"``.
    """
    w = structure_loss_weights(weights)
    zero = output.new_zeros(())
    valid, hole = valid_hole_l1(output, target, mask) if w["hole"] or w["valid"] else (zero, zero)
    terms: dict[str, Tensor] = {
        "l2": F.mse_loss(output, target) if w["l2"] else zero,
        "lpips": zero,
        "id": zero,
        "hole": hole if w["hole"] else zero,
        "valid": valid if w["valid"] else zero,
    }
    for name, net in (("lpips", lpips_net), ("id", id_embedder)):
        if w[name] and net is None:
            raise ValueError(f"structure-loss term {name!r} has weight {w[name]} but no network")
    if w["lpips"]:
        terms["lpips"] = lpips_net(output, target).mean()
    if w["id"]:
        terms["id"] = identity_loss(output, target, id_embedder)
    terms["total"] = sum(w[name] * value for name, value in terms.items())
    return terms
