"""Frozen feature networks for the perceptual loss, LPIPS and FID.

The standard networks (torchvision VGG16 / AlexNet ImageNet weights, the LPIPS linear layers,
pytorch-fid's Inception-v3) are used whenever their weight files sit in the torch hub cache
(``torch.hub.get_dir()/checkpoints``); offline without them, EfficientNet-Lite0 ImageNet
features stand in (PAPER.md sec. 8). Every wrapper carries ``.name``, the backbone actually
used, so every reported number can name it. Nothing here downloads: each file goes through
:func:`~faceinpaint.pretrained.weights.verify_file` first, and the constructors are called so
that they load only local files.

All wrappers take images in [-1, 1], ``N x 3 x H x W``, stay frozen and in eval mode.
torchvision, lpips and pytorch-fid are imported where the standard networks are built: they
pull in torch._dynamo (seconds of import time) and are needed only when their weights exist.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .common import FrozenNetwork, freeze, resize_antialiased
from .efficientnet_lite import IMAGENET_SIZE, EfficientNetLite0, fold_batchnorm, load_efficientnet_lite0
from .weights import hub_checkpoints_dir, in_hub_cache, verified_path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# EfficientNet-Lite0 blocks that end a resolution level: strides 2, 4, 8, 16, 32 with 16, 24,
# 40, 112, 320 channels.
EFFICIENTNET_STAGE_BLOCKS = (0, 2, 4, 10, 15)
EFFICIENTNET_STAGE_NAMES = ("block0_s2", "block2_s4", "block4_s8", "block10_s16", "block15_s32")

# torchvision vgg16().features indices of relu1_2, relu2_2, relu3_3, relu4_3.
VGG16_PERCEPTUAL_LAYERS = {3: "relu1_2", 8: "relu2_2", 15: "relu3_3", 22: "relu4_3"}


def _check_name(name: str, allowed: tuple[str, ...]) -> None:
    if name not in allowed:
        raise ValueError(f"unknown backbone {name!r}; choose one of {allowed}")


def _load_torchvision(key: str) -> nn.Module:
    """torchvision's ImageNet model ``key`` ("vgg16", "alexnet") from the verified hub-cache
    file, loaded strictly. Built on the meta device and filled with the file's tensors, so no
    random initialisation of the large classifier is paid for."""
    import torchvision

    path = verified_path(key, hub_checkpoints_dir())
    state = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        model = getattr(torchvision.models, key)(weights=None)
    model.load_state_dict(state, strict=True, assign=True)
    return model


# ------------------------------------------------------------------------------ perceptual


class VGG16Features(FrozenNetwork):
    """torchvision VGG16 ImageNet features relu1_2, relu2_2, relu3_3, relu4_3 (Johnson et al.
    2016). PConv's pool1..pool3 are 2x2 max pools of the first three."""

    name = "vgg16"
    layer_names = tuple(VGG16_PERCEPTUAL_LAYERS.values())

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = freeze(features[: max(VGG16_PERCEPTUAL_LAYERS) + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = ((images + 1.0) / 2.0 - self.mean) / self.std
        maps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in VGG16_PERCEPTUAL_LAYERS:
                maps.append(x)
        return maps


class EfficientNetLite0Features(FrozenNetwork):
    """EfficientNet-Lite0 ImageNet features at the end of each resolution level (strides 2..32)."""

    name = "efficientnet_lite0"
    layer_names = EFFICIENTNET_STAGE_NAMES

    def __init__(self, net: EfficientNetLite0):
        super().__init__()
        self.net = freeze(net)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        maps, _ = self.net.stage_features(images, EFFICIENTNET_STAGE_BLOCKS)
        return maps


def perceptual_backbone(name: str = "auto") -> nn.Module:
    """Feature maps for perceptual / style losses (texture loss, PAPER.md sec. 3; PConv / RFR
    losses, sec. 5): ``forward(images) -> list[Tensor]``, shallow to deep; ``.layer_names``.

    ``name``: "vgg16" (torchvision ImageNet weights from the hub cache), "efficientnet_lite0",
    or "auto" = vgg16 when its file is in the hub cache, else efficientnet_lite0.
    """
    _check_name(name, ("auto", "vgg16", "efficientnet_lite0"))
    if name == "vgg16" or (name == "auto" and in_hub_cache("vgg16")):
        return VGG16Features(_load_torchvision("vgg16").features)
    return EfficientNetLite0Features(load_efficientnet_lite0())


# ------------------------------------------------------------------------------ LPIPS


class StandardLPIPS(FrozenNetwork):
    """LPIPS v0.1 (Zhang et al. 2018) of the ``lpips`` package with its learned linear layers;
    the trunk's ImageNet weights come from the verified torchvision file."""

    def __init__(self, net: str):
        import lpips

        super().__init__()
        trunk_key, linear_key = {"alex": ("alexnet", "lpips_alex_linear"), "vgg": ("vgg16", "lpips_vgg_linear")}[net]
        self.name = f"lpips-{net}"
        trunk = _load_torchvision(trunk_key).features
        linear = verified_path(linear_key, Path(lpips.__file__).parent / "weights" / "v0.1")
        with warnings.catch_warnings():
            # pnet_rand=True keeps lpips from fetching the trunk; torchvision warns about the
            # legacy ``pretrained=False`` argument lpips passes.
            warnings.simplefilter("ignore", UserWarning)
            self.lpips = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, model_path=str(linear), verbose=False)
        # lpips splits the trunk's ``features`` into slices whose children keep their indices.
        trunk_state = trunk.state_dict()
        self.lpips.net.load_state_dict(
            {
                f"{slice_name}.{key}": trunk_state[key]
                for slice_name, piece in self.lpips.net.named_children()
                for key in piece.state_dict()
            },
            strict=True,
        )
        freeze(self.lpips)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.lpips(x, y).reshape(-1)


class UnitWeightLPIPS(FrozenNetwork):
    """LPIPS form (Zhang et al. 2018, eq. 1) on EfficientNet-Lite0 features with all linear
    weights 1 (their "baseline" variant, no learned calibration):
    d(x, y) = mean_l mean_hw sum_c (f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|)^2, features unit-normalised
    over channels at each pixel, l over the five stage outputs of :class:`EfficientNetLite0Features`.
    The mean (not LPIPS's sum) over layers keeps the distance in [0, 4] whatever the layer count,
    closer to the scale of calibrated LPIPS, so the paper's loss weight 0.8 keeps its balance.
    """

    name = "lpips-efficientnet_lite0-unitweights"

    def __init__(self, features: EfficientNetLite0Features):
        super().__init__()
        self.features = features

    @staticmethod
    def unit_normalise(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
        return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        layers = [(self.unit_normalise(fx) - self.unit_normalise(fy)).pow(2).sum(dim=1).mean(dim=(1, 2))
                  for fx, fy in zip(self.features(x), self.features(y))]
        return torch.stack(layers).mean(dim=0)


def lpips_metric(name: str = "auto") -> nn.Module:
    """Per-image perceptual distance, the L_LPIPS term of L_S (PAPER.md sec. 2):
    ``forward(x, y) -> (N,)``, differentiable.

    ``name``: "alex" / "vgg" (standard LPIPS), "efficientnet_lite0" (:class:`UnitWeightLPIPS`),
    or "auto" = alex when AlexNet's file is in the hub cache, else efficientnet_lite0.
    """
    _check_name(name, ("auto", "alex", "vgg", "efficientnet_lite0"))
    if name == "auto":
        name = "alex" if in_hub_cache("alexnet") else "efficientnet_lite0"
    if name in ("alex", "vgg"):
        return StandardLPIPS(name)
    return UnitWeightLPIPS(EfficientNetLite0Features(load_efficientnet_lite0()))


# ------------------------------------------------------------------------------ FID features


class InceptionPool3(FrozenNetwork):
    """pytorch-fid's Inception-v3 (the TF FID graph's weights), 2048-d pool3 features. Input is
    resized to 299 by pytorch-fid itself (plain bilinear), so features match the pytorch-fid tool."""

    name = "inception-v3-pool3"

    def __init__(self):
        from pytorch_fid.inception import InceptionV3

        super().__init__()
        verified_path("fid_inception", hub_checkpoints_dir())
        # With the verified file in the hub cache, pytorch-fid's load_state_dict_from_url reads
        # that file and downloads nothing. Inputs are already in [-1, 1]: no normalize_input.
        self.inception = freeze(
            InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=False)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inception(images)[0].flatten(1)


class EfficientNetLite0Pool(FrozenNetwork):
    """EfficientNet-Lite0 head features (after ReLU6), global-average-pooled: 1280-d. Input is
    resized to the network's ImageNet resolution 224 (antialiased bilinear). For speed (FD
    features are inference only) the batch norms are folded into the convolutions
    (:func:`~faceinpaint.pretrained.efficientnet_lite.fold_batchnorm`) and maps are kept
    channels-last: about 2.2x the throughput on this machine's CPU, features equal to ~1e-5."""

    name = "efficientnet_lite0-pool"

    def __init__(self, net: EfficientNetLite0):
        super().__init__()
        self.net = freeze(fold_batchnorm(net)).to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_antialiased(images, IMAGENET_SIZE).contiguous(memory_format=torch.channels_last)
        _, head = self.net.stage_features(x, ())
        return head.mean(dim=(2, 3))


def fid_feature_extractor(name: str = "auto") -> nn.Module:
    """Pooled features for Frechet distances (FID, PAPER.md sec. 6; Heusel et al. 2017):
    ``forward(images) -> N x D``.

    ``name``: "inception" (pytorch-fid, D = 2048), "efficientnet_lite0" (D = 1280), or "auto" =
    inception when its file is in the hub cache, else efficientnet_lite0.
    """
    _check_name(name, ("auto", "inception", "efficientnet_lite0"))
    if name == "inception" or (name == "auto" and in_hub_cache("fid_inception")):
        return InceptionPool3()
    return EfficientNetLite0Pool(load_efficientnet_lite0())
