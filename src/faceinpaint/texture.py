"""Texture generator of the second stage (PAPER.md sec. 3; paper sec. 4, Fig. 2) and its losses.

The generator refines the stage-1 composite with a six-level encoder of gated convolutions
(paper sec. 4.3), an attention computation module (ACM) at levels 4-6, an attention transfer
module (ATN) that fills the hole of levels 1-3 with score-weighted known patches (paper
sec. 4.2, PEN-Net's cross-level attention, Zeng et al. 2019), and a gated decoder whose RGB
output is added to the stage-1 result. It is trained with L_T = 10 perceptual + adversarial
(WGAN-GP) + 100 L1 (paper sec. 4.4).

Choices the paper leaves open, made here:

* **Level sizes.** Level 6 is 4x4 at every resolution from 16 up to 256 (the paper's 256/2^6):
  the last ``log2(resolution) - 2`` levels (at most 6) halve the map, the first ones keep it
  (stride 1), see :func:`level_strides`. Sizes: 32 -> 32,32,32,16,8,4; 64 -> 64,64,32,16,8,4;
  256 -> 128,64,32,16,8,4. So levels 4-6 (the attention levels) are 16, 8, 4 at 64 and 256.
* **Patches.** The ACM matches 1x1 patches (one cell of the level-l map, a C-vector), as
  PEN-Net does at its deepest level. With 3x3 patches a patch is known only if none of its 9
  cells is a hole; a 1/4-side square hole covers up to 2x2 cells of the 4x4 level 6, whose
  3x3 neighbourhoods cover the whole map, leaving no known patch at all. 1x1 patches also give
  the paper's ATN equation literally: cell j at level l is the image region of a
  non-overlapping block j of ``(H_t/h) x (W_t/w)`` cells of the target level t.
* **Hole cells.** The image mask is max-pooled to each level: a cell is a hole when any pixel
  of its image region is. Only hole cells of a target map are replaced (``torch.where``), so
  known cells are kept bit for bit. A sample with no known patch at level l keeps its maps.
* **Softmax scale** 10 (PEN-Net's and contextual attention's default): cosine similarities
  in [-1, 1] are multiplied by 10 before the softmax, which otherwise is almost uniform.
* **Skips.** Decoder level l concatenates the upsampled decoder map with the ATN-filled
  encoder map (levels 1-3, as the paper says) or the encoder map itself (levels 4-5, U-Net
  style, as in PEN-Net, where every level has a skip).
* **Output.** The last layer is a gated convolution without activation (``sigmoid(g) * f``,
  linear feature branch): its 3 channels are a residual added to the stage-1 result, not
  clamped (the losses keep it in range; metrics clamp).
* **Losses.** L1 and perceptual on the raw output (every pixel supervised), the critic on
  the composite (the final image, paper sec. 4.4: "x~ is the final output image").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, autograd, nn
from torch.nn import functional as F

N_LEVELS = 6
TARGET_LEVELS = (1, 2, 3)
"""Encoder levels whose hole the ATN fills (paper sec. 4.2)."""
SCORE_LEVELS = (4, 5, 6)
"""Levels where the ACM may compute scores; the full model uses all, variants (6,)."""
DEEPEST_SIZE = 4
NORM_EPS = 1e-4
"""Floor of a patch norm in the cosine similarity (PEN-Net's value), so a zero patch is
similar to nothing instead of dividing by zero."""
LEAKY_SLOPE = 0.2


# ------------------------------------------------------------------------------- geometry


def level_strides(resolution: int) -> tuple[int, ...]:
    """Stride of each of the six encoder levels (PAPER.md sec. 6a, low resolutions).

    The last ``min(6, log2(resolution) - 2)`` levels have stride 2, the first ones stride 1,
    so the deepest map is 4x4 for every resolution from 16 to 256 (8x8 at 512) and levels 4-6
    are never below 4x4: 32 -> (1, 1, 1, 2, 2, 2), 64 -> (1, 1, 2, 2, 2, 2),
    256 -> (2, 2, 2, 2, 2, 2).
    """
    if resolution < DEEPEST_SIZE or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= {DEEPEST_SIZE}, got {resolution}")
    n_down = min(N_LEVELS, int(math.log2(resolution // DEEPEST_SIZE)))
    return (1,) * (N_LEVELS - n_down) + (2,) * n_down


def level_sizes(resolution: int) -> tuple[int, ...]:
    """Side of the encoder map at levels 1..6 (level 1 the largest); see :func:`level_strides`."""
    sizes, size = [], resolution
    for stride in level_strides(resolution):
        size //= stride
        sizes.append(size)
    return tuple(sizes)


def level_widths(base_width: int, max_width: int) -> tuple[int, ...]:
    """Channels at levels 1..6: ``base_width * 2**(l-1)`` capped at ``max_width``
    (PEN-Net / DeepFill doubling; paper profile 32..256)."""
    if base_width < 1 or max_width < base_width:
        raise ValueError(f"need 1 <= base_width <= max_width, got {base_width}, {max_width}")
    return tuple(min(base_width * 2**level, max_width) for level in range(N_LEVELS))


# --------------------------------------------------------------------------- gated conv


class GatedConv2d(nn.Module):
    """Gated convolution (PAPER.md sec. 3; paper sec. 4.3; Yu et al. 2019):
    ``O = sigmoid(conv(W_g, I)) * ELU(conv(W_f, I))``.

    One convolution with ``2 * out_channels`` filters computes both branches: output channels
    ``[:out]`` are the feature branch (``W_f``), ``[out:]`` the gating branch (``W_g``). Each
    output channel of a convolution depends only on its own filter, so this is exactly two
    convolutions, in one call. ``activate=False`` drops the ELU (``O = sigmoid(g) * f``), for
    the RGB output layer. Zero padding keeps the size (``ceil(size / stride)``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, activate: bool = True):
        super().__init__()
        self.out_channels = out_channels
        self.activate = activate
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, kernel_size, stride,
                              padding=(kernel_size - 1) // 2)

    def forward(self, x: Tensor) -> Tensor:
        feature, gating = self.conv(x).split(self.out_channels, dim=1)
        if self.activate:
            feature = F.elu(feature)
        return torch.sigmoid(gating) * feature


# ----------------------------------------------------------------------- ACM and ATN


def hole_cells(mask: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """``N x 1 x h x w`` bool: a cell of an ``h x w`` level is a hole when any pixel of the
    image region it covers is (max-pooling of the ``N x 1 x H x W`` hole = 1 mask)."""
    height, width = mask.shape[-2:]
    h, w = size
    if height % h or width % w:
        raise ValueError(f"mask {height}x{width} is not a whole number of {h}x{w} cells")
    return F.max_pool2d(mask, kernel_size=(height // h, width // w)) > 0.5


@dataclass(frozen=True)
class AttentionScores:
    """Output of the ACM at one level with an ``h x w`` grid of ``P = h * w`` patches."""

    scores: Tensor
    """``N x P x P``; ``scores[n, j, i] = s_ij``: weight of known patch i for hole patch j.
    Rows of patches that are not filled, and columns of hole patches, are 0."""
    fill: Tensor
    """``N x P`` bool: patches j that are filled (hole patch, and the sample has a known one)."""
    grid: tuple[int, int]


def compute_attention(features: Tensor, holes: Tensor, softmax_scale: float = 10.0) -> AttentionScores:
    """Attention computation module, ACM (PAPER.md sec. 3; paper sec. 4.2):
    ``c_ij = <p_i/|p_i|, p_j/|p_j|>``, ``s_ij = softmax_i(softmax_scale * c_ij)`` over known i.

    ``features``: ``N x C x h x w`` level-l map, one 1x1 patch per cell; ``holes``:
    ``N x 1 x h x w`` bool hole cells (:func:`hole_cells`). All samples in one batched matmul;
    hole sources get ``-inf`` logits (score exactly 0). A sample without a known patch gets
    no mask (so its softmax stays finite) and all-zero scores: it is left unfilled.
    """
    n, c, h, w = features.shape
    unit = F.normalize(features.flatten(2).transpose(1, 2), dim=2, eps=NORM_EPS)  # N x P x C
    cosine = unit @ unit.transpose(1, 2)  # [n, j, i]
    hole = holes.reshape(n, h * w)
    has_known = ~hole.all(dim=1, keepdim=True)
    fill = hole & has_known
    logits = (softmax_scale * cosine).masked_fill(fill[:, None, :], float("-inf"))
    scores = torch.softmax(logits, dim=2) * fill[:, :, None]
    return AttentionScores(scores, fill, (h, w))


def transfer_attention(features: Tensor, attention: AttentionScores, holes: Tensor) -> Tensor:
    """Attention transfer module, ATN (PAPER.md sec. 3; paper sec. 4.2):
    ``p_j^t = sum_i s_ij^l p_i^t`` for the hole patches j of a lower level t.

    ``features``: ``N x C x H x W`` level-t map, cut into the ``h x w`` grid of ``attention``
    (block j covers the image region of cell j at level l, ``H/h x W/w`` cells); ``holes``:
    its ``N x 1 x H x W`` bool hole cells. Only those hole cells of filled blocks change;
    every other value is returned bit for bit.
    """
    n, c, height, width = features.shape
    h, w = attention.grid
    if height % h or width % w:
        raise ValueError(f"a {height}x{width} map is not a whole number of {h}x{w} blocks")
    rh, rw = height // h, width // w
    blocks = features.reshape(n, c, h, rh, w, rw).permute(0, 2, 4, 1, 3, 5).reshape(n, h * w, -1)
    filled = (attention.scores @ blocks).reshape(n, h, w, c, rh, rw)
    filled = filled.permute(0, 3, 1, 4, 2, 5).reshape(n, c, height, width)
    fill_blocks = attention.fill.reshape(n, 1, h, 1, w, 1).expand(n, 1, h, rh, w, rw)
    replace = holes & fill_blocks.reshape(n, 1, height, width)
    return torch.where(replace, filled, features)


def score_level_for(target_level: int, attention_levels: Sequence[int]) -> int:
    """Which ACM level fills target level t: the paper pairs t with ``7 - t`` (1<-6, 2<-5,
    3<-4); with fewer attention levels, the nearest one (deeper on a tie), so with (6,)
    every target uses level 6 as PEN-Net does."""
    wanted = N_LEVELS + 1 - target_level
    return min(attention_levels, key=lambda level: (abs(level - wanted), -level))


class MultiLevelAttention(nn.Module):
    """ACM at ``attention_levels`` and ATN into levels 1-3 (PAPER.md sec. 3, sec. 4).

    Full model ``(4, 5, 6)``: level 1 uses s^6, level 2 s^5, level 3 s^4. Variants ``(6,)``:
    levels 1-3 all use s^6. No parameters.
    """

    def __init__(self, attention_levels: Sequence[int] = SCORE_LEVELS, softmax_scale: float = 10.0):
        super().__init__()
        levels = tuple(sorted(set(attention_levels)))
        if not levels or not set(levels) <= set(SCORE_LEVELS):
            raise ValueError(f"attention_levels must be a non-empty subset of {SCORE_LEVELS}, "
                             f"got {tuple(attention_levels)}")
        self.attention_levels = levels
        self.softmax_scale = softmax_scale
        self.score_level = {t: score_level_for(t, levels) for t in TARGET_LEVELS}

    def forward(self, maps: Sequence[Tensor], mask: Tensor) -> list[Tensor]:
        """``maps``: encoder maps of levels 1..6 (index 0 = level 1); ``mask``: the image mask.
        Returns the filled maps of levels 1, 2, 3."""
        def holes(level: int) -> Tensor:
            return hole_cells(mask, maps[level - 1].shape[-2:])

        attention = {level: compute_attention(maps[level - 1], holes(level), self.softmax_scale)
                     for level in self.attention_levels}
        return [transfer_attention(maps[t - 1], attention[self.score_level[t]], holes(t))
                for t in TARGET_LEVELS]

    def extra_repr(self) -> str:
        return f"score_level={self.score_level}, softmax_scale={self.softmax_scale}"


# -------------------------------------------------------------------------- generator


class TextureGenerator(nn.Module):
    """Texture generator (PAPER.md sec. 3; paper sec. 4.1, Fig. 2).

    ``forward(image_in, mask, stage1=None)``: ``image_in`` is the network input, ``N x 3 x R x
    R`` in [-1, 1] (the stage-1 composite; for variant 1 the damaged image), ``mask``
    ``N x 1 x R x R`` with hole = 1. The gated encoder sees ``cat(image_in, mask)``; the
    decoder's RGB residual is added to ``stage1`` (bilinearly resized to R if needed) or, when
    ``stage1`` is None, to ``image_in`` itself. Returns ``output`` (base + residual) and
    ``composite`` (output in the hole, ``image_in`` elsewhere, bit for bit).
    """

    def __init__(self, resolution: int, base_width: int = 32, max_width: int = 256,
                 attention_levels: Sequence[int] = SCORE_LEVELS, softmax_scale: float = 10.0):
        super().__init__()
        self.resolution = resolution
        self.strides = level_strides(resolution)
        self.sizes = level_sizes(resolution)
        self.widths = level_widths(base_width, max_width)

        in_widths = (3 + 1,) + self.widths[:-1]
        self.encoder = nn.ModuleList(
            GatedConv2d(c_in, c_out, 3, stride)
            for c_in, c_out, stride in zip(in_widths, self.widths, self.strides))
        self.attention = MultiLevelAttention(attention_levels, softmax_scale)
        # decoder[k] makes level 5 - k from the level-(6 - k) decoder map and the level skip
        self.decoder = nn.ModuleList(
            GatedConv2d(self.widths[level] + self.widths[level - 1], self.widths[level - 1], 3)
            for level in range(N_LEVELS - 1, 0, -1))
        self.to_rgb = nn.Sequential(GatedConv2d(self.widths[0], self.widths[0], 3),
                                    GatedConv2d(self.widths[0], 3, 3, activate=False))

    def forward(self, image_in: Tensor, mask: Tensor, stage1: Tensor | None = None) -> dict[str, Tensor]:
        expected = (3, self.resolution, self.resolution)
        if image_in.shape[1:] != expected or mask.shape[1:] != (1, *expected[1:]):
            raise ValueError(f"expected N x 3 x {self.resolution}^2 images and N x 1 masks, got "
                             f"{tuple(image_in.shape)} and {tuple(mask.shape)}")
        x = torch.cat([image_in, mask], dim=1)
        maps = []
        for conv in self.encoder:
            x = conv(x)
            maps.append(x)
        skips = [*self.attention(maps, mask), *maps[len(TARGET_LEVELS):N_LEVELS - 1]]

        decoded = maps[-1]
        for conv, skip in zip(self.decoder, reversed(skips)):
            decoded = F.interpolate(decoded, size=skip.shape[-2:], mode="nearest")
            decoded = conv(torch.cat([decoded, skip], dim=1))
        decoded = F.interpolate(decoded, size=image_in.shape[-2:], mode="nearest")
        residual = self.to_rgb(decoded)

        if stage1 is None:
            base = image_in
        elif stage1.shape[-2:] != image_in.shape[-2:]:
            base = F.interpolate(stage1, size=image_in.shape[-2:], mode="bilinear",
                                 align_corners=False, antialias=True)
        else:
            base = stage1
        output = base + residual
        # == mask * output + (1 - mask) * image_in for a 0/1 mask, exact outside the hole
        composite = torch.where(mask > 0.5, output, image_in)
        return {"output": output, "composite": composite}


# ------------------------------------------------------------------------ critic, losses


class TextureCritic(nn.Module):
    """WGAN-GP critic of the texture generator (PAPER.md sec. 3; paper sec. 4.4).

    Input ``cat(image, mask)``; stride-2 5x5 convolutions with LeakyReLU(0.2), no
    normalisation (batch norm would break the per-sample gradient penalty, Gulrajani et al.
    2017), no spectral norm, down to 4x4, then a linear layer: one score per image, ``(N,)``.
    Widths ``width * 2**k`` capped at ``4 * width`` (SN-PatchGAN's 64..256).
    """

    def __init__(self, resolution: int, width: int = 64):
        super().__init__()
        if resolution < 2 * DEEPEST_SIZE or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= {2 * DEEPEST_SIZE}, got {resolution}")
        n_down = int(math.log2(resolution // DEEPEST_SIZE))
        widths = [min(width * 2**k, 4 * width) for k in range(n_down)]
        layers: list[nn.Module] = []
        for c_in, c_out in zip([3 + 1, *widths[:-1]], widths):
            layers += [nn.Conv2d(c_in, c_out, 5, stride=2, padding=2), nn.LeakyReLU(LEAKY_SLOPE)]
        self.convs = nn.Sequential(*layers)
        # no bias: a constant shift of every score cancels in the WGAN losses and the penalty
        self.linear = nn.Linear(widths[-1] * DEEPEST_SIZE**2, 1, bias=False)

    def forward(self, images: Tensor, mask: Tensor) -> Tensor:
        return self.linear(self.convs(torch.cat([images, mask], dim=1)).flatten(1)).squeeze(1)


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, mask: Tensor,
                     weight: float = 10.0) -> Tensor:
    """WGAN-GP penalty (PAPER.md sec. 3; Gulrajani et al. 2017, eq. 3):
    ``weight * E[(||grad_x D(x^)||_2 - 1)^2]`` at ``x^ = e * real + (1 - e) * fake``,
    ``e ~ U[0, 1]`` per sample; the norm is over all pixels of one image (the mask is an
    input of the critic, not interpolated). Differentiable w.r.t. the critic's parameters."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    interpolates = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    (grad,) = autograd.grad(critic(interpolates, mask).sum(), interpolates, create_graph=True)
    return weight * (torch.linalg.vector_norm(grad.flatten(1), dim=1) - 1).square().mean()


def wgan_critic_loss(critic: nn.Module, real: Tensor, fake: Tensor, mask: Tensor,
                     gp_weight: float = 10.0) -> dict[str, Tensor]:
    """Critic loss (PAPER.md sec. 3; paper sec. 4.4, L_d, plus the penalty):
    ``mean D(fake) - mean D(real) + gp``. ``fake`` (the composite) is detached here.
    Returns ``total``, ``critic_real``, ``critic_fake``, ``gradient_penalty``."""
    critic_real = critic(real, mask).mean()
    critic_fake = critic(fake.detach(), mask).mean()
    penalty = gradient_penalty(critic, real, fake, mask, gp_weight)
    return {"total": critic_fake - critic_real + penalty, "critic_real": critic_real,
            "critic_fake": critic_fake, "gradient_penalty": penalty}


def wgan_generator_loss(critic: nn.Module, fake: Tensor, mask: Tensor) -> Tensor:
    """Adversarial term of the generator, ``-mean D(fake)`` (PAPER.md sec. 3). The paper
    prints ``L_adv = E[D(x~)]``; minimising that would make fakes less real, so the sign is
    WGAN's (Gulrajani et al. 2017, Algorithm 1)."""
    return -critic(fake, mask).mean()


def perceptual_loss(perceptual_net: nn.Module, output: Tensor, target: Tensor) -> Tensor:
    """``mean_k ||P_k(output) - P_k(target)||^2 / ||P_k(target)||^2`` over the feature maps P_k
    of ``perceptual_net`` (PAPER.md sec. 3; paper sec. 4.4 writes ``||P(I_gt) - P(I_out)||_2``).

    Squared L2, as the feature reconstruction loss of Johnson et al. 2016 the paper cites,
    taken relative to the target's feature energy per layer and averaged over layers: raw
    feature magnitudes differ by orders of magnitude between backbones (VGG16, the
    EfficientNet-Lite0 substitute) and layers, and the paper's weight 10 beside 100 x L1 only
    keeps its meaning on a scale-free term. The target's features carry no gradient. Under DDP
    each process divides by the mean over processes of its target energy, so that the averaged
    gradients are those of one process on the global batch (in one process: its own energy).
    """
    from .training import distributed_mean

    with torch.no_grad():
        target_features = perceptual_net(target)
    terms = [(out - tgt).square().sum() / distributed_mean(tgt.square().sum()).clamp_min(1e-12)
             for out, tgt in zip(perceptual_net(output), target_features, strict=True)]
    return torch.stack(terms).mean()


def texture_generator_loss(output: Tensor, target: Tensor, mask: Tensor, perceptual_net: nn.Module,
                           critic: nn.Module, perceptual_weight: float = 10.0,
                           adversarial_weight: float = 1.0, l1_weight: float = 100.0) -> dict[str, Tensor]:
    """L_T = 10 L_perceptual + L_adv + 100 L1 (PAPER.md sec. 3; paper sec. 4.4).

    L1 (mean absolute error) and the perceptual term compare the raw ``output`` with
    ``target`` over every pixel; the critic scores the composite ``mask * output +
    (1 - mask) * target`` (outside the hole the input equals the target). Returns ``l1``,
    ``perceptual``, ``adversarial`` and the weighted ``total``.
    """
    l1 = F.l1_loss(output, target)
    perceptual = perceptual_loss(perceptual_net, output, target)
    adversarial = wgan_generator_loss(critic, torch.where(mask > 0.5, output, target), mask)
    total = perceptual_weight * perceptual + adversarial_weight * adversarial + l1_weight * l1
    return {"total": total, "l1": l1, "perceptual": perceptual, "adversarial": adversarial}
